#!/usr/bin/env bash
# docker.sh WARREN_BIN: Debian's docker.io 20.10 drives Warren, registered
# with  dockerd --add-runtime warren=WARREN_BIN  and chosen with
# docker run --runtime warren.
#
# A private containerd and a private dockerd on it (data-root, exec-root,
# pidfile, socket in the temp dir; no iptables, no bridge, no ip_forward
# change; cgroupfs with a cgroup parent unique to this run). docker 20.10
# cannot load an OCI archive, so the busybox rootfs is imported as a
# tarball. Steps: run --rm (output, exit code), run -d, exec (output, exit
# code), logs, top, pause/unpause, stop (SIGTERM handled), rm, and --memory /
# --pids-limit as seen from inside the container.
# Prints "clients-docker: N passed, M failed".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
wcl_init docker "${1:-}"
DOCKER=/usr/bin/docker # Debian's 20.10 client (another one may come first on PATH)
need dockerd "$DOCKER" timeout

# Paths dockerd 20.10 uses whatever its flags say.
track_host_path /run/docker /run/docker/plugins /etc/docker /etc/docker/key.json /var/lib/docker

wcl_image
start_containerd "$WCL_TMP/containerd"
DK=$WCL_TMP/docker
SOCK=$DK/docker.sock
CG=warren-clients-dk-$WCL_ID
track_cgroup "$CG"
IMG=$WCL_IMAGE_REF
ERR=$WCL_TMP/stderr
BG='echo started; trap "echo got-TERM; exit 0" TERM; while :; do sleep 1 & wait $!; done'
mkdir -p "$DK/client"
export DOCKER_CONFIG=$DK/client
cat >"$DK/daemon.json" <<EOF
{ "deprecated-key-path": "$DK/key.json" }
EOF
D() { tmo "$DOCKER" -H "unix://$SOCK" "$@"; }
state() { D inspect --format '{{.State.Status}}' "$1" 2>/dev/null; }
state_is() { [ "$(state "$1")" = "$2" ]; }

purge() {
	local ids
	ids=$(D ps -aq 2>/dev/null)
	if [ -n "$ids" ]; then
		log "removing docker containers: $(echo $ids)"
		# shellcheck disable=SC2086
		D rm -f $ids >/dev/null 2>&1
	fi
}
purge_moby() { containerd_purge "$CTRD_SOCK" moby; }
on_cleanup purge_moby
on_cleanup purge

setsid dockerd --config-file "$DK/daemon.json" --data-root "$DK/root" --exec-root "$DK/exec" \
	--pidfile "$DK/dockerd.pid" -H "unix://$SOCK" --containerd "$CTRD_SOCK" \
	--iptables=false --ip6tables=false --ip-masq=false --ip-forward=false --bridge=none \
	--userland-proxy=false --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
	--cgroup-parent "/$CG" --add-runtime "warren=$WCL_BIN" \
	</dev/null >"$DK/dockerd.log" 2>&1 &
DPID=$!
track_daemon "$DPID" dockerd
deadline=$((SECONDS + 30))
until D version >/dev/null 2>&1; do
	if ! kill -0 "$DPID" 2>/dev/null; then bad "dockerd exited: $(short "$(tail -n 5 "$DK/dockerd.log")")"; exit 1; fi
	if [ "$SECONDS" -ge "$deadline" ]; then bad "dockerd did not answer within 30 s: $(short "$(tail -n 5 "$DK/dockerd.log")")"; exit 1; fi
	sleep 0.2
done
ok "private dockerd up (pid $DPID)"
rts=$(D info --format '{{range $k, $v := .Runtimes}}{{$k}}={{$v.Path}} {{end}}' 2>&1)
check "docker info lists runtime warren=$WCL_BIN ($rts)" grep -q "warren=$WCL_BIN" <<<"$rts"

# 1. image: the busybox rootfs tarball
out=$(D import "$WCL_CACHE/rootfs.tar" "$IMG" 2>&1)
if D image inspect "$IMG" >/dev/null 2>&1; then ok "docker import -> $IMG"; else bad "docker import: $(short "$out")"; exit 1; fi

RUN=(--runtime warren --network none)

# 2. foreground run: output and exit code
out=$(D run --rm "${RUN[@]}" --name fg "$IMG" sh -c 'echo hi-from-warren; echo "pid=$$"; exit 7' 2>"$ERR")
rc=$?
same "docker run --rm: output (the command runs as pid 1)" $'hi-from-warren\npid=1' "$out" "$ERR"
check "docker run --rm: exit code 7 (got $rc)" [ "$rc" = 7 ]

# 3. detached run
out=$(D run -d "${RUN[@]}" --name bg "$IMG" \
	sh -c "$BG" 2>&1)
rc=$?
if [ "$rc" = 0 ] && wait_for 10 state_is bg running; then ok "docker run -d: running"; else bad "docker run -d: state '$(state bg)': $(short "$out")"; exit 1; fi
ID=$(D inspect --format '{{.Id}}' bg 2>/dev/null)
rt=$(D inspect --format '{{.HostConfig.Runtime}}' bg 2>/dev/null)
check "docker inspect .HostConfig.Runtime = warren (got '$rt')" [ "$rt" = warren ]
# docker 20.10 gives every runc-type runtime Root=<exec-root>/runtime-runc; the
# shim adds the containerd namespace: warren --root <exec-root>/runtime-runc/moby
WROOT=$(dirname "$(find "$DK/exec" -mindepth 3 -maxdepth 3 -type d -path "$DK/exec/runtime-*/moby/$ID" 2>/dev/null | head -n1)")
st=$("$WCL_BIN" --root "$WROOT" state "$ID" 2>/dev/null | jq -r .status 2>/dev/null)
check "warren --root ${WROOT#"$WCL_TMP"/} state = running (got '$st')" [ "$st" = running ]
check "container cgroup .../$CG/${ID:0:12}... exists" cgroup_under "$CG" "$ID"

# 4. exec
out=$(D exec bg sh -c 'echo exec-ok; tr "\0" " " </proc/1/cmdline' 2>"$ERR")
same "docker exec: output (sees the container's pid 1)" "exec-ok"$'\n'"sh -c $BG " "$out" "$ERR"
D exec bg sh -c 'exit 5' >/dev/null 2>&1
rc=$?
check "docker exec: exit code 5 (got $rc)" [ "$rc" = 5 ]

# 5. logs, top
out=$(D logs bg 2>"$ERR")
same "docker logs" started "$out" "$ERR"
out=$(D top bg 2>&1)
n=$(tail -n +2 <<<"$out" | grep -c '[0-9]')
check "docker top lists $n processes (>= 2)" [ "$n" -ge 2 ]

# 6. pause / unpause
D pause bg >/dev/null 2>&1
check "docker pause: paused (got '$(state bg)')" state_is bg paused
D unpause bg >/dev/null 2>&1
check "docker unpause: running (got '$(state bg)')" state_is bg running

# 7. stop: SIGTERM, the trap exits 0 well before the 10 s SIGKILL deadline
t0=$SECONDS
out=$(D stop -t 10 bg 2>&1)
rc=$? dt=$((SECONDS - t0))
if [ "$rc" = 0 ] && state_is bg exited; then ok "docker stop (${dt}s)"; else bad "docker stop (rc $rc, state '$(state bg)'): $(short "$out")"; fi
ec=$(D inspect --format '{{.State.ExitCode}}' bg 2>/dev/null)
check "SIGTERM handled: exit code 0 (got '$ec')" [ "$ec" = 0 ]
check "stopped in < 8 s, before the SIGKILL deadline (${dt}s)" [ "$dt" -lt 8 ]
out=$(D logs bg 2>"$ERR")
same "docker logs after stop: the trap ran" $'started\ngot-TERM' "$out" "$ERR"

# 8. rm
out=$(D rm bg 2>&1)
if ! D inspect bg >/dev/null 2>&1; then ok "docker rm"; else bad "docker rm: $(short "$out")"; fi
check "warren state removed" [ ! -e "$WROOT/$ID" ]
left=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -name "$ID" 2>/dev/null | tr '\n' ' ')
check "container cgroup removed${left:+ (left: $left)}" [ -z "$left" ]

# 9. resource limits as the container sees them
out=$(D run --rm "${RUN[@]}" --name lim --memory 64m --pids-limit 20 "$IMG" sh -c '
	for f in memory/memory.limit_in_bytes pids/pids.max unified/memory.max unified/pids.max; do
		[ -r /sys/fs/cgroup/$f ] && echo "$f=$(cat /sys/fs/cgroup/$f)"
	done; true' 2>&1)
rc=$?
log "limits seen in the container: $(short "$out")"
if [ "$rc" = 0 ] && grep -Eqx '(memory/memory.limit_in_bytes|unified/memory.max)=67108864' <<<"$out" &&
	grep -Eqx '(pids/pids.max|unified/pids.max)=20' <<<"$out"; then
	ok "docker run --memory 64m --pids-limit 20: limits in the container's cgroup"
else
	bad "docker run --memory 64m --pids-limit 20 (rc $rc): $(short "$out")"
fi

exit 0
