"""Fixtures shared by the tool tests: one fake LLM server per module, reset per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.llm_servers import FakeLLMServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def srv(server: FakeLLMServer) -> FakeLLMServer:
    server.reset()
    return server
