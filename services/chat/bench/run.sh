#!/usr/bin/env bash
# make bench-chat: the "pairs" scenario at C = 1,000 and 2,500, then 5,000 pairs
# (10,000 sockets) held at a low message rate for memory per connection.
set -euo pipefail
cd "$(dirname "$0")/../../.."
uv run --frozen python services/chat/bench/bench.py --pairs 1000 2500 --seconds 30 --write "$@"
uv run --frozen python services/chat/bench/bench.py --pairs 5000 --period-ms 10000 --seconds 40 --write "$@"
