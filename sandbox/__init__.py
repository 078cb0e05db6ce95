"""The execution plane: sandbox launcher (host side) and the in-sandbox runtime (``sandbox.runtime``).

Public host-side API (imports point down only: nothing here imports ``supervisor`` or ``app``)::

    from sandbox.spec import Limits, SandboxSpec
    from sandbox.launcher import launch, SandboxProcess, ExitInfo
    from sandbox.checks import check_backend
    from sandbox.identity import UidPool
    from sandbox.interpreter import find_interpreter
    from sandbox.errors import SandboxError

Submodules are imported on demand so that importing ``sandbox.runtime`` (e.g. to find its
directory) does not pull in the launcher.
"""

__all__: list[str] = []
