//! Hosting plans and host defaults for Warren: TOML files (format: config/README.md) that
//! become a container's OCI `linux.resources`, so that an operator never writes cgroup
//! numbers by hand.
//!
//! ```no_run
//! # fn main() -> Result<(), warren_config::ConfigError> {
//! # let mut spec = oci_spec::runtime::Spec::default();
//! use warren_config::{apply_plan, Catalog, HostConfig};
//! let catalog = Catalog::discover(None)?; // built-ins + /etc/warren/plans
//! let host = HostConfig::discover(None)?; // /etc/warren/host.toml or built-in
//! let plan = catalog.get("small")?;
//! apply_plan(&mut spec, plan, &host, std::path::Path::new("bundle/rootfs"))?;
//! # Ok(()) }
//! ```

mod catalog;
mod device;
mod error;
mod host;
pub mod mountinfo;
mod plan;
mod resources;
mod toml_file;
mod units;

pub use catalog::{Catalog, DEFAULT_PLANS_DIR, PLANS_DIR_ENV};
pub use device::BlockDevice;
pub use error::ConfigError;
pub use host::{HostConfig, IdPool, TenantNetwork, DEFAULT_HOST_FILE, HOST_FILE_ENV, IDS_PER_TENANT};
pub use plan::{IoLimits, Plan, CPU_PERIOD_US, MIN_DISK, MIN_MEMORY};
pub use resources::{apply_plan, apply_plan_to_annotations, apply_plan_to_resources, MEMORY_MERGE_ANNOTATION};
pub use units::{Rate, Size};

/// The seccomp profile tenants get unless told otherwise (an OCI `linux.seccomp`): Docker's
/// default semantics for a process holding Docker's default capabilities. Format and the
/// reasons behind its rules: config/README.md.
pub const TENANT_SECCOMP: &str = include_str!("../seccomp/tenant.json");
