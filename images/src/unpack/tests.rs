//! The unpacker against hand-made malicious and unusual layers.

use super::*;
use crate::testutil::{Layer, E};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Unpacks `layers` one above the other into `tmp/L0`, `tmp/L1`, ...;
/// returns the result of the last one.
fn unpack_all(tmp: &Path, layers: Vec<Vec<u8>>) -> Result<LayerStats, UnpackError> {
    let mut tree = Tree::new();
    let mut lowers = Vec::new();
    let mut last = None;
    for (i, tar) in layers.into_iter().enumerate() {
        let out = tmp.join(format!("L{i}"));
        std::fs::create_dir(&out).unwrap();
        tree.begin_layer(i);
        last = Some(unpack_layer(&tar[..], &out, &mut tree, &lowers).map(|(_, s)| s));
        lowers.push(out);
    }
    last.unwrap()
}

fn refused(layers: Vec<Vec<u8>>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let err = unpack_all(tmp.path(), layers).expect_err("must be refused").to_string();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote outside: {err}");
    err
}

#[test]
fn dotdot_and_absolute_names_are_refused() {
    let e = refused(vec![Layer::new().file("../outside/x", b"x").finish()]);
    assert_eq!(e, r#"entry "../outside/x": '..' in the path"#);
    let e = refused(vec![Layer::new().file("a/../../outside/x", b"x").finish()]);
    assert!(e.contains("'..'"), "{e}");
    let e = refused(vec![Layer::new().file("/etc/warren-test-evil", b"x").finish()]);
    assert_eq!(e, r#"entry "/etc/warren-test-evil": absolute path"#);
    assert!(!Path::new("/etc/warren-test-evil").exists());
}

#[test]
fn symlink_planted_in_the_same_layer_is_not_followed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let target = outside.to_str().unwrap();
    let e = refused(vec![Layer::new().symlink("evil", target).file("evil/x", b"x").finish()]);
    assert_eq!(e, r#"entry "evil/x": goes through symlink "evil", whose target leaves the root"#);
    let e = refused(vec![Layer::new().dir("a").symlink("a/up", "../..").file("a/up/outside/x", b"x").finish()]);
    assert!(e.contains(r#"symlink "a/up""#), "{e}");
}

#[test]
fn symlink_planted_by_a_lower_layer_is_not_followed_out() {
    let lower = Layer::new().symlink("etc", "/etc").finish();
    let e = refused(vec![lower, Layer::new().file("etc/warren-test-evil", b"x").finish()]);
    assert!(e.contains(r#"goes through symlink "etc""#), "{e}");
    assert!(!Path::new("/etc/warren-test-evil").exists());
    let lower = Layer::new().dir("d").symlink("d/l", "../../../outside").finish();
    let e = refused(vec![lower, Layer::new().hardlink("h", "d/l/x").finish()]);
    assert!(e.starts_with(r#"entry "h": hard link to "d/l/x": goes through symlink"#), "{e}");
}

#[test]
fn symlinks_inside_the_root_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = Layer::new().dir("usr").dir("usr/lib").symlink("lib", "usr/lib").finish();
    let upper = Layer::new().file("lib/x.so", b"elf").finish();
    unpack_all(tmp.path(), vec![lower, upper]).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("L1/usr/lib/x.so")).unwrap(), b"elf");
    assert!(!tmp.path().join("L1/lib").exists());
}

#[test]
fn hard_links_outside_or_missing_are_refused() {
    let e = refused(vec![Layer::new().hardlink("h", "../outside/x").finish()]);
    assert_eq!(e, r#"entry "h": hard link to "../outside/x": '..' in the path"#);
    let e = refused(vec![Layer::new().hardlink("h", "/etc/passwd").finish()]);
    assert_eq!(e, r#"entry "h": hard link to "/etc/passwd": absolute path"#);
    let e = refused(vec![Layer::new().hardlink("h", "nothing").finish()]);
    assert_eq!(e, r#"entry "h": hard link to "nothing", which does not exist"#);
    let e = refused(vec![Layer::new().dir("d").hardlink("h", "d").finish()]);
    assert_eq!(e, r#"entry "h": hard link to directory "d""#);
}

#[test]
fn whiteouts_need_a_lower_path_and_reserved_forms_are_refused() {
    let e = refused(vec![Layer::new().file(".wh.ghost", b"").finish()]);
    assert_eq!(e, r#"entry ".wh.ghost": whiteout for "ghost", which no layer below has"#);
    let e = refused(vec![Layer::new().file("x", b"").file(".wh.x", b"").finish()]);
    assert!(e.contains("no layer below"), "{e}");
    let e = refused(vec![Layer::new().file(".wh..wh.plnk", b"").finish()]);
    assert_eq!(e, r#"entry ".wh..wh.plnk": unsupported whiteout form"#);
    let dev = E { name: "fake-whiteout", kind: EntryType::Char, ..Default::default() };
    let e = refused(vec![Layer::new().add(dev).finish()]);
    assert!(e.contains("reserved for overlay whiteouts"), "{e}");
    let pax: &[(&str, &[u8])] = &[("SCHILY.xattr.trusted.overlay.opaque", b"y")];
    let e = refused(vec![Layer::new()
        .add(E { name: "d", kind: EntryType::Directory, pax, ..Default::default() })
        .finish()]);
    assert_eq!(e, r#"entry "d": xattr "trusted.overlay.opaque" is reserved for overlayfs"#);
}

#[test]
fn whiteouts_and_opaque_dirs_take_overlay_form() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = Layer::new().dir("a").file("a/x", b"1").dir("b").file("b/y", b"2").file("c", b"3").finish();
    let upper =
        Layer::new().file(".wh.c", b"").file("a/.wh..wh..opq", b"").file("a/new", b"4").file("b/.wh.y", b"").finish();
    unpack_all(tmp.path(), vec![lower, upper]).unwrap();
    let l1 = tmp.path().join("L1");
    for w in ["c", "b/y"] {
        let m = std::fs::symlink_metadata(l1.join(w)).unwrap();
        assert!(m.file_type().is_char_device() && m.rdev() == 0, "{w} is not a whiteout");
    }
    assert!(is_opaque(&l1.join("a")).unwrap());
    assert!(!is_opaque(&l1.join("b")).unwrap());
    assert_eq!(std::fs::read(l1.join("a/new")).unwrap(), b"4");
}

#[test]
fn a_path_whited_out_and_recreated_in_one_layer_becomes_opaque() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = Layer::new().dir("d").file("d/old", b"1").finish();
    let upper = Layer::new().file(".wh.d", b"").dir("d").file("d/new", b"2").finish();
    unpack_all(tmp.path(), vec![lower, upper]).unwrap();
    let d = tmp.path().join("L1/d");
    assert!(std::fs::symlink_metadata(&d).unwrap().is_dir());
    assert!(is_opaque(&d).unwrap());
}

#[test]
fn metadata_devices_and_links_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let pax: &[(&str, &[u8])] = &[("SCHILY.xattr.user.warren", b"v"), ("uid", b"3000000")];
    let layer = Layer::new()
        .add(E { name: "suid", mode: 0o4755, uid: 12, gid: 34, data: b"x", ..Default::default() })
        .add(E { name: "xattr", pax, ..Default::default() })
        .add(E { name: "null", kind: EntryType::Char, mode: 0o666, dev: (1, 3), ..Default::default() })
        .add(E { name: "loop", kind: EntryType::Block, mode: 0o660, dev: (7, 0), ..Default::default() })
        .add(E { name: "fifo", kind: EntryType::Fifo, mode: 0o600, ..Default::default() })
        .symlink("sl", "/does/not/matter")
        .hardlink("suid2", "suid")
        .finish();
    let stats = unpack_all(tmp.path(), vec![layer]).unwrap();
    assert_eq!(stats.entries(), 7);
    let l = tmp.path().join("L0");
    let m = std::fs::symlink_metadata(l.join("suid")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()), (0o4755, 12, 34, 2));
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(std::fs::symlink_metadata(l.join("xattr")).unwrap().uid(), 3_000_000);
    assert_eq!(crate::sys::lgetxattr(&l.join("xattr"), OsStr::new("user.warren")).unwrap(), Some(b"v".to_vec()));
    let null = std::fs::symlink_metadata(l.join("null")).unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == libc::makedev(1, 3));
    assert!(std::fs::symlink_metadata(l.join("loop")).unwrap().file_type().is_block_device());
    assert!(std::fs::symlink_metadata(l.join("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::read_link(l.join("sl")).unwrap(), Path::new("/does/not/matter"));
}

#[test]
fn hard_link_to_a_lower_layer_file_is_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = Layer::new().add(E { name: "f", mode: 0o751, uid: 5, data: b"data", ..Default::default() }).finish();
    unpack_all(tmp.path(), vec![lower, Layer::new().hardlink("g", "f").finish()]).unwrap();
    let g = std::fs::symlink_metadata(tmp.path().join("L1/g")).unwrap();
    assert_eq!((g.mode() & 0o7777, g.uid(), g.nlink()), (0o751, 5, 1));
    assert_eq!(std::fs::read(tmp.path().join("L1/g")).unwrap(), b"data");
}

#[test]
fn implicit_parents_copy_the_lower_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let lower =
        Layer::new().add(E { name: "srv", kind: EntryType::Directory, mode: 0o710, uid: 7, ..Default::default() });
    unpack_all(tmp.path(), vec![lower.finish(), Layer::new().file("srv/new", b"").finish()]).unwrap();
    let m = std::fs::symlink_metadata(tmp.path().join("L1/srv")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o710, 7));
}

#[test]
fn truncated_tar_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tar = Layer::new().file("big", &[7u8; 4000]).finish();
    tar.truncate(1500);
    let e = unpack_all(tmp.path(), vec![tar]).unwrap_err();
    assert!(matches!(e, UnpackError::Tar { .. } | UnpackError::Io { .. }), "{e}");
}
