"""A real chat app (aiohttp test server) over real PostgreSQL and Redis, with a seeded tenant."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from aiohttp.test_utils import TestClient, TestServer

from livedesk.assignment_client import AssignmentClient
from livedesk.chat.actions import ChatActions
from livedesk.chat.api_support import ChatContext
from livedesk.chat.archive import ArchiveReader
from livedesk.chat.archive_s3 import S3ObjectStore
from livedesk.chat.archive_store import FileObjectStore, ObjectStore, S3Options
from livedesk.chat.assignment_link import AssignmentLink
from livedesk.chat.conversations import ConversationStore
from livedesk.chat.directory import Directory
from livedesk.chat.erasure import Eraser
from livedesk.chat.fanout import Hub
from livedesk.chat.hot_cache import HotCache
from livedesk.chat.service import create_app
from livedesk.chat.settings import ChatSettings
from livedesk.chat.shards import ShardMap, open_shards
from livedesk.chat.sockets import SocketRegistry
from livedesk.chat.testing import Chat, make_org
from livedesk.chat.ws import WsContext
from livedesk.platform.auth import AuthSettings, load_issuer, load_verifier
from livedesk.platform.health import HealthChecks
from livedesk.platform.ids import uuid7
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.redis import connect_redis
from livedesk.platform.testing import free_port
from livedesk.platform.testing.servers import Servers

# Tests that also run with conversations on two shards (each costs ~1 s more).
SHARDED = frozenset(
    {
        "test_visitor_cannot_read_another_visitors_conversation",
        "test_agent_cannot_see_another_tenants_conversation",
        "test_agents_see_their_teams_queue_and_only_the_assignee_writes",
        "test_conversation_and_messages_commit_with_their_events",
        "test_history_pages_by_seq",
        "test_lifecycle_resolve_reopen_and_csat",
        "test_read_marker_only_moves_forward",
        "test_listing_is_paginated_and_scoped",
        "test_visitor_and_admin_exchange_messages_live",
        "test_subscribe_replays_after_seq_then_streams",
        "test_retried_send_is_not_duplicated",
        "test_typing_and_read_receipts_reach_the_other_side",
        "test_consoles_hear_only_what_they_may_see",
        "test_old_conversations_move_to_the_archive_and_read_back_identically",
        "test_erasure_removes_the_visitor_from_postgresql_redis_and_the_archive",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``chat`` is one database everywhere, and also two shards for the SHARDED tests."""
    if "chat" in metafunc.fixturenames:
        layouts = ["one_db", "two_shards"] if metafunc.function.__name__ in SHARDED else ["one_db"]
        metafunc.parametrize("chat", layouts, indirect=True)


@pytest.fixture
async def chat(
    request: pytest.FixtureRequest,
    pg_database: str,
    servers: Servers,
    monkeypatch: pytest.MonkeyPatch,
    chat_archive: ObjectStore,
) -> AsyncIterator[Chat]:
    """A chat app on fresh databases, with two tenants.

    ``one_db``: everything on one database (the default configuration).
    ``two_shards``: conversations on two shards (logical shards 0-511 and
    512-1023), apart from the directory.
    """
    monkeypatch.setenv("LIVEDESK_ENV", "test")
    monkeypatch.setenv("WS_MESSAGES_PER_SECOND", "50")
    monkeypatch.setenv("WS_MESSAGE_BURST", "20")
    monkeypatch.setenv("ARCHIVE_URL", chat_archive.url)
    pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    if request.param == "two_shards":
        # Two schemas stand in for two databases (CREATE DATABASE costs seconds):
        # separate pools and tables, nothing shared with the directory.
        await pool.execute("CREATE SCHEMA shard0; CREATE SCHEMA shard1")
        db0, db1 = (f"{pg_database}?search_path={name}" for name in ("shard0", "shard1"))
        shard_map = ShardMap({"db0": db0, "db1": db1}, ((0, 511, "db0"), (512, 1023, "db1")))
        monkeypatch.setenv("CHAT_SHARDS", shard_map.to_json())
    settings = ChatSettings(database_url=pg_database, redis_url=servers.redis_url)
    shards = await open_shards(settings.shard_map(), directory_dsn=pg_database, directory_pool=pool)
    redis = await connect_redis(servers.redis_url)
    hub = Hub(redis)
    await hub.start()
    # Every functional test also goes through the hot cache (own key prefix on
    # the shared Redis, short TTL, never flushed): it must not change any answer.
    hot = HotCache(redis, ttl=120, prefix=f"test:{uuid7().hex[-16:]}:hot:")
    directory, store = Directory(pool), ConversationStore(pool, shards, hot=hot)
    archive = chat_archive
    actions = ChatActions(
        store, directory, hub, settings.max_message_chars, archive=ArchiveReader(archive)
    )
    issuer, verifier = load_issuer(AuthSettings()), load_verifier(AuthSettings())
    registry = SocketRegistry(
        settings.ws_connections_per_user,
        settings.ws_messages_per_second * 2,
        settings.ws_message_burst * 2,
    )
    # No assignment server here: calls to it answer "unavailable" (tests/integration has one).
    link = AssignmentLink(
        AssignmentClient(f"127.0.0.1:{free_port()}", timeout=1, retries=0), registry, "test-pod"
    )
    health = HealthChecks()
    health.add("postgres", lambda: pool.fetchval("SELECT 1"))
    app = create_app(
        ChatContext(settings, directory, store, issuer, link),
        actions,
        WsContext(settings, actions, registry, verifier, redis, link.set_status),
        health,
        Eraser(pool, store, archive),
    )
    org, stranger = await make_org(directory, "acme"), await make_org(directory, "globex")
    async with TestClient(TestServer(app)) as client:
        harness = Chat(client, pool, directory, store, issuer, settings, org, stranger, registry)
        try:
            yield harness
        finally:
            for ws in harness.sockets:
                await ws.close()
    await link.client.close()
    await hub.stop()
    await redis.aclose()
    await shards.close(keep=[pool])
    await pool.close()


# --- archive object stores -----------------------------------------------------

# moto's S3 server in a process of its own (it is an HTTP endpoint like any
# S3-compatible store, not an in-process mock). It binds a free port itself
# and says which; it stops when its stdin closes, so it also goes away when
# the test process dies without a teardown.
_MOTO_SERVER = """
import sys
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(endpoint URL, bucket) of the S3-compatible store the S3 tests use.

    ``S3_TEST_BUCKET`` (an existing bucket; ``S3_TEST_ENDPOINT`` for MinIO &
    co., ``S3_TEST_REGION``, credentials from the usual AWS_* variables)
    points them at a real store, where each test works under a prefix of
    its own and deletes what it wrote; otherwise a moto server is started.
    """
    bucket = os.environ.get("S3_TEST_BUCKET", "")
    if bucket:
        yield os.environ.get("S3_TEST_ENDPOINT", ""), bucket
        return
    if os.environ.get("S3_TEST_ENDPOINT"):
        raise RuntimeError("S3_TEST_ENDPOINT also needs S3_TEST_BUCKET (an existing bucket)")
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        port = proc.stdout.readline().strip()  # the server's own word that it listens
        if not port.isdigit():
            raise RuntimeError(f"moto server did not start:\n{log_path.read_text()[-4000:]}")
        yield f"http://127.0.0.1:{int(port)}", ""
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
async def s3_store(
    s3_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[S3ObjectStore]:
    """An S3 store of this test alone: its own bucket on moto, its own prefix on a real store.

    Two keys a page, so that listing goes through ListObjectsV2 pagination.
    """
    endpoint, bucket = s3_server
    region = os.environ.get("S3_TEST_REGION", "us-east-1")
    if not bucket:
        # moto takes any credentials; the store still reads them from the
        # standard AWS chain, as in production (nothing from ~/.aws here).
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "livedesk-test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "livedesk-test")
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        bucket = f"livedesk-test-{uuid.uuid4().hex[:16]}"
        async with get_session().create_client(
            "s3", endpoint_url=endpoint, region_name=region
        ) as s3:
            await s3.create_bucket(Bucket=bucket)
    options = S3Options(endpoint, region)
    store = S3ObjectStore(bucket, f"livedesk-test/{uuid.uuid4()}", options, list_page_size=2)
    try:
        yield store
    finally:
        try:
            for key in await store.list_keys(""):
                await store.delete(key)
        finally:
            await store.aclose()


@pytest.fixture
def chat_archive(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The chat app's archive: a directory of the test, or (param ``"s3"``) ``s3_store``."""
    if getattr(request, "param", "file") == "s3":
        store: ObjectStore = request.getfixturevalue("s3_store")
        return store
    return FileObjectStore(tmp_path / "archive")
