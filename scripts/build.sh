#!/usr/bin/env bash
# build.sh: the release build of the workspace, plus the `warren` binary as
# a static, non-PIE executable at target/bin/warren: it is exec'd twice per
# container (runtime and init) and a dynamic PIE spends about a millisecond
# of each start in the loader and its relocations. Where static linking is
# not possible (no libc.a), target/bin/warren is the dynamic build instead.
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
echo "$ROOT/target/bin/warren"
