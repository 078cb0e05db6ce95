#!/bin/sh
# A local stand-in for python:3.11-slim-bookworm, for machines that reach no container registry.
#
#   deployment/podman/make-base.sh [IMAGE]        (default IMAGE: localhost/stockade-base:latest)
#
# Like the official image: Debian 12 (debootstrap --variant=minbase) + a CPython 3.11 build under
# /usr/local. Debian's own python3.11 (3.11.2) is NOT enough: Stockade needs the tarfile extraction
# filters of 3.11.4+ (tarfile.data_filter). So the CPython is copied from this host:
# STOCKADE_BASE_PYTHON (default: the first python3.11 on PATH that is >= 3.11.4 and not Debian's),
# e.g. a pyenv build. It must be built for Debian 12 (it links against bookworm's libraries).
#
# Needs root, debootstrap, podman. STOCKADE_FORCE_BASE=1 rebuilds an existing image;
# DEBIAN_MIRROR picks another mirror. About 1 minute.
set -eu

IMAGE="${1:-localhost/stockade-base:latest}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PODMAN="${PODMAN:-podman}"

die() { echo "make-base: $*" >&2; exit 1; }

if [ "${STOCKADE_FORCE_BASE:-0}" != 1 ] && $PODMAN image exists "$IMAGE"; then
    echo "base image $IMAGE exists (STOCKADE_FORCE_BASE=1 rebuilds it)"
    exit 0
fi
for tool in debootstrap chroot $PODMAN; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install -y debootstrap podman runc)"
done
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

# --- which CPython 3.11
CHECK='import sys, tarfile; sys.exit(0 if sys.version_info[:2] == (3, 11) and sys.version_info >= (3, 11, 4) and hasattr(tarfile, "data_filter") else 1)'
PY=""
for cand in ${STOCKADE_BASE_PYTHON:-$(command -v python3.11 python3 2>/dev/null) /root/.pyenv/versions/3.11*/bin/python3.11}; do
    [ -x "$cand" ] && "$cand" -c "$CHECK" 2>/dev/null && { PY="$cand"; break; }
done
[ -n "$PY" ] || die "no CPython 3.11.4+ found (Debian's 3.11.2 lacks tarfile.data_filter); set STOCKADE_BASE_PYTHON to one, or use the official image: STOCKADE_BASE=python:3.11-slim-bookworm"
PREFIX="$("$PY" -c 'import sys; print(sys.base_prefix)')"
VERSION="$("$PY" -c 'import platform; print(platform.python_version())')"
[ -d "$PREFIX/lib/python3.11/encodings" ] || die "$PY: no standard library under $PREFIX/lib/python3.11"

ROOTFS="$(mktemp -d /var/tmp/stockade-base.XXXXXX)"
trap 'rm -rf "$ROOTFS" "$ROOTFS.log"' EXIT INT TERM

# --- Debian 12, with the run-time libraries CPython's extension modules link against
LIBS=ca-certificates,netbase,tzdata,libssl3,libffi8,libsqlite3-0,libuuid1,liblzma5,libbz2-1.0,zlib1g,libreadline8,libncursesw6,libgdbm6,libexpat1
debootstrap --variant=minbase --include="$LIBS" bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -20 "$ROOTFS.log" >&2; die "debootstrap failed"; }

# --- CPython into /usr/local, as the official image has it: the standard library only (no
# site-packages of the host, no tests, no static library, no tkinter/idle)
(cd "$PREFIX" && tar -c --exclude='lib/python3.11/site-packages/*' --exclude='lib/python3.11/test' \
    --exclude='lib/python3.11/idlelib' --exclude='lib/python3.11/tkinter' --exclude='lib/python3.11/turtledemo' \
    --exclude='lib/python3.11/lib-dynload/_tkinter*' --exclude='*.a' \
    bin/python3.11 lib/libpython3.11.so* lib/python3.11) | tar -C "$ROOTFS/usr/local" -x
for link in python3 python; do ln -sf python3.11 "$ROOTFS/usr/local/bin/$link"; done
chroot "$ROOTFS" /sbin/ldconfig  # libpython from /usr/local/lib (the host build's RUNPATH is gone)
chroot "$ROOTFS" /usr/local/bin/python3 -c "import ssl, sqlite3, ctypes, lzma, bz2, ensurepip, venv; $CHECK" \
    || die "the copied CPython does not run in the Debian 12 root (built for another system?)"

# --- slim: no apt lists, caches, docs or man pages (the Dockerfile runs apt-get update itself)
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log

tar -C "$ROOTFS" --numeric-owner -c . | $PODMAN import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$VERSION" \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm minbase + CPython $VERSION (stockade make-base.sh)" \
    - "$IMAGE" >/dev/null
echo "base image $IMAGE: Debian 12 + CPython $VERSION (from $PREFIX)"
