//! Which `warren` binary and state root a container uses: runc's runtime options
//! (`BinaryName`, `Root`) when containerd sends them, or the same two keys in the file named by
//! generic runtime options (`ConfigPath`: what CRI sends for a runtime that is not runc, and
//! ctr's `--runtime-config-path`), lines of `Key = "value"`; else the `warren` beside the shim's
//! own executable (or on PATH) and /run/containerd/warren. The state root gets the namespace
//! appended, as the runc shim does. The choice is saved in the bundle so that a later
//! `shim delete` (after the shim was lost) finds the same binary and state.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};
use containerd_shim::protos::shim::oci::Options as RuncOptions;

use crate::error::{Result, ShimError};
use crate::tasks::RuntimeConfig;

pub const DEFAULT_ROOT: &str = "/run/containerd/warren";
const SAVED: &str = "warren-shim.json";

pub fn from_options(options: Option<&Any>, namespace: &str) -> Result<RuntimeConfig> {
    let mut binary = None;
    let mut root = None;
    let bad = |e: &dyn std::fmt::Display| ShimError::BadRequest { field: "options", reason: e.to_string() };
    match options {
        Some(any) if any.type_url.ends_with("containerd.runc.v1.Options") => {
            let opts = RuncOptions::parse_from_bytes(&any.value).map_err(|e| bad(&e))?;
            binary = (!opts.binary_name.is_empty()).then(|| PathBuf::from(&opts.binary_name));
            root = (!opts.root.is_empty()).then(|| PathBuf::from(&opts.root));
        }
        Some(any) if any.type_url.ends_with("runtimeoptions.v1.Options") => {
            if let Some(path) = config_path(&any.value).map_err(|e| bad(&e))? {
                let text = std::fs::read_to_string(&path).map_err(ShimError::io(&path))?;
                binary = config_value(&text, "BinaryName").map(PathBuf::from);
                root = config_value(&text, "Root").map(PathBuf::from);
            }
        }
        _ => {}
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

/// Field 2 (`config_path`) of containerd's runtimeoptions.v1.Options, which the protos crate
/// does not carry.
fn config_path(value: &[u8]) -> containerd_shim::protos::protobuf::Result<Option<PathBuf>> {
    let mut input = CodedInputStream::from_bytes(value);
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        let (field, wire_type) = (tag >> 3, WireType::new(tag & 7));
        match (field, wire_type) {
            (2, Some(WireType::LengthDelimited)) => {
                let path = input.read_string()?;
                return Ok((!path.is_empty()).then(|| PathBuf::from(path)));
            }
            (_, Some(w)) => input.skip_field(w)?,
            (_, None) => return Ok(None),
        }
    }
    Ok(None)
}

/// `key = "value"` in the config file (a TOML subset: one string per line).
fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
        (k.trim() == key && !v.is_empty()).then(|| v.to_string())
    })
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
    let text = serde_json::to_vec(config).map_err(|source| ShimError::Json { path: path.clone(), source })?;
    std::fs::write(&path, text).map_err(ShimError::io(path))
}

pub fn load(bundle: &Path) -> Result<RuntimeConfig> {
    let path = bundle.join(SAVED);
    let text = std::fs::read(&path).map_err(ShimError::io(&path))?;
    serde_json::from_slice(&text)
        .map_err(|e| ShimError::BadRequest { field: "warren-shim.json", reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::CodedOutputStream;

    #[test]
    fn config_file_keys() {
        let text = "# shim\n[options]\nBinaryName = \"/opt/warren\"\n Root=\"/run/w\"\nOther = 3\n";
        assert_eq!(config_value(text, "BinaryName").as_deref(), Some("/opt/warren"));
        assert_eq!(config_value(text, "Root").as_deref(), Some("/run/w"));
        assert_eq!(config_value(text, "Other"), None);
        assert_eq!(config_value(text, "Missing"), None);
    }

    #[test]
    fn runtimeoptions_config_path() {
        let mut value = Vec::new();
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(1, "runtimeoptions.v1.Options").unwrap();
        out.write_string(2, "/etc/warren/shim.toml").unwrap();
        out.flush().unwrap();
        drop(out);
        assert_eq!(config_path(&value).unwrap(), Some(PathBuf::from("/etc/warren/shim.toml")));
        assert_eq!(config_path(&[]).unwrap(), None);
    }
}
