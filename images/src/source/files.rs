//! The files of an image, in a directory or in a tar: a tar is indexed once
//! (name to offset and size) and its files are then read in place.

use super::SourceError;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// Symlink hops followed inside an archive (`docker save` links shared layers).
const MAX_HOPS: usize = 8;

pub enum Files {
    Dir(PathBuf),
    Tar { path: PathBuf, entries: HashMap<String, TarFile> },
}

#[derive(Clone, Debug)]
pub enum TarFile {
    Data { offset: u64, size: u64 },
    Link(String),
}

/// A name inside the image as plain components; None if it has `..` or is absolute.
fn normalize(name: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

impl Files {
    pub fn index(path: &Path) -> Result<Files, SourceError> {
        let io_err = |source| SourceError::Io { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            return Ok(Files::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(io_err)?;
        let tar_err = |source| SourceError::Tar { path: path.to_path_buf(), source };
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries_with_seek().map_err(tar_err)? {
            let entry = entry.map_err(tar_err)?;
            let Some(name) = normalize(&entry.path().map_err(tar_err)?) else { continue };
            let h = entry.header();
            let file = match h.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    TarFile::Data { offset: entry.raw_file_position(), size: entry.size() }
                }
                tar::EntryType::Symlink => {
                    let Some(target) = entry.link_name().map_err(tar_err)? else { continue };
                    let dir = Path::new(&name).parent().unwrap_or(Path::new("")).join(target);
                    let Some(target) = normalize_lexically(&dir) else { continue };
                    TarFile::Link(target)
                }
                tar::EntryType::Link => {
                    let Some(target) = entry.link_name().map_err(tar_err)? else { continue };
                    let Some(target) = normalize(&target) else { continue };
                    TarFile::Link(target)
                }
                _ => continue,
            };
            entries.insert(name, file);
        }
        if entries.is_empty() {
            let source = io::Error::new(io::ErrorKind::InvalidData, "not a tar archive, or an empty one");
            return Err(SourceError::Tar { path: path.to_path_buf(), source });
        }
        Ok(Files::Tar { path: path.to_path_buf(), entries })
    }

    pub fn path(&self) -> &Path {
        match self {
            Files::Dir(p) | Files::Tar { path: p, .. } => p,
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.size(name).is_some()
    }

    fn lookup(&self, name: &str) -> Option<(u64, u64)> {
        let Files::Tar { entries, .. } = self else { return None };
        let mut name = name.to_string();
        for _ in 0..MAX_HOPS {
            match entries.get(&name)? {
                TarFile::Data { offset, size } => return Some((*offset, *size)),
                TarFile::Link(t) => name = t.clone(),
            }
        }
        None
    }

    /// The size of file `name`, None if it is not there.
    pub fn size(&self, name: &str) -> Option<u64> {
        match self {
            Files::Dir(dir) => std::fs::metadata(dir.join(name)).ok().filter(|m| m.is_file()).map(|m| m.len()),
            Files::Tar { .. } => self.lookup(name).map(|(_, size)| size),
        }
    }

    /// Opens file `name` (`what` names it in errors): a reader and its size.
    pub fn open(&self, name: &str, what: &str) -> Result<(Box<dyn Read + Send>, u64), SourceError> {
        let missing = || SourceError::BlobMissing { blob: what.to_string() };
        if normalize(Path::new(name)).as_deref() != Some(name) {
            return Err(missing());
        }
        match self {
            Files::Dir(dir) => {
                let path = dir.join(name);
                let file = match File::open(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    other => other.map_err(|source| SourceError::Io { path: path.clone(), source })?,
                };
                let meta = file.metadata().map_err(|source| SourceError::Io { path: path.clone(), source })?;
                if !meta.is_file() {
                    return Err(missing());
                }
                Ok((Box::new(file), meta.len()))
            }
            Files::Tar { path, .. } => {
                let (offset, size) = self.lookup(name).ok_or_else(missing)?;
                let io_err = |source| SourceError::Io { path: path.clone(), source };
                let mut file = File::open(path).map_err(io_err)?;
                file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }
}

/// Resolves `..` lexically (a symlink's target inside the archive); None if it
/// climbs above the archive's root.
fn normalize_lexically(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.join("/"))
}
