#!/usr/bin/env bash
# make-bundle.sh DIR [ARGS...]: make an OCI bundle in DIR from Debian's
# busybox-static, without any image registry.
#   DIR/rootfs       busybox + one symlink per applet, minimal /etc, empty
#                    mount points (proc, sys, dev, tmp, root)
#   DIR/config.json  the runtime's own default (`warren spec`), with
#                    process.args = ARGS when given, and terminal = false
# WARREN_BIN overrides the warren binary (default target/bin/warren).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WARREN_BIN=${WARREN_BIN:-$ROOT/target/bin/warren}

die() { printf '[make-bundle] ERROR: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 DIR [ARGS...]"
DIR=$1; shift
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: apt-get install busybox-static"
[ -x "$WARREN_BIN" ] || die "warren binary not found at $WARREN_BIN: run scripts/setup.sh"
[ ! -e "$DIR/config.json" ] || die "$DIR already holds a bundle"

RFS=$DIR/rootfs
mkdir -p "$RFS"/{bin,etc,proc,sys,dev,root,tmp}
chmod 1777 "$RFS/tmp"
chmod 0700 "$RFS/root"
cp "$BUSYBOX" "$RFS/bin/busybox"

# --list-full prints paths like usr/bin/env; link each to /bin/busybox.
"$BUSYBOX" --list-full | while read -r applet; do
	[ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
	mkdir -p "$RFS/$(dirname "$applet")"
	ln -sf /bin/busybox "$RFS/$applet"
done

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$RFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$RFS/etc/group"
printf 'warren\n' >"$RFS/etc/hostname"

(cd "$DIR" && "$WARREN_BIN" spec) || die "'warren spec' failed"
[ -f "$DIR/config.json" ] || die "'warren spec' wrote no config.json"

# One --arg per argument keeps each whole (newlines included); jq 1.6's
# --args would take an argument like "-c" as its own option.
args='null'
if [ $# -gt 0 ]; then
	args='[]'
	for a in "$@"; do
		args=$(jq -nc --argjson l "$args" --arg a "$a" '$l + [$a]')
	done
fi
tmp=$(mktemp "$DIR/config.json.XXXXXX")
jq --argjson a "$args" \
	'.process.terminal = false | if $a != null then .process.args = $a else . end' \
	"$DIR/config.json" >"$tmp"
mv -f "$tmp" "$DIR/config.json"
