#!/usr/bin/env bash
# podman.sh WARREN_BIN: podman 4.3 (+conmon) drives Warren (--runtime WARREN_BIN).
#
# Private storage and config in the temp dir (--root/--runroot/--tmpdir, own
# containers.conf: cgroupfs, file events and locks, no network, ulimits this
# host can grant). Every container gets a cgroup parent unique to this run.
# podman passes no --root, so Warren keeps their state in /run/warren; the
# test checks it goes away. Steps: load the image archive, run --rm (output,
# exit code), run -t under a pty, run -d, exec (output, exit code), logs, top,
# pause/unpause, stop (SIGTERM handled), rm, and run --rm --memory 64m
# --pids-limit 20 reading the limits from inside the container.
# Prints "clients-podman: N passed, M failed".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
wcl_init podman "${1:-}"
need podman conmon timeout script

# What podman may create outside our temp dir, despite the private config.
track_host_path /var/lib/containers /var/lib/containers/cache \
	/var/lib/containers/cache/blob-info-cache-v1.boltdb \
	/run/containers /run/containers/networks /run/libpod /dev/shm/libpod_lock \
	/run/warren /etc/containers/networks

wcl_image
PD=$WCL_TMP/podman
mkdir -p "$PD"/{root,runroot,tmp,networks,volumes}
CG=warren-clients-pm-$WCL_ID
track_cgroup "$CG"
IMG=$WCL_IMAGE_REF
ERR=$WCL_TMP/stderr
BG='echo started; trap "echo got-TERM; exit 0" TERM; while :; do sleep 1 & wait $!; done'

# Without CAP_SYS_RESOURCE the container cannot get podman's default
# nofile=1048576: ask for what our own hard limits allow (podman itself
# lowers RLIMIT_NPROC to 32768).
nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat >"$PD/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
netns = "none"
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PD/events.log"
lock_type = "file"
tmp_dir = "$PD/tmp"
static_dir = "$PD/root/libpod"
volume_path = "$PD/volumes"
image_copy_tmp_dir = "$PD/tmp"
conmon_path = ["/usr/bin/conmon"]
[network]
network_config_dir = "$PD/networks"
EOF
cat >"$PD/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PD/root"
runroot = "$PD/runroot"
EOF

P() {
	CONTAINERS_CONF=$PD/containers.conf CONTAINERS_STORAGE_CONF=$PD/storage.conf \
		tmo podman --root "$PD/root" --runroot "$PD/runroot" --tmpdir "$PD/tmp" \
		--cgroup-manager cgroupfs --events-backend file --runtime "$WCL_BIN" "$@"
}
RUN=(--cgroup-parent "/$CG" --network none)
cid() { echo "--cidfile=$WCL_TMP/cids/$1"; } # the id, even if we are killed
state() { P inspect --format '{{.State.Status}}' "$1" 2>/dev/null; }
state_is() { [ "$(state "$1")" = "$2" ]; }

purge() {
	local ids id
	ids=$(P ps -aq --no-trunc 2>/dev/null)
	for id in $ids; do track_warren_id "$id"; done
	if [ -n "$ids" ]; then
		log "removing podman containers: $(echo $ids | cut -c1-80)"
		P rm -af -t 0 >/dev/null 2>&1
	fi
}
on_cleanup purge

# 1. image
out=$(P load -i "$WCL_CACHE/busybox-oci.tar" 2>&1)
if P image exists "$IMG"; then ok "podman load -> $IMG"; else bad "podman load: $(short "$out")"; exit 1; fi

# 2. foreground run: output and exit code
out=$(P run --rm "${RUN[@]}" --name fg "$(cid fg)" "$IMG" sh -c 'echo hi-from-warren; echo "pid=$$"; exit 3' 2>"$ERR")
rc=$?
same "podman run --rm: output (the command runs as pid 1)" $'hi-from-warren\npid=1' "$out" "$ERR"
check "podman run --rm: exit code 3 (got $rc)" [ "$rc" = 3 ]

# 3. with a terminal: script(1) gives podman a pty, conmon gets the console
out=$(CONTAINERS_CONF=$PD/containers.conf CONTAINERS_STORAGE_CONF=$PD/storage.conf tmo script -qec \
	"podman --root '$PD/root' --runroot '$PD/runroot' --tmpdir '$PD/tmp' --cgroup-manager cgroupfs --events-backend file --runtime '$WCL_BIN' run --rm -t ${RUN[*]} --name tty1 $(cid tty1) $IMG sh -c 'tty; echo tty-ok; exit 4'" \
	/dev/null </dev/null 2>&1)
rc=$?
if grep -q tty-ok <<<"$out" && grep -q '/dev/pts/' <<<"$out"; then
	ok "podman run --rm -t: process has a terminal"
else
	bad "podman run --rm -t (rc $rc): $(short "$out")"
fi
check "podman run --rm -t: exit code 4 (got $rc)" [ "$rc" = 4 ]

# 4. detached run
out=$(P run -d "${RUN[@]}" --name bg "$(cid bg)" "$IMG" \
	sh -c "$BG" 2>&1)
rc=$?
if [ "$rc" = 0 ] && wait_for 10 state_is bg running; then ok "podman run -d: running"; else bad "podman run -d: state '$(state bg)': $(short "$out")"; exit 1; fi
ID=$(P inspect --format '{{.Id}}' bg 2>/dev/null)
rt=$(P inspect --format '{{.OCIRuntime}}' bg 2>/dev/null)
check "podman inspect .OCIRuntime = $WCL_BIN (got '$rt')" [ "$rt" = "$WCL_BIN" ]
st=$("$WCL_BIN" state "$ID" 2>/dev/null | jq -r .status 2>/dev/null)
check "warren state in /run/warren/${ID:0:12}... = running (got '$st')" [ "$st" = running ]
check "container cgroup .../$CG/libpod-${ID:0:12}... exists" cgroup_under "$CG" "libpod-$ID"

# 5. exec
out=$(P exec bg sh -c 'echo exec-ok; tr "\0" " " </proc/1/cmdline' 2>"$ERR")
same "podman exec: output (sees the container's pid 1)" "exec-ok"$'\n'"sh -c $BG " "$out" "$ERR"
P exec bg sh -c 'exit 5' >/dev/null 2>&1
rc=$?
check "podman exec: exit code 5 (got $rc)" [ "$rc" = 5 ]

# 6. logs, top
out=$(P logs bg 2>"$ERR")
same "podman logs" started "$out" "$ERR"
out=$(P top bg pid comm 2>&1)
n=$(tail -n +2 <<<"$out" | grep -c '[0-9]')
check "podman top lists $n processes (>= 2)" [ "$n" -ge 2 ]

# 7. pause / unpause
P pause bg >/dev/null 2>&1
check "podman pause: paused (got '$(state bg)')" state_is bg paused
st=$("$WCL_BIN" state "$ID" 2>/dev/null | jq -r .status 2>/dev/null)
check "warren state while paused = paused (got '$st')" [ "$st" = paused ]
P unpause bg >/dev/null 2>&1
check "podman unpause: running (got '$(state bg)')" state_is bg running

# 8. stop: SIGTERM, the trap exits 0 well before the 10 s SIGKILL deadline
t0=$SECONDS
out=$(P stop -t 10 bg 2>&1)
rc=$? dt=$((SECONDS - t0))
if [ "$rc" = 0 ] && state_is bg exited; then ok "podman stop (${dt}s)"; else bad "podman stop (rc $rc, state '$(state bg)'): $(short "$out")"; fi
ec=$(P inspect --format '{{.State.ExitCode}}' bg 2>/dev/null)
check "SIGTERM handled: exit code 0 (got '$ec')" [ "$ec" = 0 ]
check "stopped in < 8 s, before the SIGKILL deadline (${dt}s)" [ "$dt" -lt 8 ]
out=$(P logs bg 2>"$ERR")
same "podman logs after stop: the trap ran" $'started\ngot-TERM' "$out" "$ERR"

# 9. rm
out=$(P rm bg 2>&1)
if ! P container exists bg; then ok "podman rm"; else bad "podman rm: $(short "$out")"; fi
check "warren state /run/warren/${ID:0:12}... removed" [ ! -e "/run/warren/$ID" ]
left=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -name "libpod-$ID" 2>/dev/null | tr '\n' ' ')
check "container cgroup removed${left:+ (left: $left)}" [ -z "$left" ]

# 10. resource limits reach the container's cgroup (as the container sees it)
out=$(P run --rm "${RUN[@]}" --name lim "$(cid lim)" --memory 64m --pids-limit 20 "$IMG" sh -c '
	for f in memory/memory.limit_in_bytes pids/pids.max unified/memory.max unified/pids.max; do
		[ -r /sys/fs/cgroup/$f ] && echo "$f=$(cat /sys/fs/cgroup/$f)"
	done; true' 2>&1)
rc=$?
log "limits seen in the container: $(short "$out")"
if [ "$rc" = 0 ] && grep -Eqx '(memory/memory.limit_in_bytes|unified/memory.max)=67108864' <<<"$out"; then
	ok "podman run --memory 64m: the container's cgroup limit is 67108864"
else
	bad "podman run --memory 64m (rc $rc): $(short "$out")"
fi
if [ "$rc" = 0 ] && grep -Eqx '(pids/pids.max|unified/pids.max)=20' <<<"$out"; then
	ok "podman run --pids-limit 20: the container's pids.max is 20"
else
	bad "podman run --pids-limit 20 (rc $rc): $(short "$out")"
fi

exit 0
