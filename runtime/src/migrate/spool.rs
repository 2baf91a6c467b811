//! The receiver's spool: WORK/ID holds one incoming container's parts until it is restored,
//! and `made.json`, the record of what the receive made outside it (bundle, image record,
//! container), written before each is made.
//!
//! The receiver holds a flock on the spool for as long as it works on it, so a spool whose
//! lock is free was left by a receiver that died. The next receiver, at start-up and before it
//! admits a container, reaps such spools: it undoes what the record lists unless the restore
//! had been reported to the source (which may then have removed its own copy, so the restored
//! container stays, stopped, for the operator), and removes the spool.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use warren_images::store::{Receiving, Store};

use super::{io_err, MigrateError};
use crate::container::Runtime;

const RECORD: &str = "made.json";

/// What a receive made outside its spool, undone when it fails.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Record {
    /// The bundle's directory, and whether the image store made it (else a plain rootfs).
    pub bundle: Option<(PathBuf, bool)>,
    /// The image record the receive added to the store.
    pub image_added: Option<String>,
    /// The container, from the moment its restore began.
    pub container: Option<String>,
    /// The tenant claimed here for the container (its record, disk and network).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The restore was (about to be) reported to the source.
    pub reported: bool,
}

impl Record {
    /// Removes what it lists: the container, the bundle, the tenant, the image record. `lease` (the
    /// layers a receive brought) goes after the bundle and before the image record: layers go
    /// with whichever of them was the last to hold them.
    pub fn undo(&self, rt: &Runtime, store: &Store, lease: Option<Receiving<'_>>) {
        if let Some(id) = self.container.as_ref().filter(|id| rt.dir(id).exists()) {
            if let Err(e) = rt.delete(id, true) {
                log::warn!("migrate receive: removing {id}: {e}");
            }
        }
        let removed = match &self.bundle {
            Some((dir, true)) => warren_images::bundle::remove(store, dir),
            Some((dir, false)) => warren_images::bundle::remove_plain(dir),
            None => Ok(()),
        };
        if let Err(e) = removed {
            log::warn!("migrate receive: removing its bundle: {e}");
        }
        if let Some(name) = &self.tenant {
            let dropped = crate::tenant::Tenants::open(store).and_then(|t| t.drop_moved(name));
            if let Err(e) = dropped {
                log::warn!("migrate receive: removing tenant {name}: {e}");
            }
        }
        drop(lease);
        if let Some(name) = &self.image_added {
            let _ = store.remove(name);
        }
    }
}

/// One container's spool, locked, with its record; removed when dropped.
pub(super) struct Spool {
    dir: PathBuf,
    pub record: Record,
    _lock: Flock<File>,
}

impl Spool {
    /// Makes WORK/ID and locks it. The caller holds [`lock_work`] and has reaped: a spool of
    /// that name is another receive of the same container, under way.
    pub fn create(work: &Path, id: &str) -> Result<Spool, MigrateError> {
        let dir = work.join(id);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(MigrateError::Refused { reason: format!("container {id} is being received already") })
            }
            other => other.map_err(io_err(&dir))?,
        }
        let lock = File::open(&dir)
            .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e.into()))
            .map_err(io_err(&dir))?;
        let spool = Spool { dir, record: Record::default(), _lock: lock };
        std::fs::create_dir(spool.dir.join("criu")).map_err(io_err(&spool.dir))?;
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the record: before what it newly lists is made.
    pub fn save(&self) -> Result<(), MigrateError> {
        let path = self.dir.join(RECORD);
        let json = serde_json::to_vec(&self.record).expect("the record serializes");
        crate::atomic_file::write(&path, &json, 0o600).map_err(io_err(&path))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("migrate receive: removing {}: {e}", self.dir.display());
        }
    }
}

/// Locks WORK itself (made if missing) while spools are reaped or made, so that no receiver
/// sees another's spool between its mkdir and its flock.
pub(super) fn lock_work(work: &Path) -> Result<Flock<File>, MigrateError> {
    std::fs::create_dir_all(work).map_err(io_err(work))?;
    File::open(work)
        .and_then(|f| Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e.into()))
        .map_err(io_err(work))
}

/// Whether the restore in the spool at `dir` was (about to be) reported to the source.
fn reported(dir: &Path) -> bool {
    let record = std::fs::read(dir.join(RECORD)).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
    record.is_some_and(|r| r.reported)
}

impl Runtime {
    /// Reaps every spool in `work` that a dead receiver left (see the module doc); returns
    /// the ids of the containers they were for.
    pub fn reap_abandoned_receives(&self, work: &Path, store: &Store) -> Result<Vec<String>, MigrateError> {
        let _work = lock_work(work)?;
        self.reap_locked(work, store)
    }

    /// [`Runtime::reap_abandoned_receives`] under the caller's [`lock_work`].
    pub(super) fn reap_locked(&self, work: &Path, store: &Store) -> Result<Vec<String>, MigrateError> {
        let mut reaped = Vec::new();
        for entry in std::fs::read_dir(work).map_err(io_err(work))? {
            let entry = entry.map_err(io_err(work))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            let lock = match File::open(&dir).map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock)) {
                Ok(Ok(lock)) => lock,
                Ok(Err((_, Errno::EWOULDBLOCK))) => continue,
                Ok(Err((_, e))) => return Err(io_err(&dir)(e.into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            let record = self.abandoned_record(&dir, &id);
            log::warn!("migrate receive: reaping the spool of a receiver that died: {} ({record:?})", dir.display());
            if !reported(&dir) {
                // Nothing restored here stays: a post-copy daemon has nothing to fill.
                let killed = crate::checkpoint::LazyPages::kill_orphans(&dir);
                if !killed.is_empty() {
                    log::warn!("migrate receive: killed its lazy-pages daemon {killed:?}");
                }
            }
            record.undo(self, store, None);
            drop(Spool { dir, record, _lock: lock });
            reaped.push(id);
        }
        Ok(reaped)
    }

    /// What of a dead receiver's record is to be undone: nothing once the restore was
    /// reported, and its container only while it is the one made from its bundle.
    fn abandoned_record(&self, dir: &Path, id: &str) -> Record {
        let path = dir.join(RECORD);
        let mut record: Record = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!("{}: {e}: nothing to undo", path.display());
                Record::default()
            }),
            Err(_) => Record::default(),
        };
        if record.reported {
            return Record::default();
        }
        if record.container.is_some() {
            let ours = match self.state(id) {
                Ok(view) => record.bundle.as_ref().is_some_and(|(b, _)| *b == view.bundle),
                // Half-made by the restore the receiver died in.
                Err(_) => self.dir(id).exists(),
            };
            if !ours {
                record.container = None;
            }
        }
        record
    }
}
