#!/usr/bin/env bash
# Checks that the servers LiveDesk needs answer, and says how to start any that do not.
set -uo pipefail

check() { # name host port how-to-start
  if (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then
    echo "ok: $1 at $2:$3"
  else
    echo "MISSING: $1 at $2:$3 is not answering. Start it with:" >&2
    echo "    $4" >&2
    missing=1
  fi
}

missing=0
check PostgreSQL 127.0.0.1 5432 \
  'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
check Redis 127.0.0.1 6379 \
  'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
check RabbitMQ 127.0.0.1 5672 'rabbitmq-server -detached'
exit "$missing"
