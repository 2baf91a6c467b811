#!/usr/bin/env bash
# build.sh: the shipped binaries, `warren` and `containerd-shim-warren-v2`, in the
# release profile as static, non-PIE executables in target/bin/: warren is exec'd
# twice per container (runtime and init) and a dynamic PIE spends about a
# millisecond of each start in the loader and its relocations; the shim is one
# process per container (or group), whose relocated data would otherwise be
# private memory in each. Where static linking is not possible (no libc.a), they
# are the dynamic release builds instead.
# Then target/bin/warren-failpoints and containerd-shim-warren-v2-failpoints: the
# same with failpoints compiled in, for the fault tests only, in the `quick`
# profile (no LTO, incremental, dynamic; a panic unwinds there instead of
# aborting, which no fault test relies on), which the tests and bench clients
# build in too (`cargo test --profile quick`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
HOST=$(rustc -vV | sed -n 's/^host: //p')
SHIM=containerd-shim-warren-v2
mkdir -p target/bin
# One cargo run for both, so their shared dependencies compile once. With
# --target, RUSTFLAGS reach only the target's crates, not proc macros.
if RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
	cargo build --release -p warren -p warren-shim --bin warren --bin "$SHIM" --target "$HOST" \
	&& "target/$HOST/release/warren" --version >/dev/null; then
	OUT=target/$HOST/release
else
	echo "build.sh: static build failed; the binaries in target/bin are dynamic" >&2
	cargo build --release -p warren -p warren-shim --bin warren --bin "$SHIM"
	OUT=target/release
fi
for bin in warren "$SHIM"; do
	install -m 0755 "$OUT/$bin" "target/bin/$bin.new"
	mv -f "target/bin/$bin.new" "target/bin/$bin"
done
# The failpoints build for the fault-injection tests (tests/tests/faults.rs,
# tests/clients/shim-faults.sh): both binaries with the `failpoints` feature.
cargo build --profile quick -p warren -p warren-shim --features warren/failpoints,warren-shim/failpoints
install -m 0755 target/quick/warren target/bin/warren-failpoints
install -m 0755 "target/quick/$SHIM" "target/bin/$SHIM-failpoints"
echo "$ROOT/target/bin/warren"
