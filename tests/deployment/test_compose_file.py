"""compose.yaml holds what the container test proved (tests/deployment/test_containers.py).

No Docker engine or `docker compose` is needed: the file is parsed with PyYAML (merge keys
resolved, as Compose does) and checked against the roles, settings and security options that
were measured to work under Podman.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from supervisor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
STOCKADE_SERVICES = ("migrate", "api")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _workers(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("command") == ["worker"]}


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_services_and_roles(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api"} <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["command"] == ["api"]
    assert len(_workers(compose)) >= 2
    known = {"image", "build", "command", "environment", "volumes", "depends_on", "ports", "healthcheck",
             "security_opt", "restart", "stop_grace_period", "deploy"}
    for name, svc in services.items():
        assert set(svc) <= known, f"{name}: unexpected keys {set(svc) - known}"


def test_every_stockade_container_shares_image_settings_and_data(compose: dict) -> None:
    services = compose["services"]
    names = [*STOCKADE_SERVICES, *_workers(compose)]
    for name in names:
        svc = services[name]
        assert svc["image"] == "stockade:latest"
        assert svc["build"]["dockerfile"] == "deployment/Dockerfile"
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert "BASE" in svc["build"]["args"]
        env = _env(svc)
        assert env["STOCKADE_DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["STOCKADE_DATABASE_URL"]
        assert env["STOCKADE_REDIS_URL"].startswith("redis://redis:")
        assert env["STOCKADE_DATA_DIR"] == "/data"
        assert "stockade-data:/data" in [v.split()[0] for v in svc["volumes"]]
        # an empty or well-known audit key would be worse than none (then migrate generates one into /data)
        assert "STOCKADE_AUDIT_KEY" not in env or re.fullmatch(r"\$\{STOCKADE_AUDIT_KEY:\?.+\}", env["STOCKADE_AUDIT_KEY"])
    assert "stockade-data" in compose["volumes"]


def test_start_order(compose: dict) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                 "redis": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("api", *_workers(compose)):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]


def test_workers_get_the_sandbox_options_and_nothing_more(compose: dict) -> None:
    bases = []
    for name, svc in _workers(compose).items():
        opts = svc["security_opt"]
        assert "systempaths=unconfined" in opts, name  # bwrap mounts a fresh /proc
        assert any(o.startswith("seccomp=") for o in opts), name  # unshare/mount (Docker), sethostname (Podman)
        assert "privileged" not in svc and "cap_add" not in svc, name
        assert svc["healthcheck"] == {"disable": True}, name  # workers serve no HTTP
        env = _env(svc)
        bases.append(int(env["STOCKADE_SANDBOX_UID_BASE"]))
        assert env["STOCKADE_WORKER_ID"] == name
        # its metrics listener, valid as the worker reads it, on the compose network only (no published port)
        assert Settings(worker_metrics_addr=env["STOCKADE_WORKER_METRICS_ADDR"]).worker_metrics_listen == (
            "0.0.0.0", 9100), name
        assert "ports" not in svc, name
    bases.sort()
    assert all(b - a >= 1024 for a, b in zip(bases, bases[1:], strict=False)), "worker uid ranges overlap"
    for name in ("api", "migrate"):
        assert "security_opt" not in compose["services"][name], f"{name} runs no sandbox: default confinement"


def test_api_port_and_health(compose: dict) -> None:
    api = compose["services"]["api"]
    assert "healthcheck" not in api or not api["healthcheck"].get("disable")  # the image's /readyz check
    assert any(str(p).endswith(":8000") for p in api["ports"])
    dockerfile = (ROOT / "deployment" / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim-bookworm" in dockerfile and "FROM ${BASE}" in dockerfile
    assert "/readyz" in dockerfile and 'ENTRYPOINT ["stockade"]' in dockerfile


def test_every_service_names_its_stop_timeout(compose: dict) -> None:
    """Podman's Docker API creates a container without stop_grace_period with a stop timeout of 0:
    `docker compose stop` / `down` on Podman SIGKILLed the api (exit 137, streams cut) and PostgreSQL
    (crash recovery at the next start) at once. Measured by test_containers.py's compose test."""
    for name, svc in compose["services"].items():
        grace = str(svc.get("stop_grace_period", ""))
        m = re.fullmatch(r"(\d+)s", grace)
        assert m and int(m.group(1)) >= 10, f"{name}: stop_grace_period {grace!r} (10s or more, in seconds)"
