# shellcheck shell=bash
# lib.sh: shared helpers for Warren's real-client tests (containerd/ctr,
# podman, docker). Source it from a suite script, then call
#   wcl_init SUITE WARREN_BIN
# which makes a private temp dir /tmp/warren-clients.XXXXXX, installs a trap
# that ALWAYS cleans up (suite hooks, daemons, stray processes, mounts,
# cgroups, /run/warren entries, host paths the clients created, the temp dir)
# and prints the final line "clients-SUITE: N passed, M failed".
#
# Nothing here touches state this run did not create: daemons are stopped by
# the PIDs we started, cgroups are removed by the unique names we chose,
# processes are only killed when they reference our temp dir (command line,
# exe, cwd) or sit in one of our cgroups. A later run reaps the temp dir of a
# run that was killed outright (SIGKILL, no trap).
set -uo pipefail

WCL_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WCL_REPO=$(cd "$WCL_LIB_DIR/../.." && pwd)
# The busybox test image is built once and reused (target/ is not in git).
WCL_CACHE=${WARREN_CLIENTS_CACHE:-$WCL_REPO/target/clients-cache}
WCL_IMAGE_REF=localhost/warren-busybox:latest
WCL_IMAGE_VERSION=1 # bump when the image recipe changes
WCL_CMD_TIMEOUT=${WCL_CMD_TIMEOUT:-60} # seconds, any single client command
WCL_SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WCL_SUITE=""
WCL_BIN=""
WCL_TMP=""
WCL_ID="" # unique per run: used for cgroup parents and namespaces
WCL_PASSED=0
WCL_FAILED=0
WCL_FAILS=()
WCL_HOOKS=()       # suite cleanup functions, run in reverse order
WCL_DAEMONS=()     # "pid:name" of daemons we started, stopped in reverse
WCL_CGROUPS=()     # cgroup dir names (unique to this run) to remove
WCL_HOST_NEW=()    # host paths that did not exist before this run
WCL_DONE=0

wcl_ts() { date +%H:%M:%S; }
# Output goes to the stdout the suite started with (fd WCL_OUT), even from a
# trap that fires while a command's output is redirected to /dev/null.
WCL_OUT=1
log() { printf '[%s %s] %s\n' "${WCL_SUITE:-clients}" "$(wcl_ts)" "$*" >&"$WCL_OUT"; }
die() { log "ERROR: $*"; exit 1; }

# short OUT: one line, at most 600 chars, for failure messages.
short() { printf '%s' "$*" | tr '\r\n' '  ' | cut -c1-600; }

ok() {
	WCL_PASSED=$((WCL_PASSED + 1))
	log "PASS  $*"
}
bad() {
	WCL_FAILED=$((WCL_FAILED + 1))
	WCL_FAILS+=("$*")
	log "FAIL  $*"
}
skip() { log "SKIP  $*"; }
# same DESC WANT GOT [STDERR_FILE]: PASS if GOT is exactly WANT (so nothing
# else, e.g. a runtime's debug output, leaked into the container's stdout).
same() {
	if [ "$3" = "$2" ]; then
		ok "$1"
	else
		bad "$1: want '$(short "$2")', got '$(short "$3")'${4:+ stderr '$(short "$(cat "$4" 2>/dev/null)")'}"
	fi
}
# check DESC CMD...: PASS if CMD succeeds.
check() {
	local desc=$1
	shift
	if "$@"; then ok "$desc"; else bad "$desc"; fi
}

# tmo CMD...: run a client command with the per-command deadline.
tmo() { timeout -k 5 "$WCL_CMD_TIMEOUT" "$@"; }

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds or time runs out.
wait_for() {
	# The deadline is stretched (WCL_WAIT_SCALE, default 3): a loaded CI machine is slower
	# than this one, and a condition that holds ends the wait at once anyway.
	local end=$((SECONDS + $1 * ${WCL_WAIT_SCALE:-3}))
	shift
	while [ "$SECONDS" -lt "$end" ]; do
		"$@" && return 0
		sleep 0.1
	done
	"$@"
}

# stop_pid PID [SECONDS]: TERM, wait, then KILL one process we started.
stop_pid() {
	local pid=$1 t=${2:-10} i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < t * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM for ${t}s, killing it"
	kill -KILL "$pid" 2>/dev/null
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

# on_cleanup FN: run FN (a suite function) at cleanup, before daemons stop.
on_cleanup() { WCL_HOOKS+=("$1"); }
# track_daemon PID NAME: stop PID at cleanup (after the hooks).
track_daemon() {
	WCL_DAEMONS+=("$1:$2")
	echo "$1" >>"$WCL_TMP/daemons.pids"
}
# track_cgroup NAME: a cgroup dir name unique to this run, removed (with
# everything below it) from every hierarchy at cleanup.
track_cgroup() {
	WCL_CGROUPS+=("$1")
	echo "$1" >>"$WCL_TMP/cgroups"
}
# track_warren_id ID: a container whose warren state lives in /run/warren
# (podman passes no --root). Files in $WCL_TMP/cids (podman --cidfile) count too.
track_warren_id() { echo "$1" >>"$WCL_TMP/warren-ids"; }
# warren_ids DIR: ids recorded in the temp dir DIR.
warren_ids() { awk 1 "$1/warren-ids" "$1"/cids/* 2>/dev/null | grep -E "^[A-Za-z0-9_.-]+$" | sort -u; }
# rm_warren_state DIR: force-delete containers of DIR still in /run/warren.
rm_warren_state() {
	local dir=$1 bin id
	bin=$(cat "$dir/warren.bin" 2>/dev/null)
	for id in $(warren_ids "$dir"); do
		[ -e "/run/warren/$id" ] || continue
		echo "$id"
		[ -x "$bin" ] && timeout -k 5 30 "$bin" delete --force "$id" >/dev/null 2>&1
		[ -e "/run/warren/$id" ] && rm -rf -- "/run/warren/$id"
	done
	return 0
}
# track_host_path PATH: a host path a client creates on its own (hard-coded
# outside our temp dir); removed at cleanup only if it did not exist before.
track_host_path() {
	local p
	for p in "$@"; do
		[ -e "$p" ] || [ -L "$p" ] || { WCL_HOST_NEW+=("$p"); echo "$p" >>"$WCL_TMP/host-new"; }
	done
}

# cgroup_dirs NAME: every dir called NAME in the cgroup hierarchies (depth <= 5).
cgroup_dirs() {
	find /sys/fs/cgroup -mindepth 1 -maxdepth 5 -type d -name "$1" 2>/dev/null
}

# cgroup_under PARENT NAME: some hierarchy (v1 or cgroup2) has PARENT/NAME.
cgroup_under() {
	[ -n "$(find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -path "*/$1/$2" 2>/dev/null | head -n1)" ]
}

# thaw_cgroups NAME: thaw every frozen cgroup below NAME (a frozen process
# cannot die).
thaw_cgroups() {
	local d f
	for d in $(cgroup_dirs "$1"); do
		case $d in /sys/fs/cgroup/freezer/*)
			find "$d" -name freezer.state 2>/dev/null | while read -r f; do
				grep -q THAWED "$f" 2>/dev/null || echo THAWED >"$f" 2>/dev/null
			done ;;
		esac
	done
}

# procs_in_cgroups DIR: PIDs in the cgroups listed in DIR/cgroups. Container
# processes are found this way (their root and cwd are in another mount
# namespace and say "/").
procs_in_cgroups() {
	local name d
	for name in $(cat "$1/cgroups" 2>/dev/null); do
		for d in $(cgroup_dirs "$name"); do
			find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
		done
	done | sort -un
}

# rm_cgroups NAME: remove depth-first every cgroup dir called NAME (retrying
# while dying processes leave).
rm_cgroups() {
	local name=$1 d try
	[ -n "$name" ] || return 0
	thaw_cgroups "$name"
	for try in 1 2 3 4 5 6 7 8 9 10; do
		for d in $(cgroup_dirs "$name"); do
			find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
		done
		[ -z "$(cgroup_dirs "$name")" ] && return 0
		sleep 0.2
	done
	return 1
}

# procs_under_one PID DIR: prints PID if its command line, exe, cwd or root
# references DIR.
procs_under_one() {
	local pid=$1 dir=$2 cmd l
	[ "$pid" = $$ ] && return 0
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
	case "$cmd" in *"$dir"*) echo "$pid"; return 0 ;; esac
	for l in exe cwd root; do
		case "$(readlink "/proc/$pid/$l" 2>/dev/null)" in "$dir"/* | "$dir")
			echo "$pid"; return 0 ;;
		esac
	done
}
# procs_under DIR: PIDs (not ours) whose command line, exe, cwd or root
# references DIR: daemons, shims, conmon, runtime processes. (Container
# processes are found by cgroup, see procs_in_cgroups.)
procs_under() {
	{
		grep -s -l -F -- "$1" /proc/[0-9]*/cmdline
		find /proc/[0-9]*/ -maxdepth 1 \( -name exe -o -name cwd -o -name root \) \
			\( -lname "$1" -o -lname "$1/*" \) 2>/dev/null
	} | awk -F/ -v me=$$ '$3 != me && $3 ~ /^[0-9]+$/ {print $3}' | sort -un |
		while read -r pid; do
			# grep matched its own command line; it has exited by now
			kill -0 "$pid" 2>/dev/null && echo "$pid"
		done
}

# mounts_under DIR: mount points below DIR, deepest first.
mounts_under() {
	awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r
}

# unmount_under DIR: unmount everything below DIR (lazily if busy).
unmount_under() {
	local m
	for _ in 1 2 3; do
		[ -z "$(mounts_under "$1")" ] && return 0
		while read -r m; do
			[ -n "$m" ] || continue
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
		done < <(mounts_under "$1")
	done
	[ -z "$(mounts_under "$1")" ]
}

# shim_socket PID: the socket a containerd 1.6 runc v2 shim PID listens on:
# /run/containerd/s/sha256(<containerd address>/<namespace>/<id>).
shim_socket() {
	local a ns="" id="" addr=""
	local -a args
	mapfile -d '' -t args <"/proc/$1/cmdline" 2>/dev/null || return 0
	case "${args[0]:-}" in *containerd-shim-runc-v2) ;; *) return 0 ;; esac
	for ((a = 1; a < ${#args[@]} - 1; a++)); do
		case ${args[a]} in
		-namespace) ns=${args[a + 1]} ;;
		-id) id=${args[a + 1]} ;;
		-address) addr=${args[a + 1]} ;;
		esac
	done
	[ -n "$ns" ] && [ -n "$id" ] && [ -n "$addr" ] || return 0
	echo "/run/containerd/s/$(printf '%s' "$addr/$ns/$id" | sha256sum | cut -c1-64)"
}

# reap_dir DIR: kill every process referencing DIR, unmount, remove cgroups
# listed in DIR/cgroups, then delete DIR. Used for our own temp dir at the
# end and for temp dirs of earlier runs that were killed before cleanup.
reap_dir() {
	local dir=$1 pid cg p n=0 sock socks=()
	for cg in $(cat "$dir/cgroups" 2>/dev/null); do thaw_cgroups "$cg"; done
	for pid in $(procs_in_cgroups "$dir"); do
		kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
	done
	for pid in $(cat "$dir/daemons.pids" 2>/dev/null) $(procs_under "$dir"); do
		kill -0 "$pid" 2>/dev/null || continue
		# the pid may have been reused: it must still reference dir
		case " $(procs_under_one "$pid" "$dir") " in " $pid ") ;; *) continue ;; esac
		sock=$(shim_socket "$pid")
		kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
		[ -n "$sock" ] && socks+=("$sock")
	done
	[ "$n" -gt 0 ] && sleep 0.5
	# a killed shim leaves its socket in /run/containerd/s
	for sock in "${socks[@]}"; do rm -f -- "$sock"; done
	rm_warren_state "$dir" >/dev/null
	unmount_under "$dir" || log "could not unmount everything under $dir"
	for cg in $(cat "$dir/cgroups" 2>/dev/null); do rm_cgroups "$cg"; done
	# empty dirs the clients made on the host (files are handled by wcl_cleanup)
	tac "$dir/host-new" 2>/dev/null | while read -r p; do
		[ -d "$p" ] && [ ! -L "$p" ] && rmdir "$p" 2>/dev/null
	done
	if [ -z "$(mounts_under "$dir")" ]; then
		rm -rf --one-file-system -- "$dir"
	fi
}

# reap_stale: temp dirs of earlier runs whose owner is gone (killed runs).
reap_stale() {
	local d owner
	for d in /tmp/warren-clients.*; do
		[ -d "$d" ] && [ "$d" != "$WCL_TMP" ] || continue
		owner=$(cat "$d/owner.pid" 2>/dev/null || echo)
		if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then continue; fi
		# no owner file yet: only reap dirs older than 10 minutes
		if [ -z "$owner" ] && [ -z "$(find "$d" -maxdepth 0 -mmin +10)" ]; then continue; fi
		log "removing stale $d from an earlier run"
		reap_dir "$d"
	done
}

# ---- cleanup -------------------------------------------------------------

wcl_cleanup() {
	local rc=$? i h pid name p
	set +e
	# A signal may have arrived inside "cmd >/dev/null": restore the output.
	exec 1>&"$WCL_OUT" 2>&1
	# Cleanup must finish: further INT/TERM are ignored (callers put a hard
	# deadline with SIGKILL around us, e.g. run-all.sh).
	trap '' INT TERM HUP
	[ "$WCL_DONE" = 1 ] && return
	WCL_DONE=1
	[ -n "$WCL_TMP" ] || { echo "clients-${WCL_SUITE}: $WCL_PASSED passed, $((WCL_FAILED + 1)) failed"; exit 1; }
	log "cleanup"
	for ((i = ${#WCL_HOOKS[@]} - 1; i >= 0; i--)); do
		h=${WCL_HOOKS[i]}
		"$h"
	done
	for ((i = ${#WCL_DAEMONS[@]} - 1; i >= 0; i--)); do
		pid=${WCL_DAEMONS[i]%%:*} name=${WCL_DAEMONS[i]#*:}
		if kill -0 "$pid" 2>/dev/null; then
			log "stopping $name (pid $pid)"
			stop_pid "$pid" 15
		fi
	done
	# Leftover checks: whatever still runs or exists now was not cleaned up
	# by the clients themselves. Parent cgroups (ours, made by the runtime)
	# and podman's shared conmon cgroup are expected; container ones are not.
	p=$({ procs_under "$WCL_TMP"; procs_in_cgroups "$WCL_TMP"; } | sort -un | tr '\n' ' ')
	if [ -n "${p// /}" ]; then
		for pid in $p; do log "leftover process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"; done
		bad "leftover processes after cleanup: $p"
	fi
	for name in "${WCL_CGROUPS[@]}"; do
		p=$(for h in $(cgroup_dirs "$name"); do find "$h" -mindepth 1 -maxdepth 1 -type d ! -name conmon; done | tr '\n' ' ')
		[ -n "${p// /}" ] && bad "container cgroups left: $p"
	done
	p=$(rm_warren_state "$WCL_TMP" | tr '\n' ' ')
	[ -n "$p" ] && bad "leftover /run/warren state: $p"
	p=$(mounts_under "$WCL_TMP" | tr '\n' ' ')
	[ -n "$p" ] && log "mounts under the temp dir after cleanup (removed now): $p"
	reap_dir "$WCL_TMP"
	[ -e "$WCL_TMP" ] && bad "could not remove $WCL_TMP (mounts: $(mounts_under "$WCL_TMP" | tr '\n' ' '))"
	for name in "${WCL_CGROUPS[@]}"; do
		[ -n "$(cgroup_dirs "$name")" ] && bad "could not remove cgroups: $(cgroup_dirs "$name" | tr '\n' ' ')"
	done
	# Host paths the clients hard-code: remove them if this run created them
	# (deepest first; directories only when empty).
	for ((i = ${#WCL_HOST_NEW[@]} - 1; i >= 0; i--)); do
		p=${WCL_HOST_NEW[i]}
		if [ -d "$p" ] && [ ! -L "$p" ]; then
			rmdir "$p" 2>/dev/null
		elif [ -e "$p" ] || [ -L "$p" ]; then
			rm -f -- "$p"
		fi
	done
	[ "${#WCL_FAILS[@]}" -eq 0 ] || printf '  failed: %s\n' "${WCL_FAILS[@]}"
	echo "clients-${WCL_SUITE}: $WCL_PASSED passed, $WCL_FAILED failed"
	[ "$WCL_FAILED" -eq 0 ] && [ "$rc" -eq 0 ] && exit 0
	exit 1
}

# wcl_init SUITE WARREN_BIN: checks, temp dir, traps.
wcl_init() {
	WCL_SUITE=$1
	exec {WCL_OUT}>&1
	trap wcl_cleanup EXIT
	trap 'log "interrupted"; exit 130' INT TERM HUP
	[ -n "${2:-}" ] || die "usage: $0 WARREN_BIN"
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	WCL_BIN=$(readlink -f -- "$2") || die "no such file: $2"
	[ -f "$WCL_BIN" ] && [ -x "$WCL_BIN" ] || die "not an executable: $2"
	export PATH=$WCL_SYS_PATH
	WCL_TMP=$(mktemp -d /tmp/warren-clients.XXXXXX) || die "mktemp failed"
	echo $$ >"$WCL_TMP/owner.pid"
	echo "$WCL_BIN" >"$WCL_TMP/warren.bin"
	mkdir -p "$WCL_TMP/cids"
	export TMPDIR=$WCL_TMP/tmp
	mkdir -p "$TMPDIR"
	WCL_ID=$(basename "$WCL_TMP" | cut -d. -f2 | tr 'A-Z' 'a-z')$$
	reap_stale
	log "warren binary $WCL_BIN, temp dir $WCL_TMP"
}

# need CMD...: die (counted as a failure) unless every command exists.
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || { bad "required command not found: $c"; exit 1; }
	done
}

# ---- busybox test image --------------------------------------------------

# wcl_image: makes sure $WCL_CACHE holds
#   busybox-oci.tar  oci-archive of a busybox-static image, ref $WCL_IMAGE_REF
#   rootfs.tar       the same root filesystem as a plain tarball (docker import)
# Built with umoci from /usr/bin/busybox; rebuilt when busybox changes.
wcl_image() {
	local want lockfd w L R p
	need umoci jq tar sha256sum flock
	[ -x /usr/bin/busybox ] || { bad "no /usr/bin/busybox (apt install busybox-static)"; exit 1; }
	want="v$WCL_IMAGE_VERSION $(sha256sum /usr/bin/busybox | cut -c1-64)"
	mkdir -p "$WCL_CACHE"
	exec {lockfd}>"$WCL_CACHE/.lock"
	flock -w 120 "$lockfd" || { bad "image cache lock $WCL_CACHE/.lock busy for 120 s"; exit 1; }
	if [ "$(cat "$WCL_CACHE/stamp" 2>/dev/null)" = "$want" ] &&
		[ -s "$WCL_CACHE/busybox-oci.tar" ] && [ -s "$WCL_CACHE/rootfs.tar" ]; then
		exec {lockfd}>&-
		return 0
	fi
	log "building the busybox image in $WCL_CACHE"
	w=$WCL_TMP/image-build
	L=$w/layout
	R=$w/bundle/rootfs
	mkdir -p "$w"
	if ! {
		umoci init --layout "$L" &&
			umoci new --image "$L:latest" &&
			umoci unpack --image "$L:latest" "$w/bundle" >/dev/null
	}; then
		bad "umoci could not create an image layout"
		exit 1
	fi
	mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,tmp,var/tmp,run}
	chmod 1777 "$R/tmp" "$R/var/tmp"
	install -m 0755 /usr/bin/busybox "$R/bin/busybox"
	while read -r p; do
		case $p in "" | bin/busybox | linuxrc) continue ;; esac
		[ -e "$R/$p" ] || [ -L "$R/$p" ] && continue
		mkdir -p "$R/$(dirname "$p")"
		ln -s /bin/busybox "$R/$p"
	done < <(/usr/bin/busybox --list-full)
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$R/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
	printf '127.0.0.1\tlocalhost\n' >"$R/etc/hosts"
	: >"$R/etc/resolv.conf"
	tar --sort=name --numeric-owner --owner=0 --group=0 -C "$R" -cf "$w/rootfs.tar" . ||
		{ bad "tar of the rootfs failed"; exit 1; }
	if ! {
		umoci repack --image "$L:latest" "$w/bundle" &&
			umoci config --image "$L:latest" --config.cmd /bin/sh \
				--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
				--config.workingdir / --os linux --architecture "$(dpkg --print-architecture)" &&
			umoci gc --layout "$L"
	}; then
		bad "umoci could not build the image"
		exit 1
	fi
	# oci-archive = tar of an OCI layout whose index names the image: podman
	# load and ctr import (--base-name) both take the name from ref.name.
	jq -c --arg r "$WCL_IMAGE_REF" \
		'.manifests[0].annotations["org.opencontainers.image.ref.name"] = $r' \
		"$L/index.json" >"$w/index.json" && mv "$w/index.json" "$L/index.json" &&
		chmod 0644 "$L/index.json" &&
		tar --sort=name --numeric-owner --owner=0 --group=0 -C "$L" -cf "$w/busybox-oci.tar" oci-layout index.json blobs ||
		{ bad "could not write the oci-archive"; exit 1; }
	mv -f "$w/busybox-oci.tar" "$WCL_CACHE/busybox-oci.tar"
	mv -f "$w/rootfs.tar" "$WCL_CACHE/rootfs.tar"
	echo "$want" >"$WCL_CACHE/stamp"
	rm -rf -- "$w"
	exec {lockfd}>&-
	log "image ready: $WCL_CACHE/busybox-oci.tar ($WCL_IMAGE_REF), $WCL_CACHE/rootfs.tar"
}

# ---- containerd ----------------------------------------------------------

# start_containerd DIR: a private containerd with config, root, state and
# sockets under DIR (CRI off). Sets CTRD_SOCK. Shim sockets still go to the
# hard-coded /run/containerd/s (removed at cleanup if we created it).
start_containerd() {
	local dir=$1 pid deadline
	need containerd ctr containerd-shim-runc-v2
	track_host_path /run/containerd /run/containerd/s /run/containerd/fifo
	mkdir -p "$dir"/{root,state,opt}
	CTRD_SOCK=$dir/containerd.sock
	cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = "$dir/debug.sock"
  level = "info"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$dir/runc-v1"
EOF
	setsid containerd --config "$dir/config.toml" </dev/null >"$dir/containerd.log" 2>&1 &
	pid=$!
	track_daemon "$pid" containerd
	deadline=$((SECONDS + 20))
	until [ -S "$CTRD_SOCK" ] && timeout 5 ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; do
		if ! kill -0 "$pid" 2>/dev/null; then
			bad "containerd exited: $(short "$(tail -n 5 "$dir/containerd.log")")"
			exit 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			bad "containerd did not answer within 20 s: $(short "$(tail -n 5 "$dir/containerd.log")")"
			exit 1
		fi
		sleep 0.1
	done
	log "containerd up (pid $pid, $CTRD_SOCK)"
}

# task_status SOCK NS ID: RUNNING, PAUSED, STOPPED, CREATED or "" (no task).
task_status() {
	timeout -k 5 30 ctr --address "$1" --namespace "$2" task ls 2>/dev/null |
		awk -v id="$3" '$1 == id {print $3}'
}

# containerd_purge SOCK NS: kill and delete every task and container in NS.
containerd_purge() {
	local sock=$1 ns=$2 t i
	[ -S "$sock" ] || return 0
	local c=(timeout -k 5 30 ctr --address "$sock" --namespace "$ns")
	for t in $("${c[@]}" task ls -q 2>/dev/null); do
		log "removing task $ns/$t"
		"${c[@]}" task resume "$t" >/dev/null 2>&1
		"${c[@]}" task kill -s SIGKILL --all "$t" >/dev/null 2>&1
		for ((i = 0; i < 50; i++)); do
			case $(task_status "$sock" "$ns" "$t") in RUNNING | PAUSED | PAUSING) sleep 0.1 ;; *) break ;; esac
		done
		"${c[@]}" task delete --force "$t" >/dev/null 2>&1
	done
	for t in $("${c[@]}" container ls -q 2>/dev/null); do
		log "removing container $ns/$t"
		"${c[@]}" container delete "$t" >/dev/null 2>&1
	done
}
