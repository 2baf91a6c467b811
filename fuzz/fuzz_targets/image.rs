//! An image's small documents through what `warren image import` runs before it unpacks:
//! `source::find` (index.json with nested indexes, or docker's manifest.json; the manifest;
//! the image config with its platform and diff_ids), then each layer blob opened, hashed and
//! verified against its descriptor.
//!
//! Blobs are named by their sha256, which a mutated document would never match, so the input
//! is a set of documents and the references between them are filled in here (see `image`).
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use warren_fuzz::{image, scratch_dir};
use warren_images::source::{self, Selector};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let built = image::Image::from_input(mode, rest);
    let dir = scratch_dir("image");
    let path = built.write(&dir);
    let refname = (mode & image::MODE_REFNAME != 0).then(|| "latest".to_string());
    if let Ok(found) = source::find(&path, &Selector { refname }) {
        check(&found);
    }
});

/// What import does with a found image before unpacking: every layer opened and verified.
fn check(found: &source::FoundImage) {
    let _ = (found.name(), found.digest(), found.config_digest(), found.layer_bytes());
    for layer in found.layers() {
        let Ok((mut reader, size)) = found.open_layer(layer) else { continue };
        let mut head = [0u8; 512];
        let _ = reader.read(&mut head);
        if let Ok((digest, n)) = reader.finish() {
            assert_eq!(n, size, "layer {} read {n} bytes of {size}", layer.name());
            let _ = source::verify_blob(layer, &digest);
        }
    }
}
