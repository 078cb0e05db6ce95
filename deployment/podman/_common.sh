# Sourced by the scripts beside it. Podman settings shared by build, up and down.
PODMAN="${PODMAN:-podman}"
STOCKADE_IMAGE="${STOCKADE_IMAGE:-localhost/stockade:latest}"
STOCKADE_BASE="${STOCKADE_BASE:-localhost/stockade-base:latest}"

# runc: the runtime Debian's podman is known to work with here (crun may be absent).
PODMAN_RUNTIME="--runtime ${PODMAN_OCI_RUNTIME:-runc}"

# Rootful podman asks for RLIMIT_NOFILE/NPROC = 1048576 in every container; where podman itself runs
# without CAP_SYS_RESOURCE (inside another container, as on our CI machines) runc cannot raise a hard
# limit and the container does not start ("error setting rlimit type 7"). Ask for what this shell
# has instead (podman caps its own RLIMIT_NPROC at 32768, so no more than that).
_cap() { if [ "$1" = unlimited ] || [ "$1" -gt "$2" ]; then echo "$2"; else echo "$1"; fi; }
_NOFILE="$(_cap "$(ulimit -Hn)" 1048576)"
_NPROC="$(_cap "$(ulimit -Hu 2>/dev/null || echo 32768)" 32768)"
PODMAN_ULIMITS="--ulimit nofile=${_NOFILE}:${_NOFILE} --ulimit nproc=${_NPROC}:${_NPROC}"
