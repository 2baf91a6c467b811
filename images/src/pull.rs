//! `image pull`: an image from an OCI distribution registry (the registry HTTP API v2) into
//! an OCI image layout directory, every blob checked against its digest and size as it
//! streams in; the store then imports that layout as any other (checking it again, sharing
//! the layers it already has). Anonymous pulls, with the bearer-token dance registries ask
//! of anonymous clients; plain HTTP for a registry on localhost or when asked (`insecure`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// The largest manifest or index read into memory.
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image reference {text:?}: {reason}")]
    Reference { text: String, reason: &'static str },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: {reason}")]
    Manifest { url: String, reason: String },
    #[error("{url}: digest {got}, expected {want}")]
    Digest { url: String, want: String, got: String },
    #[error("{url}: {got} bytes, expected {want}")]
    Size { url: String, want: u64, got: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// `[HOST[:PORT]/]NAME[:TAG][@sha256:...]`; without a host, Docker Hub's library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, PullError> {
        let bad = |reason| PullError::Reference { text: text.to_string(), reason };
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).ok_or_else(|| bad("the digest is not sha256:<64 hex>"))?)),
            None => (text, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (h.to_string(), p.to_string()),
            _ => ("registry-1.docker.io".to_string(), rest.to_string()),
        };
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p.to_string(), Some(t.to_string())),
            _ => (path, None),
        };
        let path = if host == "registry-1.docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if path.is_empty() || !path.chars().all(ok) || path.starts_with('/') || path.ends_with('/') {
            return Err(bad("the repository is not lowercase letters, digits, '.', '_', '-' and '/'"));
        }
        let reference = match (digest, tag) {
            (Some(d), _) => d.as_str().to_string(),
            (None, Some(t)) => t,
            (None, None) => "latest".to_string(),
        };
        Ok(Reference { registry: host, repository: path, reference })
    }

    /// The name the store keeps it under: `HOST/REPO:TAG` (or `@DIGEST`).
    pub fn name(&self) -> String {
        let sep = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        format!("{}/{}{sep}{}", self.registry, self.repository, self.reference)
    }
}

/// Bytes of layer blobs received so far, of `total`.
#[derive(Clone, Copy, Debug)]
pub struct PullProgress {
    pub done: u64,
    pub total: u64,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(r: &Reference, insecure: bool) -> Client {
        let host = r.registry.split(':').next().unwrap_or_default();
        let plain = insecure || host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let scheme = if plain { "http" } else { "https" };
        let agent = ureq::AgentBuilder::new().timeout_connect(std::time::Duration::from_secs(10)).build();
        Client { agent, base: format!("{scheme}://{}/v2/{}", r.registry, r.repository), token: None }
    }

    /// GET `path` (under /v2/REPO/), answering one anonymous token challenge.
    fn get(&mut self, path: &str, accept: &str) -> Result<ureq::Response, PullError> {
        let url = format!("{}/{path}", self.base);
        let http = |message: String| PullError::Http { url: url.clone(), message };
        for _ in 0..2 {
            let mut req = self.agent.get(&url).set("Accept", accept);
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if self.token.is_none() => {
                    let challenge = resp.header("www-authenticate").unwrap_or_default().to_string();
                    self.token = Some(self.anonymous_token(&challenge).map_err(http)?);
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(http(format!("HTTP {code}: {}", text.trim().replace('\n', " "))));
                }
                Err(ureq::Error::Transport(t)) => {
                    // Its Display repeats the URL that the error names already.
                    let cause = std::error::Error::source(&t).map(|c| format!(": {c}")).unwrap_or_default();
                    return Err(http(format!("{}{cause}", t.kind())));
                }
            }
        }
        Err(http("unauthorized (only anonymous pulls are supported)".into()))
    }

    fn anonymous_token(&self, challenge: &str) -> Result<String, String> {
        let params = challenge.strip_prefix("Bearer ").ok_or("unauthorized, and no bearer challenge")?;
        let field = |key: &str| {
            params
                .split(',')
                .find_map(|p| p.trim().strip_prefix(&format!("{key}=\""))?.strip_suffix('"').map(String::from))
        };
        let realm = field("realm").ok_or("the challenge names no realm")?;
        let mut req = self.agent.get(&realm);
        for key in ["service", "scope"] {
            if let Some(v) = field(key) {
                req = req.query(key, &v);
            }
        }
        let text = req.call().map_err(|e| e.to_string())?.into_string().map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        body["token"].as_str().or(body["access_token"].as_str()).map(String::from).ok_or("no token".into())
    }

    /// A manifest or index: its bytes (checked against `want` when given) and media type.
    fn manifest(&mut self, reference: &str, want: Option<&Digest>) -> Result<(Vec<u8>, String), PullError> {
        let accept = [INDEX_TYPES, MANIFEST_TYPES].concat().join(", ");
        let resp = self.get(&format!("manifests/{reference}"), &accept)?;
        let url = resp.get_url().to_string();
        let kind = resp.content_type().to_string();
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_MANIFEST)
            .read_to_end(&mut bytes)
            .map_err(|e| PullError::Http { url: url.clone(), message: e.to_string() })?;
        if let Some(want) = want {
            let got = Digest::of(&bytes);
            if &got != want {
                return Err(PullError::Digest { url, want: want.as_str().into(), got: got.as_str().into() });
            }
        }
        Ok((bytes, kind))
    }

    /// Streams blob `digest` into `path`, checking its size and digest; returns its size.
    fn blob(&mut self, digest: &Digest, size: u64, path: &Path, on: &mut dyn FnMut(u64)) -> Result<(), PullError> {
        let resp = self.get(&format!("blobs/{}", digest.as_str()), "*/*")?;
        let url = resp.get_url().to_string();
        let mut reader = resp.into_reader().take(size + 1);
        let io_err = |source| PullError::Io { path: path.to_path_buf(), source };
        let mut file = std::fs::File::create(path).map_err(io_err)?;
        let (mut hasher, mut got, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 16]);
        loop {
            let n = reader.read(&mut buf).map_err(|e| PullError::Http { url: url.clone(), message: e.to_string() })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err)?;
            got += n as u64;
            on(n as u64);
        }
        if got != size {
            return Err(PullError::Size { url, want: size, got });
        }
        let got = Digest::from_hasher(hasher);
        if &got != digest {
            return Err(PullError::Digest { url, want: digest.as_str().into(), got: got.as_str().into() });
        }
        Ok(())
    }
}

/// The registry's name for this machine's architecture.
fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn descriptor(v: &Value, url: &str) -> Result<(Digest, u64, String), PullError> {
    let bad = |reason: &str| PullError::Manifest { url: url.to_string(), reason: reason.to_string() };
    let digest =
        v["digest"].as_str().and_then(Digest::parse).ok_or_else(|| bad("a descriptor without a sha256 digest"))?;
    let size = v["size"].as_u64().ok_or_else(|| bad("a descriptor without a size"))?;
    Ok((digest, size, v["mediaType"].as_str().unwrap_or_default().to_string()))
}

/// Pulls `r` into the OCI layout `dir` (made empty by the caller).
pub fn pull(
    r: &Reference,
    dir: &Path,
    insecure: bool,
    progress: &mut dyn FnMut(PullProgress),
) -> Result<(), PullError> {
    let mut c = Client::new(r, insecure);
    let url = format!("{}/manifests/{}", c.base, r.reference);
    let by_digest = Digest::parse(&r.reference);
    let (mut bytes, mut kind) = c.manifest(&r.reference, by_digest.as_ref())?;
    let bad = |reason: String| PullError::Manifest { url: url.clone(), reason };
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if INDEX_TYPES.contains(&kind.as_str()) || doc["manifests"].is_array() {
        let arch = this_arch();
        let chosen = doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch);
        let chosen = chosen.ok_or_else(|| bad(format!("no linux/{arch} image in the index")))?;
        let (digest, _, _) = descriptor(chosen, &url)?;
        (bytes, kind) = c.manifest(digest.as_str(), Some(&digest))?;
        doc = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    }
    if !MANIFEST_TYPES.contains(&kind.as_str()) && doc["layers"].as_array().is_none() {
        return Err(bad(format!("not an image manifest ({kind})")));
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|source| PullError::Io { path: blobs.clone(), source })?;
    let config = descriptor(&doc["config"], &url)?;
    let layers: Vec<(Digest, u64, String)> =
        doc["layers"].as_array().into_iter().flatten().map(|l| descriptor(l, &url)).collect::<Result<_, _>>()?;
    let total = layers.iter().map(|l| l.1).sum();
    let mut done = 0;
    c.blob(&config.0, config.1, &blobs.join(config.0.hex()), &mut |_| {})?;
    for (digest, size, _) in &layers {
        c.blob(digest, *size, &blobs.join(digest.hex()), &mut |n| {
            done += n;
            progress(PullProgress { done, total });
        })?;
    }
    write_layout(dir, &bytes, &kind, r)
}

/// The manifest as a blob, `index.json` naming it with the reference's tag, `oci-layout`.
fn write_layout(dir: &Path, manifest: &[u8], kind: &str, r: &Reference) -> Result<(), PullError> {
    let digest = Digest::of(manifest);
    let write =
        |path: PathBuf, bytes: &[u8]| std::fs::write(&path, bytes).map_err(|source| PullError::Io { path, source });
    write(dir.join("blobs/sha256").join(digest.hex()), manifest)?;
    let kind = if kind.is_empty() { MANIFEST_TYPES[0] } else { kind };
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": kind, "digest": digest.as_str(), "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": r.name() },
        }],
    });
    write(dir.join("index.json"), &serde_json::to_vec(&index).expect("index serializes"))?;
    write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_reads_them() {
        let r = Reference::parse("127.0.0.1:5000/tools/busybox:1.36").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "tools/busybox", "1.36")
        );
        assert_eq!(r.name(), "127.0.0.1:5000/tools/busybox:1.36");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.name(), "registry-1.docker.io/library/busybox:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/bb@{d}")).unwrap();
        assert_eq!(r.reference, d);
        assert_eq!(r.name(), format!("localhost:5000/bb@{d}"));
        for bad in ["localhost:5000/BB:1", "bb@sha256:12", "localhost:5000/", "localhost:5000/a//b:1x/"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
