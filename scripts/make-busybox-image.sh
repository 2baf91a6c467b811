#!/usr/bin/env bash
# make-busybox-image.sh [OUTDIR]: Warren's built-in image, made from Debian's
# busybox-static with umoci, so that the demo and the tests need no registry.
#
# Writes, in OUTDIR (default target/images/busybox):
#   layout/             OCI image layout, tag "latest"
#   busybox-oci.tar     the same image as an oci-archive (ref warren/busybox:latest)
#   busybox-docker.tar  the same image in `docker save` form (repo tag warren/busybox:latest)
# The image: /bin/busybox, a symlink per applet, /etc/passwd and /etc/group,
# /tmp (1777), /root, and mount points; Cmd /bin/sh.
#
# Idempotent: does nothing when OUTDIR/stamp matches this script and the
# busybox binary. Prints OUTDIR.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/target/images/busybox}
BUSYBOX=${BUSYBOX:-/bin/busybox}
REF=warren/busybox:latest

die() { printf 'make-busybox-image: %s\n' "$*" >&2; exit 1; }
for c in umoci jq tar sha256sum; do
	command -v "$c" >/dev/null || die "$c is missing (scripts/setup.sh installs it)"
done
[ -x "$BUSYBOX" ] || die "no $BUSYBOX (apt install busybox-static)"

stamp=$(cat "$BUSYBOX" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$OUT"
	exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warren-busybox.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT
L=$WORK/layout
umoci init --layout "$L"
umoci new --image "$L:latest"
umoci unpack --image "$L:latest" "$WORK/bundle" >/dev/null
R=$WORK/bundle/rootfs

mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,tmp,var/tmp,home,run}
chmod 1777 "$R/tmp" "$R/var/tmp"
chmod 0700 "$R/root"
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
	[ -n "$applet" ] && [ "$applet" != bin/busybox ] && [ "$applet" != linuxrc ] || continue
	[ -e "$R/$applet" ] || [ -L "$R/$applet" ] && continue
	mkdir -p "$R/$(dirname "$applet")"
	ln -s /bin/busybox "$R/$applet"
done
[ -L "$R/bin/sh" ] || die "busybox has no sh applet"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'daemon:x:1:1:daemon:/usr/sbin:/bin/false' \
	'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$R/etc/passwd"
printf '%s\n' 'root:x:0:' 'daemon:x:1:' 'nogroup:x:65534:' >"$R/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$R/etc/hosts"

umoci repack --image "$L:latest" "$WORK/bundle" >/dev/null
umoci config --image "$L:latest" --os linux --architecture amd64 \
	--config.cmd /bin/sh --config.workingdir / \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci gc --layout "$L"

blob() { echo "$L/blobs/sha256/${1#sha256:}"; }
MANIFEST=$(jq -r '.manifests[0].digest' "$L/index.json")
CONFIG=$(jq -r '.config.digest' "$(blob "$MANIFEST")")

# oci-archive: the layout in a tar, its manifest annotated with the full name.
A=$WORK/archive
mkdir -p "$A"
cp -a "$L/blobs" "$L/oci-layout" "$A/"
jq -c --arg r "$REF" '.manifests[0].annotations["org.opencontainers.image.ref.name"] = $r' "$L/index.json" >"$A/index.json"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$A" -cf "$WORK/busybox-oci.tar" oci-layout index.json blobs

# docker save: config as HEX.json, each layer uncompressed as ID/layer.tar.
D=$WORK/docker
mkdir -p "$D"
cp "$(blob "$CONFIG")" "$D/${CONFIG#sha256:}.json"
layers=()
for l in $(jq -r '.layers[].digest' "$(blob "$MANIFEST")"); do
	id=${l#sha256:}
	mkdir -p "$D/$id"
	gzip -dc "$(blob "$l")" >"$D/$id/layer.tar"
	layers+=("$id/layer.tar")
done
jq -n --arg c "${CONFIG#sha256:}.json" --arg r "$REF" '[{Config: $c, RepoTags: [$r], Layers: $ARGS.positional}]' \
	--args "${layers[@]}" >"$D/manifest.json"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$D" -cf "$WORK/busybox-docker.tar" .

mkdir -p "$OUT"
rm -rf -- "$OUT/layout" "$OUT/stamp"
mv "$L" "$OUT/layout"
mv -f "$WORK/busybox-oci.tar" "$WORK/busybox-docker.tar" "$OUT/"
echo "$stamp" >"$OUT/stamp"
echo "$OUT"
