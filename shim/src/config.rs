//! Which `warren` binary and state root a container uses: runc's runtime options
//! (`BinaryName`, `Root`) when containerd sends them, else the `warren` beside the shim's own
//! executable (or on PATH) and /run/containerd/warren. The state root gets the namespace
//! appended, as the runc shim does. The choice is saved in the bundle so that a later
//! `shim delete` (after the shim was lost) finds the same binary and state.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::Options as RuncOptions;

use crate::error::{Result, ShimError};
use crate::tasks::RuntimeConfig;

pub const DEFAULT_ROOT: &str = "/run/containerd/warren";
const SAVED: &str = "warren-shim.json";

pub fn from_options(options: Option<&Any>, namespace: &str) -> Result<RuntimeConfig> {
    let mut binary = None;
    let mut root = None;
    if let Some(any) = options.filter(|a| a.type_url.ends_with("containerd.runc.v1.Options")) {
        let opts = RuncOptions::parse_from_bytes(&any.value)
            .map_err(|e| ShimError::BadRequest { field: "options", reason: format!("runc options: {e}") })?;
        binary = (!opts.binary_name.is_empty()).then(|| PathBuf::from(&opts.binary_name));
        root = (!opts.root.is_empty()).then(|| PathBuf::from(&opts.root));
    }
    let binary = match binary {
        Some(b) if b.is_absolute() => b,
        Some(b) => on_path(&b).unwrap_or(b),
        None => default_binary(),
    };
    if !binary.is_file() {
        return Err(ShimError::NoBinary { binary });
    }
    let root = root.unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)).join(namespace);
    Ok(RuntimeConfig { binary, root })
}

/// `warren` beside this executable, else the first on PATH.
fn default_binary() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("warren")));
    match beside {
        Some(b) if b.is_file() => b,
        _ => on_path(Path::new("warren")).unwrap_or_else(|| PathBuf::from("warren")),
    }
}

fn on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

pub fn save(bundle: &Path, config: &RuntimeConfig) -> Result<()> {
    let path = bundle.join(SAVED);
    let text = serde_json::to_vec(config).expect("plain struct");
    std::fs::write(&path, text).map_err(ShimError::io(path))
}

pub fn load(bundle: &Path) -> Result<RuntimeConfig> {
    let path = bundle.join(SAVED);
    let text = std::fs::read(&path).map_err(ShimError::io(&path))?;
    serde_json::from_slice(&text)
        .map_err(|e| ShimError::BadRequest { field: "warren-shim.json", reason: e.to_string() })
}
