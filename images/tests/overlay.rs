//! Overlay rootfs with more layers than mount(2)'s one page of options
//! holds, and with paths overlayfs options cannot carry. Needs root.

use std::path::PathBuf;
use warren_images::rootfs::{mount_overlay, overlay_options, unmount};

#[test]
fn many_layers_and_odd_paths_still_mount() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("a,long:directory-name-".repeat(3));
    let layers: Vec<PathBuf> = (0..80)
        .map(|i| {
            let d = base.join(format!("layer-{i:03}-{}", "x".repeat(40)));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), b"").unwrap();
            std::fs::write(d.join("top"), format!("{i}")).unwrap();
            d
        })
        .collect();
    assert!(overlay_options(&layers, &base, &base).is_err(), "the options fit: the test proves nothing");
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for p in [&upper, &work, &merged] {
        std::fs::create_dir(p).unwrap();
    }
    mount_overlay(&layers, &upper, &work, &merged).unwrap();
    let seen = (0..80).all(|i| merged.join(format!("f{i}")).exists());
    let top = std::fs::read_to_string(merged.join("top")).unwrap();
    unmount(&merged).unwrap();
    assert!(seen, "a layer is missing from the merged view");
    assert_eq!(top, "79", "the last layer is not on top");
}
