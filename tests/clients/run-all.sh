#!/usr/bin/env bash
# run-all.sh WARREN_BIN: the real-client suites (containerd/ctr, the warren shim and its
# failpoints (shim-faults), podman,
# docker) one after the other, each under its own deadline
# (WCL_SUITE_TIMEOUT, default 300 s). Prints every suite's summary and a
# final line "clients: N passed, M failed"; exits non-zero on any failure.
# A suite that dies or times out without its summary counts as one failure.
# SIGINT/SIGTERM are passed on to the running suite, which then cleans up.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITES=(containerd shim shim-faults podman docker)
LIMIT=${WCL_SUITE_TIMEOUT:-300}

[ $# -eq 1 ] || { echo "usage: $0 WARREN_BIN" >&2; exit 2; }
BIN=$1

child="" stop=0
forward() {
	stop=1
	[ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap forward INT TERM HUP

P=0 F=0 SUMMARY=()
LOGDIR=$(mktemp -d /tmp/warren-clients-logs.XXXXXX) || exit 1
trap 'rm -rf -- "$LOGDIR"' EXIT
start=$SECONDS
for s in "${SUITES[@]}"; do
	[ "$stop" = 1 ] && break
	log=$LOGDIR/$s.log
	t0=$SECONDS
	exec 3> >(tee "$log")
	teepid=$!
	# timeout: the suite's own deadline; its TERM makes the suite clean up,
	# KILL follows 60 s later if cleanup hangs.
	timeout -k 60 "$LIMIT" "$HERE/$s.sh" "$BIN" >&3 2>&1 &
	child=$!
	rc=0
	while :; do
		wait "$child"
		rc=$?
		kill -0 "$child" 2>/dev/null || break # else: a signal interrupted wait
	done
	child=""
	exec 3>&-
	wait "$teepid" 2>/dev/null
	line=$(grep -E "^clients-$s: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -n 1)
	if [ -z "$line" ]; then
		[ "$rc" = 124 ] && echo "run-all: $s timed out after ${LIMIT}s" || echo "run-all: $s exited $rc without a summary"
		line="clients-$s: 0 passed, 1 failed"
	fi
	p=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")
	f=$(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$line")
	if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
		echo "run-all: $s exited $rc"
		f=1 line="clients-$s: $p passed, $f failed"
	fi
	P=$((P + p)) F=$((F + f))
	SUMMARY+=("$line ($((SECONDS - t0))s)")
done
[ "$stop" = 1 ] && { echo "run-all: interrupted"; F=$((F + 1)); }
# The failed checks again, next to the summary: CI shows only the log's tail.
if [ "$F" -gt 0 ]; then
	echo "---- failed checks (with the 3 lines before each)"
	for s in "${SUITES[@]}"; do
		[ -f "$LOGDIR/$s.log" ] && grep -B3 "FAIL  " "$LOGDIR/$s.log" | sed "s/^/[$s] /"
	done
fi
echo "---- real clients ($((SECONDS - start))s)"
printf '%s\n' "${SUMMARY[@]}"
echo "clients: $P passed, $F failed"
[ "$F" -eq 0 ]
