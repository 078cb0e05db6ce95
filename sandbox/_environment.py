"""The environment: exactly the spec's variables inside, and nothing of the host's anywhere.

``--clearenv`` alone is not enough: bwrap's own process (pid 1 inside) keeps the
environment it was started with, readable at /proc/1/environ. So bwrap itself
is started with an empty environment (see the launcher), and the variables the
sandbox should have are set with ``--setenv``.
"""

from __future__ import annotations

from sandbox._plan import Plan
from sandbox.spec import SandboxSpec

__all__ = ["BWRAP_ENV", "apply"]

BWRAP_ENV: dict[str, str] = {}  # the whole environment bwrap is started with
# Inside: exactly spec.env, plus PWD=/work which bwrap sets after --chdir.


def apply(spec: SandboxSpec, plan: Plan) -> None:
    plan.add("--clearenv")
    for key, value in spec.env.items():
        plan.add("--setenv", key, value)
