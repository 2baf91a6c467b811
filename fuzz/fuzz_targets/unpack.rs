//! A layer tar (gzip-compressed when it starts with gzip's magic) unpacked the way import does
//! it, into a fresh directory; what follows the tar's end is unpacked as a second layer on top
//! of the first (whiteouts, opaque dirs, links into the lower layer). After each input nothing
//! outside the layer directories may have changed: the canaries beside them keep their
//! content, metadata and link count, no entry appears beside them, in the scratch directory's
//! parent or in `/` under a name the input holds, and no write hit a read-only mount
//! (scripts/fuzz.sh runs this target with everything but its scratch tmpfs and its corpus
//! mounted read-only, so an escape fails there instead of touching the host).
#![no_main]

use std::borrow::Cow;
use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warren_fuzz::canary::Canaries;
use warren_images::unpack::{unpack_layer, Tree, UnpackError};

/// Decompressed input is capped: a gzip bomb is not what this target looks for.
const MAX_PLAIN: u64 = 16 << 20;

static CANARIES: OnceLock<Canaries> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let canaries = CANARIES.get_or_init(|| Canaries::new("unpack"));
    let plain: Cow<[u8]> = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let _ = flate2::read::GzDecoder::new(data).take(MAX_PLAIN).read_to_end(&mut out);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(data)
    };
    let [lower, upper] = canaries.fresh_layers();
    let mut tree = Tree::new();
    tree.begin_layer(0);
    let first = unpack_layer(&plain[..], &lower, &mut tree, &[]);
    if let Ok((rest, _)) = &first {
        if rest.iter().any(|b| *b != 0) {
            tree.begin_layer(1);
            check_error(unpack_layer(*rest, &upper, &mut tree, std::slice::from_ref(&lower)).map(|_| ()));
        }
    }
    check_error(first.map(|_| ()));
    canaries.check(&plain);
});

/// A write that hit a read-only mount went outside the layer directories.
fn check_error(r: Result<(), UnpackError>) {
    if let Err(UnpackError::Io { entry, source }) = &r {
        assert!(
            source.kind() != std::io::ErrorKind::ReadOnlyFilesystem,
            "entry {entry:?} wrote outside the layer directories: {source}"
        );
    }
}
