#!/usr/bin/env bash
# install-criu.sh: make sure a CRIU that works on this kernel is installed.
#
# Debian 12's criu 3.17 fails on kernels with a [vvar_vclock] mapping (6.x), and
# CRIU 4.1.1 (trixie) cannot dump TCP sockets on Linux >= 6.16 ("Can't get 1:16
# opt", checkpoint-restore/criu#2705), so this builds CRIU 4.2.1 from Debian
# sid's source tarball (the orig tarball only; no Debian patches are needed)
# into /usr/local/sbin/criu. Should sid have moved on, trixie's 4.1.1 is built
# instead (everything but TCP connections works with it). Tarballs come from
# the machine's own Debian mirror through a temporary apt source list; the
# system's lists stay untouched; their sha256 is checked. Idempotent: does
# nothing when the installed criu is the wanted version and `criu check` passes.
set -euo pipefail

log() { printf '[install-criu] %s\n' "$*" >&2; }
die() { printf '[install-criu] ERROR: %s\n' "$*" >&2; exit 1; }

# version, suite, sha256 of the orig tarball; the first one obtainable is built.
CANDIDATES=(
	"4.2.1 sid 29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9"
	"4.1.1 trixie f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe"
)
PREFIX=/usr/local
BUILD_DEPS=(
	libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf
	pkg-config libnl-3-dev libnet1-dev libcap-dev libaio-dev libgnutls28-dev libbsd-dev uuid-dev
	build-essential xz-utils iproute2
)

works() { "$1" check >/dev/null 2>&1; }
version_of() { "$1" --version 2>/dev/null | awk '/Version/ {print $2}'; }

WANTED=${CANDIDATES[0]%% *}
if [ -x "$PREFIX/sbin/criu" ] && works "$PREFIX/sbin/criu" && [ "$(version_of "$PREFIX/sbin/criu")" = "$WANTED" ]; then
	log "criu $WANTED at $PREFIX/sbin/criu works"
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
CACHE=/var/cache/warren
mkdir -p "$CACHE"
# The machine's own mirror, as its sources name it.
MIRROR=$({ cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
	grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ')
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

# fetch VERSION SUITE SHA256: the orig tarball into the cache; fails if unobtainable.
fetch() {
	local version=$1 suite=$2 sha=$3 tarball=criu_$1.orig.tar.xz
	echo "$sha  $CACHE/$tarball" | sha256sum -c --quiet 2>/dev/null && return 0
	local dir=$WORK/$suite
	mkdir -p "$dir/lists/partial" "$dir/dl"
	echo "deb-src $MIRROR $suite main" >"$dir/sources.list"
	local apt=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::State::Lists=$dir/lists")
	log "fetching $tarball from $MIRROR ($suite sources)"
	apt-get "${apt[@]}" update -qq >&2 || return 1
	(cd "$dir/dl" && apt-get "${apt[@]}" source --download-only criu >&2 2>&1) || true
	[ -f "$dir/dl/$tarball" ] || { log "$tarball is not in $suite (any more)"; return 1; }
	echo "$sha  $dir/dl/$tarball" | sha256sum -c --quiet || die "$tarball: sha256 mismatch"
	cp "$dir/dl/$tarball" "$CACHE/$tarball"
}

VERSION=
for c in "${CANDIDATES[@]}"; do
	read -r v suite sha <<<"$c"
	if fetch "$v" "$suite" "$sha"; then VERSION=$v; break; fi
done
if [ -z "$VERSION" ]; then
	if [ -x "$PREFIX/sbin/criu" ] && works "$PREFIX/sbin/criu"; then
		log "no CRIU source obtainable: keeping criu $(version_of "$PREFIX/sbin/criu") at $PREFIX/sbin/criu"
		exit 0
	fi
	die "could not download any CRIU source tarball"
fi
TARBALL=criu_$VERSION.orig.tar.xz

log "building criu $VERSION"
tar -C "$WORK" -xf "$CACHE/$TARBALL"
make -C "$WORK/criu-$VERSION" -j"$(nproc)" criu >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
install -D -m 0755 "$WORK/criu-$VERSION/criu/criu" "$PREFIX/sbin/criu"
works "$PREFIX/sbin/criu" || die "$PREFIX/sbin/criu check fails on this kernel: $("$PREFIX/sbin/criu" check 2>&1 | tail -3)"
log "installed $PREFIX/sbin/criu $VERSION"
