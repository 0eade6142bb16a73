"""deploy/kong/kong.yml mirrors the nginx gateway: same routes, services, JWT and rate limits.

Kong is not installed here, so this checks the declarative file's shape against the
routes and defaults gateway/render.py renders for nginx (the tested gateway).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from livedesk.integration_support.gateway import RENDERER, REPO

KONG = REPO / "deploy" / "kong" / "kong.yml"
DEV_KEY = REPO / "libs/platform/src/livedesk/platform/auth/dev_public_key.pem"


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("livedesk_gateway_render", RENDERER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kong() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(KONG.read_text())
    return loaded


def _routes(kong: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Path -> (upstream name without '.upstream', route); each path in one route only."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for service in kong["services"]:
        upstream = service["host"].removesuffix(".upstream")
        for route in service["routes"]:
            for path in route["paths"]:
                assert path not in found, f"{path} is in two Kong routes"
                found[path] = (upstream, route)
    return found


def _plugin(route: dict[str, Any], name: str) -> dict[str, Any] | None:
    plugins = [p for p in route.get("plugins", []) if p["name"] == name]
    assert len(plugins) <= 1, (route["name"], name)
    return plugins[0]["config"] if plugins else None


def _per_second(rate: str) -> int:
    number, unit = rate.split("r/")
    return int(number) if unit == "s" else max(1, int(number) // 60)


def test_every_nginx_route_has_a_kong_route_to_the_same_service_and_auth(
    kong: dict[str, Any],
) -> None:
    render = _renderer()
    defaults = render.load_settings({})
    template = (REPO / "gateway" / "nginx.conf.template").read_text()
    assert "location = /ws " in template
    assert "location = /healthz " in template
    routes = _routes(kong)
    assert kong["_format_version"] == "3.0"

    # path -> (upstream, token: None | "access" | "ws_ticket", per-IP rate)
    expected: dict[str, tuple[str, str | None, str]] = {
        "/ws": ("chat", "ws_ticket", defaults.rate_per_ip),
        **{p: ("chat", None, defaults.rate_auth) for p in render.PUBLIC_CHAT_ROUTES},
        **{p: (u, None, defaults.rate_per_ip) for p, u in render.PUBLIC_DOCUMENTS.items()},
        **{p: (u, "access", defaults.rate_per_token) for p, u in render.PROTECTED_PREFIXES},
    }
    for path, (upstream, token, rate) in expected.items():
        assert path in routes, f"no Kong route for nginx's {path}"
        service, route = routes[path]
        assert service == upstream, path
        assert route["strip_path"] is False, path  # services see the client's path
        jwt = _plugin(route, "jwt")
        limit = _plugin(route, "rate-limiting")
        assert limit is not None, path
        assert limit["second"] == _per_second(rate), path
        assert limit["error_code"] == 429
        if token is None:
            assert jwt is None, f"{path} is public in nginx"
            assert limit["limit_by"] == "ip", path
            continue
        assert jwt is not None, f"{path} needs a token in nginx"
        assert jwt["key_claim_name"] == "kid"
        assert "exp" in jwt["claims_to_verify"]
        assert jwt["run_on_preflight"] is False  # preflights pass without a token, as in nginx
        if token == "access":
            assert jwt["header_names"] == ["authorization"]
            assert jwt["uri_param_names"] == []  # no access tokens in URLs (or logs)
            assert (limit["limit_by"], limit["header_name"]) == ("header", "Authorization")
        else:
            assert jwt["uri_param_names"] == ["ticket"]
            assert limit["limit_by"] == "ip"
    assert routes["/healthz"][1]["plugins"][0]["name"] == "request-termination"
    assert set(routes) == {*expected, "/healthz"}


def test_kong_verifies_es256_with_the_same_keys_and_balances_like_nginx(
    kong: dict[str, Any],
) -> None:
    render = _renderer()
    defaults = render.load_settings({})
    (consumer,) = kong["consumers"]
    secrets = {s["key"]: s for s in consumer["jwt_secrets"]}
    assert set(secrets) == set(defaults.public_keys)  # one secret per kid
    for secret in secrets.values():
        assert secret["algorithm"] == "ES256"
    assert secrets["dev"]["rsa_public_key"].strip() == DEV_KEY.read_text().strip()

    upstreams = {u["name"]: u for u in kong["upstreams"]}
    for name, servers in [
        ("chat.upstream", defaults.chat_upstreams),
        ("analytics.upstream", defaults.analytics_upstreams),
    ]:
        assert upstreams[name]["algorithm"] == "least-connections"
        assert [t["target"] for t in upstreams[name]["targets"]] == list(servers)
    ws = next(s for s in kong["services"] if any(r["paths"] == ["/ws"] for r in s["routes"]))
    assert ws["read_timeout"] == _milliseconds(render.load_settings({}).ws_timeout)

    everywhere = {p["name"]: p["config"] for p in kong["plugins"]}
    assert everywhere["correlation-id"]["header_name"] == "X-Request-ID"
    assert everywhere["request-size-limiting"]["allowed_payload_size"] == 64
    assert defaults.max_body == "64k"
    assert everywhere["cors"]["origins"] == list(defaults.cors_origins)


def _milliseconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match is not None
    factor = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}[match.group(2)]
    return int(match.group(1)) * factor


def test_kong_file_is_plain_yaml_without_anchors() -> None:
    # decK and some Kong versions refuse YAML anchors/aliases: keep every entry explicit.
    assert not re.search(r"(^|\s)[&*][A-Za-z_]", KONG.read_text())
