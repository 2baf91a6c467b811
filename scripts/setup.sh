#!/usr/bin/env bash
# setup.sh: install what Warren's build, demo and tests need, then build it.
# Idempotent: apt runs only when a package is missing; cargo only rebuilds
# what changed. Run as root on Debian 12.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must be run as root (containers need it)"

# busybox-static: the test image; runc/crun/containerd/podman/conmon/docker.io/
# umoci/skopeo: reference runtime and real clients; uidmap/iproute2/jq: tests
# and scripts; iptables: CRIU locks the network with it, and tenants' CNI plugins NAT with it;
# containernetworking-plugins: tenants' bridge, host-local and portmap; nftables: the
# tenant bridge's anti-spoofing guard; e2fsprogs: tenants'
# disk images (mkfs.ext4); docker-registry: the registry `image pull` and the CRI tests pull from;
# protobuf-compiler: the CRI tests' client (k8s-cri generates its code with protoc); libseccomp-dev/pkg-config/build-essential: building.
PACKAGES=(
	busybox-static runc containerd podman conmon docker.io crun umoci skopeo
	uidmap iproute2 iptables jq libseccomp-dev pkg-config build-essential
	containernetworking-plugins e2fsprogs docker-registry nftables protobuf-compiler
	ca-certificates procps util-linux
)

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Packages with a service (containerd, docker.io) must not start a daemon
	# on the host: the tests run their own private ones.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
	log "all packages present"
fi

# rustup puts cargo in ~/.cargo/bin, which non-login shells (sudo, CI) may lack.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
	export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"

# CRIU for checkpoint/restore: Debian 12's 3.17 fails on this kernel, so a
# working one is built once into /usr/local/sbin (see install-criu.sh).
"$ROOT/scripts/install-criu.sh"

log "build (scripts/build.sh)"
"$ROOT/scripts/build.sh" >/dev/null
log "built $ROOT/target/bin/warren"

# The built-in image (busybox-static, no registry) for the demo and the tests.
log "busybox image ($("$ROOT/scripts/make-busybox-image.sh"))"
