#!/usr/bin/env bash
# test.sh: everything CI checks, in order: setup (packages + release build),
# fmt, clippy, build, cargo test in the quick profile (the integration tests drive
# target/bin/warren as root; WARREN_BIN overrides), the project's own
# real-client tests (tests/clients: containerd/ctr, podman, docker), the shared
# client smoke tests (containerd/ctr and podman) when ../shared exists, and a
# final check that nothing was left on the host. Exits non-zero if any step
# failed.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
export WARREN_BIN=${WARREN_BIN:-$ROOT/target/bin/warren}
SHARED=$ROOT/../shared/clients

PASSED=() FAILED=()
log() { printf '[test.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# step NAME TIMEOUT_S CMD...: run one step with a deadline, record the result.
step() {
	local name=$1 limit=$2 start rc
	shift 2
	log "---- $name"
	start=$(date +%s)
	if declare -F "$1" >/dev/null; then
		"$@" # a shell function: quick, no deadline needed
	else
		timeout --kill-after=30 "$limit" "$@"
	fi
	rc=$?
	if [ "$rc" -eq 0 ]; then
		PASSED+=("$name")
		log "PASS $name ($(($(date +%s) - start))s)"
	else
		FAILED+=("$name")
		[ "$rc" -eq 124 ] && log "TIMEOUT $name after ${limit}s"
		log "FAIL $name (exit $rc)"
	fi
	return "$rc"
}

# leftovers: anything a container run could have left on the host.
leftovers() {
	local bad=0 d exe
	if grep -i warren /proc/self/mountinfo; then
		log "mounts mentioning warren remain"; bad=1
	fi
	# Depth 4: this host nests some hierarchies (memory/process_api/HASH/ID).
	d=$(find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d \( -name '*warren*' -o -name 'wt-*' \) 2>/dev/null)
	if [ -n "$d" ]; then
		printf '%s\n' "$d"; log "cgroup dirs remain"; bad=1
	fi
	# Tenants' anti-spoofing tables go with a bridge's last tenant, their NAT rule likewise.
	if nft list tables 2>/dev/null | grep warren_guard_; then
		log "tenant guard tables remain"; bad=1
	fi
	if iptables -w -t nat -S 2>/dev/null | grep -F 'warren tenants'; then
		log "tenant masquerade rules remain"; bad=1
	fi
	for d in /proc/[0-9]*; do
		exe=$(readlink "$d/exe" 2>/dev/null) || continue
		case $exe in "$WARREN_BIN" | "$WARREN_BIN (deleted)")
			log "warren process remains: ${d#/proc/} $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)"; bad=1 ;;
		esac
	done
	return "$bad"
}

summary() {
	log "passed: ${PASSED[*]:-none}"
	[ ${#FAILED[@]} -eq 0 ] || log "failed: ${FAILED[*]}"
	echo "test.sh: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
}

if ! step setup 1200 "$ROOT/scripts/setup.sh"; then
	summary; exit 1
fi
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"

step fmt 120 cargo fmt --all --check
step clippy 900 cargo clippy --workspace --all-targets -- -D warnings
step build 900 "$ROOT/scripts/build.sh"
# --no-fail-fast: report every failing test, not only the first binary's.
step cargo-test 1200 cargo test --workspace --profile quick --no-fail-fast
# Real clients drive the built binary: containerd 1.6/ctr, podman 4.3, docker 20.10.
step clients 900 "$ROOT/tests/clients/run-all.sh" "$WARREN_BIN"
# The density bench as a functional check (3 tenants each: all running, nothing left; no timing
# is asserted), through warren directly and through containerd's API client.
step bench-density-smoke 600 "$ROOT/bench/density" --runtimes warren,warren-shim-grouped,containerd-runc \
	--n 3 --modes burst --idle-secs 0 --out "$ROOT/target/bench-density/smoke"

if [ -d "$SHARED" ]; then
	step ctr-smoke 600 "$SHARED/ctr-smoke.sh" "$WARREN_BIN"
	step podman-smoke 600 "$SHARED/podman-smoke.sh" "$WARREN_BIN"
	step docker-smoke 600 "$SHARED/docker-smoke.sh" "$WARREN_BIN"
else
	log "no $SHARED: client smoke tests skipped"
fi

step leftovers 120 leftovers
summary
[ ${#FAILED[@]} -eq 0 ]
