//! Tenants: VPS-style containers an operator makes with one command. A tenant is a record
//! (`STORE/tenants/NAME/tenant.json`) and a bundle made from an image on the store's shared
//! layers, run in its own user namespace on a host id range of its own (`ids`), with its
//! lower layers idmapped (no chowned copy), and kept running by a supervisor
//! (`supervise`) according to its restart policy.
//!
//! Layout of `STORE/tenants/NAME/` (0711, so that the tenant's root can reach `root/`):
//! `tenant.json` (0600), `bundle/` (0700: config.json and the overlay's upper and work dirs),
//! `root/` (the empty mount point the container's overlay is attached on, inside its own
//! mount namespace only), `console.log` (what the tenant writes on stdout and stderr),
//! `supervisor.lock` (flocked by its supervisor) and `status.json` (the supervisor's).

pub mod console;
pub mod disk;
pub mod guard;
pub mod ids;
pub mod moved;
pub mod net;
pub mod supervise;

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use warren_config::IdPool;
use warren_images::bundle::{self, BundleError, BundleOptions};
use warren_images::spec::Volumes;
use warren_images::store::Store;

use crate::container::{ContainerError, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(
        "tenant name {name:?} is invalid: use lowercase letters, digits and '-', starting with a letter, at most 63"
    )]
    Name { name: String },
    #[error("tenant {name}: already exists")]
    Exists { name: String },
    #[error("tenant {name}: no such tenant")]
    NotFound { name: String },
    #[error(
        "tenant {name}: the id pool is exhausted ({ranges} ranges of 65536 from {first_id}: host.toml tenants.ranges)"
    )]
    PoolExhausted { name: String, first_id: u32, ranges: u32 },
    #[error("--volume {spec:?}: {reason}")]
    Volume { spec: String, reason: String },
    #[error("--publish {spec:?}: is not HOST_PORT:CONTAINER_PORT[/tcp|/udp]")]
    Publish { spec: String },
    #[error("network: every address of {subnet} is taken (host.toml network.subnet)")]
    SubnetFull { subnet: String },
    #[error("--ip {ip}: {reason}")]
    Ip { ip: std::net::Ipv4Addr, reason: String },
    #[error("network: {plugin} {command}: {message}")]
    Network { plugin: String, command: String, message: String },
    #[error("{path}: {message}")]
    Disk { path: PathBuf, message: String },
    #[error("tenant {name}: has no disk limit to change (made with a plan without disk.limit and no --disk)")]
    NoDisk { name: String },
    #[error("--disk {size}: below the {used} tenant {name} uses")]
    DiskBelowUse { name: String, size: warren_config::Size, used: warren_config::Size },
    #[error("tenant {name}: its disk shrinks only while it is stopped (ext4 shrinks offline)")]
    DiskShrinkWhileRunning { name: String },
    #[error(
        "tenant {name}: its disk grows only while it is stopped on this host (ext4's online resize needs CAP_SYS_RESOURCE)"
    )]
    DiskGrowWhileRunning { name: String },
    #[error("--seccomp {path}: {message}")]
    Seccomp { path: PathBuf, message: String },
    #[error("tenant {name}: {message}")]
    Supervisor { name: String, message: String },
    #[error("tenant {name}: is not running under its supervisor")]
    NotRunning { name: String },
    #[error(
        "tenant {name}: its id range {ids} is not one of this host's pool ({ranges} ranges of 65536 from {first_id}: host.toml tenants.ranges)"
    )]
    RangeOutsidePool { name: String, ids: u32, first_id: u32, ranges: u32 },
    #[error("tenant {name}: its id range {ids} is tenant {by}'s here")]
    RangeTaken { name: String, ids: u32, by: String },
    #[error(transparent)]
    Migrate(Box<crate::migrate::MigrateError>),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Record { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TenantError + '_ {
    move |source| TenantError::Io { path: path.to_path_buf(), source }
}

/// When the supervisor starts a tenant again after its init ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Never,
    OnFailure,
    Always,
}

/// A host path bind-mounted into the tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

impl Volume {
    /// `HOST:CONTAINER[:ro|:rw]`, both absolute, the host path existing.
    pub fn parse(spec: &str) -> Result<Volume, TenantError> {
        let bad = |reason: &str| TenantError::Volume { spec: spec.to_string(), reason: reason.to_string() };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, container, read_only) = match parts.as_slice() {
            [h, c] => (h, c, false),
            [h, c, "ro"] => (h, c, true),
            [h, c, "rw"] => (h, c, false),
            _ => return Err(bad("is not HOST:CONTAINER[:ro|:rw]")),
        };
        let (host, container) = (PathBuf::from(host), PathBuf::from(container));
        if !host.is_absolute() || !container.is_absolute() {
            return Err(bad("both paths must be absolute"));
        }
        if container.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(bad("the container path must not contain .."));
        }
        if !host.exists() {
            return Err(bad("the host path does not exist"));
        }
        Ok(Volume { host, container, read_only })
    }
}

/// A tenant as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub image: String,
    pub plan: String,
    pub hostname: String,
    pub volumes: Vec<Volume>,
    pub restart: Restart,
    /// The first host id of its range: its root is this id on the host.
    pub ids: u32,
    /// The size of its writable layer's disk in bytes (`disk`), None: not limited.
    #[serde(default)]
    pub disk: Option<u64>,
    /// On the host bridge (`network.json` in its dir), with this address once it has one.
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Its interface's MAC address, kept across restarts once it has one.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub publish: Vec<net::Publish>,
    /// Its seccomp profile: "default", "unconfined" or the file it was read from.
    #[serde(default = "default_profile_name")]
    pub seccomp: String,
    /// Whether it should be running: set by start and stop, read by `boot` after a reboot.
    pub want_running: bool,
    /// Seconds since the epoch.
    pub created: u64,
}

/// What `create` is asked for.
pub struct NewTenant {
    pub name: String,
    pub image: String,
    pub plan: String,
    pub hostname: Option<String>,
    pub volumes: Vec<Volume>,
    pub restart: Restart,
    /// Replaces the image's command when not empty.
    pub args: Vec<String>,
    /// The disk limit of its writable layer (the plan's `disk.limit`).
    pub disk: Option<u64>,
    /// The host's tenant network, None: only a loopback interface.
    pub network: Option<warren_config::TenantNetwork>,
    pub ip: Option<std::net::Ipv4Addr>,
    pub publish: Vec<net::Publish>,
    pub seccomp: SeccompProfile,
}

/// The seccomp profile a tenant is made with.
#[derive(Clone, Debug)]
pub enum SeccompProfile {
    /// `TENANT_SECCOMP`: Docker's default semantics.
    Default,
    Unconfined,
    /// An OCI `linux.seccomp` read from a file (already checked to compile).
    File {
        path: PathBuf,
        profile: Value,
    },
}

impl SeccompProfile {
    /// "default", "unconfined", or the path of a file holding an OCI `linux.seccomp`, which
    /// must compile here: a bad profile is refused at create, not at each start.
    pub fn from_arg(arg: &str) -> Result<SeccompProfile, TenantError> {
        match arg {
            "default" => return Ok(SeccompProfile::Default),
            "unconfined" => return Ok(SeccompProfile::Unconfined),
            _ => {}
        }
        let path = std::path::absolute(arg).map_err(io_err(Path::new(arg)))?;
        let bad = |message: String| TenantError::Seccomp { path: path.clone(), message };
        let text = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let profile: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let spec: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(profile.clone()).map_err(|e| bad(e.to_string()))?;
        crate::seccomp::compile(&spec).map_err(|e| bad(e.to_string()))?;
        Ok(SeccompProfile::File { path, profile })
    }

    fn name(&self) -> String {
        match self {
            SeccompProfile::Default => default_profile_name(),
            SeccompProfile::Unconfined => "unconfined".to_string(),
            SeccompProfile::File { path, .. } => path.display().to_string(),
        }
    }

    fn spec(&self) -> Option<Value> {
        match self {
            SeccompProfile::Default => {
                Some(serde_json::from_str(warren_config::TENANT_SECCOMP).expect("the built-in profile parses"))
            }
            SeccompProfile::Unconfined => None,
            SeccompProfile::File { profile, .. } => Some(profile.clone()),
        }
    }
}

fn default_profile_name() -> String {
    "default".to_string()
}

/// Tenant names are container ids, host names and file names at once: the strictest of them.
pub fn validate_name(name: &str) -> Result<(), TenantError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(TenantError::Name { name: name.to_string() })
    }
}

/// The tenants of one store.
pub struct Tenants {
    dir: PathBuf,
}

/// The registry's lock: held while a tenant is made or removed, so that two never get one range.
pub struct RegistryLock(#[allow(dead_code)] Flock<File>);

impl Tenants {
    pub fn open(store: &Store) -> Result<Tenants, TenantError> {
        // A tenant's root must reach its mount point `STORE/tenants/NAME/root` through dirs
        // the host owns: the store becomes traversable (0711), and so everything else in it
        // is made private first (the layers hold the images' set-id files).
        for sub in ["tmp", "layers", "blobs", "images", "bundles"] {
            let p = store.root().join(sub);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&p))?;
        }
        let root = store.root();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).map_err(io_err(root))?;
        let dir = store.root().join("tenants");
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(&dir).map_err(io_err(&dir))?;
        Ok(Tenants { dir })
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.dir(name).join("bundle")
    }
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }
    /// The CNI plugin list of a networked tenant.
    /// Where its supervisor serves its console.
    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.sock")
    }

    /// Whether its init runs on a terminal (tenants made before consoles do not).
    pub fn has_terminal(&self, name: &str) -> Result<bool, TenantError> {
        let path = self.bundle(name).join("config.json");
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let cfg: Value = serde_json::from_slice(&text).map_err(|source| TenantError::Record { path, source })?;
        Ok(cfg["process"]["terminal"] == true)
    }

    pub fn network_list(&self, name: &str) -> PathBuf {
        self.dir(name).join("network.json")
    }

    /// The last ADD's result, until its DEL.
    pub fn network_added(&self, name: &str) -> PathBuf {
        self.dir(name).join("net.json")
    }

    fn disk_image(&self, name: &str) -> PathBuf {
        self.dir(name).join("disk.img")
    }

    /// Mounts the tenant's disk on its bundle dir unless it is (after a reboot, before a start).
    pub fn mount_disk(&self, t: &Tenant) -> Result<(), TenantError> {
        let b = self.bundle(&t.name);
        if t.disk.is_none() || disk::is_mounted(&b) {
            return Ok(());
        }
        disk::mount_on(&self.disk_image(&t.name), &b)?;
        self.throttle_disk(&t.name)
    }

    /// The plan's I/O limits also on the tenant's loop device: what it writes goes through
    /// that device first, whose number may change at each mount (after a reboot).
    fn throttle_disk(&self, name: &str) -> Result<(), TenantError> {
        use std::os::unix::fs::MetadataExt;
        let b = self.bundle(name);
        let dev = std::fs::metadata(&b).map_err(io_err(&b))?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let path = b.join("config.json");
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let mut cfg: Value =
            serde_json::from_slice(&text).map_err(|source| TenantError::Record { path: path.clone(), source })?;
        if disk::retarget_throttles(&mut cfg["linux"]["resources"]["blockIO"], major, minor) {
            let text = serde_json::to_vec_pretty(&cfg).expect("a config serializes");
            crate::atomic_file::write_durable(&path, &text, 0o600).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Bytes used on its disk and the disk's size, while mounted.
    pub fn disk_usage(&self, t: &Tenant) -> Option<(u64, u64)> {
        let b = self.bundle(&t.name);
        (t.disk.is_some() && disk::is_mounted(&b)).then(|| disk::usage(&b).ok()).flatten()
    }

    /// Sets the size of `name`'s disk. While it is stopped: checked, resized and mounted
    /// again. While it runs: grown in place, where the host allows ext4's online resize
    /// (CAP_SYS_RESOURCE); a shrink waits for a stop (ext4 shrinks offline only). Never below
    /// what it uses. The record follows once the disk has.
    pub fn resize_disk(&self, rt: &Runtime, name: &str, size: u64) -> Result<(), TenantError> {
        let mut t = self.get(name)?;
        let Some(current) = t.disk else { return Err(TenantError::NoDisk { name: name.to_string() }) };
        if size == current {
            return Ok(());
        }
        self.mount_disk(&t)?;
        let (b, image) = (self.bundle(name), self.disk_image(name));
        let (used, _) = disk::usage(&b).map_err(io_err(&b))?;
        if size <= used {
            let (size, used) = (warren_config::Size::from_bytes(size), warren_config::Size::from_bytes(used));
            return Err(TenantError::DiskBelowUse { name: name.to_string(), size, used });
        }
        let name = name.to_string();
        if rt.state(&name).is_ok() || supervise::is_supervised(self, &name)? {
            if size < current {
                return Err(TenantError::DiskShrinkWhileRunning { name });
            }
            if !caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE).unwrap_or(false) {
                return Err(TenantError::DiskGrowWhileRunning { name });
            }
            disk::grow(&image, &b, size)?;
        } else {
            disk::unmount(&b)?;
            let resized = disk::resize_offline(&image, current, size);
            // Mounted again whether or not it was resized: its files stay where they were.
            self.mount_disk(&t)?;
            resized?;
        }
        t.disk = Some(size);
        self.save(&t)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("tenant.json")
    }

    pub fn lock(&self) -> Result<RegistryLock, TenantError> {
        let path = self.dir.join(".lock");
        let f = File::options().create(true).append(true).open(&path).map_err(io_err(&path))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map(RegistryLock)
            .map_err(|(_, e)| TenantError::Io { path, source: e.into() })
    }

    pub fn get(&self, name: &str) -> Result<Tenant, TenantError> {
        validate_name(name)?;
        let path = self.record_path(name);
        let text = match std::fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TenantError::NotFound { name: name.to_string() })
            }
            r => r.map_err(io_err(&path))?,
        };
        serde_json::from_slice(&text).map_err(|source| TenantError::Record { path, source })
    }

    pub fn save(&self, t: &Tenant) -> Result<(), TenantError> {
        let path = self.record_path(&t.name);
        let text = serde_json::to_vec_pretty(t).expect("a tenant serializes");
        crate::atomic_file::write_durable(&path, &text, 0o600).map_err(io_err(&path))
    }

    /// Every tenant with a record, by name.
    pub fn list(&self) -> Result<Vec<Tenant>, TenantError> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match self.get(&name) {
                Ok(t) => out.push(t),
                // A directory without a record is a create that was cut short: no tenant.
                Err(TenantError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Records the tenant, then makes its bundle: on any error nothing of it is left.
    /// `base` is the runtime's default config with the plan's resources in it.
    pub fn create(&self, store: &Store, new: &NewTenant, base: Value, pool: IdPool) -> Result<Tenant, TenantError> {
        validate_name(&new.name)?;
        let _lock = self.lock()?;
        let dir = self.dir(&new.name);
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(TenantError::Exists { name: new.name.clone() })
            }
            r => r.map_err(io_err(&dir))?,
        }
        let made = self.make(store, new, base, pool);
        if made.is_err() {
            let _ = bundle::remove(store, &self.bundle(&new.name));
            let _ = disk::unmount(&self.bundle(&new.name));
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    fn make(&self, store: &Store, new: &NewTenant, base: Value, pool: IdPool) -> Result<Tenant, TenantError> {
        let others = self.list()?;
        let ip = match &new.network {
            Some(net) => Some(address_for(net, new.ip, &others)?),
            None => None,
        };
        let taken: Vec<u32> = others.iter().map(|t| t.ids).collect();
        let ids = ids::pick(pool, &taken).ok_or_else(|| TenantError::PoolExhausted {
            name: new.name.clone(),
            first_id: pool.first_id,
            ranges: pool.ranges,
        })?;
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tenant = Tenant {
            name: new.name.clone(),
            image: new.image.clone(),
            plan: new.plan.clone(),
            hostname: new.hostname.clone().unwrap_or_else(|| new.name.clone()),
            volumes: new.volumes.clone(),
            restart: new.restart,
            disk: new.disk,
            network: new.network.is_some(),
            ip,
            mac: None,
            publish: new.publish.clone(),
            seccomp: new.seccomp.name(),
            ids,
            want_running: false,
            created,
        };
        // The record first: it holds the id range while the rest is made.
        self.save(&tenant)?;
        if let (Some(net), Some(ip)) = (&new.network, ip) {
            let list = net::conflist(net, ip, !new.publish.is_empty());
            let path = self.network_list(&new.name);
            let text = serde_json::to_vec_pretty(&list).expect("a conflist serializes");
            crate::atomic_file::write_durable(&path, &text, 0o600).map_err(io_err(&path))?;
        }
        let root = self.dir(&new.name).join("root");
        std::fs::DirBuilder::new().mode(0o755).create(&root).map_err(io_err(&root))?;
        let opts = BundleOptions {
            image: new.image.clone(),
            copy: false,
            mount_in_container: true,
            args: new.args.clone(),
            terminal: false,
            read_only: false,
            volumes: Volumes::Tmpfs,
        };
        if let Some(size) = new.disk {
            self.make_disk(&new.name, size)?;
        }
        let dir = bundle::create(store, &self.bundle(&new.name), base, &opts)?;
        let upper = dir.join("upper");
        std::os::unix::fs::chown(&upper, Some(ids), Some(ids)).map_err(io_err(&upper))?;
        self.write_config(&tenant, &dir, &root, new.seccomp.spec())?;
        if new.disk.is_some() {
            self.throttle_disk(&new.name)?;
        }
        Ok(tenant)
    }

    /// Makes the tenant's disk of `size` bytes and mounts it on its (new, empty) bundle dir.
    fn make_disk(&self, name: &str, size: u64) -> Result<(), TenantError> {
        let (b, image) = (self.bundle(name), self.disk_image(name));
        std::fs::DirBuilder::new().mode(0o700).create(&b).map_err(io_err(&b))?;
        disk::make(&image, size)?;
        disk::mount_on(&image, &b)?;
        // The bundle takes an empty directory.
        let lost = b.join("lost+found");
        std::fs::remove_dir(&lost).map_err(io_err(&lost))?;
        // Its root dir covers the 0700 bundle dir: private as that was.
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&b))
    }

    /// The bundle's config made a tenant's: its own user namespace on its range, the lower
    /// layers idmapped, the overlay attached on `root`, its host name and volumes.
    fn write_config(&self, t: &Tenant, dir: &Path, root: &Path, seccomp: Option<Value>) -> Result<(), TenantError> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let mut cfg: Value =
            serde_json::from_slice(&text).map_err(|source| TenantError::Record { path: path.clone(), source })?;
        tenant_config(&mut cfg, t, root);
        if let Some(profile) = seccomp {
            cfg["linux"]["seccomp"] = profile;
        }
        let text = serde_json::to_vec_pretty(&cfg).expect("a config serializes");
        crate::atomic_file::write_durable(&path, &text, 0o600).map_err(io_err(&path))
    }

    /// Records that it should not run, then stops it (see `supervise::stop`).
    pub fn stop(&self, rt: &Runtime, name: &str, timeout: std::time::Duration) -> Result<(), TenantError> {
        let mut t = self.get(name)?;
        t.want_running = false;
        self.save(&t)?;
        supervise::stop(self, rt, name, timeout)
    }

    /// Stops it (see `stop`), removes its bundle and then its record, which returns
    /// its id range to the pool. A destroy cut short leaves the record: run it again.
    pub fn destroy(
        &self,
        store: &Store,
        rt: &Runtime,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<(), TenantError> {
        self.stop(rt, name, timeout)?;
        supervise::release_network(self, name, "")?;
        let _lock = self.lock()?;
        let b = self.bundle(name);
        if b.exists() {
            match bundle::remove(store, &b) {
                Err(BundleError::NotOurs { .. }) => {}
                r => r?,
            }
        }
        self.remove_files(name)
    }

    /// Unmounts its disk and removes its dir, the record last; under the registry lock, its
    /// container and bundle gone.
    fn remove_files(&self, name: &str) -> Result<(), TenantError> {
        let masquerade = self.masquerade_of(name);
        let b = self.bundle(name);
        disk::unmount(&b)?;
        let dir = self.dir(name);
        for entry in [
            "root",
            "bundle",
            "disk.img",
            "network.json",
            "net.json",
            "console.log",
            "console.sock",
            "status.json",
            "supervisor.lock",
            "supervisor.log",
        ] {
            let p = dir.join(entry);
            let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            match gone {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                _ => {}
            }
        }
        let record = self.record_path(name);
        std::fs::remove_file(&record).map_err(io_err(&record))?;
        std::fs::remove_dir(&dir).map_err(io_err(&dir))?;
        // The subnet's masquerade rule goes with the last tenant that used it.
        if let Some(subnet) = masquerade {
            let others = self.list()?;
            if !others.iter().any(|t| self.masquerade_of(&t.name).as_deref() == Some(&subnet)) {
                net::drop_masquerade(&subnet)?;
            }
        }
        Ok(())
    }

    /// The subnet `name`'s network list masquerades, if it is on the tenant network.
    fn masquerade_of(&self, name: &str) -> Option<String> {
        let text = std::fs::read(self.network_list(name)).ok()?;
        let list: Value = serde_json::from_slice(&text).ok()?;
        net::masquerade_of(&list).map(str::to_string)
    }
}

/// The tenant's address: the one asked for, checked, else the first free one.
fn address_for(
    net: &warren_config::TenantNetwork,
    ip: Option<std::net::Ipv4Addr>,
    others: &[Tenant],
) -> Result<std::net::Ipv4Addr, TenantError> {
    check_ip(net, ip, others)?;
    if let Some(ip) = ip {
        return Ok(ip);
    }
    let taken = others.iter().filter_map(|t| t.ip).collect();
    net::free_address(net, &taken).ok_or_else(|| TenantError::SubnetFull { subnet: net.subnet_text() })
}

/// A requested address must be a host address of the subnet and no other tenant's.
fn check_ip(
    net: &warren_config::TenantNetwork,
    ip: Option<std::net::Ipv4Addr>,
    others: &[Tenant],
) -> Result<(), TenantError> {
    let Some(ip) = ip else { return Ok(()) };
    if !net.contains(ip) {
        return Err(TenantError::Ip { ip, reason: format!("is not a host address of {}", net.subnet_text()) });
    }
    let gateway = std::net::Ipv4Addr::from(u32::from(net.subnet.0) + 1);
    if ip == gateway {
        return Err(TenantError::Ip { ip, reason: "is the bridge's own address".into() });
    }
    match others.iter().find(|t| t.ip == Some(ip)) {
        Some(t) => Err(TenantError::Ip { ip, reason: format!("is tenant {}'s", t.name) }),
        None => Ok(()),
    }
}

/// Docker's default capability set: what software written for containers expects to have.
/// A tenant holds them only over its own namespaces (its root is unprivileged on the host).
pub const TENANT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn tenant_config(cfg: &mut Value, t: &Tenant, root: &Path) {
    let caps = serde_json::json!(TENANT_CAPS);
    cfg["process"]["capabilities"] = serde_json::json!({ "bounding": caps, "effective": caps, "permitted": caps });
    // Its console: the supervisor holds the pty's master (`console`).
    cfg["process"]["terminal"] = Value::Bool(true);
    cfg["root"] = serde_json::json!({ "path": root, "readonly": false });
    cfg["hostname"] = Value::String(t.hostname.clone());
    cfg["linux"]["uidMappings"] = ids::mapping(t.ids);
    cfg["linux"]["gidMappings"] = ids::mapping(t.ids);
    if let Some(ns) = cfg["linux"]["namespaces"].as_array_mut() {
        if !ns.iter().any(|n| n["type"] == "user") {
            ns.push(serde_json::json!({ "type": "user" }));
        }
    }
    let key = warren_images::bundle::OVERLAY_ANNOTATION;
    if let Some(v) = cfg["annotations"][key].as_str() {
        let idmapped = format!("{v},idmap");
        cfg["annotations"][key] = Value::String(idmapped);
    }
    if let Some(mounts) = cfg["mounts"].as_array_mut() {
        for v in &t.volumes {
            let mode = if v.read_only { "ro" } else { "rw" };
            mounts.push(serde_json::json!({
                "destination": v.container, "type": "bind", "source": v.host,
                "options": ["rbind", "nosuid", "nodev", mode],
            }));
        }
    }
}
