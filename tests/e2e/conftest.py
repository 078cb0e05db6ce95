from __future__ import annotations

from typing import Any

import pytest
import uvloop

from tests.e2e.harness import make_data_dir, settings_for, start_node
from tests.fakes.llm_servers import FakeLLMServer


def pytest_asyncio_loop_factories(config, item):
    """Whole nodes run on uvloop here, as ``stockade serve`` runs them (app.server.run)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["embedded", "production"])
def stack_kind(request):
    return request.param


@pytest.fixture
def stores(stack_kind, request) -> dict[str, Any]:
    """Store settings of this stack, for tests that make nodes of their own (sync: the database fixtures
    run their own event loop)."""
    if stack_kind == "embedded":
        return {}
    return dict(pg_url=request.getfixturevalue("pg_url"), redis_url=request.getfixturevalue("redis_url"),
                redis_prefix=request.getfixturevalue("redis_prefix"))


@pytest.fixture
def llm():
    """A fake OpenAI + Anthropic server (the real wire protocols): ``llm.openai_base_url``, ``llm.enqueue``."""
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def node_config(stack_kind, request):
    """Settings for the node. Sync on purpose: ``pg_url`` creates its database with asyncio.run."""
    marker = request.node.get_closest_marker("node_settings")
    extra = dict(marker.kwargs) if marker else {}
    if stack_kind == "production":
        return settings_for("production", make_data_dir(), pg_url=request.getfixturevalue("pg_url"),
                            redis_url=request.getfixturevalue("redis_url"),
                            redis_prefix=request.getfixturevalue("redis_prefix"), **extra)
    return settings_for("embedded", make_data_dir(), **extra)


@pytest.fixture
async def node(node_config):
    """A whole Stockade node (API + worker) on SQLite/memory or PostgreSQL/Redis."""
    n = await start_node(node_config)
    try:
        yield n
    finally:
        await n.stop()
