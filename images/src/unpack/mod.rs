//! Unpacking one layer tar into its own directory in overlayfs form:
//! whiteouts become 0:0 character devices, opaque whiteouts the
//! `trusted.overlay.opaque` xattr. Every path is resolved in the merged view
//! of the layers below ([`Tree`]) and refused if it would leave the root.

mod dir;
mod tree;

pub use dir::Attrs;
pub use tree::{Kind, Refusal, Tree};

use dir::LayerDir;
use nix::sys::stat::SFlag;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

/// The xattr overlayfs reads to hide a lower directory's children.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Layer entries may not carry xattrs overlayfs would interpret.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry:?}: {reason}")]
    Refused { entry: String, reason: Refusal },
    #[error("entry {entry:?}: hard link to {target:?}: {reason}")]
    LinkRefused { entry: String, target: String, reason: Refusal },
    #[error("entry {entry:?}: hard link to {target:?}, which does not exist")]
    LinkMissing { entry: String, target: String },
    #[error("entry {entry:?}: hard link to directory {target:?}")]
    LinkToDir { entry: String, target: String },
    #[error("entry {entry:?}: whiteout for {target:?}, which no layer below has")]
    WhiteoutMissing { entry: String, target: String },
    #[error("entry {entry:?}: unsupported whiteout form")]
    WhiteoutForm { entry: String },
    #[error("entry {entry:?}: character device 0:0 is reserved for overlay whiteouts")]
    ReservedDevice { entry: String },
    #[error("entry {entry:?}: xattr {name:?} is reserved for overlayfs")]
    ReservedXattr { entry: String, name: String },
    #[error("entry {entry:?}: unsupported tar entry type {kind}")]
    EntryType { entry: String, kind: u8 },
    #[error("entry {entry:?}: {source}")]
    Io { entry: String, source: io::Error },
    #[error("tar: {source}")]
    Tar { source: io::Error },
}

/// Extended attributes: (name, value).
pub type Xattrs = Vec<(OsString, Vec<u8>)>;

/// What a layer holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerStats {
    entries: u64,
    bytes: u64,
}

impl LayerStats {
    pub fn entries(&self) -> u64 {
        self.entries
    }
    /// Bytes of regular file content.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

pub fn is_opaque(path: &Path) -> io::Result<bool> {
    Ok(crate::sys::lgetxattr(path, OsStr::new(OPAQUE_XATTR))?.is_some_and(|v| v == b"y"))
}

/// Unpacks the tar stream `input` into the empty directory `out` as layer
/// number `tree.layer()`, whose lower layers' directories are `lowers`
/// (bottom first). Returns the stream, positioned after the tar's end.
pub fn unpack_layer<R: Read>(
    input: R,
    out: &Path,
    tree: &mut Tree,
    lowers: &[PathBuf],
) -> Result<(R, LayerStats), UnpackError> {
    let dir = LayerDir::open(out).map_err(|source| UnpackError::Io { entry: ".".into(), source })?;
    let mut u = Unpacker {
        out: dir,
        tree,
        lowers,
        whiteouts: HashSet::new(),
        dir_times: Vec::new(),
        stats: Default::default(),
        buf: vec![0; COPY_BUF],
    };
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(|source| UnpackError::Tar { source })? {
        let mut entry = entry.map_err(|source| UnpackError::Tar { source })?;
        u.entry(&mut entry)?;
    }
    u.finish()?;
    Ok((archive.into_inner(), u.stats))
}

struct Unpacker<'a> {
    out: LayerDir,
    tree: &'a mut Tree,
    lowers: &'a [PathBuf],
    /// Whiteout devices this layer made, by canonical path.
    whiteouts: HashSet<PathBuf>,
    /// Directory mtimes, set last: adding entries changes them.
    dir_times: Vec<(PathBuf, i64)>,
    stats: LayerStats,
    /// File content passes through here (one buffer for the whole layer).
    buf: Vec<u8>,
}

/// The copy buffer's size: large writes, allocated once per layer.
const COPY_BUF: usize = 256 << 10;

/// An entry's name for messages.
fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn attrs_of<R: Read>(e: &mut tar::Entry<R>) -> io::Result<(Attrs, Xattrs)> {
    let h = e.header();
    let mut a = Attrs { mode: h.mode()?, uid: h.uid()? as u32, gid: h.gid()? as u32, mtime: h.mtime()? as i64 };
    let mut xattrs = Vec::new();
    if let Some(pax) = e.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let num = || std::str::from_utf8(ext.value_bytes()).ok().and_then(|v| v.split('.').next()?.parse().ok());
            match key {
                b"uid" => a.uid = num().unwrap_or(a.uid as i64) as u32,
                b"gid" => a.gid = num().unwrap_or(a.gid as i64) as u32,
                b"mtime" => a.mtime = num().unwrap_or(a.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((OsStr::from_bytes(name).to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    Ok((a, xattrs))
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let name = show(&raw);
        let io_err = |source| UnpackError::Io { entry: name.clone(), source };
        let refused = |reason| UnpackError::Refused { entry: name.clone(), reason };
        self.stats.entries += 1;
        let clean = Tree::clean(Path::new(OsStr::from_bytes(&raw))).map_err(refused)?;
        let file_name = clean.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        if file_name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&clean, &file_name, &name);
        }
        let (attrs, xattrs) = attrs_of(e).map_err(io_err)?;
        if let Some((x, _)) = xattrs.iter().find(|(x, _)| x.as_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes())) {
            return Err(UnpackError::ReservedXattr { entry: name, name: x.to_string_lossy().into_owned() });
        }
        if clean.as_os_str().is_empty() {
            return self.root_entry(e.header().entry_type(), &attrs, &xattrs, &name);
        }
        let (parent, file) = self.tree.resolve_parent(&clean).map_err(refused)?;
        let target = parent.join(&file);
        self.make_parents(&parent).map_err(io_err)?;
        let kind = e.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let fd = self.out.dir(&parent).map_err(io_err)?;
        let was_whiteout = self.clear_slot(fd, &file, &target, kind.is_dir()).map_err(io_err)?;
        let fd = self.out.dir(&parent).map_err(io_err)?;
        let mut written = None;
        let node = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = LayerDir::create_file(fd, &file).map_err(io_err)?;
                self.stats.bytes += copy_content(e, &mut f, &mut self.buf).map_err(io_err)?;
                written = Some(f);
                Kind::Other
            }
            EntryType::Directory => {
                LayerDir::mkdir(fd, &file).map_err(io_err)?;
                self.dir_times.push((target.clone(), attrs.mtime));
                Kind::Dir
            }
            EntryType::Symlink => {
                let link = e.link_name_bytes().unwrap_or_default().into_owned();
                let link = PathBuf::from(OsStr::from_bytes(&link));
                LayerDir::symlink(fd, &file, &link).map_err(io_err)?;
                Kind::Symlink(link)
            }
            EntryType::Link => return self.hard_link(e, fd, &file, target, &name),
            EntryType::Char | EntryType::Block | EntryType::Fifo => self.device(e, fd, &file, &name)?,
            other => return Err(UnpackError::EntryType { entry: name, kind: other.as_byte() }),
        };
        match &written {
            Some(f) => LayerDir::set_file_attrs(f, &attrs).map_err(io_err)?,
            None => LayerDir::set_attrs(fd, &file, &attrs, matches!(node, Kind::Symlink(_))).map_err(io_err)?,
        }
        set_xattrs(fd, &file, &xattrs).map_err(io_err)?;
        if was_whiteout && node == Kind::Dir {
            set_opaque(fd, &file).map_err(io_err)?;
        }
        self.tree.insert(target, node);
        Ok(())
    }

    /// "./": the layer's root directory itself.
    fn root_entry(&mut self, kind: EntryType, a: &Attrs, x: &Xattrs, name: &str) -> Result<(), UnpackError> {
        if !kind.is_dir() {
            let reason = Refusal::NotADirectory { at: PathBuf::new() };
            return Err(UnpackError::Refused { entry: name.into(), reason });
        }
        let io_err = |source| UnpackError::Io { entry: name.into(), source };
        let fd = self.out.dir(Path::new("")).map_err(io_err)?;
        LayerDir::set_attrs(fd, OsStr::new("."), a, false).map_err(io_err)?;
        set_xattrs(fd, OsStr::new("."), x).map_err(io_err)?;
        self.dir_times.push((PathBuf::new(), a.mtime));
        Ok(())
    }

    fn device<R: Read>(&mut self, e: &tar::Entry<R>, fd: RawFd, file: &OsStr, name: &str) -> Result<Kind, UnpackError> {
        let h = e.header();
        let io_err = |source| UnpackError::Io { entry: name.into(), source };
        let major = h.device_major().map_err(io_err)?.unwrap_or(0);
        let minor = h.device_minor().map_err(io_err)?.unwrap_or(0);
        let kind = match h.entry_type() {
            EntryType::Char if major == 0 && minor == 0 => {
                return Err(UnpackError::ReservedDevice { entry: name.into() });
            }
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        LayerDir::mknod(fd, file, kind, libc::makedev(major, minor)).map_err(io_err)?;
        Ok(Kind::Other)
    }

    /// Removes whatever this layer already has at `target` (a repeated entry
    /// or a whiteout), unless both are directories. Returns whether it was a
    /// whiteout this layer made.
    fn clear_slot(&mut self, fd: RawFd, file: &OsStr, target: &Path, new_is_dir: bool) -> io::Result<bool> {
        if self.whiteouts.remove(target) {
            LayerDir::remove(fd, file)?;
            return Ok(true);
        }
        let ours = self.tree.get(target).filter(|n| n.layer == self.tree.layer());
        match ours.map(|n| &n.kind) {
            None => Ok(false),
            Some(Kind::Dir) if new_is_dir => Ok(false),
            Some(_) => {
                LayerDir::remove(fd, file)?;
                self.out.forget();
                Ok(false)
            }
        }
    }

    /// Creates the directories of canonical path `dir` that this layer does
    /// not have yet, with the attributes of the lower layer's directory.
    fn make_parents(&mut self, dir: &Path) -> io::Result<()> {
        // A directory this layer has implies its ancestors (the common case:
        // the next entry in the same directory).
        if self.tree.get(dir).is_some_and(|n| n.layer == self.tree.layer()) {
            return Ok(());
        }
        let mut cur = PathBuf::new();
        for c in dir.iter() {
            let parent = cur.clone();
            cur.push(c);
            let node = self.tree.get(&cur);
            if node.is_some_and(|n| n.layer == self.tree.layer()) {
                continue;
            }
            let lower = node.map(|n| self.lowers[n.layer].join(&cur));
            let fd = self.out.dir(&parent)?;
            let was_whiteout = self.whiteouts.remove(&cur);
            if was_whiteout {
                LayerDir::remove(fd, c)?;
            }
            LayerDir::mkdir(fd, c)?;
            match lower {
                Some(l) => copy_dir_attrs(&l, fd, c, &mut self.dir_times, &cur)?,
                None => {
                    LayerDir::set_attrs(fd, c, &Attrs { mode: 0o755, uid: 0, gid: 0, mtime: 0 }, false)?;
                }
            }
            if was_whiteout {
                set_opaque(fd, c)?;
            }
            self.tree.insert(cur.clone(), Kind::Dir);
        }
        Ok(())
    }

    fn whiteout(&mut self, clean: &Path, file_name: &[u8], entry: &str) -> Result<(), UnpackError> {
        let io_err = |source| UnpackError::Io { entry: entry.into(), source };
        let refused = |reason| UnpackError::Refused { entry: entry.into(), reason };
        let dir = clean.parent().unwrap_or(Path::new(""));
        if file_name == OPAQUE_WHITEOUT.as_bytes() {
            let dir = self.tree.resolve_dir(dir).map_err(refused)?;
            let (parent, name) = split(&dir);
            self.make_parents(&dir).map_err(io_err)?;
            let fd = self.out.dir(&parent).map_err(io_err)?;
            set_opaque(fd, &name).map_err(io_err)?;
            self.tree.hide_lower_children(&dir);
            return Ok(());
        }
        let real = &file_name[WHITEOUT_PREFIX.len()..];
        if real.is_empty() || real.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(UnpackError::WhiteoutForm { entry: entry.into() });
        }
        let parent = self.tree.resolve_dir(dir).map_err(refused)?;
        let target = parent.join(OsStr::from_bytes(real));
        if !self.tree.exists_below(&target) {
            let target = target.to_string_lossy().into_owned();
            return Err(UnpackError::WhiteoutMissing { entry: entry.into(), target });
        }
        self.make_parents(&parent).map_err(io_err)?;
        let fd = self.out.dir(&parent).map_err(io_err)?;
        let ours = self.tree.get(&target).filter(|n| n.layer == self.tree.layer()).map(|n| n.kind.clone());
        match ours {
            // This layer's own entry stays; a directory stops showing the lower one's children.
            Some(Kind::Dir) => {
                set_opaque(fd, OsStr::from_bytes(real)).map_err(io_err)?;
                self.tree.hide_lower_children(&target);
            }
            Some(_) => {}
            None => {
                LayerDir::whiteout(fd, OsStr::from_bytes(real)).map_err(io_err)?;
                self.tree.remove(&target);
                self.whiteouts.insert(target);
            }
        }
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        e: &tar::Entry<R>,
        fd: RawFd,
        file: &OsStr,
        target: PathBuf,
        entry: &str,
    ) -> Result<(), UnpackError> {
        let raw = e.link_name_bytes().unwrap_or_default().into_owned();
        let shown = show(&raw);
        let refused = |reason| UnpackError::LinkRefused { entry: entry.into(), target: shown.clone(), reason };
        let clean = Tree::clean(Path::new(OsStr::from_bytes(&raw))).map_err(refused)?;
        let (lparent, lname) = self.tree.resolve_parent(&clean).map_err(refused)?;
        let old = lparent.join(&lname);
        let node = self.tree.get(&old).cloned();
        let io_err = |source| UnpackError::Io { entry: entry.into(), source };
        match node.map(|n| (n.kind, n.layer)) {
            None => return Err(UnpackError::LinkMissing { entry: entry.into(), target: shown }),
            Some((Kind::Dir, _)) => return Err(UnpackError::LinkToDir { entry: entry.into(), target: shown }),
            Some((kind, layer)) if layer == self.tree.layer() => {
                let old_dir = self.out.dir_uncached(&lparent).map_err(io_err)?;
                let new_fd = self.out.dir(target.parent().unwrap_or(Path::new(""))).map_err(io_err)?;
                LayerDir::hard_link(old_dir.as_raw_fd(), &lname, new_fd, file).map_err(io_err)?;
                self.tree.insert(target, kind);
            }
            // The file is in a lower layer's directory: this layer gets a copy.
            Some((kind, layer)) => {
                let src = self.lowers[layer].join(&old);
                self.stats.bytes += copy_up(&src, fd, file, &mut self.buf).map_err(io_err)?;
                self.tree.insert(target, kind);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        for (path, mtime) in self.dir_times.iter().rev() {
            let io_err = |source| UnpackError::Io { entry: path.to_string_lossy().into_owned(), source };
            if self.tree.get(path).is_none() && !path.as_os_str().is_empty() {
                continue;
            }
            let (parent, name) = split(path);
            let fd = self.out.dir(&parent).map_err(io_err)?;
            LayerDir::set_mtime(fd, &name, *mtime).map_err(io_err)?;
        }
        Ok(())
    }
}

/// `a/b/c` as (`a/b`, `c`); the root as (``, `.`).
fn split(path: &Path) -> (PathBuf, OsString) {
    match path.file_name() {
        Some(n) => (path.parent().unwrap_or(Path::new("")).to_path_buf(), n.to_owned()),
        None => (PathBuf::new(), OsString::from(".")),
    }
}

/// The xattrs of `path` that are content (overlayfs's own are not).
pub fn read_xattrs(path: &Path) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    for name in crate::sys::llistxattr(path)? {
        if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
            continue;
        }
        if let Some(v) = crate::sys::lgetxattr(path, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

fn set_opaque(fd: RawFd, name: &OsStr) -> io::Result<()> {
    crate::sys::lsetxattr(&LayerDir::proc_path(fd, name), OsStr::new(OPAQUE_XATTR), b"y")
}

fn set_xattrs(fd: RawFd, name: &OsStr, xattrs: &Xattrs) -> io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let path = LayerDir::proc_path(fd, name);
    for (x, v) in xattrs {
        crate::sys::lsetxattr(&path, x, v)?;
    }
    Ok(())
}

/// Copies a file's content in blocks of `buf`'s size; returns the byte count.
fn copy_content(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// The owner, mode, mtime and xattrs of lower directory `src` onto `name`.
fn copy_dir_attrs(src: &Path, fd: RawFd, name: &OsStr, times: &mut Vec<(PathBuf, i64)>, rel: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(src)?;
    let a = Attrs { mode: m.mode(), uid: m.uid(), gid: m.gid(), mtime: m.mtime() };
    LayerDir::set_attrs(fd, name, &a, false)?;
    set_xattrs(fd, name, &read_xattrs(src)?)?;
    times.push((rel.to_path_buf(), a.mtime));
    Ok(())
}

/// Copies the lower layer's file `src` (content, owner, mode, xattrs, mtime)
/// to `name`, for a hard link whose target lives in a lower layer.
fn copy_up(src: &Path, fd: RawFd, name: &OsStr, buf: &mut [u8]) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(src)?;
    let a = Attrs { mode: m.mode(), uid: m.uid(), gid: m.gid(), mtime: m.mtime() };
    let ft = m.file_type();
    let mut n = 0;
    if ft.is_symlink() {
        LayerDir::symlink(fd, name, &std::fs::read_link(src)?)?;
    } else if ft.is_file() {
        let mut to = LayerDir::create_file(fd, name)?;
        n = copy_content(&mut std::fs::File::open(src)?, &mut to, buf)?;
    } else {
        let kind = SFlag::from_bits_truncate(m.mode() & libc::S_IFMT);
        LayerDir::mknod(fd, name, kind, m.rdev())?;
    }
    LayerDir::set_attrs(fd, name, &a, ft.is_symlink())?;
    set_xattrs(fd, name, &read_xattrs(src)?)?;
    Ok(n)
}

#[cfg(test)]
mod tests;
