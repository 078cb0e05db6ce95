"""The container deployment for real: image build, migrate + api + two workers under Podman, a run.

SKIPPED unless ``STOCKADE_CONTAINER_TESTS=1``. This is the one justified skip of the suite: it
debootstraps a base image (first time only, ~40 s), builds the image (~45 s cold; seconds with the
layer cache) and starts containers, which is too slow and too heavy (2 shared cores) for every CI
run, and it needs root + podman + runc + debootstrap. With the variable set, a missing tool FAILS.

    STOCKADE_CONTAINER_TESTS=1 .venv/bin/python -m pytest tests/deployment -x -q -s

It drives the same scripts users run (deployment/podman/build.sh, up.sh, down.sh), against the
host's PostgreSQL (a fresh database) and Redis (a fresh key prefix) over the host network, and
proves: /readyz on the api container; a run of the ``echo`` bundle POSTed to the api container is
claimed by a worker container (its worker_id is in PostgreSQL), runs in a bubblewrap sandbox inside
that container, and streams its words back over SSE; either worker alone can run bundles; each
of the two worker security options is needed (without it the sandbox self-check fails); and the
real compose.yaml, with Docker Compose v2 (deployment/podman/get-compose.sh) talking to Podman's
Docker-compatible API, starts migrate -> api + workers in order, serves a run the same way, and
stops (each container on its own signal, not SIGKILL) and starts again with the data kept.

With ``STOCKADE_DOCKER_TESTS=1`` too, the same on Docker's own engine (a running dockerd): each of
compose.yaml's three worker security options is needed there, and Compose v2 builds the image from
deployment/Dockerfile and brings the real compose.yaml up (deployment/README.md, "The container test").
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "deployment" / "podman"
ENABLED = os.environ.get("STOCKADE_CONTAINER_TESTS") == "1"
IMAGE = os.environ.get("STOCKADE_IMAGE", "localhost/stockade:latest")

pytestmark = [
    pytest.mark.skipif(not ENABLED, reason="container tests run only with STOCKADE_CONTAINER_TESTS=1 (slow: builds an image)"),
    pytest.mark.slow,
    pytest.mark.timeout(1200),  # a cold first build debootstraps and downloads every dependency
]

_CHECK = "from sandbox.checks import check_backend; import json; print(json.dumps(check_backend()))"


def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _must(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout


def _must_compose_up(proc: subprocess.CompletedProcess, engine: str, project: str) -> None:
    """`compose up -d` succeeded, or fail with what migrate said (Compose reports only its exit code)."""
    if proc.returncode != 0:
        logs = _run([engine, "logs", "--tail", "30", f"{project}-migrate-1"], timeout=30)
        pytest.fail(f"docker compose up failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
                    f"--- {project}-migrate-1\n{logs.stdout}{logs.stderr}", pytrace=False)


def _common_podman_args() -> list[str]:
    """The runtime and ulimit options of deployment/podman/_common.sh, for containers started here."""
    out = _must(_run(["sh", "-c", f'. "{PODMAN_DIR}/_common.sh"; echo $PODMAN_RUNTIME $PODMAN_ULIMITS']), "_common.sh")
    return out.split()


def _wait_ready(port: int, within_s: float = 60) -> httpx.Response:
    """The api container's /readyz answering 200 (a polled external process: no event to wait on)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the api container did not become ready"
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    name: str
    url: str
    env: dict[str, str]
    database_url: str
    timings: dict[str, float]
    engine: str = "podman"  # the CLI whose logs explain a failure
    compose: bool = False  # containers named by Compose: <project>-<service>-1

    def podman(self, *args: str, timeout: float = 120) -> str:
        return _must(_run(["podman", *args], timeout=timeout), "podman " + " ".join(args[:2]))

    def logs(self) -> str:
        out = []
        for c in ("api", "worker-1", "worker-2"):
            name = f"{self.name}-{c}-1" if self.compose else f"{self.name}-{c}"
            p = _run([self.engine, "logs", "--tail", "30", name], timeout=30)
            out.append(f"--- {name}\n{p.stdout}{p.stderr}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def image() -> dict[str, float]:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"STOCKADE_CONTAINER_TESTS=1 but {', '.join(missing)} missing: apt-get install -y podman runc debootstrap",
                    pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("STOCKADE_CONTAINER_TESTS=1 needs root (rootful podman, debootstrap)", pytrace=False)
    t0 = time.monotonic()
    _must(_run([str(PODMAN_DIR / "build.sh")], timeout=1100), "deployment/podman/build.sh")
    return {"image_build_s": time.monotonic() - t0}


@pytest.fixture(scope="module")
def stack(image: dict[str, float], pg_url: str, redis_url: str) -> Iterator[Stack]:
    name = f"stockade-test-{secrets.token_hex(3)}"
    port = _free_port()
    prefix = f"stockade-ctr-test:{name}:"
    env = {**os.environ, "STOCKADE_STACK": name, "STOCKADE_PORT": str(port), "STOCKADE_HOST": "127.0.0.1",
           "STOCKADE_DATABASE_URL": pg_url, "STOCKADE_REDIS_URL": redis_url, "STOCKADE_REDIS_PREFIX": prefix,
           "STOCKADE_AUDIT_KEY": secrets.token_hex(32), "STOCKADE_WORKERS": "2", "STOCKADE_IMAGE": IMAGE}
    t0 = time.monotonic()
    up = _run([str(PODMAN_DIR / "up.sh")], env=env, timeout=300)
    timings = {**image, "stack_up_s": time.monotonic() - t0}
    st = Stack(name, f"http://127.0.0.1:{port}", env, pg_url, timings)
    try:
        _must(up, "deployment/podman/up.sh")
        yield st
    finally:
        print("\ncontainer timings:", json.dumps({k: round(v, 3) for k, v in st.timings.items()}))
        _run([str(PODMAN_DIR / "down.sh"), "--volumes"], env=env, timeout=120)
        asyncio.run(_drop_redis_prefix(redis_url, prefix))


async def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    # the CLI inside the api container: same image, same settings, same store
    out = stack.podman("exec", f"{stack.name}-api", "stockade", "tenant", "create", f"demo-{secrets.token_hex(2)}")
    return json.loads(out)["api_key"]


def _worker_of(database_url: str, run_id: str) -> str | None:
    import asyncpg

    async def q() -> str | None:
        conn = await asyncpg.connect(database_url)  # the superuser: row-level security does not apply
        try:
            return await conn.fetchval("SELECT worker_id FROM runs WHERE id = $1", run_id)
        finally:
            await conn.close()

    return asyncio.run(q())


def _run_echo(stack: Stack, key: str, text: str) -> tuple[str, list[dict], float]:
    """POST a run of ``echo`` to the api container and read its SSE stream to the end."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        t0 = time.monotonic()
        r = client.post("/v1/runs", json={"bundle": "echo", "input": text})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        events: list[dict] = []
        deadline = t0 + 60  # keep-alive comments every 15 s would keep a stuck stream open forever
        with client.stream("GET", f"/v1/runs/{run_id}/events") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            frame: dict[str, str] = {}
            for line in resp.iter_lines():
                if time.monotonic() > deadline:
                    pytest.fail(f"run {run_id} did not end within 60 s; events so far: {events}\n{stack.logs()}",
                                pytrace=False)
                if line == "":
                    if "data" in frame:
                        events.append({"id": int(frame["id"]), "event": frame["event"], **json.loads(frame["data"])})
                        if frame["event"].startswith("run.") and frame["event"] != "run.started":
                            break
                    frame = {}
                elif not line.startswith(":") and ":" in line:
                    k, v = line.split(":", 1)
                    frame[k] = v[1:] if v.startswith(" ") else v
        return run_id, events, time.monotonic() - t0


def test_readyz_on_the_api_container(stack: Stack) -> None:
    r = httpx.get(stack.url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["checks"]["store"] == "ok" and body["checks"]["queue"]["status"] == "ok"
    assert httpx.get(stack.url + "/ui/", timeout=10).status_code == 200  # the web UI ships in the image


def test_echo_run_goes_api_to_worker_container_and_streams_back(stack: Stack, api_key: str) -> None:
    text = "hello from a sandbox inside a worker container"
    run_id, events, took = _run_echo(stack, api_key, text)
    stack.timings["echo_run_post_to_completed_s"] = took
    assert [e["id"] for e in events] == list(range(1, len(events) + 1)), events  # no gaps
    assert events[0]["event"] == "run.started"
    assert events[-1]["event"] == "run.completed", stack.logs()
    deltas = [e for e in events if e["event"] == "message.delta"]
    assert [e["text"] for e in deltas] == [w + " " for w in text.split()]
    assert all(e["channel"] == "answer" for e in deltas)
    run = httpx.get(f"{stack.url}/v1/runs/{run_id}", headers={"Authorization": f"Bearer {api_key}"}, timeout=10).json()
    assert run["status"] == "succeeded" and run["output"] == text + " "
    # the api container has no worker role: a worker container claimed the run through Redis + PostgreSQL
    assert _worker_of(stack.database_url, run_id) in {f"{stack.name}-worker-1", f"{stack.name}-worker-2"}


def test_each_worker_container_runs_bundles_on_its_own(stack: Stack, api_key: str) -> None:
    for alone, stopped in ((2, 1), (1, 2)):
        stack.podman("stop", "-t", "15", f"{stack.name}-worker-{stopped}")
        try:
            run_id, events, took = _run_echo(stack, api_key, f"only worker {alone} is up")
            stack.timings[f"echo_run_worker_{alone}_alone_s"] = took
            assert events[-1]["event"] == "run.completed", stack.logs()
            assert _worker_of(stack.database_url, run_id) == f"{stack.name}-worker-{alone}"
        finally:
            stack.podman("start", f"{stack.name}-worker-{stopped}")


@pytest.mark.parametrize("leave_out", ["unmask", "seccomp"])
def test_each_worker_security_option_is_needed(image: dict[str, float], tmp_path: Path, leave_out: str) -> None:
    """Negative controls for the documented minimum (unmask=/proc/* + the worker seccomp profile)."""
    profile = tmp_path / "worker-seccomp.json"
    profile.write_text(_must(_run(["python3", str(PODMAN_DIR / "seccomp-profile.py")]), "seccomp-profile.py"))
    opts = {"unmask": ["--security-opt", "unmask=/proc/*"], "seccomp": ["--security-opt", f"seccomp={profile}"]}
    base = ["podman", "run", "--rm", *_common_podman_args(), "--network", "none", "--no-healthcheck",
            "--entrypoint", "python"]
    both = _must(_run([*base, *opts["unmask"], *opts["seccomp"], IMAGE, "-c", _CHECK], timeout=120), "sandbox check")
    assert json.loads(both) == []
    kept = opts["seccomp" if leave_out == "unmask" else "unmask"]
    without = _must(_run([*base, *kept, IMAGE, "-c", _CHECK], timeout=120), "sandbox check")
    problems = json.loads(without)
    assert problems, f"the sandbox works without {leave_out}: the documented minimum is too wide"
    assert ("proc" if leave_out == "unmask" else "hostname") in problems[0], problems


# --- docker compose (v2) against Podman's Docker API, with the real compose.yaml

def _test_override(url_db: str, url_redis: str, prefix: str, port: int, ulimits: dict[str, int]) -> dict:
    """What only this machine needs: the host's PostgreSQL/Redis instead of the postgres/redis images
    (stand-in containers whose healthchecks probe the host services), host network, and ulimits this
    shell may set (see _common.sh)."""
    host = {"network_mode": "host", "ulimits": ulimits}
    env = {"STOCKADE_DATABASE_URL": url_db, "STOCKADE_REDIS_URL": url_redis, "STOCKADE_REDIS_PREFIX": prefix,
           "STOCKADE_HOST": "127.0.0.1", "STOCKADE_PORT": str(port)}

    def stand_in(port: int) -> dict:
        # exec form, no spaces in any argument: podman 4.3's compat API splits healthcheck arguments on spaces
        return {**host, "image": "localhost/stockade-base:latest", "command": ["sleep", "infinity"],
                "stop_signal": "SIGKILL", "environment": {},
                "healthcheck": {"test": ["CMD", "bash", "-c", f"</dev/tcp/127.0.0.1/{port}"], "interval": "1s"}}

    services = {"postgres": stand_in(5432), "redis": stand_in(6379),
                "migrate": {**host, "environment": env}, "api": {**host, "environment": env}}
    for w in ("worker-1", "worker-2"):
        # on the host network the two workers' metrics listeners (compose.yaml: 0.0.0.0:9100 in each container's
        # own network) would share one port: the second failed to start and restarted until the first's port was
        # free, and a `compose stop` landing in such a start-up found no signal handler yet (session 26)
        services[w] = {**host, "environment": {**env, "STOCKADE_WORKER_METRICS_ADDR": f"127.0.0.1:{_free_port()}"}}
    return {"services": services}


class _HealthTicker(threading.Thread):
    """podman runs healthchecks from systemd timers; there is no systemd here, so run them (1/s)."""

    def __init__(self, project: str) -> None:
        super().__init__(daemon=True)
        self.project, self.stop = project, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            names = _run(["podman", "ps", "--filter", f"label=com.docker.compose.project={self.project}",
                          "--format", "{{.Names}}"], timeout=30).stdout.split()
            for n in names:
                _run(["podman", "healthcheck", "run", n], timeout=30)


def test_docker_compose_up_on_podman(image: dict[str, float], fresh_pg_url: str, redis_url: str, tmp_path: Path) -> None:
    # A database of its own: migrate generates this project's audit key into its fresh data volume, and
    # refuses a database that already holds records sealed with another key (the up.sh stack's).
    pg_url = fresh_pg_url
    compose_bin = _must(_run([str(PODMAN_DIR / "get-compose.sh")], timeout=300), "get-compose.sh").strip()
    files = ["-f", str(ROOT / "compose.yaml")]
    _must(_run([compose_bin, *files, "config", "-q"], timeout=60), "docker compose config")  # valid for Compose

    project = f"stockade-ctest-{secrets.token_hex(3)}"
    port = _free_port()
    prefix = f"stockade-ctr-test:{project}:"
    args = _common_podman_args()
    ulimits = {}
    for opt in args[args.index("--ulimit") :]:
        if "=" in opt:
            k, v = opt.split("=", 1)
            ulimits[k] = int(v.split(":")[0])
    override = tmp_path / "compose.test.yaml"
    override.write_text(yaml.safe_dump(_test_override(pg_url, redis_url, prefix, port, ulimits)))
    files += ["-f", str(PODMAN_DIR / "compose.podman.yaml"), "-f", str(override)]

    sock = tmp_path / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time", "0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ticker = _HealthTicker(project)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    compose = [compose_bin, "-p", project, *files]
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline, "podman system service did not create its socket"
            time.sleep(0.1)
        # compose.yaml names the image stockade:latest; Podman's Docker API reads that as docker.io/library/
        _must(_run(["podman", "tag", IMAGE, "docker.io/library/stockade:latest"]), "podman tag")
        ticker.start()
        t0 = time.monotonic()
        # up -d itself waits for the depends_on conditions (postgres/redis healthy, migrate exited 0).
        # Not --wait: Podman's API reports health "" for containers without a healthcheck (workers).
        _must_compose_up(_run([*compose, "up", "-d", "--no-build", "--pull", "never"], env=env, timeout=300), "podman", project)
        r = _wait_ready(port)
        took_up = time.monotonic() - t0
        ps = _run(["podman", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                   "--format", "{{.Names}} {{.Status}}"]).stdout
        assert f"{project}-migrate-1 Exited (0)" in ps, ps
        assert r.json()["status"] == "ready", r.text
        out = _must(_run(["podman", "exec", f"{project}-api-1", "stockade", "tenant", "create", f"compose-demo-{secrets.token_hex(2)}"]), "tenant")
        st = Stack(project, f"http://127.0.0.1:{port}", env, pg_url, {}, compose=True)
        run_id, events, took = _run_echo(st, json.loads(out)["api_key"], "compose up works on podman")
        print(f"\ndocker compose up: {took_up:.1f} s (to /readyz 200); echo run {took * 1000:.0f} ms")
        assert events[-1]["event"] == "run.completed", events
        assert "".join(e["text"] for e in events if e["event"] == "message.delta") == "compose up works on podman "
        assert _worker_of(pg_url, run_id) in {"worker-1", "worker-2"}

        # stop and start again, as a user would: each container stops on its own signal within its
        # grace period (Podman's API gave services without stop_grace_period 0 s: SIGKILL, exit 137),
        # and the tenant, its key, its runs and the generated keys (stockade-data) are all kept
        _must(_run([*compose, "stop"], env=env, timeout=120), "docker compose stop")
        for svc in ("api", "worker-1", "worker-2"):
            code = _run(["podman", "inspect", "-f", "{{.State.ExitCode}}", f"{project}-{svc}-1"]).stdout.strip()
            assert code == "0", f"{svc} exited {code} on docker compose stop (137: killed, not stopped)"
        _must(_run([*compose, "start"], env=env, timeout=300), "docker compose start")
        _wait_ready(port)
        key = json.loads(out)["api_key"]
        old = httpx.get(f"{st.url}/v1/runs/{run_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert old.status_code == 200 and old.json()["output"] == "compose up works on podman ", old.text
        _, events, _ = _run_echo(st, key, "and after a restart")
        assert events[-1]["event"] == "run.completed", events
    finally:
        ticker.stop.set()
        _run([*compose, "down", "-v", "-t", "15"], env=env, timeout=120)
        _run(["podman", "rmi", "docker.io/library/stockade:latest"], timeout=60)  # the tag only
        service.terminate()
        service.wait(timeout=30)
        asyncio.run(_drop_redis_prefix(redis_url, prefix))


# --- the Docker engine itself (dockerd): build with the real Dockerfile, compose up the real compose.yaml

DOCKER_ENABLED = os.environ.get("STOCKADE_DOCKER_TESTS") == "1"
_DOCKER_SKIP = pytest.mark.skipif(
    not DOCKER_ENABLED, reason="Docker engine tests run only with STOCKADE_DOCKER_TESTS=1 (needs a running dockerd)")
_DOCKER_BASE = "localhost/stockade-base:latest"  # make-base.sh's registry-less stand-in for python:3.11-slim
# The docker CLI: one with BuildKit built in or the buildx plugin beside it (Debian 12's docker.io
# 20.10 has it built in; a newer CLI without buildx refuses DOCKER_BUILDKIT=1).
DOCKER = os.environ.get("STOCKADE_DOCKER", "docker")


def _docker(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    return _must(_run([DOCKER, *args], timeout=timeout, env=env), "docker " + " ".join(args[:2]))


@pytest.fixture(scope="module")
def docker_base(image: dict[str, float], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base image in Docker's store (from Podman's, which make-base.sh made), plus, where this host
    trusts an extra CA for its egress (a TLS-inspecting proxy), that bundle: what a user behind such a
    proxy does. Returns the BASE build argument."""
    if shutil.which(DOCKER) is None or _run([DOCKER, "info"], timeout=30).returncode != 0:
        pytest.fail("STOCKADE_DOCKER_TESTS=1 but no Docker engine answers `docker info` "
                    "(apt-get install -y docker.io; dockerd &)", pytrace=False)
    if _run([DOCKER, "image", "inspect", _DOCKER_BASE], timeout=30).returncode != 0:
        _must(_run(["sh", "-c", f"podman save {_DOCKER_BASE} | {DOCKER} load"], timeout=300), "podman save | docker load")
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if not ca.exists():
        return _DOCKER_BASE
    ctx = tmp_path_factory.mktemp("base-ca")
    shutil.copy(ca, ctx / "ca-certificates.crt")
    (ctx / "Dockerfile").write_text(f"FROM {_DOCKER_BASE}\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n")
    _docker("build", "-q", "-t", "localhost/stockade-base-ca:latest", str(ctx))
    return "localhost/stockade-base-ca:latest"


@_DOCKER_SKIP
@pytest.mark.parametrize("leave_out", [None, "systempaths", "seccomp"])
def test_compose_worker_security_options_on_docker(docker_base: str, leave_out: str | None) -> None:
    """compose.yaml's worker options, on Docker's engine: with all three the sandbox self-check passes;
    without systempaths=unconfined bwrap cannot mount /proc, without seccomp=unconfined Docker's default
    profile refuses the namespaces (apparmor=unconfined only matters on AppArmor hosts)."""
    tag = "localhost/stockade-docker-test:latest"
    if _run([DOCKER, "image", "inspect", tag], timeout=30).returncode != 0:
        _docker("build", "-q", "-f", str(ROOT / "deployment" / "Dockerfile"), "--build-arg", f"BASE={docker_base}",
                "--build-arg", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-t", tag, str(ROOT),
                timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    worker = yaml.safe_load((ROOT / "compose.yaml").read_text())["x-worker"]["security_opt"]
    assert sorted(worker) == ["apparmor=unconfined", "seccomp=unconfined", "systempaths=unconfined"]
    opts = [o for o in worker if not (leave_out and o.startswith(leave_out))]
    out = _docker("run", "--rm", "--network", "none", *[a for o in opts for a in ("--security-opt", o)],
                  "--entrypoint", "python", tag, "-c", _CHECK, timeout=120)
    problems = json.loads(out)
    if leave_out is None:
        assert problems == []
    else:
        assert problems, f"the sandbox works on Docker without {leave_out}: compose.yaml asks for too much"
        assert ("proc" if leave_out == "systempaths" else "namespace") in problems[0], problems


@_DOCKER_SKIP
def test_docker_compose_up_on_docker_engine(docker_base: str, fresh_pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """`docker compose up` as users run it: Compose v2 builds the image from deployment/Dockerfile on
    Docker's engine, starts migrate -> api + two workers with compose.yaml's options, and a run of echo
    goes api -> worker container -> bubblewrap sandbox -> SSE."""
    pg_url = fresh_pg_url  # its own database: migrate refuses one sealed under another project's audit key
    compose_bin = _must(_run([str(PODMAN_DIR / "get-compose.sh")], timeout=300), "get-compose.sh").strip()
    project = f"stockade-dtest-{secrets.token_hex(3)}"
    port = _free_port()
    prefix = f"stockade-ctr-test:{project}:"
    spec = _test_override(pg_url, redis_url, prefix, port, {})
    for name, svc in spec["services"].items():
        svc.pop("ulimits", None)  # Podman's rlimit workaround; Docker takes the daemon's
        if name not in ("postgres", "redis"):
            svc["build"] = {"args": {"BASE": docker_base, "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"}}
    override = tmp_path / "compose.docker-test.yaml"
    override.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    compose = [compose_bin, "-p", project, "-f", str(ROOT / "compose.yaml"), "-f", str(override)]
    try:
        t0 = time.monotonic()
        _must(_run([*compose, "build"], env=env, timeout=900), "docker compose build")
        took_build = time.monotonic() - t0
        t0 = time.monotonic()
        _must_compose_up(_run([*compose, "up", "-d", "--no-build", "--pull", "never"], env=env, timeout=300), DOCKER, project)
        assert _wait_ready(port).json()["status"] == "ready"
        took_up = time.monotonic() - t0
        ps = _docker("ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                     "--format", "{{.Names}} {{.Status}}", timeout=30)
        assert f"{project}-migrate-1 Exited (0)" in ps, ps
        out = _docker("exec", f"{project}-api-1", "stockade", "tenant", "create", f"compose-demo-{secrets.token_hex(2)}", timeout=60)
        st = Stack(project, f"http://127.0.0.1:{port}", env, pg_url, {}, engine=DOCKER, compose=True)
        run_id, events, took = _run_echo(st, json.loads(out)["api_key"], "compose up works on docker")
        print(f"\ndocker compose (Docker engine): build {took_build:.1f} s, up {took_up:.1f} s (to /readyz 200); "
              f"echo run {took * 1000:.0f} ms")
        assert events[-1]["event"] == "run.completed", events
        assert "".join(e["text"] for e in events if e["event"] == "message.delta") == "compose up works on docker "
        assert _worker_of(pg_url, run_id) in {"worker-1", "worker-2"}
    finally:
        _run([*compose, "down", "-v", "-t", "15"], env=env, timeout=120)
        asyncio.run(_drop_redis_prefix(redis_url, prefix))
