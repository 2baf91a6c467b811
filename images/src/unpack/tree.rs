//! The merged view of the layers unpacked so far (paths and their kinds
//! only), and the path resolver that keeps every entry inside the root.
//!
//! Each unpacked layer is written to its own directory, so the filesystem
//! cannot answer "what does the image look like here"; this model can. It
//! resolves an entry's parent directories through symlinks planted by
//! earlier entries or layers and refuses one that would leave the root.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::ops::Bound;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Symlink hops allowed while resolving one path (Linux's MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Why a path is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("absolute path")]
    Absolute,
    #[error("'..' in the path")]
    DotDot,
    #[error("goes through symlink {link:?}, whose target leaves the root")]
    SymlinkEscape { link: PathBuf },
    #[error("{at:?} is not a directory")]
    NotADirectory { at: PathBuf },
    #[error("more than {MAX_HOPS} symlinks at {link:?}")]
    SymlinkLoop { link: PathBuf },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Dir,
    Symlink(PathBuf),
    /// Regular files, devices, fifos, sockets.
    Other,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    /// The layer (index from the bottom) whose directory holds this path.
    pub layer: usize,
    /// A layer below that one had something at this path too.
    pub over_lower: bool,
}

/// A path component while resolving: a name, or `..` from a symlink target.
enum Step {
    Name(OsString),
    Up,
}

/// Canonical paths are keyed by their bytes: they are made of plain
/// components joined by single slashes, so byte equality is path equality,
/// and a byte compare is much cheaper than `Path`'s component-wise one
/// (tens of thousands of lookups per layer).
#[derive(Default)]
pub struct Tree {
    nodes: BTreeMap<Vec<u8>, Node>,
    layer: usize,
}

fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn to_path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Entries inserted from now on belong to layer `layer`.
    pub fn begin_layer(&mut self, layer: usize) {
        self.layer = layer;
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn get(&self, path: &Path) -> Option<&Node> {
        self.nodes.get(key(path))
    }

    /// Whether a layer below the current one has something at `path`.
    pub fn exists_below(&self, path: &Path) -> bool {
        self.get(path).is_some_and(|n| n.layer < self.layer || n.over_lower)
    }

    /// An entry name as plain components: `./a/b/` is `a/b`; absolute names and
    /// `..` are refused. The root itself is the empty path.
    pub fn clean(name: &Path) -> Result<PathBuf, Refusal> {
        let mut out = PathBuf::new();
        for c in name.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(Refusal::Absolute),
                Component::ParentDir => return Err(Refusal::DotDot),
            }
        }
        Ok(out)
    }

    /// The canonical directory `dir` (a clean path) names in the merged view:
    /// symlinks followed, refused where one leaves the root. Components that
    /// do not exist yet are kept as they are (they will be created).
    pub fn resolve_dir(&self, dir: &Path) -> Result<PathBuf, Refusal> {
        let mut pending: VecDeque<Step> = dir.iter().map(|c| Step::Name(c.to_owned())).collect();
        let mut cur: Vec<u8> = Vec::with_capacity(dir.as_os_str().len());
        let mut hops = 0;
        while let Some(step) = pending.pop_front() {
            let name = match step {
                Step::Up if cur.is_empty() => return Err(Refusal::DotDot),
                Step::Up => {
                    cur.truncate(cur.iter().rposition(|b| *b == b'/').unwrap_or(0));
                    continue;
                }
                Step::Name(n) => n,
            };
            let len = cur.len();
            if len > 0 {
                cur.push(b'/');
            }
            cur.extend_from_slice(name.as_bytes());
            match self.nodes.get(&cur).map(|n| &n.kind) {
                None | Some(Kind::Dir) => {}
                Some(Kind::Other) => return Err(Refusal::NotADirectory { at: to_path(cur) }),
                Some(Kind::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(Refusal::SymlinkLoop { link: to_path(cur) });
                    }
                    let depth = if len == 0 { 0 } else { cur[..len].iter().filter(|b| **b == b'/').count() + 1 };
                    let Some(steps) = symlink_steps(target, depth) else {
                        return Err(Refusal::SymlinkEscape { link: to_path(cur) });
                    };
                    cur.truncate(len);
                    for s in steps.into_iter().rev() {
                        pending.push_front(s);
                    }
                }
            }
        }
        Ok(to_path(cur))
    }

    /// A clean entry path as (canonical parent dir, file name).
    pub fn resolve_parent(&self, clean: &Path) -> Result<(PathBuf, OsString), Refusal> {
        let name = clean.file_name().unwrap_or(OsStr::new("")).to_owned();
        let parent = self.resolve_dir(clean.parent().unwrap_or(Path::new("")))?;
        Ok((parent, name))
    }

    /// Records `path` as created by the current layer; anything below a
    /// replaced directory disappears.
    pub fn insert(&mut self, path: PathBuf, kind: Kind) {
        let over_lower = self.exists_below(&path);
        if kind != Kind::Dir {
            self.remove_below(&path, |_| true);
        }
        let node = Node { kind, layer: self.layer, over_lower };
        self.nodes.insert(path.into_os_string().into_vec(), node);
    }

    /// Removes `path` and everything below it (a whiteout).
    pub fn remove(&mut self, path: &Path) {
        self.nodes.remove(key(path));
        self.remove_below(path, |_| true);
    }

    /// Removes what lower layers have below `dir` (an opaque directory).
    pub fn hide_lower_children(&mut self, dir: &Path) {
        let layer = self.layer;
        self.remove_below(dir, |n| n.layer < layer);
    }

    /// Removes the nodes strictly below `dir` that `pred` picks: in byte
    /// order, the paths that start with `dir/` are one contiguous range.
    fn remove_below(&mut self, dir: &Path, pred: impl Fn(&Node) -> bool) {
        if dir.as_os_str().is_empty() {
            self.nodes.retain(|k, n| k.is_empty() || !pred(n));
            return;
        }
        let mut prefix = key(dir).to_vec();
        prefix.push(b'/');
        let doomed: Vec<Vec<u8>> = self
            .nodes
            .range::<[u8], _>((Bound::Included(&prefix[..]), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, n)| pred(n))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Adds an already unpacked layer directory (overlay form: 0:0 character
    /// devices are whiteouts, `trusted.overlay.opaque=y` marks opaque dirs).
    pub fn load_layer(&mut self, layer: usize, root: &Path) -> io::Result<()> {
        self.begin_layer(layer);
        self.load_dir(root, Path::new(""))
    }

    fn load_dir(&mut self, root: &Path, rel: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            let ft = meta.file_type();
            if ft.is_char_device() && std::os::unix::fs::MetadataExt::rdev(&meta) == 0 {
                self.remove(&path);
            } else if ft.is_dir() {
                if super::is_opaque(&root.join(&path))? {
                    self.hide_lower_children(&path);
                }
                self.insert(path.clone(), Kind::Dir);
                self.load_dir(root, &path)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                self.insert(path, Kind::Symlink(target));
            } else {
                self.insert(path, Kind::Other);
            }
        }
        Ok(())
    }
}

/// A relative symlink target as steps taken from its directory, which is
/// `depth` components below the root; None for an absolute target, or one
/// that climbs above the root.
fn symlink_steps(target: &Path, mut depth: usize) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => {
                depth += 1;
                steps.push(Step::Name(n.to_owned()));
            }
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1)?;
                steps.push(Step::Up);
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn clean_refuses_absolute_and_dotdot() {
        assert_eq!(Tree::clean(Path::new("./a/b/")), Ok(p("a/b")));
        assert_eq!(Tree::clean(Path::new("./")), Ok(p("")));
        assert_eq!(Tree::clean(Path::new("/etc/passwd")), Err(Refusal::Absolute));
        assert_eq!(Tree::clean(Path::new("a/../../x")), Err(Refusal::DotDot));
    }

    #[test]
    fn parents_resolve_through_inner_symlinks_only() {
        let mut t = Tree::new();
        t.insert(p("usr"), Kind::Dir);
        t.insert(p("usr/lib"), Kind::Dir);
        t.insert(p("lib"), Kind::Symlink(p("usr/lib")));
        t.insert(p("up"), Kind::Symlink(p("../..")));
        t.insert(p("abs"), Kind::Symlink(p("/etc")));
        t.insert(p("usr/lib/self"), Kind::Symlink(p("../lib")));
        t.insert(p("file"), Kind::Other);
        assert_eq!(t.resolve_parent(Path::new("lib/x.so")), Ok((p("usr/lib"), "x.so".into())));
        assert_eq!(t.resolve_parent(Path::new("lib/self/self/y")), Ok((p("usr/lib"), "y".into())));
        assert_eq!(t.resolve_dir(Path::new("up/etc")), Err(Refusal::SymlinkEscape { link: p("up") }));
        assert_eq!(t.resolve_dir(Path::new("abs")), Err(Refusal::SymlinkEscape { link: p("abs") }));
        assert_eq!(t.resolve_dir(Path::new("file/x")), Err(Refusal::NotADirectory { at: p("file") }));
        t.insert(p("loop"), Kind::Symlink(p("loop")));
        assert!(matches!(t.resolve_dir(Path::new("loop")), Err(Refusal::SymlinkLoop { .. })));
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_paths() {
        let mut t = Tree::new();
        t.insert(p("a"), Kind::Dir);
        t.insert(p("a/x"), Kind::Other);
        t.insert(p("a-b"), Kind::Other);
        t.begin_layer(1);
        t.insert(p("a/y"), Kind::Other);
        assert!(t.exists_below(Path::new("a/x")));
        assert!(!t.exists_below(Path::new("a/y")));
        t.hide_lower_children(Path::new("a"));
        assert!(t.get(Path::new("a/x")).is_none());
        assert!(t.get(Path::new("a/y")).is_some());
        t.remove(Path::new("a"));
        assert!(t.get(Path::new("a/y")).is_none());
        assert!(t.get(Path::new("a-b")).is_some());
    }
}
