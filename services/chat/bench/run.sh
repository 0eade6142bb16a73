#!/usr/bin/env bash
# make bench-chat: the "pairs" scenario at C = 1,000 and 2,500, then 5,000 pairs
# (10,000 sockets) held at a low message rate for memory per connection.
set -euo pipefail
cd "$(dirname "$0")/../../.."
uv run --frozen python services/chat/bench/bench.py --pairs 1000 2500 --seconds 30 --write "$@"
uv run --frozen python services/chat/bench/bench.py --pairs 5000 --period-ms 10000 --seconds 40 --write "$@"
# "pairs" at C = 1,000 on one database vs two shard databases with a streaming
# replica, both on one private PostgreSQL primary (about 3 minutes; it stops and
# deletes its servers itself).
uv run --frozen python services/chat/bench/bench.py --pairs 1000 --seconds 20 --topology both --write "$@"
# Cold data: conversations/s moved to the archive (written, read back, verified, deleted).
uv run --frozen python services/chat/bench/archive_bench.py --conversations 2000 --messages 20 --write
# History page (50 messages) latency by source: primary, streaming replica, hot cache (Redis).
uv run --frozen python services/chat/bench/history_replica.py --conversations 10 --messages 120 --requests 1000 --write
