"""One ordered pipeline: SandboxSpec -> Plan (bwrap argv, seccomp program, rlimits, cgroups, identity).

Each stage owns one isolation concern and lives in its own module, as in nsjail.
The order matters where bwrap's option order does: mounts are applied in the
order given, and ``--remount-ro /`` must come after every mount under it.
"""

from __future__ import annotations

from collections.abc import Callable

from sandbox import _bwrap, _environment, _filesystem, _limits, _namespaces
from sandbox._plan import Plan
from sandbox.errors import SandboxError
from sandbox.identity import host_identity
from sandbox.seccomp import program_fd
from sandbox.spec import SandboxSpec

__all__ = ["STAGES", "build_plan"]


def _seccomp(spec: SandboxSpec, plan: Plan) -> None:
    plan.add("--seccomp", str(plan.own_fd(program_fd())))


def _command(spec: SandboxSpec, plan: Plan) -> None:
    plan.command = tuple(spec.argv)


STAGES: tuple[tuple[str, Callable[[SandboxSpec, Plan], None]], ...] = (
    ("namespaces", _namespaces.apply),
    ("filesystem", _filesystem.apply),
    ("environment", _environment.apply),
    ("seccomp", _seccomp),
    ("limits", _limits.apply),
    ("command", _command),
)


def build_plan(spec: SandboxSpec, bwrap: str = "bwrap") -> Plan:
    """Run every stage. The returned plan owns fds: the caller must ``close()`` it after spawning."""
    plan = Plan(bwrap=_bwrap.resolve(bwrap), identity=host_identity(spec))
    try:
        for _name, stage in STAGES:
            stage(spec, plan)
    except SandboxError:
        plan.close()
        raise
    except Exception as exc:
        plan.close()
        raise SandboxError("sandbox.unavailable", f"the sandbox could not be prepared: {exc}") from exc
    return plan
