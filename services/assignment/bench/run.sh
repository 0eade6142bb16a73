#!/usr/bin/env bash
# make bench-assignment: engine core (1 and 2 replicas) and end to end over the bus.
# Results: docs/benchmarks/assignment.md. Needs local PostgreSQL, Redis, RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/../../.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
exec uv run --frozen python services/assignment/bench/bench.py "$@"
