#!/bin/sh
# Print the path of a Docker Compose v2 binary: the docker CLI plugin when one is installed, else
# the one in Debian 13's docker-compose package (a static Go binary that runs on Debian 12), fetched
# once with apt-get into $STOCKADE_PODMAN_STATE/compose (default /var/tmp/stockade-podman/compose).
# Debian 12 itself only has Compose v1 (1.29, Python).
set -eu
for p in /usr/libexec/docker/cli-plugins/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose \
         /usr/lib/docker/cli-plugins/docker-compose "${HOME:-/root}/.docker/cli-plugins/docker-compose"; do
    [ -x "$p" ] && { echo "$p"; exit 0; }
done
DIR="${STOCKADE_PODMAN_STATE:-/var/tmp/stockade-podman}/compose"
BIN="$DIR/root/usr/libexec/docker/cli-plugins/docker-compose"
[ -x "$BIN" ] && { echo "$BIN"; exit 0; }
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { echo "get-compose: no docker compose plugin, and no apt-get/dpkg-deb to fetch one" >&2; exit 1; }
mkdir -p "$DIR/lists/partial" "$DIR/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" \
    >"$DIR/sources.list"
# a private source list and state: the host's apt configuration is not touched
set -- -o "Dir::Etc::SourceList=$DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
       -o "Dir::State::Lists=$DIR/lists" -o "Dir::Cache=$DIR/cache" -o APT::Sandbox::User=root
apt-get "$@" -qq update >&2
(cd "$DIR" && apt-get "$@" -qq download docker-compose >&2)
dpkg-deb -x "$(ls "$DIR"/docker-compose_*.deb | tail -1)" "$DIR/root"
"$BIN" version >&2
echo "$BIN"
