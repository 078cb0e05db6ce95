#!/bin/sh
# Stop and remove the pod that up.sh started (STOCKADE_STACK, default stockade).
#   deployment/podman/down.sh            keeps the data volume
#   deployment/podman/down.sh --volumes  removes it too
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/_common.sh"

STACK="${STOCKADE_STACK:-stockade}"
if $PODMAN pod exists "$STACK"; then
    # SIGTERM, then SIGKILL after 10 s: workers finish their shutdown (settlements) within that
    $PODMAN pod stop -t 10 "$STACK" >/dev/null || true
    $PODMAN pod rm -f "$STACK" >/dev/null
fi
if [ "${1:-}" = --volumes ]; then
    ! $PODMAN volume exists "$STACK-data" || $PODMAN volume rm -f "$STACK-data" >/dev/null
fi
rm -rf "${STOCKADE_PODMAN_STATE:-/var/tmp/stockade-podman}/$STACK"
echo "down: $STACK"
