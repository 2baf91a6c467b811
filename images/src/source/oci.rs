//! OCI image layouts (directory or `oci-archive` tar): index.json, nested
//! indexes, the manifest for this platform, its config and layers.

use super::{
    digest, parse_config, read_blob, read_small, Compression, Files, FoundImage, LayerBlob, Selector, SourceError,
};
use crate::digest::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd and docker (25+) put the full image name here.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_DEPTH: usize = 4;

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
const CONFIG_TYPES: [&str; 2] =
    ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

fn layer_compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Compression::None
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        _ => return None,
    })
}

/// A manifest descriptor that matched, and the name it carries.
struct Candidate {
    desc: Descriptor,
    name: Option<String>,
}

fn annotation(d: &Descriptor, key: &str) -> Option<String> {
    d.annotations().as_ref()?.get(key).cloned()
}

fn platform_matches(d: &Descriptor) -> bool {
    let (os, arch) = super::host_platform();
    d.platform().as_ref().is_none_or(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
}

pub fn find(files: Files, sel: &Selector) -> Result<FoundImage, SourceError> {
    let bytes = read_small(&files, "index.json", "index.json")?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|source| SourceError::Json { what: "index.json".into(), source })?;
    let mut found = Vec::new();
    collect(&files, &index, "index.json", None, sel, 0, &mut found)?;
    let (os, arch) = super::host_platform();
    let cand = match found.len() {
        1 => found.pop().expect("one"),
        0 => {
            let platform = format!("{os}/{arch}");
            return Err(SourceError::NoManifest { what: "index.json".into(), platform, refname: sel.refname.clone() });
        }
        count => {
            let names: Vec<String> = found.iter().map(|c| c.name.clone().unwrap_or_else(|| "-".into())).collect();
            return Err(SourceError::Ambiguous { what: "index.json".into(), count, names: names.join(", ") });
        }
    };
    load_manifest(files, cand)
}

/// Walks an index (and nested ones) for the manifests `sel` picks.
fn collect(
    files: &Files,
    index: &ImageIndex,
    what: &str,
    inherited: Option<String>,
    sel: &Selector,
    depth: usize,
    out: &mut Vec<Candidate>,
) -> Result<(), SourceError> {
    if depth > MAX_DEPTH {
        return Err(SourceError::TooDeep { what: what.into() });
    }
    for d in index.manifests() {
        let name = annotation(d, CONTAINERD_NAME).or_else(|| annotation(d, REF_NAME)).or_else(|| inherited.clone());
        let short = annotation(d, REF_NAME).or_else(|| inherited.clone());
        let picked = sel.refname.as_ref().is_none_or(|r| name.as_ref() == Some(r) || short.as_ref() == Some(r));
        let media_type = d.media_type().to_string();
        if INDEX_TYPES.contains(&media_type.as_str()) {
            if !picked {
                continue;
            }
            let dg = digest(d.digest().as_ref(), what)?;
            let bytes = read_blob(files, &dg, d.size())?;
            let what = format!("index {dg}");
            let nested: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|source| SourceError::Json { what: what.clone(), source })?;
            collect(files, &nested, &what, name, sel, depth + 1, out)?;
        } else if MANIFEST_TYPES.contains(&media_type.as_str()) {
            if picked && platform_matches(d) {
                out.push(Candidate { desc: d.clone(), name });
            }
        } else if picked {
            return Err(SourceError::UnsupportedMediaType { blob: d.digest().to_string(), media_type });
        }
    }
    Ok(())
}

fn load_manifest(files: Files, cand: Candidate) -> Result<FoundImage, SourceError> {
    let mdigest = digest(cand.desc.digest().as_ref(), "index.json")?;
    let bytes = read_blob(&files, &mdigest, cand.desc.size())?;
    let what = format!("manifest {mdigest}");
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|source| SourceError::Json { what: what.clone(), source })?;
    let cdesc = manifest.config();
    let config_digest = digest(cdesc.digest().as_ref(), &what)?;
    let ctype = cdesc.media_type().to_string();
    if !CONFIG_TYPES.contains(&ctype.as_str()) {
        return Err(SourceError::UnsupportedMediaType { blob: config_digest.to_string(), media_type: ctype });
    }
    let config_bytes = read_blob(&files, &config_digest, cdesc.size())?;
    let (config, diff_ids) = parse_config(&config_bytes, config_digest.as_str(), manifest.layers().len())?;
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let dg: Digest = digest(d.digest().as_ref(), &what)?;
        let media_type = d.media_type().to_string();
        let compression = layer_compression(&media_type)
            .ok_or_else(|| SourceError::UnsupportedMediaType { blob: dg.to_string(), media_type })?;
        let path = format!("blobs/sha256/{}", dg.hex());
        layers.push(LayerBlob { path, digest: Some(dg), size: Some(d.size()), compression, diff_id });
    }
    Ok(FoundImage { files, name: cand.name, digest: mdigest, config_bytes, config_digest, config, layers })
}
