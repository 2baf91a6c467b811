#!/usr/bin/env bash
# demo.sh [DEMO_USERNS=0]: build Warren and show it at work on the built-in busybox image.
#   1. `warren run` in the foreground: the container prints what it can see
#      of itself (hostname, ids, pid 1, user namespace map, mounts,
#      capabilities, no_new_privs).
#   2. the detached life cycle: create, state, start, state, list, kill,
#      state, delete.
#   3. a tenant as a hosting operator makes one: the busybox image imported
#      into a private store, a bundle on its shared layers with the "nano"
#      plan, its live usage (`events --stats`), a live limit change
#      (`update`), and (when criu works here) a checkpoint and a restore that
#      goes on counting from where it was.
#   4. two tenants the operator's way (`warren tenant`): each unprivileged on
#      its own host id range, with a disk quota and an address on a demo
#      bridge; one serves a page, the other fetches it, the host too; one is
#      killed with -9 and its supervisor brings it back on the same address.
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
	"$W" bundle --store "$T/store" rm "$T/tenant" >/dev/null 2>&1
	for c in web shop; do
		"$W" --root "$STATE" tenant --store "$T/store" --host-config "$T/host.toml" destroy --timeout 1 "$c-$$" >/dev/null 2>&1
	done
	ip link del "wdemo$$" >/dev/null 2>&1
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

say "a tenant from the image, with a plan"
run "$W" image --store "$T/store" import "$ROOT/target/images/busybox/busybox-oci.tar"
run "$W" image --store "$T/store" list
run "$W" plan show nano
# Written to a new file and renamed: a reader never sees it half-written.
COUNTER='i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done'
run "$W" bundle --store "$T/store" create --image warren/busybox:latest --plan nano "$T/tenant" -- sh -c "$COUNTER"
run "$W" --root "$STATE" run -d --bundle "$T/tenant" "$ID-t" </dev/null >/dev/null 2>&1
sleep 1
printf '$ warren events --stats %s | jq (memory, pids, cpu)\n' "$ID-t"
"$W" --root "$STATE" events --stats "$ID-t" |
	jq -c '{memory_limit: .data.memory.usage.limit, memory_usage: .data.memory.usage.usage, pids: .data.pids, cpu_ns: .data.cpu.usage.total}'
run "$W" --root "$STATE" update --memory 96m --pids-limit 32 "$ID-t"
"$W" --root "$STATE" events --stats "$ID-t" | jq -c '{memory_limit: .data.memory.usage.limit, pids: .data.pids}'
if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
	tenant_count() { "$W" --root "$STATE" exec "$ID-t" cat /tmp/count; }
	echo "counter before the checkpoint: $(tenant_count)"
	run "$W" --root "$STATE" checkpoint --image-path "$T/checkpoint" "$ID-t"
	run "$W" --root "$STATE" list
	run "$W" --root "$STATE" restore -d --bundle "$T/tenant" --image-path "$T/checkpoint" "$ID-t" </dev/null >/dev/null
	sleep 0.5
	echo "counter after the restore: $(tenant_count) (it went on from its value in memory)"
else
	echo "(no working criu here: checkpoint/restore skipped; scripts/install-criu.sh builds one)"
fi
run "$W" --root "$STATE" delete --force "$ID-t"
run "$W" bundle --store "$T/store" rm "$T/tenant"

say "two tenants that talk to each other (warren tenant)"
# The demo's own bridge and subnet, so that it leaves nothing on the host.
printf '[network]\nbridge = "wdemo%s"\nsubnet = "10.250.%s.0/24"\n' $$ $(($$ % 250)) >"$T/host.toml"
TN=("$W" --root "$STATE" tenant --store "$T/store" --host-config "$T/host.toml")
SERVE='mkdir -p /www; echo "hello from $(hostname), root here is host uid $(cat /proc/self/uid_map | awk "{print \$2}")" >/www/index.html; exec httpd -f -p 80 -h /www'
run "${TN[@]}" create "web-$$" --image warren/busybox:latest --plan nano --disk 64MiB -- sh -c "$SERVE"
run "${TN[@]}" create "shop-$$" --image warren/busybox:latest --plan nano --disk 64MiB -- sleep 100000
run "${TN[@]}" start "web-$$"
run "${TN[@]}" start "shop-$$"
run "${TN[@]}" list
WEB_IP=$("${TN[@]}" list --format json | jq -r ".[] | select(.name == \"web-$$\") | .ip")
sleep 0.5
run "${TN[@]}" exec "shop-$$" -- wget -qO- "http://$WEB_IP/"
printf '$ wget -qO- http://%s/   (from the host)\n' "$WEB_IP"
wget -qO- "http://$WEB_IP/" 2>/dev/null || busybox wget -qO- "http://$WEB_IP/"
printf '$ kill -9 <init of web-%s>\n' $$
kill -9 "$("${TN[@]}" list --format json | jq -r ".[] | select(.name == \"web-$$\") | .pid")"
for _ in $(seq 50); do
	r=$("${TN[@]}" list --format json | jq -r ".[] | select(.name == \"web-$$\") | \"\(.state) \(.restarts)\"")
	[ "$r" = "running 1" ] && break
	sleep 0.2
done
run "${TN[@]}" list
sleep 0.5
run "${TN[@]}" exec "shop-$$" -- wget -qO- "http://$WEB_IP/"
run "${TN[@]}" destroy --timeout 1 "web-$$"
run "${TN[@]}" destroy --timeout 1 "shop-$$"
