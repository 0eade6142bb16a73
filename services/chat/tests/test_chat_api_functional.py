"""Chat's REST API through a real server, database and Redis; responses checked against OpenAPI."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import jwt
import pytest

from livedesk.chat.service import OPENAPI_TEXT, create_app
from livedesk.chat.testing import PASSWORD, Chat
from livedesk.platform.bus import decode, payload_of
from livedesk.platform.testing.openapi import OpenApi

pytestmark = pytest.mark.integration

SPEC = OpenApi(OPENAPI_TEXT)
ONE = "/api/v1/conversations/{conversation_id}"


async def _json(chat: Chat, method: str, template: str, path: str, **kw: Any) -> tuple[int, Any]:
    """Call the API and check the response against the OpenAPI document."""
    resp = await chat.client.request(method, path, **kw)
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    SPEC.check(method, template, resp.status, body)
    return resp.status, body


# --- authentication ---------------------------------------------------------


async def test_login_refresh_rotation_and_reuse_detection(chat: Chat) -> None:
    status, body = await _json(
        chat,
        "POST",
        "/api/v1/auth/login",
        "/api/v1/auth/login",
        json={"tenant": "acme", "email": "AGENT@acme.test", "password": PASSWORD},
    )
    assert status == 200
    assert body["user"]["role"] == "agent"
    status, me = await _json(
        chat, "GET", "/api/v1/me", "/api/v1/me", headers=chat.auth(body["access_token"])
    )
    assert status == 200
    assert me["id"] == str(chat.org.agent.id)
    assert len(me["team_ids"]) == 1

    first = body["refresh_token"]
    status, renewed = await _json(
        chat, "POST", "/api/v1/auth/refresh", "/api/v1/auth/refresh", json={"refresh_token": first}
    )
    assert status == 200
    # Using the old one again means it leaked: the whole family is revoked.
    status, _ = await _json(
        chat, "POST", "/api/v1/auth/refresh", "/api/v1/auth/refresh", json={"refresh_token": first}
    )
    assert status == 401
    status, _ = await _json(
        chat,
        "POST",
        "/api/v1/auth/refresh",
        "/api/v1/auth/refresh",
        json={"refresh_token": renewed["refresh_token"]},
    )
    assert status == 401


@pytest.mark.parametrize(
    "creds",
    [
        {"tenant": "acme", "email": "agent@acme.test", "password": "wrong password"},
        {"tenant": "globex", "email": "agent@acme.test", "password": PASSWORD},
        {"tenant": "acme", "email": "nobody@acme.test", "password": PASSWORD},
    ],
    ids=["password", "tenant", "email"],
)
async def test_bad_credentials_are_401(chat: Chat, creds: dict[str, str]) -> None:
    status, body = await _json(chat, "POST", "/api/v1/auth/login", "/api/v1/auth/login", json=creds)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


async def test_deactivated_agent_cannot_log_in_or_refresh(chat: Chat) -> None:
    status, body = await _json(
        chat,
        "POST",
        "/api/v1/auth/login",
        "/api/v1/auth/login",
        json={"tenant": "acme", "email": "agent@acme.test", "password": PASSWORD},
    )
    status, _ = await _json(
        chat,
        "PATCH",
        "/api/v1/agents/{agent_id}",
        f"/api/v1/agents/{chat.org.agent.id}",
        json={"active": False},
        headers=chat.auth(chat.token()),
    )
    assert status == 200
    status, _ = await _json(
        chat,
        "POST",
        "/api/v1/auth/refresh",
        "/api/v1/auth/refresh",
        json={"refresh_token": body["refresh_token"]},
    )
    assert status == 401
    status, _ = await _json(
        chat,
        "POST",
        "/api/v1/auth/login",
        "/api/v1/auth/login",
        json={"tenant": "acme", "email": "agent@acme.test", "password": PASSWORD},
    )
    assert status == 401


def _unsigned(payload: dict[str, Any]) -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'kid': 'dev', 'typ': 'JWT'})}.{b64(payload)}."


async def test_bad_tokens_are_refused(chat: Chat) -> None:
    admin = chat.org.admin
    now = int(dt.datetime.now(dt.UTC).timestamp())
    key = chat.issuer._key  # the real signing key, to forge otherwise-valid tokens
    claims = {
        "iss": "livedesk",
        "aud": "livedesk-api",
        "sub": str(admin.id),
        "tid": str(admin.tenant_id),
        "role": "admin",
        "typ": "access",
        "iat": now,
        "exp": now + 60,
    }
    bad = {
        "expired": chat.token(ttl=dt.timedelta(seconds=-60)),
        "wrong-audience": jwt.encode(
            {**claims, "aud": "other"}, key, algorithm="ES256", headers={"kid": "dev"}
        ),
        "alg-none": _unsigned(claims),
        "refresh-typed": chat.token(token_type="refresh"),
        "ticket-typed": chat.token(token_type="ws_ticket"),
        "garbage": "not.a.token",
    }
    for name, token in bad.items():
        status, body = await _json(
            chat, "GET", "/api/v1/inboxes", "/api/v1/inboxes", headers=chat.auth(token)
        )
        assert status == 401, name
        assert body["error"]["code"] == "unauthorized"
    resp = await chat.client.get("/api/v1/inboxes")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


# --- tenant isolation and roles -----------------------------------------------


async def test_admin_endpoints_refuse_agents_and_visitors(chat: Chat) -> None:
    session = await chat.visitor(headers={"Origin": "https://shop.example"})
    for token in (chat.token(chat.org.agent), session["access_token"]):
        for method, template, path in (
            ("GET", "/api/v1/inboxes", "/api/v1/inboxes"),
            ("GET", "/api/v1/agents", "/api/v1/agents"),
            ("GET", "/api/v1/teams", "/api/v1/teams"),
        ):
            status, _ = await _json(chat, method, template, path, headers=chat.auth(token))
            assert status == 403, (method, path)


async def test_admin_sees_only_its_own_tenant(chat: Chat) -> None:
    status, body = await _json(
        chat, "GET", "/api/v1/agents", "/api/v1/agents", headers=chat.auth(chat.token())
    )
    assert status == 200
    assert {u["tenant_id"] for u in body["items"]} == {str(chat.org.tenant.id)}
    stranger_agent = chat.stranger.agent.id
    status, _ = await _json(
        chat,
        "PATCH",
        "/api/v1/agents/{agent_id}",
        f"/api/v1/agents/{stranger_agent}",
        json={"display_name": "hijacked"},
        headers=chat.auth(chat.token()),
    )
    assert status == 404


async def test_visitor_cannot_read_another_visitors_conversation(chat: Chat) -> None:
    alice, bob = await chat.visitor(), await chat.visitor()
    conversation = await chat.conversation(alice["access_token"])
    for path in (f"/api/v1/conversations/{conversation['id']}",):
        status, _ = await _json(chat, "GET", ONE, path, headers=chat.auth(bob["access_token"]))
        assert status == 404
    status, _ = await _json(
        chat,
        "POST",
        ONE + "/messages",
        f"/api/v1/conversations/{conversation['id']}/messages",
        json={"body": "let me in"},
        headers=chat.auth(bob["access_token"]),
    )
    assert status == 404
    status, listed = await _json(
        chat,
        "GET",
        "/api/v1/conversations",
        "/api/v1/conversations",
        headers=chat.auth(bob["access_token"]),
    )
    assert listed["items"] == []


async def test_agent_cannot_see_another_tenants_conversation(chat: Chat) -> None:
    visitor = await chat.visitor(chat.stranger.inbox)
    conversation = await chat.conversation(visitor["access_token"])
    for user in (chat.org.agent, chat.org.admin):
        status, _ = await _json(
            chat,
            "GET",
            ONE,
            f"/api/v1/conversations/{conversation['id']}",
            headers=chat.auth(chat.token(user)),
        )
        assert status == 404


async def test_agents_see_their_teams_queue_and_only_the_assignee_writes(chat: Chat) -> None:
    visitor = await chat.visitor()
    conversation = await chat.conversation(visitor["access_token"])
    path = f"/api/v1/conversations/{conversation['id']}"
    in_team, outside = chat.token(chat.org.agent), chat.token(chat.org.other_agent)
    assert (await _json(chat, "GET", ONE, path, headers=chat.auth(in_team)))[0] == 200
    assert (await _json(chat, "GET", ONE, path, headers=chat.auth(outside)))[0] == 404
    status, body = await _json(
        chat,
        "POST",
        ONE + "/messages",
        path + "/messages",
        json={"body": "hi"},
        headers=chat.auth(in_team),
    )
    assert status == 403
    assert body["error"]["code"] == "forbidden"

    await chat.store.apply_assigned(
        uuid.UUID(conversation["id"]), chat.org.agent.id, None, dt.datetime.now(dt.UTC)
    )
    status, message = await _json(
        chat,
        "POST",
        ONE + "/messages",
        path + "/messages",
        json={"body": "hello, I am Al"},
        headers=chat.auth(in_team),
    )
    assert status == 201
    assert message["sender_kind"] == "agent"


# --- widget -------------------------------------------------------------------


async def test_widget_session_checks_origin(chat: Chat) -> None:
    body = {"widget_key": chat.org.inbox.widget_key}
    status, _ = await _json(
        chat,
        "POST",
        "/api/v1/widget/sessions",
        "/api/v1/widget/sessions",
        json=body,
        headers={"Origin": "https://evil.example"},
    )
    assert status == 403
    status, session = await _json(
        chat,
        "POST",
        "/api/v1/widget/sessions",
        "/api/v1/widget/sessions",
        json={**body, "name": "Vi", "email": "vi@example.com"},
        headers={"Origin": "https://shop.example"},
    )
    assert status == 201
    assert session["visitor"]["name"] == "Vi"
    status, _ = await _json(
        chat,
        "POST",
        "/api/v1/widget/sessions",
        "/api/v1/widget/sessions",
        json={"widget_key": "wk_no-such-key-exists"},
    )
    assert status == 401


# --- conversations and messages -------------------------------------------------


async def test_conversation_and_messages_commit_with_their_events(chat: Chat) -> None:
    visitor = await chat.visitor()
    token = visitor["access_token"]
    conversation = await chat.conversation(token, "order #42")
    SPEC.check("POST", "/api/v1/conversations", 201, conversation)
    assert conversation["status"] == "queued"
    assert conversation["team_id"] is not None  # the inbox routes to its team

    path = f"/api/v1/conversations/{conversation['id']}/messages"
    seqs = []
    for i in range(5):
        status, message = await _json(
            chat,
            "POST",
            ONE + "/messages",
            path,
            json={"body": f"m{i}", "client_msg_id": f"c{i}"},
            headers=chat.auth(token),
        )
        assert status == 201
        seqs.append(message["seq"])
    assert seqs == [1, 2, 3, 4, 5]

    # A retry returns the original, creates nothing, and consumes no seq.
    status, again = await _json(
        chat,
        "POST",
        ONE + "/messages",
        path,
        json={"body": "m2 (retry)", "client_msg_id": "c2"},
        headers=chat.auth(token),
    )
    assert status == 200
    assert (again["seq"], again["body"]) == (3, "m2")
    status, sixth = await _json(
        chat, "POST", ONE + "/messages", path, json={"body": "m5"}, headers=chat.auth(token)
    )
    assert sixth["seq"] == 6

    shard = chat.store.shards.primary(uuid.UUID(conversation["id"]))
    rows = await shard.fetch("SELECT routing_key, body FROM outbox ORDER BY id")
    kinds = [r["routing_key"] for r in rows]
    assert kinds == ["conversation.created"] + ["message.created"] * 6
    events = [decode(r["body"]) for r in rows]
    assert {e.conversation_id for e in events} == {conversation["id"]}
    assert [payload_of(e).seq for e in events[1:]] == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]


async def test_history_pages_by_seq(chat: Chat) -> None:
    visitor = await chat.visitor()
    token = visitor["access_token"]
    conversation = await chat.conversation(token)
    path = f"/api/v1/conversations/{conversation['id']}/messages"
    for i in range(12):
        await chat.client.post(path, json={"body": f"m{i}"}, headers=chat.auth(token))
    status, latest = await _json(
        chat, "GET", ONE + "/messages", path + "?limit=5", headers=chat.auth(token)
    )
    assert [m["seq"] for m in latest["items"]] == [8, 9, 10, 11, 12]
    assert latest["more"] is True
    status, older = await _json(
        chat, "GET", ONE + "/messages", path + "?limit=5&before_seq=8", headers=chat.auth(token)
    )
    assert [m["seq"] for m in older["items"]] == [3, 4, 5, 6, 7]
    status, forward = await _json(
        chat, "GET", ONE + "/messages", path + "?after_seq=10", headers=chat.auth(token)
    )
    assert [m["seq"] for m in forward["items"]] == [11, 12]
    assert forward["more"] is False
    status, _ = await _json(
        chat, "GET", ONE + "/messages", path + "?after_seq=1&before_seq=5", headers=chat.auth(token)
    )
    assert status == 422


async def test_lifecycle_resolve_reopen_and_csat(chat: Chat) -> None:
    visitor = await chat.visitor()
    token = visitor["access_token"]
    conversation = await chat.conversation(token)
    base = f"/api/v1/conversations/{conversation['id']}"
    admin = chat.auth(chat.token())
    status, _ = await _json(
        chat, "POST", ONE + "/csat", base + "/csat", json={"rating": 5}, headers=chat.auth(token)
    )
    assert status == 409  # not resolved yet
    status, resolved = await _json(chat, "POST", ONE + "/resolve", base + "/resolve", headers=admin)
    assert (status, resolved["status"]) == (200, "resolved")
    status, _ = await _json(chat, "POST", ONE + "/resolve", base + "/resolve", headers=admin)
    assert status == 409
    status, _ = await _json(
        chat,
        "POST",
        ONE + "/csat",
        base + "/csat",
        json={"rating": 4, "comment": "quick"},
        headers=chat.auth(token),
    )
    assert status == 201
    status, _ = await _json(
        chat, "POST", ONE + "/csat", base + "/csat", json={"rating": 1}, headers=chat.auth(token)
    )
    assert status == 409  # once
    # A visitor writing into a resolved conversation reopens it.
    status, message = await _json(
        chat,
        "POST",
        ONE + "/messages",
        base + "/messages",
        json={"body": "one more thing"},
        headers=chat.auth(token),
    )
    assert status == 201
    status, now = await _json(chat, "GET", ONE, base, headers=chat.auth(token))
    assert now["status"] == "queued"
    assert now["last_seq"] == message["seq"]


async def test_read_marker_only_moves_forward(chat: Chat) -> None:
    visitor = await chat.visitor()
    token = visitor["access_token"]
    conversation = await chat.conversation(token)
    base = f"/api/v1/conversations/{conversation['id']}"
    for i in range(3):
        await chat.client.post(base + "/messages", json={"body": f"{i}"}, headers=chat.auth(token))
    read = [
        (
            await _json(
                chat,
                "POST",
                ONE + "/read",
                base + "/read",
                json={"seq": seq},
                headers=chat.auth(token),
            )
        )[1]["last_read_seq"]
        for seq in (2, 1, 99)
    ]
    assert read == [2, 2, 3]  # never backwards, never past the last message


async def test_listing_is_paginated_and_scoped(chat: Chat) -> None:
    visitor = await chat.visitor()
    ids = [(await chat.conversation(visitor["access_token"]))["id"] for _ in range(5)]
    admin = chat.auth(chat.token())
    status, page1 = await _json(
        chat, "GET", "/api/v1/conversations", "/api/v1/conversations?limit=3", headers=admin
    )
    assert [c["id"] for c in page1["items"]] == ids[::-1][:3]
    status, page2 = await _json(
        chat,
        "GET",
        "/api/v1/conversations",
        f"/api/v1/conversations?limit=3&cursor={page1['next_cursor']}",
        headers=admin,
    )
    assert [c["id"] for c in page2["items"]] == ids[::-1][3:]
    assert page2["next_cursor"] is None
    status, _ = await _json(
        chat, "GET", "/api/v1/conversations", "/api/v1/conversations?status=open", headers=admin
    )
    assert status == 422


# --- admin management -----------------------------------------------------------


async def test_admin_manages_inboxes_agents_and_teams(chat: Chat) -> None:
    admin = chat.auth(chat.token())
    status, inbox = await _json(
        chat,
        "POST",
        "/api/v1/inboxes",
        "/api/v1/inboxes",
        json={
            "name": "App",
            "allowed_origins": ["https://app.example"],
            "required_skills": ["billing"],
        },
        headers=admin,
    )
    assert status == 201
    assert inbox["widget_key"].startswith("wk_")
    status, _ = await _json(
        chat,
        "PATCH",
        "/api/v1/inboxes/{inbox_id}",
        f"/api/v1/inboxes/{inbox['id']}",
        json={"name": "Mobile app"},
        headers=admin,
    )
    assert status == 200
    status, agent = await _json(
        chat,
        "POST",
        "/api/v1/agents",
        "/api/v1/agents",
        json={"email": "new@acme.example.com", "display_name": "Nu", "password": "long enough pw"},
        headers=admin,
    )
    assert status == 201
    status, _ = await _json(
        chat,
        "POST",
        "/api/v1/agents",
        "/api/v1/agents",
        json={"email": "new@acme.example.com", "display_name": "Nu2", "password": "long enough pw"},
        headers=admin,
    )
    assert status == 409
    status, team = await _json(
        chat, "POST", "/api/v1/teams", "/api/v1/teams", json={"name": "Billing"}, headers=admin
    )
    assert status == 201
    status, team = await _json(
        chat,
        "PUT",
        "/api/v1/teams/{team_id}/members",
        f"/api/v1/teams/{team['id']}/members",
        json={"user_ids": [agent["id"]]},
        headers=admin,
    )
    assert team["user_ids"] == [agent["id"]]
    status, _ = await _json(
        chat,
        "PUT",
        "/api/v1/teams/{team_id}/members",
        f"/api/v1/teams/{team['id']}/members",
        json={"user_ids": [str(chat.stranger.agent.id)]},
        headers=admin,
    )
    assert status == 404


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"body": ""}', "application/json", 422),
        (b'{"body": "x", "extra": 1}', "application/json", 422),
        (b'{"body": 5}', "application/json", 422),
        (b"[]", "application/json", 422),
        (b"body=x", "application/x-www-form-urlencoded", 415),
        (b'{"body": "' + b"x" * 70_000 + b'"}', "application/json", 413),
    ],
    ids=["malformed", "empty", "unknown-field", "wrong-type", "array", "form", "huge"],
)
async def test_bad_bodies_are_4xx_json(
    chat: Chat, body: bytes, content_type: str, status: int
) -> None:
    visitor = await chat.visitor()
    conversation = await chat.conversation(visitor["access_token"])
    path = f"/api/v1/conversations/{conversation['id']}/messages"
    resp = await chat.client.post(
        path,
        data=body,
        headers={**chat.auth(visitor["access_token"]), "Content-Type": content_type},
    )
    assert resp.status == status
    assert (await resp.json())["error"]["code"]


async def test_unknown_paths_ids_and_methods_are_json_errors(chat: Chat) -> None:
    admin = chat.auth(chat.token())
    for path, status in (
        ("/api/v1/nothing-here", 404),
        ("/api/v1/conversations/not-a-uuid", 404),
        (f"/api/v1/conversations/{uuid.uuid4()}", 404),
    ):
        resp = await chat.client.get(path, headers=admin)
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == "not_found"
    resp = await chat.client.delete("/api/v1/conversations", headers=admin)
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_readyz_healthz_and_draining(chat: Chat) -> None:
    status, body = await _json(chat, "GET", "/readyz", "/readyz")
    assert (status, body["status"]) == (200, "ready")
    status, _ = await _json(chat, "GET", "/healthz", "/healthz")
    assert status == 200


# --- the document itself -----------------------------------------------------------


def test_openapi_documents_exactly_the_routes_served(chat: Chat) -> None:
    served = {
        (route.method, route.resource.canonical)
        for route in chat.client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == set(SPEC.operations())


async def test_openapi_is_served(chat: Chat) -> None:
    resp = await chat.client.get("/api/v1/openapi.yaml")
    assert resp.status == 200
    assert await resp.text() == OPENAPI_TEXT


def test_create_app_is_importable() -> None:
    assert callable(create_app)


async def test_assignment_outage_is_a_503_not_a_crash(chat: Chat) -> None:
    status, body = await _json(
        chat,
        "GET",
        "/api/v1/agents/{agent_id}/routing",
        f"/api/v1/agents/{chat.org.agent.id}/routing",
        headers=chat.auth(chat.token()),
    )
    assert status == 503
    assert body["error"]["code"] == "unavailable"
    visitor = await chat.visitor()
    conversation = await chat.conversation(visitor["access_token"])
    status, _ = await _json(
        chat,
        "POST",
        ONE + "/transfer",
        f"/api/v1/conversations/{conversation['id']}/transfer",
        json={"agent_id": str(chat.org.agent.id), "team_id": str(uuid.uuid4())},
        headers=chat.auth(chat.token()),
    )
    assert status == 422  # exactly one target
