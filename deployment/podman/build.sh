#!/bin/sh
# Build the Stockade image with podman from deployment/Dockerfile.
#
#   deployment/podman/build.sh            -> localhost/stockade:latest  (STOCKADE_IMAGE to rename)
#
# BASE: STOCKADE_BASE (default localhost/stockade-base:latest, made by make-base.sh when missing;
# set STOCKADE_BASE=python:3.11-slim-bookworm where a registry is reachable). When the host has a
# CA bundle at /etc/ssl/certs/ca-certificates.crt (e.g. a TLS-inspecting egress proxy), it is
# bind-mounted into the build and pip uses it.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
. "$HERE/_common.sh"

case "$STOCKADE_BASE" in
    localhost/*) "$HERE/make-base.sh" "$STOCKADE_BASE" ;;
esac

set -- --build-arg "BASE=$STOCKADE_BASE"
CA=/etc/ssl/certs/ca-certificates.crt
if [ -f "$CA" ]; then
    set -- "$@" --volume /etc/ssl/certs:/etc/ssl/certs:ro --build-arg "PIP_CERT=$CA"
fi
# --format docker keeps HEALTHCHECK (OCI images have none); --network host: the RUN steps reach
# the Debian mirror and PyPI the way the host does (no bridge/nftables needed in the build).
OLD="$($PODMAN image inspect -f '{{.Id}}' "$STOCKADE_IMAGE" 2>/dev/null || true)"
# shellcheck disable=SC2086
$PODMAN build $PODMAN_RUNTIME $PODMAN_ULIMITS --network host --format docker --layers \
    --ignorefile "$ROOT/deployment/Dockerfile.dockerignore" \
    -f "$ROOT/deployment/Dockerfile" -t "$STOCKADE_IMAGE" "$@" "$ROOT"
NEW="$($PODMAN image inspect -f '{{.Id}}' "$STOCKADE_IMAGE")"
# the previous build, now untagged, goes (unless a container still uses it); its layers stay cached
if [ -n "$OLD" ] && [ "$OLD" != "$NEW" ]; then
    $PODMAN rmi "$OLD" >/dev/null 2>&1 || true
fi
