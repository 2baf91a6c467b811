//! A tenant that moves to another host (`tenant migrate`).
//!
//! The source takes the running container off the tenant network first: CNI's veth has its
//! peer on this host's bridge, which CRIU cannot take along. It then moves the container as
//! `migrate send` moves any, with the tenant's record in the stream's hello. The target claims
//! the record: its name, id range and address must be free there, since the restored user
//! namespace keeps its id mapping. It makes the tenant's disk and bundle, restores the
//! container, puts it on its own tenant network with the same address and MAC, and hands it
//! with its new pty master to a supervisor of its own. On any failure before the target has
//! it restored, the tenant runs on the source again, its network back; the target removes
//! everything it made for it.

use std::os::unix::fs::DirBuilderExt;

use oci_spec::runtime::Spec;
use serde_json::Value;
use warren_config::{IdPool, TenantNetwork, IDS_PER_TENANT};
use warren_images::store::Store;

use super::{check_ip, io_err, net, supervise, Tenant, TenantError, Tenants};
use crate::container::Runtime;
use crate::migrate::{SendOptions, SendReport};
use crate::state::Status;

impl Tenants {
    /// Moves running tenant `name` to the target of `opts`. When this returns Ok, it runs
    /// there and is gone here (its record, disk and address too). When it returns an error, it
    /// runs here again on the network, unless the error says it moved (then it is gone here).
    pub fn migrate(
        &self,
        store: &Store,
        rt: &Runtime,
        name: &str,
        mut opts: SendOptions,
    ) -> Result<SendReport, TenantError> {
        let mut t = self.get(name)?;
        let view = rt.state(name)?;
        if view.status != Status::Running || !supervise::is_supervised(self, name)? {
            return Err(TenantError::NotRunning { name: name.to_string() });
        }
        let netns = format!("/proc/{}/ns/net", view.pid);
        // Its supervisor must not start it again when the copy here goes.
        t.want_running = false;
        self.save(&t)?;
        opts.tenant = Some(Tenant { want_running: true, ..t.clone() });
        let moved = supervise::release_network(self, name, &netns)
            .and_then(|()| rt.migrate_send(name, &opts).map_err(|e| TenantError::Migrate(Box::new(e))));
        if rt.state(name).is_ok() {
            // Still here (rolled back, or never frozen): back on the network, wanted again.
            let back = supervise::add_network(self, name, &netns);
            t.want_running = true;
            self.save(&t)?;
            back?;
            return Err(moved.err().unwrap_or(TenantError::NotRunning { name: name.to_string() }));
        }
        // The copy here is gone: so goes the tenant, whether or not the target confirmed.
        let removed = self.destroy(store, rt, name, std::time::Duration::from_secs(10));
        let report = moved?;
        removed?;
        Ok(report)
    }

    /// The target's first step, before the source freezes the tenant: takes the record of a
    /// tenant coming here if its name, id range and address are free and its range is one of
    /// this host's pool, and makes its disk (empty, mounted on its bundle dir). It is not
    /// wanted running until its container runs here ([`Tenants::moved_in`]). All or nothing.
    pub fn claim_moved(&self, t: &Tenant, network: &TenantNetwork, pool: IdPool) -> Result<(), TenantError> {
        super::validate_name(&t.name)?;
        let _lock = self.lock()?;
        let others = self.list()?;
        if others.iter().any(|o| o.name == t.name) || self.dir(&t.name).exists() {
            return Err(TenantError::Exists { name: t.name.clone() });
        }
        check_range(&t.name, t.ids, pool, &others)?;
        if t.network {
            check_ip(network, t.ip, &others)?;
        }
        std::fs::DirBuilder::new().mode(0o711).create(self.dir(&t.name)).map_err(io_err(&self.dir(&t.name)))?;
        let made = self.write_moved_record(t, network).and_then(|()| match t.disk {
            Some(size) => self.make_disk(&t.name, size),
            None => Ok(()),
        });
        if made.is_err() {
            let _ = self.remove_files(&t.name);
        }
        made
    }

    fn write_moved_record(&self, t: &Tenant, network: &TenantNetwork) -> Result<(), TenantError> {
        self.save(&Tenant { want_running: false, ..t.clone() })?;
        if let (true, Some(ip)) = (t.network, t.ip) {
            let list = net::conflist(network, ip, !t.publish.is_empty());
            let path = self.network_list(&t.name);
            let text = serde_json::to_vec_pretty(&list).expect("a conflist serializes");
            crate::atomic_file::write_durable(&path, &text, 0o600).map_err(io_err(&path))?;
        }
        let root = self.dir(&t.name).join("root");
        std::fs::DirBuilder::new().mode(0o755).create(&root).map_err(io_err(&root))
    }

    /// The received bundle made this host's tenant bundle: the overlay attached on the
    /// tenant's root dir with its lowers idmapped, its upper dir owned by the tenant's root,
    /// and the plan's I/O limits on this host's disk device.
    pub fn finish_moved_bundle(&self, t: &Tenant) -> Result<(), TenantError> {
        let dir = self.bundle(&t.name);
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let mut cfg: Value =
            serde_json::from_slice(&text).map_err(|source| TenantError::Record { path: path.clone(), source })?;
        cfg["root"] = serde_json::json!({ "path": self.dir(&t.name).join("root"), "readonly": false });
        let key = warren_images::bundle::OVERLAY_ANNOTATION;
        if let Some(v) = cfg["annotations"][key].as_str().filter(|v| !v.split(',').any(|o| o == "idmap")) {
            cfg["annotations"][key] = Value::String(format!("{v},idmap"));
        }
        let text = serde_json::to_vec_pretty(&cfg).expect("a config serializes");
        crate::atomic_file::write_durable(&path, &text, 0o600).map_err(io_err(&path))?;
        let upper = dir.join("upper");
        std::os::unix::fs::chown(&upper, Some(t.ids), Some(t.ids)).map_err(io_err(&upper))?;
        if t.disk.is_some() {
            self.throttle_disk(&t.name)?;
        }
        Ok(())
    }

    /// Puts its restored container (init `pid`) on this host's tenant network.
    pub fn attach_moved(&self, name: &str, pid: i32) -> Result<(), TenantError> {
        supervise::add_network(self, name, &format!("/proc/{pid}/ns/net"))
    }

    /// Its container runs here now: wanted running, as it was on the source.
    pub fn moved_in(&self, name: &str) -> Result<(), TenantError> {
        let mut t = self.get(name)?;
        t.want_running = true;
        self.save(&t)
    }

    /// Undoes a move here, its container and bundle gone: its network, disk and record.
    pub fn drop_moved(&self, name: &str) -> Result<(), TenantError> {
        supervise::release_network(self, name, "")?;
        let _lock = self.lock()?;
        self.remove_files(name)
    }
}

/// A moving tenant's id range must be one of this host's pool and no other tenant's.
fn check_range(name: &str, ids: u32, pool: IdPool, others: &[Tenant]) -> Result<(), TenantError> {
    let offset = ids.checked_sub(pool.first_id);
    if !offset.is_some_and(|o| o % IDS_PER_TENANT == 0 && o / IDS_PER_TENANT < pool.ranges) {
        let (first_id, ranges) = (pool.first_id, pool.ranges);
        return Err(TenantError::RangeOutsidePool { name: name.to_string(), ids, first_id, ranges });
    }
    match others.iter().find(|o| o.ids == ids) {
        Some(o) => Err(TenantError::RangeTaken { name: name.to_string(), ids, by: o.name.clone() }),
        None => Ok(()),
    }
}

/// Whether a received container's config is a tenant's of `t`: its user namespace maps the
/// tenant's range (the restored one keeps the source's mapping).
pub fn config_matches(t: &Tenant, spec: &Spec) -> bool {
    let root = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.into_iter().flatten().any(|m| m.container_id() == 0 && m.host_id() == t.ids && m.size() == IDS_PER_TENANT)
    };
    spec.linux().as_ref().is_some_and(|l| root(l.uid_mappings().as_ref()) && root(l.gid_mappings().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, ids: u32) -> Tenant {
        Tenant {
            name: name.into(),
            image: "bb:1".into(),
            plan: "nano".into(),
            hostname: name.into(),
            volumes: vec![],
            restart: super::super::Restart::OnFailure,
            ids,
            disk: None,
            network: false,
            ip: None,
            mac: None,
            publish: vec![],
            seccomp: "default".into(),
            want_running: true,
            created: 0,
        }
    }

    #[test]
    fn a_moving_range_must_be_a_free_range_of_this_pool() {
        let pool = IdPool { first_id: 200_000, ranges: 3 };
        assert!(check_range("a", 265_536, pool, &[]).is_ok());
        let taken = check_range("a", 265_536, pool, &[tenant("b", 265_536)]).unwrap_err().to_string();
        assert!(taken.contains("tenant b"), "{taken}");
        for ids in [100_000, 200_001, 200_000 + 3 * 65_536] {
            let e = check_range("a", ids, pool, &[]).unwrap_err().to_string();
            assert!(e.contains("tenants.ranges"), "{ids}: {e}");
        }
    }

    #[test]
    fn a_config_matches_the_tenant_whose_range_it_maps() {
        let t = tenant("a", 200_000);
        let maps = super::super::ids::mapping(200_000);
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": { "path": "rootfs" },
            "linux": { "uidMappings": maps, "gidMappings": maps },
        }))
        .expect("a spec");
        assert!(config_matches(&t, &spec));
        assert!(!config_matches(&tenant("a", 265_536), &spec));
    }
}
