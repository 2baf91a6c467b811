#!/usr/bin/env bash
# install-criu.sh: make sure a CRIU that works on this kernel is installed.
#
# Debian 12's criu 3.17 fails on kernels with a [vvar_vclock] mapping (6.x), so
# when no working criu is found this builds CRIU 4.1.1 from Debian trixie's
# source tarball (the orig tarball only; no Debian patches are needed) into
# /usr/local/sbin/criu. The tarball comes from the machine's own Debian mirror
# through a temporary apt source list; the system's lists stay untouched; its
# sha256 is checked. Idempotent: does nothing when `criu check` already passes.
set -euo pipefail

log() { printf '[install-criu] %s\n' "$*" >&2; }
die() { printf '[install-criu] ERROR: %s\n' "$*" >&2; exit 1; }

VERSION=4.1.1
SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
PREFIX=/usr/local
BUILD_DEPS=(
	libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf
	pkg-config libnl-3-dev libnet1-dev libcap-dev libaio-dev libgnutls28-dev libbsd-dev uuid-dev
	build-essential xz-utils iproute2
)

works() { "$1" check >/dev/null 2>&1; }

if [ -x "$PREFIX/sbin/criu" ] && works "$PREFIX/sbin/criu"; then
	log "criu $("$PREFIX/sbin/criu" --version | awk '/Version/ {print $2}') at $PREFIX/sbin/criu works"
	exit 0
fi

missing=()
for p in "${BUILD_DEPS[@]}"; do
	[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing build deps: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
fi

WORK=$(mktemp -d /tmp/criu-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
TARBALL=criu_$VERSION.orig.tar.xz
CACHE=/var/cache/warren
mkdir -p "$CACHE"
if ! echo "$SHA256  $CACHE/$TARBALL" | sha256sum -c --quiet 2>/dev/null; then
	# The machine's own mirror, as its sources name it.
	MIRROR=$({ cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
		grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ')
	MIRROR=${MIRROR:-http://deb.debian.org/debian}
	MIRROR=${MIRROR%/}
	mkdir -p "$WORK/lists/partial" "$WORK/dl"
	echo "deb-src $MIRROR trixie main" >"$WORK/sources.list"
	APT=(-o "Dir::Etc::SourceList=$WORK/sources.list" -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::State::Lists=$WORK/lists")
	log "fetching $TARBALL from $MIRROR (trixie sources)"
	apt-get "${APT[@]}" update -qq >&2
	(cd "$WORK/dl" && apt-get "${APT[@]}" source --download-only criu >&2 2>&1) || true
	[ -f "$WORK/dl/$TARBALL" ] || die "could not download $TARBALL"
	cp "$WORK/dl/$TARBALL" "$CACHE/$TARBALL"
fi
echo "$SHA256  $CACHE/$TARBALL" | sha256sum -c --quiet || die "$TARBALL: sha256 mismatch"

log "building criu $VERSION"
tar -C "$WORK" -xf "$CACHE/$TARBALL"
make -C "$WORK/criu-$VERSION" -j"$(nproc)" criu >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
install -D -m 0755 "$WORK/criu-$VERSION/criu/criu" "$PREFIX/sbin/criu"
works "$PREFIX/sbin/criu" || die "$PREFIX/sbin/criu check fails on this kernel: $("$PREFIX/sbin/criu" check 2>&1 | tail -3)"
log "installed $PREFIX/sbin/criu $VERSION"
