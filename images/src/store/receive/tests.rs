//! An image and a bundle moved from one store to another, and every way a
//! receive can be refused leaving nothing behind.

use super::*;
use crate::bundle::{self, BundleError, BundleOptions};
use crate::rootfs;
use crate::spec::Volumes;
use crate::testutil::{layout, Blob, Layer, E};
use crate::transfer::tests::{names, snapshot};
use crate::transfer::write_layer_tar;
use serde_json::json;
use std::os::unix::fs::MetadataExt;

const NAME: &str = "img:1";

/// Two stores, A (the sender, with the image) and B, in one temp dir.
struct World {
    tmp: tempfile::TempDir,
    a: Store,
    b: Store,
}

impl Drop for World {
    /// A failed test must not leave overlays mounted.
    fn drop(&mut self) {
        for name in ["bundle-a", "bundle-b", "copy"] {
            let _ = rootfs::unmount(&self.tmp.path().join(name).join("rootfs"));
        }
    }
}

fn base() -> Layer {
    Layer::new()
        .dir("etc")
        .file("etc/os", b"base\n")
        .file("etc/keep", b"keep\n")
        .dir("bin")
        .file("bin/tool", b"#!")
        .hardlink("bin/tool2", "bin/tool")
        .add(E { name: "bin/su", mode: 0o4755, uid: 0, data: b"su", ..Default::default() })
        .dir("data")
        .file("data/a", b"a")
        .file("data/b", b"b")
}

fn top() -> Layer {
    Layer::new().file("etc/added", b"L1\n").file("etc/.wh.keep", b"")
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let a = Store::open(&tmp.path().join("store-a")).unwrap();
    let b = Store::open(&tmp.path().join("store-b")).unwrap();
    let w = World { tmp, a, b };
    let img = w.path("img");
    std::fs::create_dir(&img).unwrap();
    let cmd = json!({"config": {"Cmd": ["/bin/sh"]}});
    layout(&img, NAME, &[Blob::gz(base().finish()), Blob::gz(top().finish())], cmd);
    w.a.import(&img, &Default::default(), &mut |_| {}).unwrap();
    w
}

fn tar_of(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    write_layer_tar(dir, &mut out).unwrap();
    out
}

impl World {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// An overlay bundle in A, changed through its rootfs, and what B needs for it.
    fn sender(&self) -> (PathBuf, ImageRef, Vec<u8>) {
        let opts = BundleOptions {
            image: NAME.into(),
            copy: false,
            mount_in_container: false,
            args: Vec::new(),
            terminal: false,
            read_only: false,
            volumes: Volumes::Tmpfs,
        };
        let dir = bundle::create(&self.a, &self.path("bundle-a"), json!({}), &opts).unwrap();
        let root = dir.join("rootfs");
        std::fs::write(root.join("etc/os"), b"changed\n").unwrap();
        std::fs::remove_file(root.join("bin/tool")).unwrap();
        std::fs::remove_dir_all(root.join("data")).unwrap();
        std::fs::create_dir(root.join("data")).unwrap();
        std::fs::write(root.join("data/new"), b"new").unwrap();
        std::fs::create_dir_all(root.join("srv/www")).unwrap();
        std::fs::write(root.join("srv/www/index"), b"hi").unwrap();
        std::os::unix::fs::chown(root.join("etc/added"), Some(33), Some(33)).unwrap();
        let (image, config) = self.a.bundle_image(&dir).unwrap().expect("an image bundle");
        (dir, image, config)
    }

    /// Receives the image into B: every layer B lacks, then the record.
    fn receive(&self, image: &ImageRef, config: &[u8]) -> Receiving<'_> {
        let mut r = self.b.begin_receive(image).unwrap();
        for chain in r.missing_layers().unwrap() {
            let layer = image.layers.iter().find(|l| l.chain_id == chain).unwrap().clone();
            let tar = tar_of(&self.a.layer_fs(&chain).unwrap());
            assert!(r.receive_layer(&layer, &tar[..]).unwrap());
        }
        r.receive_image(config).unwrap();
        r
    }

    fn entries(store: &Store, sub: &str) -> Vec<String> {
        match std::fs::read_dir(store.root().join(sub)) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn assert_empty(store: &Store) {
        for sub in ["images", "layers", "tmp", "blobs/sha256", "bundles", RECEIVING] {
            assert_eq!(World::entries(store, sub), Vec::<String>::new(), "{}/{sub}", store.root().display());
        }
    }
}

#[test]
fn a_bundle_moves_to_another_store_with_its_changes() {
    let w = world();
    let (dir_a, image, config) = w.sender();
    assert_eq!((image.name.as_str(), image.layers.len()), (NAME, 2));
    let r = w.receive(&image, &config);
    for l in &image.layers {
        let (a, b) = (w.a.layer_fs(&l.chain_id).unwrap(), w.b.layer_fs(&l.chain_id).unwrap());
        assert_eq!(snapshot(&b), snapshot(&a), "layer {}", l.chain_id);
    }
    let config_json = std::fs::read(dir_a.join("config.json")).unwrap();
    let upper = tar_of(&dir_a.join("upper"));
    let sent = names(&upper);
    for n in ["bin/.wh.tool", "data/", "data/.wh..wh..opq", "data/new", "etc/added", "etc/os", "srv/www/index"] {
        assert!(sent.iter().any(|s| s == n), "{n} not in {sent:?}");
    }
    let dir_b = bundle::receive(&w.b, &w.path("bundle-b"), NAME, &config_json, &upper[..]).unwrap();
    drop(r);
    let root = dir_b.join("rootfs");
    assert!(rootfs::is_mount_point(&root).unwrap());
    assert_eq!(std::fs::read(root.join("etc/os")).unwrap(), b"changed\n");
    assert!(!root.join("bin/tool").exists() && !root.join("etc/keep").exists());
    assert_eq!(std::fs::read(root.join("bin/tool2")).unwrap(), b"#!");
    let data: Vec<_> = std::fs::read_dir(root.join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(data, ["new"]);
    assert_eq!(std::fs::metadata(root.join("etc/added")).unwrap().uid(), 33);
    assert_eq!(std::fs::metadata(root.join("bin/su")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(snapshot(&root), snapshot(&dir_a.join("rootfs")));
    assert_eq!(std::fs::read(dir_b.join("config.json")).unwrap(), config_json);

    // Again: B has it all, nothing to send.
    let mut again = w.b.begin_receive(&image).unwrap();
    assert_eq!(again.missing_layers().unwrap(), Vec::<Digest>::new());
    assert!(!again.receive_image(&config).unwrap());
    drop(again);

    bundle::remove(&w.b, &dir_b).unwrap();
    assert!(!dir_b.exists());
    w.b.remove(NAME).unwrap();
    World::assert_empty(&w.b);
    bundle::remove(&w.a, &dir_a).unwrap();
}

#[test]
fn bad_configs_names_and_chain_ids_are_refused_and_nothing_is_left() {
    let w = world();
    let (dir_a, image, config) = w.sender();
    let mut forged = image.clone();
    forged.layers[1].chain_id = Digest::of(b"forged");
    let e = w.b.begin_receive(&forged).err().unwrap();
    assert!(matches!(&e, StoreError::ChainId { expected, .. } if expected == &image.layers[1].chain_id), "{e}");
    let bad_name = ImageRef { name: "../x".into(), ..image.clone() };
    assert!(matches!(w.b.begin_receive(&bad_name).err().unwrap(), StoreError::BadName { .. }));
    World::assert_empty(&w.b);
    // The config is checked when the image is recorded, its layers all in.
    let mut r = w.b.begin_receive(&image).unwrap();
    assert!(matches!(r.receive_image(&config).unwrap_err(), StoreError::LayerAbsent { .. }));
    for l in &image.layers {
        assert!(r.receive_layer(l, &tar_of(&w.a.layer_fs(&l.chain_id).unwrap())[..]).unwrap());
    }
    let mut longer = config.clone();
    longer.push(b' ');
    let e = r.receive_image(&longer).unwrap_err().to_string();
    assert_eq!(e, format!("image {NAME}: config blob has digest {}, not {}", Digest::of(&longer), image.config));
    // A config that lists other layers, under its true digest.
    let mut other: serde_json::Value = serde_json::from_slice(&config).unwrap();
    other["rootfs"]["diff_ids"].as_array_mut().unwrap().reverse();
    let other_blob = serde_json::to_vec(&other).unwrap();
    let lying = ImageRef { config: Digest::of(&other_blob), ..image.clone() };
    let e = w.b.receive_image(&lying, &other_blob).unwrap_err();
    assert!(matches!(e, StoreError::ConfigLayers { .. }), "{e}");
    drop(r);
    World::assert_empty(&w.b);
    bundle::remove(&w.a, &dir_a).unwrap();
}

#[test]
fn a_hostile_layer_tar_is_refused_and_leaves_nothing() {
    let w = world();
    let (dir_a, image, _) = w.sender();
    let outside = w.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut r = w.b.begin_receive(&image).unwrap();
    let target = outside.to_str().unwrap();
    let evil = [
        Layer::new().file("../outside/x", b"x").finish(),
        Layer::new().symlink("evil", target).file("evil/x", b"x").finish(),
        Layer::new().hardlink("h", "/etc/passwd").finish(),
    ];
    for tar in evil {
        let e = r.receive_layer(&image.layers[0], &tar[..]).unwrap_err();
        assert!(matches!(e, StoreError::Layer { .. }), "{e}");
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let stranger = LayerRef { chain_id: Digest::of(b"x"), diff_id: Digest::of(b"x") };
    assert!(matches!(r.receive_layer(&stranger, &b""[..]).unwrap_err(), StoreError::NotInImage { .. }));
    // The top layer needs the one below it.
    let top = tar_of(&w.a.layer_fs(&image.layers[1].chain_id).unwrap());
    assert!(matches!(r.receive_layer(&image.layers[1], &top[..]).unwrap_err(), StoreError::LayerAbsent { .. }));
    assert_eq!(World::entries(&w.b, RECEIVING).len(), 1);
    drop(r);
    World::assert_empty(&w.b);
    bundle::remove(&w.a, &dir_a).unwrap();
}

#[test]
fn received_layers_outlive_collection_until_the_lease_ends() {
    let w = world();
    let (dir_a, image, _) = w.sender();
    let mut r = w.b.begin_receive(&image).unwrap();
    let bottom = &image.layers[0];
    assert!(r.receive_layer(bottom, &tar_of(&w.a.layer_fs(&bottom.chain_id).unwrap())[..]).unwrap());
    // What a receiver killed mid-way leaves: an unlocked lease.
    let stale = w.b.root().join(RECEIVING).join("999999999-0");
    std::fs::create_dir(&stale).unwrap();
    let gone = Digest::of(b"a layer a dead receiver was bringing");
    std::fs::write(stale.join(LEASE_LAYERS), serde_json::to_vec(&[&gone]).unwrap()).unwrap();
    std::fs::create_dir_all(w.b.root().join("layers").join(gone.hex()).join("fs")).unwrap();
    // Any change collects garbage: here, an image added and removed.
    let other = w.path("other");
    std::fs::create_dir(&other).unwrap();
    layout(&other, "other:1", &[Blob::gz(Layer::new().file("o", b"o").finish())], json!({}));
    w.b.import(&other, &Default::default(), &mut |_| {}).unwrap();
    w.b.remove("other:1").unwrap();
    assert_eq!(World::entries(&w.b, "layers"), [bottom.chain_id.hex()]);
    assert_eq!(World::entries(&w.b, RECEIVING).len(), 1);
    assert!(!stale.exists());
    // Given up before the image record: what it brought goes with it.
    drop(r);
    World::assert_empty(&w.b);
    bundle::remove(&w.a, &dir_a).unwrap();
}

#[test]
fn an_image_of_the_same_name_with_other_content_is_a_conflict() {
    let w = world();
    let (dir_a, image, _) = w.sender();
    let other = w.path("other");
    std::fs::create_dir(&other).unwrap();
    let cmd = json!({"config": {"Cmd": ["/bin/sh"]}});
    layout(&other, NAME, &[Blob::gz(Layer::new().file("o", b"o").finish())], cmd);
    let have = w.b.import(&other, &Default::default(), &mut |_| {}).unwrap().digest().clone();
    let e = w.b.begin_receive(&image).err().unwrap().to_string();
    assert_eq!(e, format!("image {NAME}: this store has another image of that name ({have})"));
    assert!(matches!(w.b.has_image(&image), Err(StoreError::ImageConflict { .. })));
    w.b.remove(NAME).unwrap();
    assert!(!w.b.has_image(&image).unwrap());
    World::assert_empty(&w.b);
    bundle::remove(&w.a, &dir_a).unwrap();
}

#[test]
fn bundle_receive_refuses_a_full_dir_and_undoes_a_bad_upper() {
    let w = world();
    let (dir_a, image, config) = w.sender();
    let r = w.receive(&image, &config);
    let config_json = std::fs::read(dir_a.join("config.json")).unwrap();
    let upper = tar_of(&dir_a.join("upper"));
    let dir_b = w.path("bundle-b");
    std::fs::create_dir(&dir_b).unwrap();
    std::fs::write(dir_b.join("mine"), b"").unwrap();
    let e = bundle::receive(&w.b, &dir_b, NAME, &config_json, &upper[..]).unwrap_err();
    assert!(matches!(e, BundleError::Exists { .. }), "{e}");
    assert_eq!(World::entries(&w.b, "bundles"), Vec::<String>::new());
    std::fs::remove_file(dir_b.join("mine")).unwrap();
    std::fs::remove_dir(&dir_b).unwrap();

    let bad_uppers = [
        Layer::new().file("../escape", b"x").finish(),
        Layer::new().file(".wh.nothing-below", b"").finish(),
        upper[..upper.len() / 2].to_vec(),
    ];
    for tar in bad_uppers {
        let e = bundle::receive(&w.b, &dir_b, NAME, &config_json, &tar[..]).unwrap_err();
        assert!(matches!(e, BundleError::Unpack { .. }), "{e}");
        assert!(!dir_b.exists() && !w.path("escape").exists());
        assert_eq!(World::entries(&w.b, "bundles"), Vec::<String>::new());
    }
    let e = bundle::receive(&w.b, &dir_b, NAME, b"[1]", &upper[..]).unwrap_err();
    assert!(matches!(e, BundleError::Config { .. }), "{e}");
    let e = bundle::receive(&w.b, &dir_b, "nothing:1", &config_json, &upper[..]).unwrap_err();
    assert!(matches!(e, BundleError::Store(StoreError::NoImage { .. })), "{e}");
    assert!(!dir_b.exists());
    drop(r);
    w.b.remove(NAME).unwrap();
    World::assert_empty(&w.b);
    bundle::remove(&w.a, &dir_a).unwrap();
}

#[test]
fn bundles_without_an_image_travel_whole() {
    let w = world();
    let opts = BundleOptions {
        image: NAME.into(),
        copy: true,
        mount_in_container: false,
        args: Vec::new(),
        terminal: false,
        read_only: false,
        volumes: Volumes::Tmpfs,
    };
    let copy = bundle::create(&w.a, &w.path("copy"), json!({}), &opts).unwrap();
    assert!(w.a.bundle_image(&copy).unwrap().is_none());
    assert!(w.a.bundle_image(&w.path("nowhere")).unwrap().is_none());
    std::os::unix::fs::symlink("../etc/os", copy.join("rootfs/bin/os")).unwrap();
    let config_json = std::fs::read(copy.join("config.json")).unwrap();
    let tar = tar_of(&copy.join("rootfs"));
    let plain = bundle::receive_plain(&w.path("plain"), &config_json, &tar[..]).unwrap();
    assert_eq!(snapshot(&plain.join("rootfs")), snapshot(&copy.join("rootfs")));
    assert_eq!(std::fs::read(plain.join("config.json")).unwrap(), config_json);
    let e = bundle::receive_plain(&plain, &config_json, &tar[..]).unwrap_err();
    assert!(matches!(e, BundleError::Exists { .. }), "{e}");
    bundle::remove_plain(&plain).unwrap();
    assert!(!plain.exists());
    // Nothing below a plain rootfs to white out.
    let e = bundle::receive_plain(&plain, &config_json, &Layer::new().file(".wh.x", b"").finish()[..]).unwrap_err();
    assert!(matches!(e, BundleError::Unpack { .. }), "{e}");
    assert!(!plain.exists());
    bundle::remove(&w.a, &copy).unwrap();
}

#[test]
fn a_bundle_whose_image_is_gone_says_so() {
    let w = world();
    let (dir_a, _, _) = w.sender();
    w.a.remove(NAME).unwrap();
    let e = w.a.bundle_image(&dir_a).unwrap_err();
    assert!(matches!(e, StoreError::BundleImageGone { .. }), "{e}");
    bundle::remove(&w.a, &dir_a).unwrap();
    World::assert_empty(&w.a);
}
