#!/usr/bin/env bash
# make bench-analytics: ingest rate from RabbitMQ into chDB, and report / search latency.
# Needs the local RabbitMQ (AMQP_URL). Results go to stdout; copy them to
# docs/benchmarks/analytics.md. BENCH_CONVERSATIONS (default 1000000) x BENCH_MESSAGES_PER_CONVERSATION (10) size the report data set,
# BENCH_INGEST_EVENTS (default 200000) the ingest run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
exec .venv/bin/python services/analytics/bench/bench.py "$@"
