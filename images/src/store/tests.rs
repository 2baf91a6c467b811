//! The store against hand-made images: verification, sharing, reference
//! counting, and that a failed or killed import leaves nothing behind.

use super::*;
use crate::testutil::{gzip, layout, put_blob, zstd, Blob, Layer, TAR_LAYER, ZSTD_LAYER};
use serde_json::json;

struct World {
    tmp: tempfile::TempDir,
    store: Store,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    World { tmp, store }
}

impl World {
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn import(&self, path: &Path) -> Result<ImageRecord, StoreError> {
        self.store.import(path, &ImportOptions::default(), &mut |_| {})
    }

    /// Names in a store subdirectory.
    fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store.root().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn assert_empty(&self) {
        for sub in ["images", "layers", "tmp", "blobs/sha256", "bundles"] {
            assert_eq!(self.entries(sub), Vec::<String>::new(), "{sub}");
        }
    }
}

fn base() -> Vec<u8> {
    Layer::new().dir("etc").file("etc/os", b"base\n").dir("bin").file("bin/tool", b"#!").finish()
}

#[test]
fn layers_are_shared_and_counted_by_reference() {
    let w = world();
    let a = w.dir("a");
    layout(&a, "a:1", &[Blob::gz(base()), Blob::gz(Layer::new().file("a", b"a").finish())], json!({}));
    let b = w.dir("b");
    let zb = Blob { media_type: ZSTD_LAYER, blob: zstd(&base()), tar: base() };
    layout(&b, "b:1", &[zb, Blob::gz(Layer::new().file("b", b"b").finish())], json!({}));
    assert_eq!(w.import(&a).unwrap().name(), "a:1");
    // Same base content, other compression: one unpacked copy.
    assert_eq!(w.import(&b).unwrap().name(), "b:1");
    assert_eq!(w.entries("layers").len(), 3);
    let list = w.store.list().unwrap();
    assert_eq!(
        list.iter().map(|i| (i.name(), i.layers(), i.shared())).collect::<Vec<_>>(),
        [("a:1", 2, 1), ("b:1", 2, 1)]
    );
    assert_eq!(w.store.remove("a:1").unwrap(), 1);
    assert_eq!(w.entries("layers").len(), 2);
    assert!(matches!(w.store.remove("a:1"), Err(StoreError::NoImage { .. })));
    assert_eq!(w.store.remove("b:1").unwrap(), 2);
    w.assert_empty();
}

#[test]
fn every_blob_is_verified_and_nothing_is_registered_on_failure() {
    let w = world();
    let dir = w.dir("img");
    let good = Blob::gz(base());
    let mut bad = Blob::gz(Layer::new().file("x", b"y").finish());
    layout(&dir, "img:1", &[Blob::gz(base()), Blob::gz(bad.tar.clone())], json!({}));
    // Tamper with the second layer's blob: same size, other bytes.
    let bad_digest = crate::digest::Digest::of(&bad.blob);
    let n = bad.blob.len();
    bad.blob[n - 5] ^= 0xff;
    std::fs::write(dir.join("blobs/sha256").join(bad_digest.hex()), &bad.blob).unwrap();
    let e = w.import(&dir).unwrap_err().to_string();
    assert!(e.starts_with(&format!("blob {bad_digest}: content has digest sha256:")), "{e}");
    w.assert_empty();
    // The first layer alone was fine; it is not kept either.
    let _ = good;
}

#[test]
fn size_mismatch_missing_blob_and_media_type_are_named() {
    let w = world();
    let dir = w.dir("size");
    let md = layout(&dir, "x:1", &[Blob::gz(base())], json!({}));
    let blob = crate::digest::Digest::of(&gzip(&base()));
    let path = dir.join("blobs/sha256").join(blob.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(0);
    std::fs::write(&path, &bytes).unwrap();
    let e = w.import(&dir).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("blob {blob}: size {}, its descriptor says {}", bytes.len(), bytes.len() - 1)),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(w.import(&dir).unwrap_err().to_string(), format!("blob {blob}: missing from the image"));
    std::fs::remove_file(dir.join("blobs/sha256").join(md.hex())).unwrap();
    assert_eq!(w.import(&dir).unwrap_err().to_string(), format!("blob {md}: missing from the image"));
    let odd = w.dir("odd");
    let layer = Blob { media_type: "application/x-tar+lz4", blob: base(), tar: base() };
    layout(&odd, "x:1", &[layer], json!({}));
    let d = crate::digest::Digest::of(&base());
    let e = w.import(&odd).unwrap_err().to_string();
    assert_eq!(e, format!("blob {d}: unsupported media type \"application/x-tar+lz4\""));
    w.assert_empty();
}

#[test]
fn truncated_gzip_is_named_as_such() {
    let w = world();
    let dir = w.dir("trunc");
    let tar = Layer::new().file("big", &vec![9u8; 200_000]).finish();
    let mut gz = gzip(&tar);
    gz.truncate(gz.len() - 20);
    let d = crate::digest::Digest::of(&gz);
    layout(&dir, "t:1", &[Blob { media_type: crate::testutil::GZIP_LAYER, blob: gz, tar }], json!({}));
    let e = w.import(&dir).unwrap_err().to_string();
    assert!(e.starts_with(&format!("layer {d}: gzip: ")), "{e}");
    w.assert_empty();
}

#[test]
fn diff_id_mismatch_and_bad_entries_register_nothing() {
    let w = world();
    let dir = w.dir("diff");
    let tar = Layer::new().file("a", b"a").finish();
    let other = Layer::new().file("a", b"b").finish();
    layout(&dir, "d:1", &[Blob { media_type: TAR_LAYER, blob: tar.clone(), tar: other }], json!({}));
    let e = w.import(&dir).unwrap_err().to_string();
    assert!(e.contains("uncompressed content has digest"), "{e}");
    let evil = w.dir("evil");
    layout(&evil, "e:1", &[Blob::gz(base()), Blob::gz(Layer::new().file(".wh.nothing", b"").finish())], json!({}));
    let e = w.import(&evil).unwrap_err().to_string();
    assert!(e.ends_with(r#": entry ".wh.nothing": whiteout for "nothing", which no layer below has"#), "{e}");
    w.assert_empty();
}

#[test]
fn platform_is_picked_from_an_index() {
    let w = world();
    let dir = w.dir("multi");
    let md = layout(&dir, "m:1", &[Blob::gz(base())], json!({}));
    let manifest = std::fs::read(dir.join("blobs/sha256").join(md.hex())).unwrap();
    let arm = json!({"schemaVersion": 2, "manifests": []});
    let arm_d = put_blob(&dir, &serde_json::to_vec(&arm).unwrap());
    let nested = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_d.as_str(), "size": 1,
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.as_str(), "size": manifest.len(),
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]});
    let nested = serde_json::to_vec(&nested).unwrap();
    let nd = put_blob(&dir, &nested);
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nd.as_str(), "size": nested.len(), "annotations": {"org.opencontainers.image.ref.name": "multi:2"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let r = w.import(&dir).unwrap();
    assert_eq!((r.name(), r.digest()), ("multi:2", &md));
}

#[test]
fn a_killed_import_leaves_nothing_to_trip_over() {
    let w = world();
    let dir = w.dir("img");
    layout(&dir, "k:1", &[Blob::gz(base())], json!({}));
    // What kill -9 can leave: a half-unpacked tmp dir, a layer moved in but
    // no image record, a record's temp file.
    let root = w.store.root();
    std::fs::create_dir_all(root.join("tmp/import-1/abc/fs/etc")).unwrap();
    std::fs::create_dir_all(root.join("layers").join("f".repeat(64)).join("fs")).unwrap();
    std::fs::write(root.join("images/k%3A1.json.tmp"), b"{\"na").unwrap();
    assert!(w.store.list().unwrap().is_empty());
    w.import(&dir).unwrap();
    assert_eq!(w.store.list().unwrap().len(), 1);
    assert_eq!(w.entries("tmp"), Vec::<String>::new());
    assert_eq!(w.entries("layers").len(), 1);
}
