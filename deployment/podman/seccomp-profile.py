#!/usr/bin/env python3
"""Print the worker's seccomp profile: podman's default profile plus sethostname/setdomainname.

    seccomp-profile.py [DEFAULT_PROFILE] > worker-seccomp.json

The default (containers-common /usr/share/containers/seccomp.json) already allows unshare, clone
and mount, which bubblewrap needs for its user/mount/pid namespaces, but refuses sethostname and
setdomainname without CAP_SYS_ADMIN; bwrap names the sandbox's fresh UTS namespace, so the worker
needs those two. Everything else stays as the installed podman ships it (derived at start-up,
so it follows podman updates). Measured: with this profile and `unmask=/proc/*`, the sandbox
self-check passes; with podman's default profile it fails ("Can't set hostname").
"""

from __future__ import annotations

import json
import sys

_NEEDED = {"sethostname", "setdomainname"}


def worker_profile(default: dict) -> dict:
    rules = []
    for rule in default.get("syscalls", []):
        names = set(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if rule.get("action") == "SCMP_ACT_ERRNO" and names & _NEEDED:
            rest = sorted(names - _NEEDED)  # keep refusing whatever else the rule names
            if rest:
                rules.append({**rule, "names": rest})
            continue
        rules.append(rule)
    rules.append({"names": sorted(_NEEDED), "action": "SCMP_ACT_ALLOW", "args": [],
                  "comment": "stockade worker: bubblewrap sets the hostname of each sandbox's own UTS namespace"})
    return {**default, "syscalls": rules}


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/usr/share/containers/seccomp.json"
    try:
        with open(path) as f:
            default = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"seccomp-profile: cannot read podman's default profile {path}: {exc}", file=sys.stderr)
        return 1
    json.dump(worker_profile(default), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
