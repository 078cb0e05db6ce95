"""Fixtures shared by the tool tests: one fake LLM server per module, reset per test; the settings of a node
(both stacks) whose tools may reach this host's test servers (the MCP tests); the http tests' two servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import make_data_dir, settings_for
from tests.fakes.llm_servers import FakeLLMServer
from tests.tools.test_http_helpers import A_HOST, C_HOST, start_server


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def srv(server: FakeLLMServer) -> FakeLLMServer:
    server.reset()
    return server


@pytest.fixture(params=["embedded", "production"])
def node_settings(request: pytest.FixtureRequest) -> Any:
    extra = {"egress_allow_private": ["127.0.0.0/8"]}
    if request.param == "production":
        return settings_for("production", make_data_dir(), pg_url=request.getfixturevalue("pg_url"),
                            redis_url=request.getfixturevalue("redis_url"),
                            redis_prefix=request.getfixturevalue("redis_prefix"), **extra)
    return settings_for("embedded", make_data_dir(), **extra)


@pytest.fixture
async def server_a():
    """An http test server on A_HOST (the http tool tests)."""
    srv = await start_server(A_HOST, name="A")
    yield srv
    await srv.close()


@pytest.fixture
async def server_c():
    srv = await start_server(C_HOST, name="C")
    yield srv
    await srv.close()
