//! The unpacked tree against `umoci unpack` of the same image, file by file
//! (type, mode, owner, size, content, device, link target, xattrs), for a
//! rootfs copied from the store and for one mounted as overlayfs.
//! The image is built with umoci: a base layer, a layer of deletions and
//! changes, and a hand-made layer (opaque dir, whiteouts, hard link, device)
//! added with `umoci raw add-layer`. Needs root and umoci.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use warren_images::store::{ImportOptions, Store};

fn sh(script: &str) {
    let out = Command::new("bash").arg("-euc").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
}

fn usable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let umoci = Command::new("umoci").arg("--version").output().is_ok_and(|o| o.status.success());
    if !root || !umoci {
        eprintln!("skipped: needs root and umoci");
    }
    root && umoci
}

/// One path's facts, as compared.
fn describe(path: &Path) -> String {
    let m = std::fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir".to_string()
    } else if ft.is_symlink() {
        format!("link->{}", std::fs::read_link(path).unwrap().display())
    } else if ft.is_file() {
        let data = std::fs::read(path).unwrap();
        format!("file size={} sum={}", data.len(), data.iter().map(|b| *b as u64).sum::<u64>())
    } else {
        format!("special {:o} rdev={}", m.mode() & libc::S_IFMT, m.rdev())
    };
    let mode = if ft.is_symlink() { 0 } else { m.permissions().mode() & 0o7777 };
    let mut xattrs: Vec<String> = xattr_names(path)
        .into_iter()
        .filter(|n| !n.starts_with("trusted.overlay.") && n != "security.selinux")
        .map(|n| format!("{n}={:?}", xattr(path, &n)))
        .collect();
    xattrs.sort();
    let mtime = if ft.is_dir() { String::new() } else { format!(" mtime={}", m.mtime()) };
    format!("{kind} mode={mode:o} owner={}:{}{mtime} xattrs={xattrs:?}", m.uid(), m.gid())
}

fn xattr_names(path: &Path) -> Vec<String> {
    let out = Command::new("python3")
        .args(["-c", "import os,sys; print('\\n'.join(os.listxattr(sys.argv[1], follow_symlinks=False)))"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

fn xattr(path: &Path, name: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", "import os,sys; print(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False))"])
        .arg(path)
        .arg(name)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        out.insert(r.clone(), describe(&root.join(&r)));
        if e.file_type().unwrap().is_dir() {
            walk(root, &r, out);
        }
    }
}

fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    walk(root, Path::new(""), &mut m);
    m
}

fn assert_same(reference: &Path, ours: &Path, what: &str) {
    let (a, b) = (tree(reference), tree(ours));
    let mut diffs = Vec::new();
    for (p, d) in &a {
        match b.get(p) {
            Some(o) if o == d => {}
            Some(o) => diffs.push(format!("{}: umoci {d} / {what} {o}", p.display())),
            None => diffs.push(format!("{}: missing in {what}", p.display())),
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("{}: only in {what}", p.display()));
    }
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    assert!(a.len() > 20, "the image is too small to prove anything");
}

/// Builds the test image at `dir/layout:t`.
fn build_image(dir: &Path) {
    let script = r#"
L=$D/layout; B=$D/bundle; R=$B/rootfs
umoci init --layout $L; umoci new --image $L:t; umoci unpack --image $L:t $B >/dev/null
mkdir -p $R/etc $R/usr/bin $R/srv/data/deep $R/gone/sub $R/opq/keep $R/var/log
echo hello > $R/etc/motd; printf 'x%.0s' $(seq 1 5000) > $R/usr/bin/tool
chmod 4755 $R/usr/bin/tool; chown 0:50 $R/usr/bin/tool
ln $R/usr/bin/tool $R/usr/bin/tool-hard
ln -s ../usr/bin/tool $R/etc/tool-link; ln -s /etc/motd $R/motd-abs
mknod $R/null c 1 3; mknod $R/loop0 b 7 0; mkfifo $R/fifo; chmod 620 $R/fifo
chown -R 1000:1000 $R/srv; chmod 2775 $R/srv/data
echo 1 > $R/gone/sub/f; echo 2 > $R/opq/keep/f; echo 3 > $R/opq/old
echo 4 > $R/var/log/old.log
python3 -c "import os; os.setxattr('$R/etc/motd', 'user.note', b'hi', follow_symlinks=False)"
python3 -c "import os; os.setxattr('$R/usr/bin/tool', 'security.capability', bytes.fromhex('0100000200200000000000000000000000000000'), follow_symlinks=False)"
umoci repack --image $L:t $B >/dev/null
rm -rf $B; umoci unpack --image $L:t $B >/dev/null
# Layer 2: deletions and changes.
rm -rf $R/gone $R/var/log/old.log $R/usr/bin/tool-hard
chmod 700 $R/srv; chown 33:33 $R/etc/motd; echo more >> $R/etc/motd
rm $R/motd-abs; mkdir $R/motd-abs; echo now-a-dir > $R/motd-abs/f
umoci repack --image $L:t $B >/dev/null
# Layer 3, by hand: an opaque dir, a whiteout, a hard link, a device.
H=$D/hand; mkdir -p $H/opq $H/dev-dir
echo new > $H/opq/new; : > $H/opq/.wh..wh..opq; : > $H/.wh.fifo
echo linked > $H/a; ln $H/a $H/b; mknod $H/dev-dir/zero c 1 5
tar --numeric-owner --owner=0 --group=0 -C $H -cf $D/hand.tar .
umoci raw add-layer --image $L:t $D/hand.tar
rm -rf $D/bundle
umoci unpack --image $L:t $D/ref >/dev/null
"#;
    sh(&format!("D={}\n{script}", dir.display()));
}

#[test]
fn unpacked_tree_matches_umoci() {
    if !usable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    build_image(d);
    let store = Store::open(&d.join("store")).unwrap();
    let opts = ImportOptions { name: Some("t:1".into()), ..Default::default() };
    store.import(&d.join("layout"), &opts, &mut |_| {}).unwrap();
    let image = store.image("t:1").unwrap();
    assert_eq!(image.layer_dirs().len(), 3);
    let reference = d.join("ref/rootfs");
    for (path, there) in [("opq/new", true), ("opq/old", false), ("opq/keep", false), ("gone", false), ("fifo", false)]
    {
        assert_eq!(reference.join(path).exists(), there, "umoci's {path}: the image is not what this test means");
    }

    let copy = d.join("copy");
    std::fs::create_dir(&copy).unwrap();
    warren_images::rootfs::copy_layers(image.layer_dirs(), &copy).unwrap();
    assert_same(&reference, &copy, "copy");
    let (a, b) = (std::fs::metadata(copy.join("a")).unwrap(), std::fs::metadata(copy.join("b")).unwrap());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link kept in the copy");

    let (upper, work, merged) = (d.join("upper"), d.join("work"), d.join("merged"));
    for p in [&upper, &work, &merged] {
        std::fs::create_dir(p).unwrap();
    }
    warren_images::rootfs::mount_overlay(image.layer_dirs(), &upper, &work, &merged).unwrap();
    let result = std::panic::catch_unwind(|| assert_same(&reference, &merged, "overlay"));
    warren_images::rootfs::unmount(&merged).unwrap();
    result.unwrap();
}
