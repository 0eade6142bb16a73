"""A seeded chat database and the environment chat pods need to serve it."""

from __future__ import annotations

from livedesk.chat.directory import Directory
from livedesk.chat.testing import Org, make_org
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing.pytest_plugin import BusNames
from livedesk.platform.testing.servers import Servers

__all__ = ["seeded_chat"]


async def seeded_chat(database: str, servers: Servers, bus: BusNames) -> tuple[Org, dict[str, str]]:
    """Seed a tenant in ``database``; (the tenant, the pods' environment)."""
    pool = await open_database(database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    org = await make_org(Directory(pool), "acme")
    await pool.close()
    env = {
        **bus.env(),
        "DATABASE_URL": database,
        "REDIS_URL": servers.redis_url,
        "DB_AUTO_CREATE": "false",
        "LIVEDESK_ENV": "test",
        "WS_MESSAGES_PER_SECOND": "200",
        "WS_MESSAGE_BURST": "200",
    }
    return org, env
