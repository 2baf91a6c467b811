//! `docker save` archives: manifest.json lists, per image, the config file
//! (named by its sha256) and the layer tars (checked against the config's
//! diff_ids, as their descriptors carry no digest).

use super::{check_bytes, parse_config, read_small, Compression, Files, FoundImage, LayerBlob, Selector, SourceError};
use crate::digest::Digest;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub fn find(files: Files, sel: &Selector) -> Result<FoundImage, SourceError> {
    let bytes = read_small(&files, "manifest.json", "manifest.json")?;
    let mut entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|source| SourceError::Json { what: "manifest.json".into(), source })?;
    if let Some(r) = &sel.refname {
        entries.retain(|e| e.repo_tags.as_ref().is_some_and(|t| t.contains(r)));
    }
    let entry = match entries.len() {
        1 => entries.pop().expect("one"),
        0 => {
            let (os, arch) = super::host_platform();
            let platform = format!("{os}/{arch}");
            return Err(SourceError::NoManifest {
                what: "manifest.json".into(),
                platform,
                refname: sel.refname.clone(),
            });
        }
        count => {
            let names: Vec<String> =
                entries.iter().map(|e| e.repo_tags.as_ref().map(|t| t.join(" ")).unwrap_or_default()).collect();
            return Err(SourceError::Ambiguous { what: "manifest.json".into(), count, names: names.join(", ") });
        }
    };
    let config_bytes = read_small(&files, &entry.config, &entry.config)?;
    let config_digest = Digest::of(&config_bytes);
    check_bytes(&config_bytes, &entry.config, named_digest(&entry.config).as_ref(), None)?;
    let (config, diff_ids) = parse_config(&config_bytes, &entry.config, entry.layers.len())?;
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(path, diff_id)| LayerBlob {
            path: path.clone(),
            digest: None,
            size: None,
            compression: Compression::Sniff,
            diff_id,
        })
        .collect();
    let name = sel.refname.clone().or_else(|| entry.repo_tags.as_ref().and_then(|t| t.first().cloned()));
    Ok(FoundImage { files, name, digest: config_digest.clone(), config_bytes, config_digest, config, layers })
}

/// The digest a config's file name states: `HEX.json` or `blobs/sha256/HEX`.
fn named_digest(path: &str) -> Option<Digest> {
    let base = path.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    Digest::parse(&format!("sha256:{hex}"))
}
