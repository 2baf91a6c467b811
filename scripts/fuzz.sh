#!/usr/bin/env bash
# fuzz.sh: runs Warren's fuzz targets (fuzz/, cargo-fuzz and libFuzzer), one after the other,
# each for SECONDS (default 600) on its corpus fuzz/corpus/TARGET, under `nice -n 19`, and
# prints per target the runs, the coverage and whether it found something (a crash, a leak,
# a timeout or an out-of-memory input, kept in fuzz/artifacts/TARGET/). Not part of CI.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   targets: config image unpack migrate plan
#
# cargo-fuzz wants a nightly toolchain for its -Z flags (sanitizer coverage); RUSTC_BOOTSTRAP=1
# lets the stable compiler take them, so no nightly is needed. The build has no sanitizer
# (-s none): the code under test is safe Rust apart from the syscall wrappers, and
# AddressSanitizer would halve the executions per second. Debug assertions and overflow
# checks are on, so an arithmetic overflow is a finding too.
#
# The unpack target writes files named by its input as root, so it runs in a private mount
# namespace where everything is read-only except a tmpfs for its scratch directories and its
# corpus and artifact directories: an escape from the layer directory fails there (and the
# target reports it) instead of writing on the host.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL=(config image unpack migrate plan)
SECS=600
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
	SECS=$1
	shift
fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
	[[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (${ALL[*]})" >&2; exit 2; }
done
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
	cargo install cargo-fuzz
fi

cd "$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1
for t in "${TARGETS[@]}"; do
	cargo fuzz build -O -s none "$t"
done
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN="$ROOT/fuzz/target/$HOST/release"

# Largest input per target: enough for a config.json with a seccomp profile, a layer tar of
# a few small files, a migration stream of a few parts.
declare -A MAX_LEN=([config]=32768 [image]=16384 [unpack]=65536 [migrate]=65536 [plan]=4096)

SCRATCH=$(mktemp -d /dev/shm/warren-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
SUMMARY=()
for t in "${TARGETS[@]}"; do
	corpus="$ROOT/fuzz/corpus/$t" artifacts="$ROOT/fuzz/artifacts/$t"
	mkdir -p "$corpus" "$artifacts" "$SCRATCH/$t"
	log="$SCRATCH/$t.log"
	before=$(ls "$artifacts" | wc -l)
	args=("$BIN/$t" "$corpus" -max_total_time="$SECS" -max_len="${MAX_LEN[$t]}" -timeout=10
		-rss_limit_mb=2048 -artifact_prefix="$artifacts/" -print_final_stats=1)
	echo "fuzz.sh: $t for ${SECS}s (log: fuzz/artifacts/$t.log)"
	status=0
	if [[ $t == unpack ]]; then
		# shellcheck disable=SC2016
		TMPDIR="$SCRATCH/$t" nice -n 19 unshare --mount --propagation private -- bash -c '
			set -e
			mount -t tmpfs -o size=512m fuzz-scratch "$TMPDIR"
			mount --bind "$1" "$1"; mount --bind "$2" "$2"
			for m in / /dev /dev/shm; do mount -o remount,bind,ro "$m"; done
			shift 2; exec "$@"' bash "$corpus" "$artifacts" "${args[@]}" >"$log" 2>&1 || status=$?
	else
		TMPDIR="$SCRATCH/$t" nice -n 19 "${args[@]}" >"$log" 2>&1 || status=$?
	fi
	cp "$log" "$ROOT/fuzz/artifacts/$t.log"
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9a-zA-Z]*' "$log" | tail -1)
	found=$(ls -t "$artifacts" | head -n $(($(ls "$artifacts" | wc -l) - before)) | tr '\n' ' ')
	if [[ $status -eq 0 && -z $found ]]; then verdict="no crash"; else verdict="FOUND (exit $status): ${found:-see log}"; fi
	line="$t: ${runs:-?} runs in ${SECS}s, ${cov:-no coverage line}, $verdict"
	echo "fuzz.sh: $line"
	SUMMARY+=("$line")
done
echo "fuzz.sh: summary"
printf '  %s\n' "${SUMMARY[@]}"
