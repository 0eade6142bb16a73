"""Operator commands: ``python -m livedesk.chat.admin_cli create-tenant|seed-demo``.

Tenants are created by the operator (there is no public sign-up); everything
inside a tenant is then managed through the admin REST API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from livedesk.chat.directory import Directory
from livedesk.chat.errors import Conflict
from livedesk.chat.settings import ChatSettings
from livedesk.platform.logging import configure_logging
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.settings import load_settings

__all__ = ["main"]

DEMO_PASSWORD = "livedesk-demo"


async def _create_tenant(args: argparse.Namespace, directory: Directory) -> dict[str, object]:
    tenant = await directory.create_tenant(args.slug, args.name, args.time_zone)
    admin = await directory.create_user(
        tenant.id,
        email=args.admin_email,
        display_name=args.admin_name,
        role="admin",
        password=args.admin_password,
    )
    return {"tenant_id": str(tenant.id), "slug": tenant.slug, "admin_id": str(admin.id)}


async def _seed_demo(directory: Directory, allowed_origins: list[str]) -> dict[str, object]:
    """A demo tenant with an admin, two agents in a team, and a website inbox (idempotent)."""
    tenant = await directory.tenant_by_slug("demo")
    if tenant is None:
        tenant = await directory.create_tenant("demo", "Demo Company")
    users = {u.email: u for u in await directory.users(tenant.id)}
    people = [
        ("admin@demo.livedesk.dev", "Demo Admin", "admin"),
        ("alice@demo.livedesk.dev", "Alice Agent", "agent"),
        ("bob@demo.livedesk.dev", "Bob Agent", "agent"),
    ]
    for email, name, role in people:
        if email not in users:
            users[email] = await directory.create_user(
                tenant.id, email=email, display_name=name, role=role, password=DEMO_PASSWORD
            )
    teams = {t.name: t for t, _ in await directory.teams(tenant.id)}
    team = teams.get("Support")
    if team is None:
        team = await directory.create_team(tenant.id, "Support")
    await directory.set_team_members(
        tenant.id, team.id, [users[e].id for e, _, r in people if r == "agent"]
    )
    inboxes = {i.name: i for i in await directory.inboxes(tenant.id)}
    inbox = inboxes.get("Website")
    if inbox is None:
        inbox = await directory.create_inbox(
            tenant.id, name="Website", allowed_origins=allowed_origins, team_id=team.id
        )
    return {
        "tenant": "demo",
        "tenant_id": str(tenant.id),
        "password": DEMO_PASSWORD,
        "users": {e: {"id": str(users[e].id), "role": r} for e, _, r in people},
        "team_id": str(team.id),
        "inbox_id": str(inbox.id),
        "widget_key": inbox.widget_key,
    }


async def _run(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings(ChatSettings)
    pool = await open_database(
        settings.database_url,
        [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"],
        auto_create=settings.db_auto_create,
    )
    try:
        directory = Directory(pool)
        if args.command == "create-tenant":
            return await _create_tenant(args, directory)
        return await _seed_demo(directory, args.allowed_origin)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m livedesk.chat.admin_cli")
    sub = parser.add_subparsers(dest="command", required=True)
    tenant = sub.add_parser("create-tenant", help="a tenant and its first admin")
    tenant.add_argument("--slug", required=True)
    tenant.add_argument("--name", required=True)
    tenant.add_argument("--time-zone", default="UTC")
    tenant.add_argument("--admin-email", required=True)
    tenant.add_argument("--admin-name", default="Admin")
    tenant.add_argument("--admin-password", required=True)
    demo = sub.add_parser("seed-demo", help="the demo tenant `make up` shows (idempotent)")
    demo.add_argument("--allowed-origin", action="append", default=[])
    args = parser.parse_args(argv)
    configure_logging("chat-admin", "WARNING", "console")
    try:
        result = asyncio.run(_run(args))
    except Conflict as exc:
        print(json.dumps({"error": exc.message}), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
