"""Admin endpoints: inboxes, agents and teams of the admin's own tenant."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from livedesk.chat.access import authenticate
from livedesk.chat.api_auth import user_json
from livedesk.chat.api_support import CHAT_KEY, parse_body, path_uuid
from livedesk.chat.models import Inbox, Team
from livedesk.contracts.assignment.v1 import assignment_service_pb2 as pb
from livedesk.contracts.events.v1.common_pb2 import Shift

__all__ = ["add_admin_routes"]

Name = Annotated[str, Field(min_length=1, max_length=128)]
Origin = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^https?://[^/\s]+$")]
Skill = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
Password = Annotated[str, Field(min_length=10, max_length=1024)]


class NewInbox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    allowed_origins: Annotated[list[Origin], Field(max_length=50)] = []
    team_id: uuid.UUID | None = None
    required_skills: Annotated[list[Skill], Field(max_length=20)] = []


class InboxChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    allowed_origins: Annotated[list[Origin], Field(max_length=50)] | None = None
    required_skills: Annotated[list[Skill], Field(max_length=20)] | None = None


class NewAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: EmailStr
    display_name: Name
    role: Literal["agent", "admin"] = "agent"
    password: Password


class AgentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: Name | None = None
    role: Literal["agent", "admin"] | None = None
    active: bool | None = None
    password: Password | None = None


class NewTeam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


class TeamMembers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: Annotated[list[uuid.UUID], Field(max_length=1000)]


def inbox_json(inbox: Inbox) -> dict[str, object]:
    """The admin view of an inbox (with its widget key)."""
    return {
        "id": str(inbox.id),
        "name": inbox.name,
        "widget_key": inbox.widget_key,
        "allowed_origins": inbox.allowed_origins,
        "team_id": str(inbox.team_id) if inbox.team_id else None,
        "required_skills": inbox.required_skills,
    }


def team_json(team: Team, members: list[uuid.UUID]) -> dict[str, object]:
    """A team with its members."""
    return {"id": str(team.id), "name": team.name, "user_ids": [str(m) for m in members]}


async def list_inboxes(request: web.Request) -> web.Response:
    """GET /api/v1/inboxes."""
    admin = authenticate(request, "admin")
    inboxes = await request.app[CHAT_KEY].directory.inboxes(admin.tenant_id)
    return web.json_response({"items": [inbox_json(i) for i in inboxes]})


async def create_inbox(request: web.Request) -> web.Response:
    """POST /api/v1/inboxes."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, NewInbox)
    inbox = await request.app[CHAT_KEY].directory.create_inbox(
        admin.tenant_id,
        name=body.name,
        allowed_origins=body.allowed_origins,
        team_id=body.team_id,
        required_skills=body.required_skills,
    )
    return web.json_response(inbox_json(inbox), status=201)


async def update_inbox(request: web.Request) -> web.Response:
    """PATCH /api/v1/inboxes/{inbox_id}."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, InboxChange)
    inbox = await request.app[CHAT_KEY].directory.update_inbox(
        admin.tenant_id,
        path_uuid(request, "inbox_id"),
        name=body.name,
        allowed_origins=body.allowed_origins,
        required_skills=body.required_skills,
    )
    return web.json_response(inbox_json(inbox))


async def list_agents(request: web.Request) -> web.Response:
    """GET /api/v1/agents."""
    admin = authenticate(request, "admin")
    users = await request.app[CHAT_KEY].directory.users(admin.tenant_id)
    return web.json_response({"items": [user_json(u) for u in users]})


async def create_agent(request: web.Request) -> web.Response:
    """POST /api/v1/agents."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, NewAgent)
    user = await request.app[CHAT_KEY].directory.create_user(
        admin.tenant_id,
        email=str(body.email),
        display_name=body.display_name,
        role=body.role,
        password=body.password,
    )
    return web.json_response(user_json(user), status=201)


async def update_agent(request: web.Request) -> web.Response:
    """PATCH /api/v1/agents/{agent_id}."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, AgentChange)
    user = await request.app[CHAT_KEY].directory.update_user(
        admin.tenant_id,
        path_uuid(request, "agent_id"),
        display_name=body.display_name,
        role=body.role,
        active=body.active,
        password=body.password,
    )
    return web.json_response(user_json(user))


async def list_teams(request: web.Request) -> web.Response:
    """GET /api/v1/teams."""
    admin = authenticate(request, "admin")
    teams = await request.app[CHAT_KEY].directory.teams(admin.tenant_id)
    return web.json_response({"items": [team_json(t, m) for t, m in teams]})


async def create_team(request: web.Request) -> web.Response:
    """POST /api/v1/teams."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, NewTeam)
    team = await request.app[CHAT_KEY].directory.create_team(admin.tenant_id, body.name)
    return web.json_response(team_json(team, []), status=201)


async def set_team_members(request: web.Request) -> web.Response:
    """PUT /api/v1/teams/{team_id}/members."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, TeamMembers)
    team_id = path_uuid(request, "team_id")
    directory = request.app[CHAT_KEY].directory
    await directory.set_team_members(admin.tenant_id, team_id, body.user_ids)
    for team, members in await directory.teams(admin.tenant_id):
        if team.id == team_id:
            return web.json_response(team_json(team, members))
    raise web.HTTPNotFound(reason="no such team")


class RoutingShift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    start_minute: Annotated[int, Field(ge=0, le=1440)]
    end_minute: Annotated[int, Field(ge=0, le=1440)]


class RoutingProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity: Annotated[int, Field(ge=0, le=1000)]
    skills: Annotated[list[Skill], Field(max_length=50)] = []
    team_ids: Annotated[list[uuid.UUID], Field(max_length=50)] = []
    time_zone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    shifts: Annotated[list[RoutingShift], Field(max_length=100)] = []
    priority_weight: Annotated[int, Field(ge=-1000, le=1000)] = 0


_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _profile_json(profile: pb.AgentProfile) -> dict[str, object]:
    return {
        "agent_id": profile.agent_id,
        "status": {1: "online", 2: "away", 3: "offline"}.get(int(profile.status), "offline"),
        "capacity": profile.capacity,
        "skills": list(profile.skills),
        "team_ids": list(profile.team_ids),
        "time_zone": profile.time_zone,
        "shifts": [
            {
                "weekday": _WEEKDAYS[max(0, int(s.weekday) - 1)],
                "start_minute": s.start_minute,
                "end_minute": s.end_minute,
            }
            for s in profile.shifts
        ],
        "priority_weight": profile.priority_weight,
    }


async def get_routing(request: web.Request) -> web.Response:
    """GET /api/v1/agents/{agent_id}/routing: the agent's routing profile (assignment)."""
    admin = authenticate(request, "admin")
    ctx = request.app[CHAT_KEY]
    agent = await ctx.directory.user(admin.tenant_id, path_uuid(request, "agent_id"))
    profile = await ctx.assignment.call(
        lambda: ctx.assignment.client.get_agent_profile(str(admin.tenant_id), str(agent.id))
    )
    return web.json_response(_profile_json(profile))


async def put_routing(request: web.Request) -> web.Response:
    """PUT /api/v1/agents/{agent_id}/routing: set capacity, skills, teams and shifts."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, RoutingProfile)
    ctx = request.app[CHAT_KEY]
    agent = await ctx.directory.user(admin.tenant_id, path_uuid(request, "agent_id"))
    profile = pb.AgentProfile(
        tenant_id=str(admin.tenant_id),
        agent_id=str(agent.id),
        display_name=agent.display_name,
        capacity=body.capacity,
        skills=body.skills,
        team_ids=[str(t) for t in body.team_ids],
        time_zone=body.time_zone,
        shifts=[
            Shift(
                weekday=_WEEKDAYS.index(s.weekday) + 1,  # type: ignore[arg-type]
                start_minute=s.start_minute,
                end_minute=s.end_minute,
            )
            for s in body.shifts
        ],
        priority_weight=body.priority_weight,
    )
    reply = await ctx.assignment.call(lambda: ctx.assignment.client.upsert_agent_profile(profile))
    return web.json_response(_profile_json(reply.profile))


def add_admin_routes(app: web.Application) -> None:
    """Mount the admin endpoints."""
    app.router.add_get("/api/v1/inboxes", list_inboxes)
    app.router.add_post("/api/v1/inboxes", create_inbox)
    app.router.add_patch("/api/v1/inboxes/{inbox_id}", update_inbox)
    app.router.add_get("/api/v1/agents", list_agents)
    app.router.add_post("/api/v1/agents", create_agent)
    app.router.add_patch("/api/v1/agents/{agent_id}", update_agent)
    app.router.add_get("/api/v1/agents/{agent_id}/routing", get_routing)
    app.router.add_put("/api/v1/agents/{agent_id}/routing", put_routing)
    app.router.add_get("/api/v1/teams", list_teams)
    app.router.add_post("/api/v1/teams", create_team)
    app.router.add_put("/api/v1/teams/{team_id}/members", set_team_members)
