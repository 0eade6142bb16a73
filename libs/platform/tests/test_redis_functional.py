"""connect_redis against the real Redis: its client owns its pool."""

from __future__ import annotations

import pytest

from livedesk.platform.ids import uuid7
from livedesk.platform.redis import connect_redis
from livedesk.platform.testing import wait_until
from livedesk.platform.testing.servers import Servers

pytestmark = pytest.mark.integration


async def test_aclose_closes_the_pools_connections(servers: Servers) -> None:
    name = f"test-{uuid7().hex}"
    client = await connect_redis(servers.redis_url)
    await client.client_setname(name)
    observer = await connect_redis(servers.redis_url)
    try:

        async def connections() -> int:
            return sum(c.get("name") == name for c in await observer.client_list())

        async def all_closed() -> bool:
            return await connections() == 0

        assert await connections() == 1
        await client.aclose()
        await wait_until(all_closed, timeout=5, what="the pool's connection closed")
    finally:
        await observer.aclose()
