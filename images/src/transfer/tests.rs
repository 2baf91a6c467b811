//! write_layer_tar against the unpacker: what one writes, the other makes
//! back, entry for entry.

use super::*;
use crate::testutil::Layer;
use crate::unpack::{is_opaque, read_xattrs, unpack_layer, Tree, Xattrs};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// What a tree holds at one path, as far as a layer tar can carry it.
#[derive(Debug, PartialEq)]
pub struct Node {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    mtime: i64,
    content: Vec<u8>,
    link: Option<PathBuf>,
    rdev: u64,
    xattrs: Xattrs,
    opaque: bool,
    /// The first path (in order) of its hard-link group, if it has others.
    same_as: Option<PathBuf>,
}

/// Every path under `root` (the root itself as ""), without following symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = match () {
            _ if ft.is_dir() => "dir",
            _ if ft.is_file() => "file",
            _ if ft.is_symlink() => "symlink",
            _ if ft.is_char_device() && m.rdev() == 0 => "whiteout",
            _ if ft.is_char_device() => "char",
            _ if ft.is_block_device() => "block",
            _ if ft.is_fifo() => "fifo",
            _ => "socket",
        };
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        let same_as = (!ft.is_dir() && m.nlink() > 1 && kind != "whiteout")
            .then(|| groups.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone()).clone());
        let node = if kind == "whiteout" {
            // The unpacker makes its own: only the name and kind carry.
            Node::bare("whiteout")
        } else {
            Node {
                kind,
                mode: m.mode() & 0o7777,
                owner: (m.uid(), m.gid()),
                mtime: m.mtime(),
                content: if ft.is_file() { std::fs::read(&p).unwrap() } else { Vec::new() },
                link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                xattrs: sorted(read_xattrs(&p).unwrap()),
                opaque: ft.is_dir() && is_opaque(&p).unwrap(),
                same_as,
            }
        };
        out.insert(rel, node);
    }
    // Group leaders depend on the walk order: name them by the first path in order.
    let mut first: HashMap<PathBuf, PathBuf> = HashMap::new();
    for (path, node) in out.iter_mut() {
        if let Some(g) = node.same_as.take() {
            node.same_as = Some(first.entry(g).or_insert_with(|| path.clone()).clone());
        }
    }
    out
}

impl Node {
    fn bare(kind: &'static str) -> Node {
        Node {
            kind,
            mode: 0,
            owner: (0, 0),
            mtime: 0,
            content: Vec::new(),
            link: None,
            rdev: 0,
            xattrs: Vec::new(),
            opaque: false,
            same_as: None,
        }
    }
}

fn sorted(mut x: Xattrs) -> Xattrs {
    x.sort();
    x
}

pub fn set_mtime(p: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 123_456_789);
    nix::sys::stat::utimensat(None, p, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
}

pub fn write(p: &Path, data: &[u8], mode: u32, owner: (u32, u32)) {
    std::fs::write(p, data).unwrap();
    std::os::unix::fs::lchown(p, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkdir(p: &Path, mode: u32, owner: (u32, u32)) {
    std::fs::create_dir(p).unwrap();
    std::os::unix::fs::lchown(p, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn whiteout(p: &Path) {
    mknod(p, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
}

fn xattr(p: &Path, name: &str, value: &[u8]) {
    crate::sys::lsetxattr(p, OsStr::new(name), value).unwrap();
}

/// Sets every mtime under `root` (directories last, as a tar extract would).
fn stamp(root: &Path, secs: i64) {
    let mut paths: Vec<PathBuf> = snapshot(root).into_keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        set_mtime(&root.join(p), secs + i as i64);
    }
}

fn tar_of(dir: &Path) -> (Vec<u8>, LayerTarStats) {
    let mut out = Vec::new();
    let stats = write_layer_tar(dir, &mut out).unwrap();
    assert_eq!(stats.tar_bytes(), out.len() as u64);
    (out, stats)
}

/// Unpacks `tar` into the new directory `out` over `lowers`.
fn unpack(tar: &[u8], out: &Path, lowers: &[PathBuf]) {
    std::fs::create_dir(out).unwrap();
    let mut tree = Tree::new();
    for (i, l) in lowers.iter().enumerate() {
        tree.load_layer(i, l).unwrap();
    }
    tree.begin_layer(lowers.len());
    unpack_layer(tar, out, &mut tree, lowers).unwrap();
}

pub fn names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries().unwrap().map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned()).collect()
}

#[test]
fn every_kind_of_entry_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, outside) = (tmp.path().join("src"), tmp.path().join("outside"));
    mkdir(&outside, 0o755, (0, 0));
    std::fs::write(outside.join("secret"), b"not in the tar").unwrap();
    mkdir(&src, 0o751, (0, 0));
    write(&src.join("plain"), b"hello\n", 0o640, (1000, 1001));
    write(&src.join("suid"), b"#!/bin/true\n", 0o4755, (0, 0));
    write(&src.join("sgid-sticky"), b"", 0o3710, (3, 4));
    write(&src.join("bigid"), b"x", 0o600, (3_000_000, 4_000_000));
    let big: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
    write(&src.join("big"), &big, 0o644, (0, 0));
    mkdir(&src.join("d"), 0o710, (5, 6));
    write(&src.join("d/inner"), b"in", 0o600, (5, 6));
    xattr(&src.join("d"), "user.dir", b"on a dir");
    xattr(&src.join("plain"), "user.one", b"1");
    xattr(&src.join("plain"), "user.two", &[0, 255, 9, b'=']);
    std::os::unix::fs::symlink(&outside, src.join("sl-out")).unwrap();
    std::os::unix::fs::symlink("d/inner", src.join("sl-in")).unwrap();
    let long_dir = src.join("d").join("x".repeat(70));
    mkdir(&long_dir, 0o755, (0, 0));
    let long_file = long_dir.join("y".repeat(70));
    write(&long_file, b"linked", 0o644, (7, 7));
    // Three names for one file: the later two are tar hard links, one with a long target.
    std::fs::hard_link(&long_file, src.join("hl1")).unwrap();
    std::fs::hard_link(&long_file, src.join("hl2")).unwrap();
    std::os::unix::fs::symlink("t".repeat(150), src.join("sl-long")).unwrap();
    mknod(&src.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), libc::makedev(1, 3)).unwrap();
    mknod(&src.join("loop9"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), libc::makedev(7, 9)).unwrap();
    nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    stamp(&src, 1_600_000_000);

    let (tar, stats) = tar_of(&src);
    assert_eq!(stats.skipped(), 1);
    assert_eq!(stats.bytes(), big.len() as u64 + 6 + 12 + 1 + 2 + 6);
    let out = tmp.path().join("out");
    unpack(&tar, &out, &[]);
    let mut want = snapshot(&src);
    assert_eq!(want.remove(Path::new("sock")).map(|n| n.kind), Some("socket"));
    let got = snapshot(&out);
    for (path, node) in &want {
        assert_eq!(got.get(path), Some(node), "{path:?}");
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(got[Path::new("hl2")].same_as.as_deref(), Some(long_file.strip_prefix(&src).unwrap()));
    assert!(!names(&tar).iter().any(|n| n.contains("secret")));
}

#[test]
fn whiteouts_and_opaque_dirs_round_trip_over_their_lower_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("L0");
    let base = Layer::new().dir("a").file("a/x", b"1").dir("b").file("b/y", b"2").file("c", b"3").file("e", b"4");
    unpack(&base.finish(), &lower, &[]);
    let upper = tmp.path().join("upper");
    mkdir(&upper, 0o755, (0, 0));
    mkdir(&upper.join("a"), 0o755, (0, 0));
    xattr(&upper.join("a"), OPAQUE_XATTR_NAME, b"y");
    write(&upper.join("a/new"), b"new", 0o644, (0, 0));
    mkdir(&upper.join("b"), 0o755, (0, 0));
    xattr(&upper.join("b"), "trusted.overlay.impure", b"y");
    whiteout(&upper.join("c"));
    // Overlayfs may share one whiteout inode between several names.
    std::fs::hard_link(upper.join("c"), upper.join("b/y")).unwrap();
    write(&upper.join("e"), b"changed", 0o644, (0, 0));
    xattr(&upper.join("e"), "trusted.overlay.origin", b"\0\xfb");
    stamp(&upper, 1_650_000_000);

    let (tar, _) = tar_of(&upper);
    assert_eq!(names(&tar), ["./", "a/", "a/.wh..wh..opq", "a/new", "b/", "b/.wh.y", ".wh.c", "e"]);
    let out = tmp.path().join("out");
    unpack(&tar, &out, std::slice::from_ref(&lower));
    assert_eq!(snapshot(&out), snapshot(&upper));
    assert!(is_opaque(&out.join("a")).unwrap() && !is_opaque(&out.join("b")).unwrap());
    assert_eq!(crate::sys::lgetxattr(&out.join("e"), OsStr::new("trusted.overlay.origin")).unwrap(), None);
}

const OPAQUE_XATTR_NAME: &str = crate::unpack::OPAQUE_XATTR;

#[test]
fn the_same_tree_gives_the_same_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    mkdir(&src, 0o755, (0, 0));
    for n in ["b", "a", "C", "a.b", "a-b"] {
        write(&src.join(n), n.as_bytes(), 0o644, (0, 0));
    }
    mkdir(&src.join("a0"), 0o755, (0, 0));
    write(&src.join("a0/z"), b"", 0o644, (0, 0));
    let (one, _) = tar_of(&src);
    let (two, _) = tar_of(&src);
    assert_eq!(one, two);
    assert_eq!(names(&one), ["./", "C", "a", "a-b", "a.b", "a0/", "a0/z", "b"]);
}

#[test]
fn what_a_layer_tar_cannot_say_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    mkdir(&src, 0o755, (0, 0));
    write(&src.join(".wh.real"), b"", 0o644, (0, 0));
    let e = write_layer_tar(&src, io::sink()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: a name starting with \".wh.\" cannot travel in a layer tar (it would be read as a whiteout)",
            src.join(".wh.real").display()
        )
    );
    std::fs::remove_file(src.join(".wh.real")).unwrap();
    mkdir(&src.join("moved"), 0o755, (0, 0));
    xattr(&src.join("moved"), "trusted.overlay.redirect", b"/old");
    let e = write_layer_tar(&src, io::sink()).unwrap_err();
    assert!(matches!(&e, TransferError::OverlayRedirect { name, .. } if name == "trusted.overlay.redirect"), "{e}");
    std::fs::remove_dir(src.join("moved")).unwrap();
    write(&src.join("f"), b"", 0o644, (0, 0));
    xattr(&src.join("f"), "user.nl", b"a\nb");
    let e = write_layer_tar(&src, io::sink()).unwrap_err();
    assert!(matches!(&e, TransferError::BadXattr { name, .. } if name == "user.nl"), "{e}");
    std::fs::remove_file(src.join("f")).unwrap();
    let long = format!("{}\n", "n".repeat(120));
    write(&src.join(&long), b"", 0o644, (0, 0));
    let e = write_layer_tar(&src, io::sink()).unwrap_err();
    assert!(matches!(&e, TransferError::LongNewline { path } if path == &src.join(&long)), "{e}");
    std::fs::remove_file(src.join(&long)).unwrap();
    // The root itself is not followed either.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let e = write_layer_tar(&link, io::sink()).unwrap_err();
    let refused = |e: &io::Error| [Some(libc::ELOOP), Some(libc::ENOTDIR)].contains(&e.raw_os_error());
    assert!(matches!(&e, TransferError::Read { source, .. } if refused(source)), "{e}");
    write_layer_tar(&src, io::sink()).unwrap();
}
