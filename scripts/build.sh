#!/usr/bin/env bash
# build.sh: the release build of the workspace, plus the `warren` binary as
# a static, non-PIE executable at target/bin/warren: it is exec'd twice per
# container (runtime and init) and a dynamic PIE spends about a millisecond
# of each start in the loader and its relocations. Where static linking is
# not possible (no libc.a), target/bin/warren is the dynamic build instead.
# Last, target/bin/warren-failpoints and containerd-shim-warren-v2-failpoints:
# the same with failpoints compiled in, for the fault tests only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release
HOST=$(rustc -vV | sed -n 's/^host: //p')
mkdir -p target/bin
# With --target, RUSTFLAGS reach only the target's crates, not proc macros.
if RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
	cargo build --release -p warren --bin warren --target "$HOST" \
	&& "target/$HOST/release/warren" --version >/dev/null; then
	install -m 0755 "target/$HOST/release/warren" target/bin/warren.new
else
	echo "build.sh: static build failed; target/bin/warren is the dynamic one" >&2
	install -m 0755 target/release/warren target/bin/warren.new
fi
mv -f target/bin/warren.new target/bin/warren
# The containerd shim, static and non-PIE too: one process per container (or
# group), whose relocated data would otherwise be private memory in each.
SHIM=containerd-shim-warren-v2
if RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
	cargo build --release -p warren-shim --bin "$SHIM" --target "$HOST"; then
	install -m 0755 "target/$HOST/release/$SHIM" "target/bin/$SHIM.new"
else
	echo "build.sh: static shim build failed; target/bin/$SHIM is the dynamic one" >&2
	install -m 0755 "target/release/$SHIM" "target/bin/$SHIM.new"
fi
mv -f "target/bin/$SHIM.new" "target/bin/$SHIM"
# The failpoints build for the fault-injection tests (tests/tests/faults.rs,
# tests/clients/shim-faults.sh): both binaries with the `failpoints` feature, in
# their own cargo profile (target/failpoints/, no LTO, incremental), dynamic.
cargo build --profile failpoints -p warren -p warren-shim --features warren/failpoints,warren-shim/failpoints
install -m 0755 target/failpoints/warren target/bin/warren-failpoints
install -m 0755 "target/failpoints/$SHIM" "target/bin/$SHIM-failpoints"
echo "$ROOT/target/bin/warren"
