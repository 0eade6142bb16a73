#!/usr/bin/env bash
# `make down`: stop a LiveDesk started by `make up` (detached or in another terminal).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -f .run/up.pid ]] || ! kill -0 "$(cat .run/up.pid)" 2>/dev/null; then
  echo "LiveDesk is not running."
  rm -f .run/up.pid
  exit 0
fi
pid=$(cat .run/up.pid)
echo "stopping LiveDesk (honcho pid $pid)"
kill -TERM "$pid"
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || { rm -f .run/up.pid; echo "LiveDesk stopped."; exit 0; }
  sleep 0.2
done
echo "honcho did not stop within 20 s; killing it" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f .run/up.pid
exit 1
