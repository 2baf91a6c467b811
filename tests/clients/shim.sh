#!/usr/bin/env bash
# shim.sh WARREN_BIN: containerd 1.6 + ctr drive Warren through its own shim,
# containerd-shim-warren-v2 (the file beside WARREN_BIN, as built by
# scripts/build.sh), named by absolute path as ctr's --runtime.
#
# A private containerd (as containerd.sh), `ctr events` recording in the
# background; then: run --rm (output, exit code, pid 1), stdin, -t, run -d
# with a file:// log, exec (output, exit code, -t), ps, pause/resume, task
# metrics, SIGTERM -> STOPPED, delete (state, cgroup, rootfs mount, shim gone),
# an OOM kill reported as /tasks/oom, the events of a task in containerd's
# order, checkpoint and restore of a counting container (ctr c checkpoint
# --task --rw, kill and remove, ctr c restore --live --rw: it counts on from
# where it was), a checkpoint criu refuses (the task runs on), a terminal's
# checkpoint restored without one (refused at create), a grouped shim that
# survives requests failing on EMFILE (fd-limit sweeps of ctr run -d and
# ctr task exec -t) and answers for one task while another's create runs a
# slow hook or its exit waits for a state lock, 20 containers of one
# org.warren.group served by one shim process, and
# kill -9 of that shim: containerd reports the tasks gone, and no cgroup,
# mount, process or state of them is left. Prints "clients-shim: N passed, M failed".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
wcl_init shim "${1:-}"
need ctr containerd timeout script jq
SHIM=$(dirname "$WCL_BIN")/containerd-shim-warren-v2
[ -x "$SHIM" ] || { bad "no shim beside $WCL_BIN (scripts/build.sh builds it)"; exit 1; }

wcl_image
D=$WCL_TMP/containerd
start_containerd "$D"
NS=warren-shim-$WCL_ID # namespace = first cgroup path component
track_cgroup "$NS"
SROOT=/run/containerd/warren
track_host_path "$SROOT" "$SROOT/$NS" # the shim makes a state dir per namespace
FIFO=$D/fifo
IMG=$WCL_IMAGE_REF
ERR=$WCL_TMP/stderr
EVENTS=$WCL_TMP/events
BG='echo started; trap "echo got-TERM; exit 0" TERM; while :; do sleep 1 & wait $!; done'
mkdir -p "$FIFO"
C() { tmo ctr --address "$CTRD_SOCK" --namespace "$NS" "$@"; }
RT=(--runtime "$SHIM" --fifo-dir "$FIFO")
status() { task_status "$CTRD_SOCK" "$NS" "$1"; }
status_is() { [ "$(status "$1")" = "$2" ]; }
wstate() { "$WCL_BIN" --root "$SROOT/$NS" state "$1" 2>/dev/null | jq -r .status 2>/dev/null; }
task_pid() { C task ls 2>/dev/null | awk -v id="$1" '$1 == id {print $2}'; }
# Shim processes of this containerd.
shims() { pgrep -f -- "-address $CTRD_SOCK" | while read -r p; do [ "$(readlink "/proc/$p/exe")" = "$SHIM" ] && echo "$p"; done; }
ppid_of() { awk '/^PPid:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
topics_of() { grep -F "\"container_id\":\"$1\"" "$EVENTS" | awk '{print $6}' | tr '\n' ' '; }
# in_order "a b c" "x a y b c": every word of $1 appears in $2, in that order.
in_order() {
	local want=($1) have=($2) i=0 w
	for w in "${have[@]}"; do
		[ "$i" -lt "${#want[@]}" ] && [ "$w" = "${want[i]}" ] && i=$((i + 1))
	done
	[ "$i" = "${#want[@]}" ]
}
leftovers_of() { # ID: cgroups, mounts and state the container left
	find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d -path "*/$NS/$1" 2>/dev/null
	awk -v d="/$NS/$1/rootfs" '$5 ~ d"$" {print $5}' /proc/self/mountinfo
	[ -e "$SROOT/$NS/$1" ] && echo "$SROOT/$NS/$1"
	return 0
}

EVPID=""
SOCKS_BEFORE=$(ls /run/containerd/s 2>/dev/null)
purge() {
	local s
	containerd_purge "$CTRD_SOCK" "$NS"
	C namespaces remove "$NS" >/dev/null 2>&1
	[ -n "$EVPID" ] && kill "$EVPID" 2>/dev/null
	rmdir "$SROOT/$NS" 2>/dev/null
	wait_for 5 sh -c "[ -z \"\$(pgrep -f -- '-address $CTRD_SOCK')\" ]"
	# Shims remove their sockets as they exit (a killed one's goes at `shim delete`).
	for s in $(ls /run/containerd/s 2>/dev/null); do
		grep -qxF "$s" <<<"$SOCKS_BEFORE" && continue
		ss -xlH | grep -qF "/run/containerd/s/$s" && continue
		bad "shim socket left: /run/containerd/s/$s"
		rm -f "/run/containerd/s/$s"
	done
}
on_cleanup purge

# 1. image, event recorder
out=$(C images import --base-name "${IMG%:*}" "$WCL_CACHE/busybox-oci.tar" 2>&1)
if C images ls -q 2>/dev/null | grep -qxF "$IMG"; then
	ok "ctr images import -> $IMG"
else
	bad "ctr images import: $(short "$out")"
	exit 1
fi
ctr --address "$CTRD_SOCK" events >"$EVENTS" 2>&1 &
EVPID=$!

# 2. foreground run: output, exit code, pid 1
out=$(C run --rm "${RT[@]}" "$IMG" fg1 sh -c 'echo hi-from-warren-shim; echo "pid=$$"; exit 3' </dev/null 2>"$ERR")
rc=$?
same "ctr run --rm: output (the command runs as pid 1)" $'hi-from-warren-shim\npid=1' "$out" "$ERR"
check "ctr run --rm: exit code 3 (got $rc)" [ "$rc" = 3 ]
# pid 1 of a pid namespace dies by SIGKILL only
(C run --rm "${RT[@]}" "$IMG" fg2 sleep 1000 </dev/null >/dev/null 2>&1; echo $? >"$WCL_TMP/fg2.rc") &
wait_for 10 status_is fg2 RUNNING && C task kill -s SIGKILL fg2 >/dev/null 2>&1
wait $!
rc=$(cat "$WCL_TMP/fg2.rc")
check "ctr run --rm: init killed by SIGKILL -> exit code 137 (got $rc)" [ "$rc" = 137 ]

# 3. stdin reaches the container, EOF ends it
out=$(printf 'line1\nline2\n' | C run --rm "${RT[@]}" "$IMG" in1 sh -c 'wc -l; cat' 2>"$ERR")
same "ctr run --rm: stdin (2 lines, then EOF)" "2" "$(tr -d ' ' <<<"$out")" "$ERR"

# 4. terminal: script(1) gives ctr a real pty
out=$(tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' run --rm -t ${RT[*]} $IMG tty1 sh -c 'tty; echo tty-ok; exit 4'" /dev/null </dev/null 2>&1)
rc=$?
if grep -q tty-ok <<<"$out" && grep -q '/dev/pts/' <<<"$out"; then
	ok "ctr run --rm -t: process has a terminal"
else
	bad "ctr run --rm -t (rc $rc): $(short "$out")"
fi
check "ctr run --rm -t: exit code 4 (got $rc)" [ "$rc" = 4 ]

# 5. detached run with a file:// log
LOGF=$D/bg.log
out=$(C run -d --log-uri "file://$LOGF" "${RT[@]}" "$IMG" bg sh -c "$BG" 2>&1)
if [ "$?" = 0 ] && wait_for 10 status_is bg RUNNING; then
	ok "ctr run -d: task RUNNING"
else
	bad "ctr run -d: status '$(status bg)': $(short "$out")"
	exit 1
fi
st=$(wstate bg)
check "warren --root $SROOT/$NS state bg = running (got '$st')" [ "$st" = running ]
pid=$(task_pid bg)
sp=$(ppid_of "$pid")
check "the init's parent is a warren shim (pid $sp)" [ "$(readlink "/proc/$sp/exe")" = "$SHIM" ]

# 6. exec
out=$(C task exec --fifo-dir "$FIFO" --exec-id e1 bg sh -c 'echo exec-ok; tr "\0" " " </proc/1/cmdline' </dev/null 2>"$ERR")
same "ctr task exec: output (sees the container's pid 1)" "exec-ok"$'\n'"sh -c $BG " "$out" "$ERR"
C task exec --fifo-dir "$FIFO" --exec-id e2 bg sh -c 'exit 5' </dev/null >/dev/null 2>&1
rc=$?
check "ctr task exec: exit code 5 (got $rc)" [ "$rc" = 5 ]
C task exec --fifo-dir "$FIFO" --exec-id e2s bg sh -c 'kill -SEGV $$' </dev/null >/dev/null 2>&1
rc=$?
check "ctr task exec: a process killed by SIGSEGV -> exit code 139 (got $rc)" [ "$rc" = 139 ]
out=$(echo via-stdin | C task exec --fifo-dir "$FIFO" --exec-id e3 bg cat 2>"$ERR")
same "ctr task exec: stdin" "via-stdin" "$out" "$ERR"
out=$(tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' task exec -t --fifo-dir '$FIFO' --exec-id e4 bg sh -c 'tty; echo exec-tty-ok'" /dev/null </dev/null 2>&1)
rc=$?
if [ "$rc" = 0 ] && grep -q exec-tty-ok <<<"$out" && grep -q '/dev/pts/' <<<"$out"; then
	ok "ctr task exec -t: process has a terminal"
else
	bad "ctr task exec -t (rc $rc): $(short "$out")"
fi

# 6b. clients that go away mid-exec (with and without a terminal): once their
# processes are gone the shim holds no descriptor of theirs and no zombie
fds0=$(ls "/proc/$sp/fd" | wc -l)
C task exec --fifo-dir "$FIFO" --exec-id gone1 bg sleep 1000 </dev/null >/dev/null 2>&1 &
g1=$!
tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' task exec -t --fifo-dir '$FIFO' --exec-id gone2 bg sleep 1000" /dev/null </dev/null >/dev/null 2>&1 &
g2=$!
wait_for 10 sh -c "[ \$(pgrep -P $sp -x sleep | wc -l) -ge 2 ]"
pkill -KILL -f -- '--exec-id gone[12] '
for e in gone1 gone2; do C task kill --exec-id "$e" -s SIGKILL bg >/dev/null 2>&1; done
wait "$g1" "$g2"
wait_for 10 sh -c "[ \$(pgrep -P $sp -x sleep | wc -l) = 0 ]"
zombies=$(for f in /proc/[0-9]*/stat; do awk -v p="$sp" '$4 == p && $3 == "Z" {print $1}' "$f" 2>/dev/null; done | tr '\n' ' ')
check "vanished exec clients: no zombie under the shim${zombies:+ ($zombies)}" [ -z "${zombies// /}" ]
wait_for 5 sh -c "[ \$(ls /proc/$sp/fd | wc -l) -le $fds0 ]"
n=$(ls "/proc/$sp/fd" | wc -l)
check "vanished exec clients: the shim's descriptors back to $fds0 (got $n)" [ "$n" -le "$fds0" ]
n=$(find "/proc/$sp/fd" -lname "$FIFO/*" 2>/dev/null | wc -l)
check "the shim holds no FIFO of its clients (got $n)" [ "$n" = 0 ]

# 7. ps, pause/resume, metrics
n=$(C task ps bg 2>/dev/null | tail -n +2 | grep -c '[0-9]')
check "ctr task ps lists $n processes (>= 2)" [ "$n" -ge 2 ]
C task pause bg >/dev/null 2>&1
check "ctr task pause: PAUSED (got '$(status bg)')" status_is bg PAUSED
st=$(wstate bg)
check "warren state while paused = paused (got '$st')" [ "$st" = paused ]
C task resume bg >/dev/null 2>&1
check "ctr task resume: RUNNING (got '$(status bg)')" status_is bg RUNNING
out=$(C task metrics bg 2>&1)
if grep -qE '^(memory.usage_in_bytes|memory.usage) +[1-9]' <<<"$out" && grep -qE '^pids.current +[1-9]' <<<"$out"; then
	ok "ctr task metrics: memory usage and pids of the container"
else
	bad "ctr task metrics: $(short "$out")"
fi

# 8. SIGTERM: the container's trap runs, the task stops
C task kill -s SIGTERM bg >/dev/null 2>&1
if wait_for 10 status_is bg STOPPED; then ok "ctr task kill SIGTERM: STOPPED"; else bad "ctr task kill SIGTERM: status '$(status bg)'"; fi
same "container log (--log-uri file): the SIGTERM trap ran" $'started\ngot-TERM' "$(cat "$LOGF" 2>/dev/null)"

# 9. delete: task, state, cgroup, rootfs mount, and the shim process
C task delete bg >/dev/null 2>&1
check "ctr task delete: task gone" [ -z "$(status bg)" ]
C container delete bg >/dev/null 2>&1
left=$(leftovers_of bg | tr '\n' ' ')
check "nothing of bg left (cgroup, rootfs mount, warren state)${left:+: $left}" [ -z "$left" ]
wait_for 5 sh -c "! kill -0 $sp 2>/dev/null"
check "its shim (pid $sp) exited" sh -c "! kill -0 $sp 2>/dev/null"

# 10. OOM: a process over the memory limit is killed and /tasks/oom reported
out=$(C run --rm --memory-limit 16777216 "${RT[@]}" "$IMG" oom1 sh -c 'dd if=/dev/zero of=/dev/null bs=64M count=1; echo "dd=$?"' </dev/null 2>"$ERR")
same "OOM: dd of a 64 MiB block under a 16 MiB limit is killed" "dd=137" "$out" "$ERR"
if wait_for 5 grep -q "/tasks/oom {\"container_id\":\"oom1\"}" "$EVENTS"; then
	ok "OOM: ctr events reports /tasks/oom for oom1"
else
	bad "OOM: no /tasks/oom event for oom1: $(short "$(topics_of oom1)")"
fi

# 11. events in containerd's order
t=$(topics_of bg)
check "events of bg in order (create start exec-added exec-started paused resumed exit delete): $t" \
	in_order "/tasks/create /tasks/start /tasks/exec-added /tasks/exec-started /tasks/paused /tasks/resumed /tasks/exit /tasks/delete" "$t"
t=$(grep -F '"container_id":"bg"' "$EVENTS" | grep -E '/tasks/(exec-added|exec-started|exit) .*"(exec_id|id)":"e1"' | awk '{print $6}' | tr '\n' ' ')
check "events of exec e1 in order (exec-added exec-started exit): $t" in_order "/tasks/exec-added /tasks/exec-started /tasks/exit" "$t"

# 11b. checkpoint and restore: a container that counts in memory (and writes
# its count to a file, and holds one open) is checkpointed while it runs,
# killed and removed, and restored under its own id from containerd's
# checkpoint image: first without its rw layer (criu cannot find the open
# file: the task stays created, and goes), then with it.
CNT='exec 3>/tmp/held; i=0; while :; do i=$((i+1)); echo $i >/tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.2; done'
CKREF=localhost/warren-checkpoint/ck1:1
count_of() { C task exec --fifo-dir "$FIFO" --exec-id "$2" "$1" cat /tmp/n </dev/null 2>/dev/null; }
at_least() { local n; n=$(count_of "$1" "w$RANDOM"); [ "${n:-0}" -ge "$2" ]; }
out=$(C run -d "${RT[@]}" "$IMG" ck1 sh -c "$CNT" </dev/null 2>&1)
if ! wait_for 10 status_is ck1 RUNNING || ! wait_for 10 at_least ck1 10; then
	bad "checkpoint: counter container ck1 not counting (status '$(status ck1)'): $(short "$out")"
else
	before=$(count_of ck1 c0)
	out=$(C container checkpoint --task --rw ck1 "$CKREF" 2>&1)
	rc=$?
	# containerd 1.6 keeps the task's images only if this is the first checkpoint of the
	# spec (a second one silently lacks them, with runc's shim too): look for them.
	digest=$(C images ls 2>/dev/null | awk -v r="$CKREF" '$1 == r {print $3}')
	types=$(C content get "$digest" 2>/dev/null | jq -r '.manifests[].mediaType' 2>/dev/null | tr '\n' ' ')
	if [ "$rc" = 0 ] && grep -q 'criu.checkpoint.criu.tar' <<<"$types" && grep -q 'image.layer' <<<"$types"; then
		ok "ctr container checkpoint --task --rw: image $CKREF holds criu's images and the rw layer"
	else
		bad "ctr container checkpoint --task --rw (rc $rc): $(short "$out") manifests: $types"
	fi
	check "after the checkpoint ck1 is still RUNNING (got '$(status ck1)')" status_is ck1 RUNNING
	check "after the checkpoint ck1 still counts (past $before)" wait_for 5 at_least ck1 $((before + 2))
	check "ctr events: /tasks/checkpointed for ck1" wait_for 5 grep -q '/tasks/checkpointed {"container_id":"ck1"}' "$EVENTS"
	C task kill -s SIGKILL ck1 >/dev/null 2>&1
	wait_for 10 status_is ck1 STOPPED
	C task delete ck1 >/dev/null 2>&1
	C container delete ck1 >/dev/null 2>&1
	left=$(leftovers_of ck1 | tr '\n' ' ')
	check "ck1 killed and removed before the restore${left:+ (left: $left)}" [ -z "$left$(status ck1)" ]

	out=$(C container restore --live ck1 "$CKREF" </dev/null 2>&1)
	rc=$?
	if [ "$rc" != 0 ] && grep -q "^ctr: warren restore ck1: criu restore failed.*tmp/held" <<<"$out"; then
		ok "ctr container restore --live without the rw layer: refused with criu's reason"
	else
		bad "ctr container restore --live without the rw layer (rc $rc): $(short "$out")"
	fi
	check "... the task stays CREATED (got '$(status ck1)')" status_is ck1 CREATED
	t0=$SECONDS
	C task delete ck1 >/dev/null 2>&1
	dt=$((SECONDS - t0)) st=$(status ck1)
	deleted_at_once() { [ -z "$st" ] && [ "$dt" -le 2 ]; }
	check "... and is deleted at once (${dt} s; no process to wait for)${st:+, still $st}" deleted_at_once
	C container delete ck1 >/dev/null 2>&1
	left=$(leftovers_of ck1 | tr '\n' ' ')
	check "... nothing of it left${left:+: $left}" [ -z "$left" ]

	out=$(C container restore --live --rw ck1 "$CKREF" </dev/null 2>&1)
	rc=$?
	if [ "$rc" = 0 ] && wait_for 10 status_is ck1 RUNNING; then
		ok "ctr container restore --live --rw: task RUNNING"
	else
		bad "ctr container restore --live --rw (rc $rc, status '$(status ck1)'): $(short "$out")"
	fi
	n1=$(count_of ck1 r1)
	check "the restored counter goes on from its checkpoint (>= $before, got '$n1')" [ "${n1:-0}" -ge "$before" ]
	# A counter started anew would be at about 7 then (5 a second); a slow
	# machine still counts 3 in 1.5 s.
	sleep 1.5
	n2=$(count_of ck1 r1b)
	check "... and counts on 1.5 s later (>= $((before + 3)), got '$n2')" [ "${n2:-0}" -ge $((before + 3)) ]
	out=$(C task exec --fifo-dir "$FIFO" --exec-id r2 ck1 sh -c 'tr "\0" " " </proc/1/cmdline' </dev/null 2>"$ERR")
	same "ctr task exec in the restored task: pid 1 is the counter" "sh -c $CNT " "$out" "$ERR"
	st=$(wstate ck1)
	check "warren state of the restored ck1 = running (got '$st')" [ "$st" = running ]
	sp=$(ppid_of "$(task_pid ck1)")
	check "the restored init's parent is a warren shim (pid $sp)" [ "$(readlink "/proc/$sp/exe")" = "$SHIM" ]
	# The init's events (its execs' are left out).
	t=$(grep -F '"container_id":"ck1"' "$EVENTS" | awk '$6 !~ /exec-/ && ($6 != "/tasks/exit" || /"id":"ck1"/) {print $6}' | xargs)
	same "events of ck1: checkpointed between paused and resumed; the failed restore's create and delete (no exit: no process); the restore's create and start" \
		"/tasks/create /tasks/start /tasks/paused /tasks/checkpointed /tasks/resumed /tasks/exit /tasks/delete /tasks/create /tasks/delete /tasks/create /tasks/start" "$t"
	C task kill -s SIGKILL ck1 >/dev/null 2>&1
	check "the restored ck1 stops on SIGKILL (got '$(status ck1)')" wait_for 10 status_is ck1 STOPPED
	C task delete ck1 >/dev/null 2>&1
	C container delete ck1 >/dev/null 2>&1
	# containerd leaves the images it unpacked for the restore in its TMPDIR (ours; runc's
	# shim the same): they go with our temp dir.
	C images rm "$CKREF" >/dev/null 2>&1
	left=$(leftovers_of ck1 | tr '\n' ' ')
	check "nothing of the restored ck1 left (cgroup, rootfs mount, warren state)${left:+: $left}" [ -z "$left" ]
	wait_for 5 sh -c "! kill -0 $sp 2>/dev/null"
	check "its shim (pid $sp) exited" sh -c "! kill -0 $sp 2>/dev/null"
fi

# 11c. a checkpoint criu refuses (an established TCP connection, without
# open_tcp): ctr gets criu's reason in one line, the task runs on unharmed,
# criu's log is kept in the bundle, and nothing else is left. The host's
# network (--net-host): Warren leaves a new namespace's lo down.
PORT=$((20000 + RANDOM % 20000))
TCP="sleep 100000 | nc -l -p $PORT >/dev/null & sleep 0.3; sleep 100000 | nc 127.0.0.1 $PORT & $CNT"
C run -d --net-host "${RT[@]}" "$IMG" ck2 sh -c "$TCP" </dev/null >/dev/null 2>&1
if wait_for 10 status_is ck2 RUNNING && wait_for 10 at_least ck2 5; then
	before=$(count_of ck2 c0)
	out=$(C container checkpoint --task ck2 localhost/warren-checkpoint/ck2:1 2>&1)
	rc=$?
	if [ "$rc" != 0 ] && [ "$(wc -l <<<"$out")" = 1 ] && grep -q 'Connected TCP socket.*--tcp-established.*/ck2/criu-dump.log' <<<"$out"; then
		ok "checkpoint of an established TCP connection: refused in one line with criu's reason and kept log"
	else
		bad "checkpoint of an established TCP connection (rc $rc): $(short "$out")"
	fi
	check "... ck2 still RUNNING (got '$(status ck2)')" status_is ck2 RUNNING
	check "... and counting (past $before)" wait_for 5 at_least ck2 $((before + 2))
	B=$D/state/io.containerd.runtime.v2.task/$NS/ck2
	check "... criu's log kept as \$BUNDLE/criu-dump.log, its work dir gone" \
		sh -c "grep -q 'Connected TCP socket' '$B/criu-dump.log' && [ ! -e '$B/work/criu-work' ]"
	no_image() { ! C images ls -q 2>/dev/null | grep -q warren-checkpoint/ck2; }
	check "... no checkpoint image" no_image
	check "... no /tasks/checkpointed for ck2" [ -z "$(grep -F '/tasks/checkpointed {"container_id":"ck2"' "$EVENTS")" ]
else
	bad "checkpoint failure: ck2 not counting (status '$(status ck2)')"
fi
C task kill -s SIGKILL ck2 >/dev/null 2>&1
wait_for 10 status_is ck2 STOPPED
C task delete ck2 >/dev/null 2>&1
C container delete ck2 >/dev/null 2>&1
left=$(leftovers_of ck2 | tr '\n' ' ')
check "nothing of ck2 left${left:+: $left}" [ -z "$left" ]

# 11d. a container with a terminal checkpoints (and runs on); ctr 1.6 restores
# without one, which the shim refuses at create, naming the mismatch (runc's
# shim fails only at start and leaves the task created).
tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' run -d -t ${RT[*]} $IMG ck3 sh -c '$CNT'" /dev/null </dev/null >/dev/null 2>&1
if wait_for 10 status_is ck3 RUNNING && wait_for 10 at_least ck3 3; then
	out=$(C container checkpoint --task --rw ck3 localhost/warren-checkpoint/ck3:1 2>&1)
	rc=$?
	check "ctr container checkpoint --task of a task with a terminal (rc $rc)${out:+: $(short "$out")}" [ "$rc" = 0 ]
	check "... still RUNNING (got '$(status ck3)')" status_is ck3 RUNNING
	C task kill -s SIGKILL ck3 >/dev/null 2>&1
	wait_for 10 status_is ck3 STOPPED
	C task delete ck3 >/dev/null 2>&1
	C container delete ck3 >/dev/null 2>&1
	out=$(C container restore --live --rw ck3 localhost/warren-checkpoint/ck3:1 </dev/null 2>&1)
	rc=$?
	if [ "$rc" != 0 ] && grep -q 'terminal: .*taken with a terminal' <<<"$out" && [ -z "$(status ck3)" ]; then
		ok "restore of a terminal's checkpoint into a task without one: refused at create, no task"
	else
		bad "restore of a terminal's checkpoint without a terminal (rc $rc, task '$(status ck3)'): $(short "$out")"
	fi
else
	bad "ctr run -d -t ck3: not counting (status '$(status ck3)')"
fi
C task kill -s SIGKILL ck3 >/dev/null 2>&1
C task delete --force ck3 >/dev/null 2>&1
C container delete ck3 >/dev/null 2>&1
C images rm localhost/warren-checkpoint/ck3:1 >/dev/null 2>&1
left=$(leftovers_of ck3 | tr '\n' ' ')
check "nothing of ck3 left${left:+: $left}" [ -z "$left" ]

# 11e. one bad request harms no other tenant of a grouped shim. rob1 runs in
# a group (io.kubernetes.cri.sandbox-id); then
# - fd-limit sweeps: the shim's descriptor limit is set to its open count + k
#   (k = 1..16) for one `ctr run -d` of another container of the group, and
#   again for one `ctr task exec -t` in rob1, so that EMFILE hits every step
#   of their fifo, pipe, socket, pty and thread setup in turn: each request
#   runs or fails with an error, the shim survives them all, a failed one
#   leaves nothing, and rob1 still answers (ps, exec, kill);
# - a slow createRuntime hook (sleep 5) of a new container: ps and exec of
#   rob1 return while the hook still runs;
# - the init of a container without a pid namespace of its own dies while its
#   state lock is held (as by any `warren` command on it, here flock(1)): the
#   kill of the rest waits for that lock, and ps, exec and state of rob1
#   return while it does.
G=(--annotation "io.kubernetes.cri.sandbox-id=sbx-$WCL_ID")
C run -d "${G[@]}" "${RT[@]}" "$IMG" rob1 sleep 100000 </dev/null >/dev/null 2>"$ERR"
if wait_for 10 status_is rob1 RUNNING; then
	rs=$(ppid_of "$(task_pid rob1)")
	# The soft limit only: raising a hard limit again takes CAP_SYS_RESOURCE.
	read -r soft0 hard0 < <(prlimit --pid "$rs" --nofile --noheadings --raw -o SOFT,HARD)
	fds0=$(ls "/proc/$rs/fd" | wc -l)
	# The exec is judged by its exit code, not its output: ctr 1.6 loses an exec's output now
	# and then under load (about 1 in 100, with runc's shim too), which says nothing of ours.
	answers() { # rob1 answers ps and exec
		[ "$(C task ps rob1 2>/dev/null | tail -n +2 | grep -c '[0-9]')" -ge 1 ] || return 1
		C task exec --fifo-dir "$FIFO" --exec-id "a$RANDOM" rob1 sh -c 'exit 3' </dev/null >/dev/null 2>&1
		[ $? -eq 3 ]
	}
	# sweep WHAT CMD...: runs CMD under the limit open-count + k, k = 1..16; the
	# outcome of each k (ok, or the error's first words) goes to $WCL_TMP/sweep.WHAT.
	sweep() {
		local what=$1 k n rc out
		shift
		: >"$WCL_TMP/sweep.$what"
		for k in $(seq 1 16); do
			n=$(ls "/proc/$rs/fd" | wc -l)
			prlimit --pid "$rs" --nofile=$((n + k)):"$hard0"
			out=$("$@" "$k" 2>&1)
			rc=$?
			prlimit --pid "$rs" --nofile="$soft0:$hard0"
			if [ "$rc" = 0 ]; then echo "$k ok" >>"$WCL_TMP/sweep.$what"; else echo "$k $(short "$out")" >>"$WCL_TMP/sweep.$what"; fi
			kill -0 "$rs" 2>/dev/null || return 1
		done
	}
	run_one() { C run -d "${G[@]}" "${RT[@]}" "$IMG" "robx$1" sleep 100000 </dev/null; }
	exec_tty() {
		local out
		out=$(tmo script -qec "ctr --address '$CTRD_SOCK' --namespace '$NS' task exec -t --fifo-dir '$FIFO' --exec-id tty$1 rob1 echo exec-tty-ok" /dev/null </dev/null 2>&1)
		grep -q exec-tty-ok <<<"$out" || { echo "rc $?: $out"; return 1; }
	}
	sweep create run_one
	check "fd-limit sweep of ctr run -d: the grouped shim (pid $rs) survived all 16" kill -0 "$rs"
	emfile=$(grep -c 'Too many open files' "$WCL_TMP/sweep.create")
	check "... $emfile of them failed with EMFILE ('Too many open files'), $(grep -c ' ok$' "$WCL_TMP/sweep.create") ran: $(short "$(cut -c1-90 "$WCL_TMP/sweep.create" | tr '\n' '|')")" [ "$emfile" -ge 1 ]
	other=$(grep -v -e ' ok$' -e 'Too many open files' "$WCL_TMP/sweep.create")
	check "... every one that failed said why (EMFILE)${other:+: $(short "$other")}" [ -z "$other" ]
	for k in $(seq 1 16); do
		C task kill -s SIGKILL "robx$k" >/dev/null 2>&1
		wait_for 5 sh -c "! ctr --address '$CTRD_SOCK' --namespace '$NS' task ls | grep -q '^robx$k .*RUNNING'"
		C task delete "robx$k" >/dev/null 2>&1
		C container delete "robx$k" >/dev/null 2>&1
	done
	left=$(for k in $(seq 1 16); do leftovers_of "robx$k"; done | tr '\n' ' ')
	check "... nothing of the 16 left (cgroup, rootfs mount, warren state)${left:+: $(short "$left")}" [ -z "$left" ]
	sweep exec exec_tty
	check "fd-limit sweep of ctr task exec -t in rob1: the shim survived all 16" kill -0 "$rs"
	check "... $(grep -c ' ok$' "$WCL_TMP/sweep.exec") ran, the others failed: $(short "$(cut -c1-110 "$WCL_TMP/sweep.exec" | tr '\n' '|')")" \
		[ "$(grep -c ' ok$' "$WCL_TMP/sweep.exec")" -lt 16 ]
	rob1_fine() { status_is rob1 RUNNING && answers; }
	check "after both sweeps rob1 is RUNNING and answers ps and exec" rob1_fine
	wait_for 5 sh -c "[ \$(ls /proc/$rs/fd | wc -l) -le $fds0 ]"
	n=$(ls "/proc/$rs/fd" | wc -l)
	check "... and the shim's descriptors are back to $fds0 (got $n)" [ "$n" -le "$fds0" ]

	# containers from a spec of our own (ctr run --config): a plain rootfs dir
	RR=$WCL_TMP/rob-rootfs
	mkdir -p "$RR" && tar -xf "$WCL_CACHE/rootfs.tar" -C "$RR"
	"$WCL_BIN" spec --bundle "$WCL_TMP" >/dev/null
	spec_of() { # ID JQ-FILTER: a spec of this group for ID, changed by the filter
		jq --arg root "$RR" --arg cg "/$NS/$1" --arg g "sbx-$WCL_ID" \
			".root.path = \$root | .process.terminal = false | .process.args = [\"sleep\", \"100000\"]
			 | .linux.cgroupsPath = \$cg | .annotations[\"io.kubernetes.cri.sandbox-id\"] = \$g | $2" \
			"$WCL_TMP/config.json" >"$WCL_TMP/$1.json"
	}
	# Long enough for ps and exec to answer on a slow, loaded machine.
	HS=8.$RANDOM
	spec_of rob3 ".hooks.createRuntime = [{\"path\": \"/bin/sleep\", \"args\": [\"sleep\", \"$HS\"]}]"
	C run -d --config "$WCL_TMP/rob3.json" "${RT[@]}" rob3 </dev/null >"$WCL_TMP/rob3.out" 2>&1 &
	rp=$!
	if wait_for 10 pgrep -f "^sleep $HS\$" >/dev/null; then
		answers
		rc=$?
		during=$(pgrep -f "^sleep $HS\$" >/dev/null && kill -0 "$rp" 2>/dev/null && echo yes)
		check "a createRuntime hook sleeping ${HS%.*} s: ps and exec of rob1 answered (rc $rc) while the create still ran (${during:-no})" \
			[ "$rc$during" = 0yes ]
	else
		bad "the createRuntime hook of rob3 never ran: $(short "$(cat "$WCL_TMP/rob3.out")")"
	fi
	wait "$rp"
	rc=$?
	check "... and rob3 then runs (rc $rc, '$(status rob3)')" [ "$rc/$(status rob3)" = 0/RUNNING ]

	spec_of rob4 '.linux.namespaces |= map(select(.type != "pid"))'
	C run -d --config "$WCL_TMP/rob4.json" "${RT[@]}" rob4 </dev/null >/dev/null 2>"$ERR"
	if wait_for 10 status_is rob4 RUNNING; then
		LS=20.$RANDOM
		flock -x "$SROOT/$NS/rob4" sleep "$LS" &
		lp=$!
		wait_for 5 pgrep -f "^sleep $LS\$" >/dev/null
		kill -KILL "$(task_pid rob4)"
		wait_for 5 status_is rob4 STOPPED
		st=$(status rob4)
		answers
		rc=$?
		during=$(kill -0 "$lp" 2>/dev/null && echo yes)
		check "rob4 (no pid namespace) died while its state lock was held: its state ($st), ps and exec of rob1 (rc $rc) answered while the lock was still held (${during:-no})" \
			[ "$st/$rc/$during" = STOPPED/0/yes ]
		pkill -f "^sleep $LS\$"; kill "$lp" 2>/dev/null
		wait "$lp"
	else
		bad "rob4 (no pid namespace) did not run: $(short "$(cat "$ERR")")"
	fi
	p3=$(ppid_of "$(task_pid rob3)")
	check "the grouped shim (pid $rs) still serves rob1 and rob3 (rob3's parent: $p3)" [ "$p3" = "$rs" ]
	C task kill -s SIGKILL rob1 >/dev/null 2>&1
	check "ctr task kill rob1 (the survivor) works: STOPPED" wait_for 10 status_is rob1 STOPPED
else
	bad "rob1 did not run: $(short "$(cat "$ERR")")"
fi
for id in rob1 rob3 rob4; do
	C task kill -s SIGKILL "$id" >/dev/null 2>&1
	wait_for 5 sh -c "! ctr --address '$CTRD_SOCK' --namespace '$NS' task ls | grep -q '^$id .*RUNNING'"
	C task delete "$id" >/dev/null 2>&1
	C container delete "$id" >/dev/null 2>&1
done
left=$(for id in rob1 rob3 rob4; do leftovers_of "$id"; done | tr '\n' ' ')
check "nothing of rob1, rob3, rob4 left${left:+: $(short "$left")}" [ -z "$left" ]
check "their shim exited with its last task" wait_for 5 sh -c "! kill -0 ${rs:-0} 2>/dev/null"

# 12. grouping: 20 containers, one shim process
ids=()
for i in $(seq 1 20); do
	C run -d --annotation org.warren.group=grp1 "${RT[@]}" "$IMG" "grp$i" sleep 1000 </dev/null >/dev/null 2>"$ERR" ||
		bad "ctr run -d grp$i: $(short "$(cat "$ERR")")"
	ids+=("grp$i")
done
parents=$(for id in "${ids[@]}"; do ppid_of "$(task_pid "$id")"; done | sort -u)
running=$(for id in "${ids[@]}"; do status "$id"; done | grep -c RUNNING)
check "20 grouped containers RUNNING (got $running)" [ "$running" = 20 ]
check "their inits share one parent shim (parents: $(echo $parents))" [ "$(wc -w <<<"$parents")" = 1 ]
check "one shim process for the group (shims: $(shims | tr '\n' ' '))" [ "$(shims | wc -l)" = 1 ]

# 13. kill -9 of the group's shim: containerd cleans up through `shim delete`
gs=$(shims | head -n 1)
kill -KILL "$gs" 2>/dev/null
gone() { for id in "${ids[@]}"; do case $(status "$id") in RUNNING | PAUSED | CREATED) return 1 ;; esac; done; }
if wait_for 20 gone; then ok "kill -9 of the shim: containerd reports the 20 tasks ended"; else bad "kill -9 of the shim: tasks still $(for id in "${ids[@]}"; do status "$id"; done | sort | uniq -c | tr '\n' ' ')"; fi
for id in "${ids[@]}"; do C task delete "$id" >/dev/null 2>&1; C container delete "$id" >/dev/null 2>&1; done
left=$(for id in "${ids[@]}"; do leftovers_of "$id"; done | tr '\n' ' ')
check "kill -9 of the shim: no cgroup, rootfs mount or state left${left:+: $(short "$left")}" [ -z "$left" ]
p=$(procs_in_cgroups "$WCL_TMP" | tr '\n' ' ')
check "kill -9 of the shim: no container process left${p:+: $p}" [ -z "$p" ]
check "kill -9 of the shim: no shim process left ($(shims | tr '\n' ' '))" [ -z "$(shims)" ]

exit 0
