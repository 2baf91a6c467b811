//! The unpack target's watch on everything outside the directories it unpacks into.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const CANARY: &[u8] = b"warren fuzz canary: must never change\n";
/// The scratch directory holds exactly these; `outside` holds only a canary.
const TOP: [&str; 3] = ["canary", "layers", "outside"];

pub struct Canaries {
    dir: PathBuf,
    /// Entries of the scratch dir's parent and of `/` when the process started.
    baseline: Vec<(PathBuf, BTreeSet<Vec<u8>>)>,
    /// Each canary with its fingerprint when made.
    canaries: Vec<(PathBuf, Fingerprint)>,
}

/// What must not change about a canary file: content, mode, owner, link count, mtime.
type Fingerprint = (Vec<u8>, u32, u32, u32, u64, i64);

fn fingerprint(path: &Path) -> Fingerprint {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("canary {} is gone: {e}", path.display()));
    let content = std::fs::read(path).unwrap_or_else(|e| panic!("canary {}: {e}", path.display()));
    (content, m.mode(), m.uid(), m.gid(), m.nlink(), m.mtime())
}

fn names(dir: &Path) -> BTreeSet<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries.map(|e| e.expect("dir entry").file_name().as_bytes().to_vec()).collect()
}

impl Canaries {
    pub fn new(name: &str) -> Canaries {
        let dir = crate::scratch_dir(name);
        std::fs::write(dir.join("canary"), CANARY).expect("canary");
        std::fs::create_dir(dir.join("outside")).expect("outside dir");
        std::fs::write(dir.join("outside/canary"), CANARY).expect("canary");
        std::fs::create_dir(dir.join("layers")).expect("layers dir");
        let parent = dir.parent().expect("scratch dir has a parent").to_path_buf();
        let baseline = [parent, PathBuf::from("/")].into_iter().map(|d| (d.clone(), names(&d))).collect();
        let canaries = [dir.join("canary"), dir.join("outside/canary")].map(|p| (p.clone(), fingerprint(&p))).into();
        let c = Canaries { dir, baseline, canaries };
        c.fresh_layers();
        c
    }

    /// Empty directories for the lower and upper layer.
    pub fn fresh_layers(&self) -> [PathBuf; 2] {
        ["0", "1"].map(|n| {
            let p = self.dir.join("layers").join(n);
            match std::fs::remove_dir_all(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", p.display()),
                _ => {}
            }
            std::fs::create_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            p
        })
    }

    /// Panics (a finding) when anything outside the layer directories changed. Entries new in
    /// the shared directories count only when `input` holds their name: other processes create
    /// files there too.
    pub fn check(&self, input: &[u8]) {
        let want = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<BTreeSet<_>>();
        assert_eq!(names(&self.dir), want(&TOP), "entries appeared beside the layers");
        assert_eq!(names(&self.dir.join("outside")), want(&["canary"]), "entries appeared outside");
        assert_eq!(names(&self.dir.join("layers")), want(&["0", "1"]), "entries appeared beside the layers");
        for (path, made) in &self.canaries {
            assert_eq!(&fingerprint(path), made, "canary {} changed", path.display());
        }
        for (dir, before) in &self.baseline {
            for new in names(dir).difference(before) {
                let found = !new.is_empty() && input.windows(new.len()).any(|w| w == new.as_slice());
                assert!(!found, "{} appeared in {}", String::from_utf8_lossy(new), dir.display());
            }
        }
    }
}
