#!/usr/bin/env bash
# shim-faults.sh WARREN_BIN: kill -9 of Warren's shim at each step of its Create,
# Start, Exec, Delete and Checkpoint handlers, through the failpoints build
# containerd-shim-warren-v2-failpoints beside WARREN_BIN (scripts/build.sh).
# For each point a private containerd is started with WARREN_FAILPOINT=POINT
# in its environment (which its shims inherit), the ctr command that reaches
# the point must fail, and then containerd must report no live task (it ran
# `shim delete`, which force-deletes the container), `ctr task delete` and
# `ctr container delete` must finish the job, and no cgroup, rootfs mount,
# warren state, container process or shim process of it may be left.
# Prints "clients-shim-faults: N passed, M failed".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
wcl_init shim-faults "${1:-}"
need ctr containerd timeout jq
SHIM=$(dirname "$WCL_BIN")/containerd-shim-warren-v2-failpoints
[ -x "$SHIM" ] || { bad "no $SHIM (scripts/build.sh builds it)"; exit 1; }

wcl_image
NS=warren-shimf-$WCL_ID # namespace = first cgroup path component
track_cgroup "$NS"
SROOT=/run/containerd/warren
track_host_path "$SROOT" "$SROOT/$NS" # the shim makes a state dir per namespace
IMG=$WCL_IMAGE_REF
FIFO=$WCL_TMP/fifo
mkdir -p "$FIFO"
RT=(--runtime "$SHIM" --fifo-dir "$FIFO")
C() { tmo ctr --address "$CTRD_SOCK" --namespace "$NS" "$@"; }
status() { task_status "$CTRD_SOCK" "$NS" "$1"; }
status_is() { [ "$(status "$1")" = "$2" ]; }
not_live() { case $(status "$1") in RUNNING | PAUSED | CREATED | PAUSING) return 1 ;; esac; }
no_shims() { [ -z "$(shims)" ]; }
shims() { pgrep -f -- "-address $CTRD_SOCK" | while read -r p; do [ "$(readlink "/proc/$p/exe")" = "$SHIM" ] && echo "$p"; done; }
leftovers_of() { # ID: cgroups, mounts and state the container left
	find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -path "*/$NS/$1" 2>/dev/null
	awk -v d="/$NS/$1/rootfs" '$5 ~ d"$" {print $5}' /proc/self/mountinfo
	[ -e "$SROOT/$NS/$1" ] && echo "$SROOT/$NS/$1"
	return 0
}
no_leftovers() { [ -z "$(leftovers_of "$1")" ]; }
CTRD_PID=""
stop_containerd() {
	[ -n "$CTRD_PID" ] || return 0
	containerd_purge "$CTRD_SOCK" "$NS"
	C namespaces remove "$NS" >/dev/null 2>&1
	stop_pid "$CTRD_PID" 15
	CTRD_PID=""
}
on_cleanup stop_containerd

# POINT: a containerd whose shims die at POINT, with the image imported.
containerd_dying_at() {
	local dir=$WCL_TMP/containerd-$1
	WARREN_FAILPOINT=$1 start_containerd "$dir"
	CTRD_PID=${WCL_DAEMONS[-1]%%:*}
	C images import --base-name "${IMG%:*}" "$WCL_CACHE/busybox-oci.tar" >/dev/null 2>&1 ||
		{ bad "$1: ctr images import failed"; exit 1; }
}

# POINT ID DESC: after the shim died, containerd reports no live task, and its
# cleanup leaves nothing.
after_kill() {
	local point=$1 id=$2 left p
	if wait_for 20 not_live "$id"; then
		ok "$point: containerd reports no live task for $id (status '$(status "$id")')"
	else
		bad "$point: task $id still $(status "$id") after the shim died"
	fi
	C task delete --force "$id" >/dev/null 2>&1
	C container delete "$id" >/dev/null 2>&1
	check "$point: container $id gone from containerd" [ -z "$(C container ls -q 2>/dev/null | grep -xF "$id")" ]
	# containerd's clean-up after a dead shim runs in the background.
	wait_for 10 no_leftovers "$id"
	left=$(leftovers_of "$id" | tr '\n' ' ')
	check "$point: no cgroup, rootfs mount or warren state of $id left${left:+: $left}" [ -z "$left" ]
	p=$(procs_in_cgroups "$WCL_TMP" | tr '\n' ' ')
	check "$point: no container process left${p:+: $p}" [ -z "$p" ]
	wait_for 5 no_shims
	check "$point: no shim process left ($(shims | tr '\n' ' '))" [ -z "$(shims)" ]
}

# expect_killed POINT DESC CMD...: CMD fails (the shim died under it).
expect_killed() {
	local point=$1 desc=$2 out rc
	shift 2
	out=$("$@" </dev/null 2>&1)
	rc=$?
	if [ "$rc" != 0 ]; then ok "$point: $desc fails (rc $rc)"; else bad "$point: $desc succeeded: $(short "$out")"; fi
}

run_d() { C run -d "${RT[@]}" "$IMG" "$1" sleep 1000 </dev/null >/dev/null 2>&1; }

for point in shim.create.rootfs-mounted shim.create.runtime-done shim.start.begun shim.start.runtime-done; do
	containerd_dying_at "$point"
	expect_killed "$point" "ctr run -d" C run -d "${RT[@]}" "$IMG" f1 sleep 1000
	after_kill "$point" f1
	stop_containerd
done

for point in shim.exec.begun shim.exec.runtime-done; do
	containerd_dying_at "$point"
	if run_d f2 && wait_for 10 status_is f2 RUNNING; then
		expect_killed "$point" "ctr task exec" C task exec --fifo-dir "$FIFO" --exec-id e1 f2 sleep 1000
	else
		bad "$point: ctr run -d f2: status '$(status f2)'"
	fi
	after_kill "$point" f2
	stop_containerd
done

for point in shim.delete.runtime-done shim.delete.unmounted; do
	containerd_dying_at "$point"
	if run_d f3 && wait_for 10 status_is f3 RUNNING; then
		C task kill -s SIGKILL f3 >/dev/null 2>&1
		wait_for 10 status_is f3 STOPPED
		expect_killed "$point" "ctr task delete" C task delete f3
	else
		bad "$point: ctr run -d f3: status '$(status f3)'"
	fi
	after_kill "$point" f3
	stop_containerd
done

if command -v criu >/dev/null 2>&1; then
	for point in shim.checkpoint.begun shim.checkpoint.runtime-done; do
		containerd_dying_at "$point"
		if run_d f4 && wait_for 10 status_is f4 RUNNING; then
			expect_killed "$point" "ctr container checkpoint --task" \
				C container checkpoint --task f4 localhost/warren-checkpoint/f4:1
		else
			bad "$point: ctr run -d f4: status '$(status f4)'"
		fi
		C images rm localhost/warren-checkpoint/f4:1 >/dev/null 2>&1
		after_kill "$point" f4
		stop_containerd
	done
else
	skip "criu not on PATH: the checkpoint points"
fi

exit 0
