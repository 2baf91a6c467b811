//! What can be wrong with plans and host defaults: every message is one line that names the
//! file and the field (as the file spells it, e.g. `memory.limit`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io::Error is part of the message, not a `source`: callers that print the error's
    // chain (anyhow's {:#}) would print it twice.
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// Not TOML, a key the format does not have, or a value of the wrong type or unit.
    #[error("{file}: {field}: {message}")]
    Parse { file: String, field: String, message: String },
    #[error("{file}: {field}: missing (required)")]
    Missing { file: String, field: &'static str },
    #[error("{file}: {field}: {value} {reason}")]
    Invalid { file: String, field: &'static str, value: String, reason: String },
    #[error("{}: plan names are lowercase letters, digits, '-' and '_' (starting with a letter or digit)", path.display())]
    PlanName { path: PathBuf },
    #[error("no plan named {name:?} (plans: {known})")]
    NoSuchPlan { name: String, known: String },
    /// An entry of host.toml's io.devices that names no usable block device.
    #[error("{file}: io.devices: {device:?} {reason}")]
    Device { file: String, device: String, reason: String },
}
