#!/usr/bin/env bash
# make bench-chat: the "pairs" scenario at C = 1,000 and 2,500, then 5,000 pairs
# (10,000 sockets) held at a low message rate for memory per connection.
set -euo pipefail
cd "$(dirname "$0")/../../.."
uv run --frozen python services/chat/bench/bench.py --pairs 1000 2500 --seconds 30 --write "$@"
uv run --frozen python services/chat/bench/bench.py --pairs 5000 --period-ms 10000 --seconds 40 --write "$@"
# Cold data: conversations/s moved to the archive (written, read back, verified, deleted).
uv run --frozen python services/chat/bench/archive_bench.py --conversations 2000 --messages 20 --write
# History page (50 messages) latency by source: primary, streaming replica, hot cache (Redis).
uv run --frozen python services/chat/bench/history_replica.py --conversations 10 --messages 120 --requests 1000 --write
