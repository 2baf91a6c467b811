#!/usr/bin/env bash
# containerd.sh WARREN_BIN: containerd 1.6 + ctr drive Warren through the
# stock runc v2 shim (io.containerd.runc.v2 with runc options
# BinaryName=WARREN_BIN, Root=<temp>/runc-root).
#
# A private containerd (config, root, state, sockets in the temp dir, CRI
# off); the busybox image imported with ctr; then: run --rm (output, exit
# code, pid 1), run --rm -t under a pty, run -d + warren state, task exec
# (output, exit code), task ps, pause/resume, kill SIGTERM -> STOPPED (the
# container's trap ran), task delete, container delete, warren state and
# cgroup gone. Prints "clients-containerd: N passed, M failed".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
wcl_init containerd "${1:-}"
need ctr containerd timeout script

wcl_image
D=$WCL_TMP/containerd
start_containerd "$D"
NS=warren-clients-$WCL_ID # namespace = first cgroup path component
track_cgroup "$NS"
RROOT=$D/runc-root
FIFO=$D/fifo
IMG=$WCL_IMAGE_REF
ERR=$WCL_TMP/stderr
BG='echo started; trap "echo got-TERM; exit 0" TERM; while :; do sleep 1 & wait $!; done'
mkdir -p "$FIFO"
C() { tmo ctr --address "$CTRD_SOCK" --namespace "$NS" "$@"; }
RUNC=(--runtime io.containerd.runc.v2 --runc-binary "$WCL_BIN" --runc-root "$RROOT" --fifo-dir "$FIFO")
status() { task_status "$CTRD_SOCK" "$NS" "$1"; }
status_is() { [ "$(status "$1")" = "$2" ]; }
wstate() { "$WCL_BIN" --root "$RROOT/$NS" state "$1" 2>/dev/null | jq -r .status 2>/dev/null; }

purge() {
	containerd_purge "$CTRD_SOCK" "$NS"
	C namespaces remove "$NS" >/dev/null 2>&1
}
on_cleanup purge

# 1. image
out=$(C images import --base-name "${IMG%:*}" "$WCL_CACHE/busybox-oci.tar" 2>&1)
if C images ls -q 2>/dev/null | grep -qxF "$IMG"; then
	ok "ctr images import -> $IMG"
else
	bad "ctr images import: $(short "$out")"
	exit 1
fi

# 2. foreground run: output, exit code, pid 1
out=$(C run --rm "${RUNC[@]}" "$IMG" fg1 sh -c 'echo hi-from-warren; echo "pid=$$"; exit 3' 2>"$ERR")
rc=$?
same "ctr run --rm: output (the command runs as pid 1)" $'hi-from-warren\npid=1' "$out" "$ERR"
check "ctr run --rm: exit code 3 (got $rc)" [ "$rc" = 3 ]

# 3. foreground run with a terminal (-t): script(1) gives ctr a real pty
out=$(tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' run --rm -t ${RUNC[*]} $IMG tty1 sh -c 'tty; echo tty-ok; exit 4'" /dev/null </dev/null 2>&1)
rc=$?
if grep -q tty-ok <<<"$out" && grep -q '/dev/pts/' <<<"$out"; then
	ok "ctr run --rm -t: process has a terminal"
else
	bad "ctr run --rm -t (rc $rc): $(short "$out")"
fi
check "ctr run --rm -t: exit code 4 (got $rc)" [ "$rc" = 4 ]

# 4. detached run
LOGF=$D/bg.log
out=$(C run -d --log-uri "file://$LOGF" "${RUNC[@]}" "$IMG" bg \
	sh -c "$BG" 2>&1)
rc=$?
if [ "$rc" = 0 ] && wait_for 10 status_is bg RUNNING; then
	ok "ctr run -d: task RUNNING"
else
	bad "ctr run -d: status '$(status bg)': $(short "$out")"
	exit 1
fi
st=$(wstate bg)
check "warren --root $RROOT/$NS state bg = running (got '$st')" [ "$st" = running ]
check "container cgroup .../$NS/bg exists" cgroup_under "$NS" bg

# 5. exec
out=$(C task exec --fifo-dir "$FIFO" --exec-id e1 bg sh -c 'echo exec-ok; tr "\0" " " </proc/1/cmdline' 2>"$ERR")
rc=$?
same "ctr task exec: output (sees the container's pid 1)" "exec-ok"$'\n'"sh -c $BG " "$out" "$ERR"
C task exec --fifo-dir "$FIFO" --exec-id e2 bg sh -c 'exit 5' >/dev/null 2>&1
rc=$?
check "ctr task exec: exit code 5 (got $rc)" [ "$rc" = 5 ]

out=$(tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' task exec -t --fifo-dir '$FIFO' --exec-id e3 bg sh -c 'tty; echo exec-tty-ok'" /dev/null </dev/null 2>&1)
rc=$?
if [ "$rc" = 0 ] && grep -q exec-tty-ok <<<"$out" && grep -q '/dev/pts/' <<<"$out"; then
	ok "ctr task exec -t: process has a terminal"
else
	bad "ctr task exec -t (rc $rc): $(short "$out")"
fi

# 6. ps
out=$(C task ps bg 2>&1)
n=$(tail -n +2 <<<"$out" | grep -c '[0-9]')
check "ctr task ps lists $n processes (>= 2)" [ "$n" -ge 2 ]

# 7. pause / resume
C task pause bg >/dev/null 2>&1
check "ctr task pause: PAUSED (got '$(status bg)')" status_is bg PAUSED
st=$(wstate bg)
check "warren state while paused = paused (got '$st')" [ "$st" = paused ]
C task resume bg >/dev/null 2>&1
check "ctr task resume: RUNNING (got '$(status bg)')" status_is bg RUNNING

# 8. SIGTERM: the container's trap runs, the task stops
C task kill -s SIGTERM bg >/dev/null 2>&1
if wait_for 10 status_is bg STOPPED; then
	ok "ctr task kill SIGTERM: STOPPED"
else
	bad "ctr task kill SIGTERM: status '$(status bg)'"
fi
same "container log (--log-uri file): the SIGTERM trap ran" $'started\ngot-TERM' "$(cat "$LOGF" 2>/dev/null)"

# 9. delete
out=$(C task delete bg 2>&1)
check "ctr task delete: task gone" [ -z "$(status bg)" ]
out=$(C container delete bg 2>&1)
if ! C container ls -q 2>/dev/null | grep -qx bg; then ok "ctr container delete"; else bad "ctr container delete: $(short "$out")"; fi
if "$WCL_BIN" --root "$RROOT/$NS" state bg >/dev/null 2>&1 || [ -e "$RROOT/$NS/bg" ]; then
	bad "warren state of bg still under $RROOT/$NS"
else
	ok "warren state removed"
fi
left=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -path "*/$NS/bg" 2>/dev/null | tr '\n' ' ')
check "container cgroup removed${left:+ (left: $left)}" [ -z "$left" ]

exit 0
