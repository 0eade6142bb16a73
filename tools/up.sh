#!/usr/bin/env bash
# `make up`: all of LiveDesk on this machine, under honcho (see the Procfile).
#
#   tools/up.sh            foreground; Ctrl-C stops everything cleanly
#   tools/up.sh --detach   in the background (log: .run/livedesk.log); `make down` stops it
#
# Checks the servers, creates the chat database with its migrations and the demo tenant,
# starts two chat pods, assignment, analytics (chDB) and the gateway (nginx) on
# 127.0.0.1:8080, waits until all are ready, gives the demo agents a routing profile,
# then prints the URLs and the demo credentials.
set -euo pipefail
cd "$(dirname "$0")/.."

detach=0
if [[ "${1:-}" == "--detach" ]]; then detach=1; fi
GATEWAY_URL=http://127.0.0.1:8080
PORTS=(8080 8081 8000 8010 8001 50051 8002)
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tools/check_servers.sh || {
  echo "make up: start the missing servers with the commands above, then run make up again." >&2
  exit 1
}
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  echo "MISSING: nginx with its njs module. Install it with:" >&2
  echo "    apt-get install nginx libnginx-mod-http-js" >&2
  exit 1
fi
mkdir -p .run
if [[ -f .run/up.pid ]] && kill -0 "$(cat .run/up.pid)" 2>/dev/null; then
  echo "make up: LiveDesk is already running (pid $(cat .run/up.pid)); make down stops it." >&2
  exit 1
fi
for port in "${PORTS[@]}"; do
  if listening "$port"; then
    echo "make up: port $port is already in use (another LiveDesk? make down stops a detached one)." >&2
    exit 1
  fi
done

echo "==> chat database, migrations and the demo tenant (assignment and analytics migrate at start)"
DATABASE_URL="${CHAT_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/livedesk_chat}" \
  python -m livedesk.chat.admin_cli seed-demo \
  --allowed-origin "$GATEWAY_URL" --allowed-origin http://localhost:8080 > .run/demo.json
python gateway/render.py check

echo "==> starting chat x2, assignment, analytics and the gateway (honcho, see Procfile)"
export LOG_FORMAT="${LOG_FORMAT:-console}" CHDB_PATH="${CHDB_PATH:-.run/analytics/chdb}"
export SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-4}"  # honcho kills what is still running after 5 s
# honcho gets its own session: Ctrl-C reaches this script only, which stops honcho once,
# and honcho stops every service with one SIGTERM (a second signal would skip their drain).
if [[ $detach == 1 ]]; then
  setsid honcho start -f Procfile > .run/livedesk.log 2>&1 < /dev/null &
else
  setsid honcho start -f Procfile &
fi
honcho_pid=$!
echo "$honcho_pid" > .run/up.pid

stop() {
  trap - INT TERM
  echo "==> stopping LiveDesk"
  kill -TERM "$honcho_pid" 2>/dev/null || true
  wait "$honcho_pid" 2>/dev/null || true
  rm -f .run/up.pid
  echo "==> LiveDesk stopped"
  exit 0
}
trap stop INT TERM

if ! python - "$honcho_pid" <<'PY'
"""Wait until every service is ready, set the demo agents' routing, print the banner."""
import json, os, sys, time, urllib.error, urllib.request

honcho = int(sys.argv[1])
gateway = "http://127.0.0.1:8080"
checks = {
    "gateway": f"{gateway}/healthz",
    "chat-a": "http://127.0.0.1:8000/readyz",
    "chat-b": "http://127.0.0.1:8010/readyz",
    "assignment": "http://127.0.0.1:8001/readyz",
    "analytics": "http://127.0.0.1:8002/readyz",
    "chat through the gateway": f"{gateway}/api/v1/openapi.yaml",
}


def call(method, url, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read() or b"null") if "json" in resp.headers.get("Content-Type", "") else None


deadline = time.monotonic() + 120
waiting = dict(checks)
while waiting:
    try:
        os.kill(honcho, 0)
    except ProcessLookupError:
        sys.exit("make up: a service failed to start (see its output above)")
    for name, url in list(waiting.items()):
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    del waiting[name]
        except (urllib.error.URLError, OSError):
            pass
    if time.monotonic() > deadline:
        sys.exit(f"make up: not ready after 120 s: {', '.join(waiting)}")
    time.sleep(0.2)

demo = json.load(open(".run/demo.json"))
_, login = call("POST", f"{gateway}/api/v1/auth/login",
                {"tenant": demo["tenant"], "email": "admin@demo.livedesk.dev", "password": demo["password"]})
for email, user in demo["users"].items():
    if user["role"] == "agent":
        call("PUT", f"{gateway}/api/v1/agents/{user['id']}/routing",
             {"capacity": 5, "team_ids": [demo["team_id"]]}, login["access_token"])

users = "\n".join(f"      {email:<28} {u['role']}" for email, u in demo["users"].items())
print(f"""
================================================================================
 LiveDesk is up: {gateway}
   REST API      {gateway}/api/v1/...   (OpenAPI: {gateway}/api/v1/openapi.yaml)
   WebSocket     ws://127.0.0.1:8080/ws?ticket=...   (docs/protocol.md)
   reports       {gateway}/api/v1/reports/...
   gateway status http://127.0.0.1:8081/nginx_status
   services      chat http://127.0.0.1:8000 and :8010, assignment :8001 (gRPC :50051),
                 analytics :8002 — each with /healthz, /readyz, /metrics
 Demo tenant "{demo['tenant']}", password "{demo['password']}" for everyone:
{users}
   widget key    {demo['widget_key']}
   sign in:      curl -s {gateway}/api/v1/auth/login -H 'content-type: application/json' \\
                   -d '{{"tenant": "demo", "email": "alice@demo.livedesk.dev", "password": "{demo['password']}"}}'
================================================================================
""", flush=True)
PY
then
  echo "make up: LiveDesk did not come up; stopping what started" >&2
  trap - INT TERM
  kill -TERM "$honcho_pid" 2>/dev/null || true
  wait "$honcho_pid" 2>/dev/null || true
  rm -f .run/up.pid
  exit 1
fi

if [[ $detach == 1 ]]; then
  trap - INT TERM
  echo "LiveDesk runs in the background (log: .run/livedesk.log); make down stops it."
  exit 0
fi
echo "Ctrl-C stops everything."
wait "$honcho_pid" || true
rm -f .run/up.pid
echo "make up: honcho exited (a service stopped; see above)" >&2
exit 1
