//! An overlay-form directory written as an OCI layer tar: the unpacker's
//! inverse. The tree is walked through directory descriptors without ever
//! following a symlink, names in byte order, so one tree gives one tar.

use super::TransferError;
use crate::unpack::{Xattrs, OPAQUE_XATTR};
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// Overlayfs xattrs that make an upper entry stand for lower content.
const REDIRECTS: [&[u8]; 2] = [b"trusted.overlay.redirect", b"trusted.overlay.metacopy"];
/// A host's security labels, not content: the receiving host labels its own.
const HOST_XATTRS: [&[u8]; 1] = [b"security.selinux"];
/// A tar header's name field; longer names travel in PAX records.
const NAME_FIELD: usize = 100;
const BLOCK: usize = 512;
const CHUNK: usize = 256 << 10;

/// What [`write_layer_tar`] wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerTarStats {
    entries: u64,
    bytes: u64,
    skipped: u64,
    tar_bytes: u64,
}

impl LayerTarStats {
    /// Tar entries (PAX headers not counted).
    pub fn entries(&self) -> u64 {
        self.entries
    }
    /// Bytes of regular file content.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Sockets left out: a tar cannot hold them (a program recreates its own).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
    /// Length of the tar stream.
    pub fn tar_bytes(&self) -> u64 {
        self.tar_bytes
    }
}

/// Writes the overlay-form directory `dir` (a store layer's `fs`, a
/// bundle's `upper`, or a plain rootfs) to `out` as an OCI layer tar that
/// `unpack::unpack_layer` turns back into the same directory:
///
/// - a 0:0 character device (an overlay whiteout) becomes an empty `.wh.NAME`;
///   a directory with `trusted.overlay.opaque=y` its entry plus `DIR/.wh..wh..opq`;
/// - owners, modes (set-id bits too), mtimes (whole seconds), symlinks, device
///   nodes and fifos are kept; xattrs travel as PAX `SCHILY.xattr.NAME`,
///   except `trusted.overlay.*` and `security.selinux` (host labels);
/// - a file met again by device and inode is a tar hard link to the first name;
/// - sockets are skipped and counted;
/// - names longer than a header holds go in PAX `path`/`linkpath`.
///
/// The root is the entry `./`, then every name in byte order, depth first.
/// Refused: a real file named `.wh.*` (it would read as a whiteout), an xattr
/// name with `=`, an entry with `trusted.overlay.redirect` or `.metacopy`
/// (its content is in a lower layer), and a file whose size changes while it
/// is read. `out` gets an error's partial stream: the receiver must drop it.
pub fn write_layer_tar(dir: &Path, out: impl Write) -> Result<LayerTarStats, TransferError> {
    let read_err = |source| TransferError::Read { path: dir.to_path_buf(), source };
    let root = open_dir(libc::AT_FDCWD, dir.as_os_str()).map_err(read_err)?;
    let st = fstat(root.as_raw_fd()).map_err(|e| read_err(e.into()))?;
    let mut w = Writer {
        root: dir,
        out: BufWriter::with_capacity(CHUNK, out),
        links: HashMap::new(),
        buf: vec![0; CHUNK],
        stats: LayerTarStats::default(),
    };
    w.directory(&root, b".", &st)?;
    w.put(&[0; 2 * BLOCK])?;
    w.out.flush().map_err(|source| TransferError::Write { source })?;
    Ok(w.stats)
}

struct Writer<'a, W: Write> {
    root: &'a Path,
    out: BufWriter<W>,
    /// (dev, ino) of files with several links, to the first one's tar name.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    stats: LayerTarStats,
}

/// One tar entry's header fields.
struct Head<'a> {
    path: &'a [u8],
    kind: EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    link: &'a [u8],
    rdev: u64,
    xattrs: &'a Xattrs,
}

const NO_XATTRS: &Xattrs = &Vec::new();

impl<'a> Head<'a> {
    fn new(path: &'a [u8], kind: EntryType, st: &FileStat) -> Head<'a> {
        let (mode, uid, gid, mtime) = (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime);
        Head { path, kind, mode, uid, gid, mtime, size: 0, link: b"", rdev: 0, xattrs: NO_XATTRS }
    }
}

/// What the xattrs of an entry say.
struct XattrInfo {
    content: Xattrs,
    opaque: bool,
}

impl<W: Write> Writer<'_, W> {
    fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    fn err(&self, rel: &[u8], source: impl Into<io::Error>) -> TransferError {
        TransferError::Read { path: self.path_of(rel), source: source.into() }
    }

    fn changed(&self, rel: &[u8]) -> TransferError {
        TransferError::Changed { path: self.path_of(rel) }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), TransferError> {
        self.out.write_all(bytes).map_err(|source| TransferError::Write { source })?;
        self.stats.tar_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Zeros up to the next block boundary after `len` bytes of data.
    fn pad(&mut self, len: u64) -> Result<(), TransferError> {
        let rest = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        self.put(&[0; BLOCK][..rest])
    }

    /// A directory (`rel` is `.` for the root), then what is in it.
    fn directory(&mut self, fd: &OwnedFd, rel: &[u8], st: &FileStat) -> Result<(), TransferError> {
        let x = self.xattrs(&proc_path(fd.as_raw_fd(), OsStr::new(".")), rel)?;
        let name = [rel, b"/"].concat();
        self.header(&Head { xattrs: &x.content, ..Head::new(&name, EntryType::Directory, st) })?;
        let prefix = if rel == b"." { Vec::new() } else { name };
        if x.opaque && !prefix.is_empty() {
            let marker = [&prefix[..], OPAQUE_MARKER].concat();
            self.header(&Head { mode: 0o644, ..Head::new(&marker, EntryType::Regular, st) })?;
        }
        let names = list_dir(fd).map_err(|e| self.err(rel, e))?;
        for n in names {
            let path = [&prefix[..], n.as_bytes()].concat();
            self.entry(fd.as_raw_fd(), &n, &path)?;
        }
        Ok(())
    }

    fn entry(&mut self, dirfd: RawFd, name: &OsStr, path: &[u8]) -> Result<(), TransferError> {
        let st = fstatat(Some(dirfd), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| self.err(path, e))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
            return self.whiteout(path, &st);
        }
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return Err(TransferError::ReservedName { path: self.path_of(path) });
        }
        match kind {
            SFlag::S_IFDIR => {
                let fd = open_dir(dirfd, name).map_err(|e| self.err(path, e))?;
                let st = fstat(fd.as_raw_fd()).map_err(|e| self.err(path, e))?;
                return self.directory(&fd, path, &st);
            }
            SFlag::S_IFSOCK => {
                self.stats.skipped += 1;
                return Ok(());
            }
            _ => {}
        }
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                return self.header(&Head { link: &first, ..Head::new(path, EntryType::Link, &st) });
            }
            self.links.insert(key, path.to_vec());
        }
        let x = self.xattrs(&proc_path(dirfd, name), path)?;
        let head = Head { xattrs: &x.content, ..Head::new(path, EntryType::Regular, &st) };
        match kind {
            SFlag::S_IFREG => self.file(dirfd, name, head, &st),
            SFlag::S_IFLNK => {
                let target = readlinkat(Some(dirfd), name).map_err(|e| self.err(path, e))?;
                self.header(&Head { kind: EntryType::Symlink, link: target.as_bytes(), ..head })
            }
            _ => {
                let kind = match kind {
                    SFlag::S_IFCHR => EntryType::Char,
                    SFlag::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                self.header(&Head { kind, rdev: st.st_rdev, ..head })
            }
        }
    }

    /// An overlay whiteout device as the empty file `.wh.NAME`.
    fn whiteout(&mut self, path: &[u8], st: &FileStat) -> Result<(), TransferError> {
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => path.split_at(i + 1),
            None => (&b""[..], path),
        };
        let marker = [dir, WHITEOUT_PREFIX, name].concat();
        self.header(&Head { mode: 0o644, uid: 0, gid: 0, ..Head::new(&marker, EntryType::Regular, st) })
    }

    /// A regular file's header and content, checked against the size the
    /// header promised.
    fn file(&mut self, dirfd: RawFd, name: &OsStr, head: Head, st: &FileStat) -> Result<(), TransferError> {
        let path = head.path;
        let f = open_file(dirfd, name).map_err(|e| self.err(path, e))?;
        let now = fstat(f.as_raw_fd()).map_err(|e| self.err(path, e))?;
        if now.st_ino != st.st_ino || now.st_size != st.st_size {
            return Err(self.changed(path));
        }
        let size = st.st_size as u64;
        self.header(&Head { size, ..head })?;
        let mut left = size;
        let mut f = &f;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = match f.read(&mut self.buf[..want]) {
                Ok(0) => return Err(self.changed(path)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.err(path, e)),
            };
            self.out.write_all(&self.buf[..n]).map_err(|source| TransferError::Write { source })?;
            left -= n as u64;
        }
        self.stats.tar_bytes += size;
        self.stats.bytes += size;
        if f.read(&mut [0u8; 1]).map_err(|e| self.err(path, e))? != 0 {
            return Err(self.changed(path));
        }
        self.pad(size)
    }

    /// The PAX records the entry needs, then its header.
    fn header(&mut self, h: &Head) -> Result<(), TransferError> {
        let mut pax = Vec::new();
        for (key, value) in [(&b"path"[..], h.path), (b"linkpath", h.link)] {
            if value.len() <= NAME_FIELD {
                continue;
            }
            if value.contains(&b'\n') {
                return Err(TransferError::LongNewline { path: self.path_of(h.path) });
            }
            pax_record(&mut pax, key, value);
        }
        for (name, value) in h.xattrs {
            pax_record(&mut pax, &[&b"SCHILY.xattr."[..], name.as_bytes()].concat(), value);
        }
        if !pax.is_empty() {
            let mut x = Header::new_ustar();
            x.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            x.set_entry_type(EntryType::XHeader);
            x.set_mode(0o644);
            x.set_size(pax.len() as u64);
            x.set_cksum();
            self.put(x.as_bytes())?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        let mut t = Header::new_gnu();
        let old = t.as_old_mut();
        let n = h.path.len().min(NAME_FIELD);
        old.name[..n].copy_from_slice(&h.path[..n]);
        let n = h.link.len().min(NAME_FIELD);
        old.linkname[..n].copy_from_slice(&h.link[..n]);
        t.set_entry_type(h.kind);
        t.set_mode(h.mode);
        t.set_uid(h.uid.into());
        t.set_gid(h.gid.into());
        t.set_mtime(h.mtime.max(0) as u64);
        t.set_size(h.size);
        // Zeros where there is no device: readers parse the fields of a fifo too.
        t.set_device_major(libc::major(h.rdev)).map_err(|e| self.err(h.path, e))?;
        t.set_device_minor(libc::minor(h.rdev)).map_err(|e| self.err(h.path, e))?;
        t.set_cksum();
        self.stats.entries += 1;
        self.put(t.as_bytes())
    }

    /// The xattrs of `path` (a /proc path not following its last component)
    /// that travel, and whether it is an opaque directory.
    fn xattrs(&self, path: &Path, rel: &[u8]) -> Result<XattrInfo, TransferError> {
        let mut names = crate::sys::llistxattr(path).map_err(|e| self.err(rel, e))?;
        names.sort();
        let mut out = XattrInfo { content: Vec::new(), opaque: false };
        for name in names {
            let b = name.as_bytes();
            if REDIRECTS.contains(&b) {
                let name = name.to_string_lossy().into_owned();
                return Err(TransferError::OverlayRedirect { path: self.path_of(rel), name });
            }
            let value = crate::sys::lgetxattr(path, &name).map_err(|e| self.err(rel, e))?;
            if b == OPAQUE_XATTR.as_bytes() {
                out.opaque = value.as_deref() == Some(b"y");
                continue;
            }
            if b.starts_with(OVERLAY_PREFIX) || HOST_XATTRS.contains(&b) {
                continue;
            }
            if b.contains(&b'=') || value.as_ref().is_some_and(|v| v.contains(&b'\n')) {
                return Err(TransferError::BadXattr { path: self.path_of(rel), name: name.to_string_lossy().into() });
            }
            if let Some(v) = value {
                out.content.push((name, v));
            }
        }
        Ok(out)
    }
}

/// Appends the PAX record `LEN KEY=VALUE\n`, LEN counting its own digits.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A path naming `name` in directory `fd` for the l*xattr calls: the
/// descriptor's link is followed, `name` is not.
fn proc_path(fd: RawFd, name: &OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}")).join(name)
}

fn open_dir(dirfd: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(Some(dirfd), name, flags, Mode::empty())?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a regular file for reading; O_NONBLOCK so that a fifo swapped in
/// meanwhile cannot block (the inode check then refuses it).
fn open_file(dirfd: RawFd, name: &OsStr) -> io::Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let fd = openat(Some(dirfd), name, flags, Mode::empty())?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The names in directory `fd`, in byte order.
fn list_dir(fd: &OwnedFd) -> io::Result<Vec<OsString>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = nix::dir::Dir::openat(Some(fd.as_raw_fd()), ".", flags, Mode::empty())?;
    let mut names = Vec::new();
    for e in dir.iter() {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}
