from __future__ import annotations

import pytest

from tests.e2e.harness import make_data_dir, settings_for, start_node


@pytest.fixture(params=["embedded", "production"])
def stack_kind(request):
    return request.param


@pytest.fixture
async def node(stack_kind, request):
    """A whole Stockade node (API + worker) on SQLite/memory or PostgreSQL/Redis."""
    extra = getattr(request, "param", {}) or {}
    marker = request.node.get_closest_marker("node_settings")
    if marker:
        extra = {**marker.kwargs}
    if stack_kind == "production":
        pg_url = request.getfixturevalue("pg_url")
        redis_url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        settings = settings_for("production", make_data_dir(), pg_url=pg_url, redis_url=redis_url,
                                redis_prefix=prefix, **extra)
    else:
        settings = settings_for("embedded", make_data_dir(), **extra)
    n = await start_node(settings)
    try:
        yield n
    finally:
        await n.stop()
