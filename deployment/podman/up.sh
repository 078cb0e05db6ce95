#!/bin/sh
# The compose stack with plain podman, against a PostgreSQL and Redis you already run (host network):
# `stockade migrate` once, then one `api` and STOCKADE_WORKERS `worker` containers in a pod.
#
#   STOCKADE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/stockade \
#   STOCKADE_REDIS_URL=redis://127.0.0.1:6379/0 deployment/podman/up.sh     # then: down.sh
#
# Settings (environment):
#   STOCKADE_DATABASE_URL, STOCKADE_REDIS_URL   required
#   STOCKADE_AUDIT_KEY  optional: without it `migrate` generates one into the shared data volume
#   STOCKADE_STACK    name of the pod, its containers and the data volume  (default: stockade)
#   STOCKADE_HOST / STOCKADE_PORT   where the api listens on the host       (default: 127.0.0.1:8000)
#   STOCKADE_WORKERS  number of worker containers                          (default: 2)
#   STOCKADE_IMAGE    (default: localhost/stockade:latest; deployment/podman/build.sh makes it)
#   passed through when set: STOCKADE_AUDIT_KEY STOCKADE_REDIS_PREFIX STOCKADE_LOG_LEVEL
#   STOCKADE_OPENAI_API_KEY STOCKADE_OPENAI_BASE_URL STOCKADE_ANTHROPIC_API_KEY STOCKADE_ANTHROPIC_BASE_URL
#
# Workers run bubblewrap inside their container; the least they need (measured, see
# deployment/README.md): --security-opt unmask=/proc/* (bwrap mounts a fresh /proc, which the kernel
# refuses while parts of the container's /proc are masked) and a seccomp profile that also allows
# sethostname/setdomainname (seccomp-profile.py). No --privileged, no added capabilities.
# Each worker gets its own sandbox uid range (rootful: container uids are host uids, and two workers
# handing out the same uid would share its RLIMIT_NPROC).
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/_common.sh"

die() { echo "up: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

STACK="${STOCKADE_STACK:-stockade}"
HOST="${STOCKADE_HOST:-127.0.0.1}"
PORT="${STOCKADE_PORT:-8000}"
WORKERS="${STOCKADE_WORKERS:-2}"
: "${STOCKADE_DATABASE_URL:?set STOCKADE_DATABASE_URL (postgresql://...)}"
: "${STOCKADE_REDIS_URL:?set STOCKADE_REDIS_URL (redis://...)}"

$PODMAN image exists "$STOCKADE_IMAGE" || die "no image $STOCKADE_IMAGE; run deployment/podman/build.sh"
! $PODMAN pod exists "$STACK" || die "pod $STACK exists; deployment/podman/down.sh first (STOCKADE_STACK=$STACK)"

STATE="${STOCKADE_PODMAN_STATE:-/var/tmp/stockade-podman}/$STACK"
mkdir -p "$STATE"
PROFILE="$STATE/worker-seccomp.json"
python3 "$HERE/seccomp-profile.py" "${STOCKADE_SECCOMP_DEFAULT:-/usr/share/containers/seccomp.json}" >"$PROFILE"

# Arguments every container shares: the settings as environment, the data volume, host network.
set -- -e STOCKADE_DATABASE_URL -e STOCKADE_REDIS_URL \
       -e "STOCKADE_HOST=$HOST" -e "STOCKADE_PORT=$PORT" -e STOCKADE_DATA_DIR=/data
for name in STOCKADE_AUDIT_KEY STOCKADE_REDIS_PREFIX STOCKADE_LOG_LEVEL STOCKADE_OPENAI_API_KEY \
            STOCKADE_OPENAI_BASE_URL STOCKADE_ANTHROPIC_API_KEY STOCKADE_ANTHROPIC_BASE_URL; do
    eval "value=\${$name:-}"
    [ -z "$value" ] || set -- "$@" -e "$name"   # unset or empty: not passed (an empty key is no key)
done
set -- "$@" --volume "$STACK-data:/data" --network host --pod "$STACK" --label "stockade.stack=$STACK"

t0="$(now)"
$PODMAN volume exists "$STACK-data" || $PODMAN volume create "$STACK-data" >/dev/null
# no infra container: it would need a pause image, and with the host network there is nothing to share
$PODMAN pod create --infra=false --name "$STACK" --label "stockade.stack=$STACK" >/dev/null

# shellcheck disable=SC2086  # PODMAN_RUNTIME / PODMAN_ULIMITS are option lists
$PODMAN run --rm $PODMAN_RUNTIME $PODMAN_ULIMITS "$@" --no-healthcheck --name "$STACK-migrate" \
    "$STOCKADE_IMAGE" migrate >/dev/null || die "stockade migrate failed"
echo "migrate: done in $(since "$t0") s"

t1="$(now)"
# --no-healthcheck: podman runs healthchecks from systemd timers (none in a container); the same
# /readyz probe as the image's HEALTHCHECK is run below with `podman exec`.
# shellcheck disable=SC2086
$PODMAN run -d $PODMAN_RUNTIME $PODMAN_ULIMITS "$@" --no-healthcheck --name "$STACK-api" \
    --hostname "$STACK-api" "$STOCKADE_IMAGE" api >/dev/null
i=1
while [ "$i" -le "$WORKERS" ]; do
    # shellcheck disable=SC2086
    $PODMAN run -d $PODMAN_RUNTIME $PODMAN_ULIMITS "$@" --no-healthcheck --name "$STACK-worker-$i" \
        --hostname "$STACK-worker-$i" -e "STOCKADE_WORKER_ID=$STACK-worker-$i" \
        -e "STOCKADE_SANDBOX_UID_BASE=$((200000 + (i - 1) * 10000))" \
        --security-opt 'unmask=/proc/*' --security-opt "seccomp=$PROFILE" \
        "$STOCKADE_IMAGE" worker >/dev/null
    i=$((i + 1))
done

deadline=$(( $(date +%s) + ${STOCKADE_UP_TIMEOUT:-90} ))
READY='import os,sys,urllib.request as u; sys.exit(0 if u.urlopen("http://%s:%s/readyz" % (os.environ["STOCKADE_HOST"], os.environ["STOCKADE_PORT"]), timeout=2).status == 200 else 1)'
until $PODMAN exec "$STACK-api" python -c "$READY" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { $PODMAN logs --tail 20 "$STACK-api" >&2; die "the api did not become ready"; }
    $PODMAN container inspect -f '{{.State.Running}}' "$STACK-api" | grep -q true \
        || { $PODMAN logs --tail 20 "$STACK-api" >&2; die "the api container exited"; }
    sleep 0.5
done
echo "api: ready in $(since "$t1") s on http://$HOST:$PORT (readyz)"

# The sandbox self-check for real in a worker container: a probe sandbox must start with seccomp,
# no capabilities and no network. It proves the security options above are enough here.
PROBLEMS="$($PODMAN exec "$STACK-worker-1" python -c \
    'from sandbox.checks import check_backend; print("; ".join(check_backend()))')" \
    || die "cannot run the sandbox check in $STACK-worker-1"
[ -z "$PROBLEMS" ] || die "sandbox not usable in the worker container: $PROBLEMS"
echo "workers: $WORKERS up, sandbox check passed in $STACK-worker-1"
echo "up: $STACK in $(since "$t0") s. A tenant and key:"
echo "  podman exec $STACK-api stockade tenant create demo"
