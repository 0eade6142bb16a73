"""Render the LiveDesk gateway's nginx configuration from GATEWAY_* variables, and run nginx.

Usage::

    python gateway/render.py render   # write the config into GATEWAY_RUN_DIR, print its path
    python gateway/render.py check    # render, then `nginx -t`
    python gateway/render.py run      # render, then exec nginx in the foreground

Standard library only, so it runs with any Python 3.11 next to nginx (an init
container, a CI job or `make up`). Every variable is listed in docs/gateway.md;
an invalid one stops the renderer with exit code 2 and a message naming it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "GatewaySettings", "load_settings", "main", "render"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE = HERE / "nginx.conf.template"
NJS_SOURCE = HERE / "njs" / "livedesk_auth.js"
DEV_PUBLIC_KEY = REPO / "libs/platform/src/livedesk/platform/auth/dev_public_key.pem"
NJS_MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_http_js_module.so",
    "/etc/nginx/modules/ngx_http_js_module.so",
    "/usr/local/nginx/modules/ngx_http_js_module.so",
    "/usr/lib64/nginx/modules/ngx_http_js_module.so",
)
# Routes that take no access token (chat checks what they need itself).
PUBLIC_CHAT_ROUTES = (
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/widget/sessions",
)
PUBLIC_DOCUMENTS = {
    "/api/v1/openapi.yaml": "chat",
    "/api/v1/reports/openapi.yaml": "analytics",
}
# Prefix → upstream, most specific first; everything else under /api/v1/ goes to chat.
PROTECTED_PREFIXES = (
    ("/api/v1/reports/", "analytics"),
    ("/api/v1/search/", "analytics"),
    ("/api/v1/", "chat"),
)
# DER of the P-256 curve OID (1.2.840.10045.3.1.7), present in every P-256 SPKI.
_P256_OID = bytes.fromhex("06082a8648ce3d030107")
_RATE = re.compile(r"^\d+r/[sm]$")
_SIZE = re.compile(r"^\d+[kKmM]?$")
_TIME = re.compile(r"^\d+(ms|s|m|h)?$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?$")
_CIDR = re.compile(r"^[0-9A-Fa-f.:]+(/\d{1,3})?$")


class ConfigError(Exception):
    """A GATEWAY_* (or JWT_*) variable is missing or invalid; the message names it."""


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway reads from its environment (docs/gateway.md)."""

    listen: str
    chat_upstreams: tuple[str, ...]
    analytics_upstreams: tuple[str, ...]
    run_dir: Path
    workers: str
    worker_connections: int
    access_log: str
    error_log_level: str
    rate_per_ip: str
    burst_per_ip: int
    rate_per_token: str
    burst_per_token: int
    rate_auth: str
    burst_auth: int
    conn_per_ip: int
    max_body: str
    client_timeout: str
    connect_timeout: str
    upstream_timeout: str
    ws_timeout: str
    max_fails: int
    fail_timeout: str
    cors_origins: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    static_root: Path | None
    status_listen: str
    hsts: bool
    njs_module: str
    public_keys: Mapping[str, str]  # kid -> base64 SPKI DER
    auth_cache_ttl: int  # seconds a verified access token is remembered; 0 = never


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def _match(env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str]) -> str:
    value = _get(env, name, default)
    if not pattern.match(value):
        raise ConfigError(f"{name}: {value!r} is not valid (e.g. {default!r})")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _get(env, name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is not within {low}..{high}")
    return value


def _list(env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str]) -> list[str]:
    items = [i for i in re.split(r"[\s,]+", _get(env, name, default)) if i]
    for item in items:
        if not pattern.match(item):
            raise ConfigError(f"{name}: {item!r} is not valid")
    return items


def _spki_base64(kid: str, pem: str, source: str) -> str:
    match = re.search(r"-----BEGIN PUBLIC KEY-----(.+?)-----END PUBLIC KEY-----", pem, re.S)
    if match is None:
        raise ConfigError(f"{source}: key {kid!r} is not a PEM 'PUBLIC KEY' (SPKI)")
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True)
    except ValueError:
        raise ConfigError(f"{source}: key {kid!r} is not valid base64") from None
    if _P256_OID not in der:
        raise ConfigError(f"{source}: key {kid!r} is not an EC P-256 key")
    return base64.b64encode(der).decode()


def _public_keys(env: Mapping[str, str]) -> dict[str, str]:
    raw = env.get("JWT_PUBLIC_KEYS", "").strip()
    if not raw:
        if env.get("LIVEDESK_ENV", "dev") == "prod":
            raise ConfigError("JWT_PUBLIC_KEYS: required in prod")
        return {"dev": _spki_base64("dev", DEV_PUBLIC_KEY.read_text(), "dev key")}
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise ConfigError("JWT_PUBLIC_KEYS: not JSON") from None
    if not isinstance(parsed, dict) or not parsed:
        raise ConfigError('JWT_PUBLIC_KEYS: must be a non-empty JSON object {"kid": "PEM"}')
    return {str(k): _spki_base64(str(k), str(v), "JWT_PUBLIC_KEYS") for k, v in parsed.items()}


def _njs_module(env: Mapping[str, str]) -> str:
    given = env.get("GATEWAY_NJS_MODULE", "").strip()
    candidates = (given,) if given else NJS_MODULE_CANDIDATES
    for path in candidates:
        if Path(path).is_file():
            return path
    raise ConfigError(
        "GATEWAY_NJS_MODULE: nginx's njs module was not found "
        f"(looked at {', '.join(candidates)}); install it: "
        "apt-get install nginx libnginx-mod-http-js"
    )


def load_settings(env: Mapping[str, str]) -> GatewaySettings:
    """Read and check every variable; ConfigError names the first bad one."""
    static = _get(env, "GATEWAY_STATIC_ROOT", "")
    static_root = Path(static).resolve() if static else None
    if static_root is not None and not static_root.is_dir():
        static_root = None  # "static web assets under / when they exist"
    status_listen = _get(env, "GATEWAY_STATUS_LISTEN", "")
    if status_listen and not _HOSTPORT.match(status_listen):
        raise ConfigError(f"GATEWAY_STATUS_LISTEN: {status_listen!r} is not host:port")
    workers = _get(env, "GATEWAY_WORKERS", "auto")
    if workers != "auto" and not workers.isdigit():
        raise ConfigError(f"GATEWAY_WORKERS: {workers!r} is not 'auto' or a number")
    level = _get(env, "GATEWAY_ERROR_LOG_LEVEL", "warn")
    if level not in {"debug", "info", "notice", "warn", "error", "crit"}:
        raise ConfigError(f"GATEWAY_ERROR_LOG_LEVEL: {level!r} is not an nginx log level")
    chat = _list(env, "GATEWAY_CHAT_UPSTREAMS", "127.0.0.1:8000,127.0.0.1:8010", _HOSTPORT)
    analytics = _list(env, "GATEWAY_ANALYTICS_UPSTREAMS", "127.0.0.1:8002", _HOSTPORT)
    if not chat:
        raise ConfigError("GATEWAY_CHAT_UPSTREAMS: at least one host:port is needed")
    if not analytics:
        raise ConfigError("GATEWAY_ANALYTICS_UPSTREAMS: at least one host:port is needed")
    origins = _list(
        env, "GATEWAY_CORS_ORIGINS", "http://127.0.0.1:8080 http://localhost:8080", _ORIGIN
    )
    return GatewaySettings(
        listen=_match(env, "GATEWAY_LISTEN", "127.0.0.1:8080", _HOSTPORT),
        chat_upstreams=tuple(chat),
        analytics_upstreams=tuple(analytics),
        run_dir=Path(_get(env, "GATEWAY_RUN_DIR", str(REPO / ".run" / "gateway"))).resolve(),
        workers=workers,
        worker_connections=_int(env, "GATEWAY_WORKER_CONNECTIONS", 16384, 64, 1_000_000),
        access_log=_get(env, "GATEWAY_ACCESS_LOG", "/dev/stdout"),
        error_log_level=level,
        rate_per_ip=_match(env, "GATEWAY_RATE_PER_IP", "100r/s", _RATE),
        burst_per_ip=_int(env, "GATEWAY_BURST_PER_IP", 200, 0, 1_000_000),
        rate_per_token=_match(env, "GATEWAY_RATE_PER_TOKEN", "20r/s", _RATE),
        burst_per_token=_int(env, "GATEWAY_BURST_PER_TOKEN", 40, 0, 1_000_000),
        rate_auth=_match(env, "GATEWAY_RATE_AUTH", "5r/s", _RATE),
        burst_auth=_int(env, "GATEWAY_BURST_AUTH", 20, 0, 1_000_000),
        conn_per_ip=_int(env, "GATEWAY_CONN_PER_IP", 200, 1, 65535),
        max_body=_match(env, "GATEWAY_MAX_BODY", "64k", _SIZE),
        client_timeout=_match(env, "GATEWAY_CLIENT_TIMEOUT", "10s", _TIME),
        connect_timeout=_match(env, "GATEWAY_CONNECT_TIMEOUT", "2s", _TIME),
        upstream_timeout=_match(env, "GATEWAY_UPSTREAM_TIMEOUT", "30s", _TIME),
        ws_timeout=_match(env, "GATEWAY_WS_TIMEOUT", "3600s", _TIME),
        max_fails=_int(env, "GATEWAY_MAX_FAILS", 1, 0, 1000),
        fail_timeout=_match(env, "GATEWAY_FAIL_TIMEOUT", "10s", _TIME),
        cors_origins=tuple(origins),
        trusted_proxies=tuple(_list(env, "GATEWAY_TRUSTED_PROXIES", "", _CIDR)),
        static_root=static_root,
        status_listen=status_listen,
        hsts=_get(env, "GATEWAY_HSTS", "false").lower() in {"1", "true", "yes"},
        njs_module=_njs_module(env),
        public_keys=_public_keys(env),
        auth_cache_ttl=_int(env, "GATEWAY_AUTH_CACHE_TTL", 60, 0, 3600),
    )


def _access_log(value: str) -> str:
    """``off``, or a path with optional nginx options (``/dev/stdout buffer=64k flush=1s``)."""
    if value == "off":
        return "off"
    path, _, options = value.partition(" ")
    return f"{path} livedesk_json {options}".strip()


def _servers(s: GatewaySettings, upstreams: tuple[str, ...]) -> str:
    return "".join(
        f"        server {u} max_fails={s.max_fails} fail_timeout={s.fail_timeout};\n"
        for u in upstreams
    )


def _preflight_and_limits(s: GatewaySettings, *, auth_zone: bool) -> str:
    lines = [
        "            if ($request_method = OPTIONS) {",
        "                return 204;",
        "            }",
        f"            limit_conn conn_per_ip {s.conn_per_ip};",
    ]
    if auth_zone:
        lines.append(f"            limit_req zone=auth_per_ip burst={s.burst_auth} nodelay;")
    else:
        lines.append(f"            limit_req zone=per_ip burst={s.burst_per_ip} nodelay;")
    return "\n".join(lines) + "\n"


def _public_locations(s: GatewaySettings) -> str:
    out = []
    for path in PUBLIC_CHAT_ROUTES:
        out.append(
            f"        location = {path} {{\n"
            + _preflight_and_limits(s, auth_zone=True)
            + "            proxy_pass http://chat;\n        }\n"
        )
    for path, upstream in PUBLIC_DOCUMENTS.items():
        out.append(
            f"        location = {path} {{\n"
            + _preflight_and_limits(s, auth_zone=False)
            + f"            proxy_pass http://{upstream};\n        }}\n"
        )
    return "\n".join(out)


def _protected_locations(s: GatewaySettings) -> str:
    out = []
    for prefix, upstream in PROTECTED_PREFIXES:
        out.append(
            f"        location {prefix} {{\n"
            + _preflight_and_limits(s, auth_zone=False)
            + f"            limit_req zone=per_token burst={s.burst_per_token} nodelay;\n"
            "            auth_request /_auth/access;\n"
            "            auth_request_set $auth_error $sent_http_x_auth_error;\n"
            "            auth_request_set $auth_subject $sent_http_x_auth_subject;\n"
            "            auth_request_set $auth_tenant $sent_http_x_auth_tenant;\n"
            "            auth_request_set $auth_role $sent_http_x_auth_role;\n"
            "            auth_request_set $auth_cache $upstream_cache_status;\n"
            f"            proxy_pass http://{upstream};\n"
            "        }\n"
        )
    return "\n".join(out)


def worker_dir(s: GatewaySettings) -> Path:
    """Where nginx's workers write the JWT cache and reach the verifier's unix socket.

    The run dir when they can: a socket path must fit in 108 bytes, and workers started
    by root run as nobody, who cannot enter a private (0700) run dir such as pytest's
    tmp_path. Otherwise a directory in the temp dir, named after the run dir so two
    gateways never share one.
    """
    if len(str(s.run_dir)) < 90 and (os.geteuid() != 0 or _open_to_all(s.run_dir)):
        return s.run_dir
    digest = hashlib.sha256(str(s.run_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"livedesk-gw-{digest}"


def _open_to_all(path: Path) -> bool:
    """Every directory down to ``path`` can be entered by any user."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents) if p.exists())


def auth_socket(s: GatewaySettings) -> Path:
    """The unix socket of the in-process verifier behind the JWT cache."""
    return worker_dir(s) / "auth.sock"


def _keys_id(s: GatewaySettings) -> str:
    """A fingerprint of the key set: cached verifications made with other keys never match."""
    keys = json.dumps(dict(s.public_keys), sort_keys=True).encode()
    return hashlib.sha256(keys).hexdigest()[:16]


def _auth_cache(s: GatewaySettings) -> str:
    """The JWT cache (docs/gateway.md): http-level zone and the verifier's upstream."""
    if not s.auth_cache_ttl:
        return ""
    return (
        "    # Verified access tokens by the token's SHA-256, for GATEWAY_AUTH_CACHE_TTL at\n"
        "    # most and never past the token's exp (the verifier sends X-Accel-Expires).\n"
        f"    proxy_cache_path {worker_dir(s)}/auth_cache levels=1:2 keys_zone=auth_cache:10m\n"
        "                     max_size=256m inactive=5m use_temp_path=off;\n"
        "    js_set $auth_token_hash auth.tokenHash;\n"
        "    upstream auth_verifier {\n"
        f"        server unix:{auth_socket(s)};\n"
        "        keepalive 32;\n"
        "    }\n"
    )


def _auth_location(s: GatewaySettings) -> str:
    """/_auth/access: njs in-process, or through the cache to the verifier server."""
    if not s.auth_cache_ttl:
        return (
            "        location = /_auth/access {\n"
            "            internal;\n"
            "            js_content auth.access;\n"
            "        }\n"
        )
    return (
        "        location = /_auth/access {\n"
        "            internal;\n"
        "            proxy_pass http://auth_verifier;\n"
        "            proxy_method GET;\n"
        "            proxy_pass_request_body off;\n"
        '            proxy_set_header Content-Length "";\n'
        '            proxy_set_header Connection "";\n'
        "            proxy_cache auth_cache;\n"
        f'            proxy_cache_key "{_keys_id(s)}:$auth_token_hash";\n'
        "            # Only the verifier's X-Accel-Expires decides; a 401 has none: never cached.\n"
        "            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;\n"
        "            proxy_next_upstream off;\n"
        "        }\n"
    )


def _auth_server(s: GatewaySettings) -> str:
    if not s.auth_cache_ttl:
        return ""
    return (
        "\n    # The JWT verifier behind the cache: the same njs check, reached only over a\n"
        "    # unix socket from /_auth/access.\n"
        "    server {\n"
        f"        listen unix:{auth_socket(s)};\n"
        "        access_log off;\n"
        f"        set $auth_cache_ttl {s.auth_cache_ttl};\n"
        "        location = /_auth/access {\n"
        "            js_content auth.access;\n"
        "        }\n"
        "        location / {\n            return 404;\n        }\n"
        "    }\n"
    )


def _static_location(s: GatewaySettings) -> str:
    if s.static_root is None:
        return "        location / {\n            return 404;\n        }\n"
    return (
        "        location / {\n"
        f"            root {s.static_root};\n"
        "            index index.html;\n"
        "            try_files $uri $uri/ =404;\n"
        "        }\n"
    )


def _headers(s: GatewaySettings) -> str:
    lines = [
        "add_header X-Request-ID $req_id always;",
        "add_header X-Content-Type-Options nosniff always;",
        "add_header X-Frame-Options DENY always;",
        "add_header Referrer-Policy no-referrer always;",
        "add_header Content-Security-Policy $csp always;",
        "add_header Access-Control-Allow-Origin $cors_origin always;",
        "add_header Access-Control-Expose-Headers $cors_expose always;",
        "add_header Access-Control-Allow-Methods $cors_methods always;",
        "add_header Access-Control-Allow-Headers $cors_headers always;",
        "add_header Access-Control-Max-Age $cors_max_age always;",
        "add_header Vary Origin always;",
        "add_header Retry-After $retry_after always;",
    ]
    if s.hsts:
        lines.append('add_header Strict-Transport-Security "max-age=31536000" always;')
    return "# Rendered by gateway/render.py: the headers of every gateway response.\n" + "\n".join(
        lines
    )


def _real_ip(s: GatewaySettings) -> str:
    if not s.trusted_proxies:
        return ""
    lines = [f"    set_real_ip_from {p};" for p in s.trusted_proxies]
    lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"]
    return "\n".join(lines) + "\n"


def _status_server(s: GatewaySettings) -> str:
    if not s.status_listen:
        return ""
    return (
        "\n    # nginx's own counters, for nginx-prometheus-exporter; never public.\n"
        "    server {\n"
        f"        listen {s.status_listen};\n"
        "        access_log off;\n"
        "        location = /nginx_status {\n            stub_status;\n        }\n"
        "        location / {\n            return 404;\n        }\n"
        "    }\n"
    )


def render(s: GatewaySettings) -> Path:
    """Write nginx.conf, headers.conf and the njs modules into ``s.run_dir``; the conf path."""
    values = {
        "njs_module": s.njs_module,
        "workers": s.workers,
        "worker_connections": str(s.worker_connections),
        "run_dir": str(s.run_dir),
        "error_log_level": s.error_log_level,
        "client_timeout": s.client_timeout,
        "connect_timeout": s.connect_timeout,
        "upstream_timeout": s.upstream_timeout,
        "ws_timeout": s.ws_timeout,
        "max_body": s.max_body,
        "real_ip": _real_ip(s),
        "cors_entries": "".join(f'        "{o}" $http_origin;\n' for o in s.cors_origins),
        "rate_per_ip": s.rate_per_ip,
        "rate_per_token": s.rate_per_token,
        "rate_auth": s.rate_auth,
        "access_log": _access_log(s.access_log),
        "chat_servers": _servers(s, s.chat_upstreams),
        "analytics_servers": _servers(s, s.analytics_upstreams),
        "listen": s.listen,
        "conn_per_ip": str(s.conn_per_ip),
        "burst_per_ip": str(s.burst_per_ip),
        "public_locations": _public_locations(s),
        "protected_locations": _protected_locations(s),
        "static_location": _static_location(s),
        "status_server": _status_server(s),
        "auth_cache": _auth_cache(s),
        "auth_location": _auth_location(s),
        "auth_server": _auth_server(s),
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise ConfigError(f"template placeholders without a value: {sorted(set(left))}")
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "njs"):
        (s.run_dir / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(NJS_SOURCE, s.run_dir / "njs" / NJS_SOURCE.name)
    keys = json.dumps(dict(s.public_keys), indent=1, sort_keys=True)
    (s.run_dir / "njs" / "jwt_keys.js").write_text(
        "// Rendered by gateway/render.py: kid -> base64 SPKI DER of each ES256 public key.\n"
        f"export default {keys};\n"
    )
    (s.run_dir / "headers.conf").write_text(_headers(s) + "\n")
    if s.auth_cache_ttl:
        worker_dir(s).mkdir(mode=0o755, exist_ok=True)
        # nginx does not remove a socket left by a killed run, and would fail to bind it;
        # a running nginx's socket (`check` beside `make up`) must stay.
        if not _nginx_running(s.run_dir):
            auth_socket(s).unlink(missing_ok=True)
    conf = s.run_dir / "nginx.conf"
    conf.write_text(text)
    return conf


def _nginx_running(run_dir: Path) -> bool:
    """An nginx started with this run dir is alive (its pid file names a live process)."""
    try:
        os.kill(int((run_dir / "nginx.pid").read_text().strip()), 0)
    except PermissionError:
        return True  # alive, another user's
    except (OSError, ValueError):
        return False
    return True


def nginx_binary(env: Mapping[str, str]) -> str:
    """The nginx executable (GATEWAY_NGINX or nginx on PATH)."""
    name = _get(env, "GATEWAY_NGINX", "nginx")
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        raise ConfigError(
            f"GATEWAY_NGINX: {name!r} not found; install it: "
            "apt-get install nginx libnginx-mod-http-js"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "render"
    if command not in {"render", "check", "run"}:
        print(f"usage: {Path(__file__).name} render|check|run", file=sys.stderr)
        return 2
    env = os.environ
    try:
        settings = load_settings(env)
        conf = render(settings)
        nginx = nginx_binary(env) if command != "render" else ""
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    prefix = str(settings.run_dir)
    if command == "render":
        print(conf)
        return 0
    if command == "check":
        return subprocess.call([nginx, "-t", "-q", "-p", prefix, "-c", str(conf)])
    print(
        f"gateway: nginx on http://{settings.listen} -> chat {','.join(settings.chat_upstreams)}"
        f", analytics {','.join(settings.analytics_upstreams)}",
        file=sys.stderr,
        flush=True,
    )
    os.execv(nginx, [nginx, "-p", prefix, "-c", str(conf), "-g", "daemon off;"])


if __name__ == "__main__":
    raise SystemExit(main())
