#!/usr/bin/env bash
# demo.sh [DEMO_USERNS=0]: build Warren and show it at work on the built-in busybox image.
#   1. `warren run` in the foreground: the container prints what it can see
#      of itself (hostname, ids, pid 1, user namespace map, mounts,
#      capabilities, no_new_privs).
#   2. the detached life cycle: create, state, start, state, list, kill,
#      state, delete.
# Everything (bundles, warren's state via --root) lives in one temp dir that
# is removed on exit, also on failure.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

"$ROOT/scripts/setup.sh"
W=${WARREN_BIN:-$ROOT/target/bin/warren}

T=$(mktemp -d /tmp/warren-demo.XXXXXX)
# mktemp makes it 0700; the user namespace's root (host uid 100000) must
# reach the rootfs inside.
chmod 755 "$T"
STATE=$T/state
ID=demo-$$
cleanup() {
	local rc=$? c
	set +e
	# Force-delete whatever is still known under our private root.
	for c in $("$W" --root "$STATE" list -q 2>/dev/null); do
		"$W" --root "$STATE" delete --force "$c" >/dev/null 2>&1
	done
	rm -rf -- "$T"
	[ "$rc" -eq 0 ] && say "demo done" || say "demo FAILED (exit $rc)"
	exit "$rc"
}
trap cleanup EXIT INT TERM

# The container reports on its own isolation.
read -r -d '' REPORT <<'SH' || true
echo "hostname:    $(hostname)"
echo "id:          $(id)"
echo "pid 1:       $(cat /proc/1/comm)   (my pid: $$)"
echo "uid_map:     $(cat /proc/self/uid_map)"
echo "processes:"; ps -o pid,user,comm
echo "mounts:"; cat /proc/self/mountinfo
echo "capabilities:"; grep Cap /proc/self/status
grep NoNewPrivs /proc/self/status
SH

say "make a busybox bundle"
"$ROOT/scripts/make-bundle.sh" "$T/bundle" /bin/sh -c "$REPORT"
# A user namespace too (DEMO_USERNS=0 leaves it out): root inside is host
# uid 100000.
USERNS='.'
if [ "${DEMO_USERNS:-1}" = 1 ]; then
	USERNS='.linux.namespaces += [{"type":"user"}]
	| .linux.uidMappings = [{"containerID":0,"hostID":100000,"size":65536}]
	| .linux.gidMappings = [{"containerID":0,"hostID":100000,"size":65536}]'
fi
jq "$USERNS | .hostname = \"warren-demo\"" "$T/bundle/config.json" >"$T/config.json"
mv "$T/config.json" "$T/bundle/config.json"

say "warren run (foreground)"
run "$W" --root "$STATE" run --bundle "$T/bundle" "$ID"

say "detached life cycle"
"$ROOT/scripts/make-bundle.sh" "$T/bundle2" /bin/sleep 1000
# The container inherits our stdio: point it away from the terminal.
run "$W" --root "$STATE" create --bundle "$T/bundle2" "$ID-d" </dev/null >/dev/null 2>&1
run "$W" --root "$STATE" state "$ID-d"
run "$W" --root "$STATE" start "$ID-d"
run "$W" --root "$STATE" state "$ID-d"
run "$W" --root "$STATE" list
run "$W" --root "$STATE" kill "$ID-d" KILL
for _ in $(seq 50); do
	st=$("$W" --root "$STATE" state "$ID-d" | jq -r .status)
	[ "$st" = stopped ] && break
	sleep 0.1
done
run "$W" --root "$STATE" state "$ID-d"
run "$W" --root "$STATE" delete "$ID-d"
run "$W" --root "$STATE" list
