//! `image pull`: an image from an OCI distribution registry (the registry HTTP API v2) into
//! an OCI image layout directory, every blob checked against its digest and size as it
//! streams in; the store then imports that layout as any other (checking it again, sharing
//! the layers it already has). Anonymous or with a user and password ([`Credentials`]: given,
//! or from the auth file podman and docker log in to), answering the registry's Basic or
//! Bearer (token) challenge; plain HTTP for a registry on localhost or when asked (`insecure`).

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
    #[error("{path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },
}

/// A registry user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ user: {:?}, password: <hidden> }}", self.user)
    }
}

/// Where podman, skopeo and docker keep what `login` wrote, in the order they read them:
/// $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json (root's: /run/containers/0),
/// ~/.docker/config.json. Only those that exist.
pub fn default_auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let uid = nix::unistd::getuid().as_raw();
    let podman = match env("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("containers/auth.json"),
        None => PathBuf::from(format!("/run/containers/{uid}/auth.json")),
    };
    let docker = env("HOME").map(|h| h.join(".docker/config.json"));
    [env("REGISTRY_AUTH_FILE"), Some(podman), docker].into_iter().flatten().filter(|p| p.exists()).collect()
}

impl Credentials {
    /// `USER:PASSWORD`, as `--creds` takes it (the password may hold ':').
    pub fn parse(text: &str) -> Option<Credentials> {
        let (user, password) = text.split_once(':')?;
        (!user.is_empty()).then(|| Credentials { user: user.into(), password: password.into() })
    }

    fn basic(&self) -> String {
        use base64::Engine;
        let raw = format!("{}:{}", self.user, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// The entry for `registry` in an auth file (`{"auths": {"HOST[:PORT]": {"auth":
    /// base64("USER:PASSWORD")}}}`: podman's auth.json and docker's config.json alike);
    /// None when it has none.
    pub fn from_auth_file(path: &Path, registry: &str) -> Result<Option<Credentials>, PullError> {
        use base64::Engine;
        let bad = |reason: String| PullError::AuthFile { path: path.to_path_buf(), reason };
        let text = std::fs::read(path).map_err(|source| PullError::Io { path: path.to_path_buf(), source })?;
        let doc: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let auths = doc["auths"].as_object().ok_or_else(|| bad("no \"auths\" object".into()))?;
        // Keys may carry a scheme ("https://host") as docker once wrote them.
        let entry = auths.iter().find(|(key, _)| {
            let host = key.trim_start_matches("https://").trim_start_matches("http://");
            host.split('/').next() == Some(registry)
        });
        let Some((key, entry)) = entry else { return Ok(None) };
        let encoded = entry["auth"].as_str().ok_or_else(|| bad(format!("auths.{key:?} has no \"auth\"")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| bad(format!("auths.{key:?}.auth: not base64: {e}")))?;
        let raw = String::from_utf8(raw).map_err(|_| bad(format!("auths.{key:?}.auth: not UTF-8")))?;
        Credentials::parse(&raw).map(Some).ok_or_else(|| bad(format!("auths.{key:?}.auth: not USER:PASSWORD")))
    }
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
    creds: Option<Credentials>,
    /// The Authorization header the registry's challenge asked for, once answered.
    auth: Option<String>,
}

impl Client {
    fn new(r: &Reference, insecure: bool, creds: Option<Credentials>) -> Client {
        let host = r.registry.split(':').next().unwrap_or_default();
        let plain = insecure || host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let scheme = if plain { "http" } else { "https" };
        let agent = ureq::AgentBuilder::new().timeout_connect(std::time::Duration::from_secs(10)).build();
        Client { agent, base: format!("{scheme}://{}/v2/{}", r.registry, r.repository), creds, auth: None }
    }

    /// GET `path` (under /v2/REPO/), answering the registry's one challenge.
    fn get(&mut self, path: &str, accept: &str) -> Result<ureq::Response, PullError> {
        let url = format!("{}/{path}", self.base);
        let http = |message: String| PullError::Http { url: url.clone(), message };
        for _ in 0..2 {
            let mut req = self.agent.get(&url).set("Accept", accept);
            if let Some(a) = &self.auth {
                req = req.set("Authorization", a);
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if self.auth.is_none() => {
                    let challenge = resp.header("www-authenticate").unwrap_or_default().to_string();
                    self.auth = Some(self.answer(&challenge).map_err(http)?);
                }
                Err(ureq::Error::Status(401, _)) => {
                    let who = self.creds.as_ref().map_or("anonymous".to_string(), |c| format!("user {:?}", c.user));
                    return Err(http(format!("HTTP 401: unauthorized as {who}")));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(http(format!("HTTP {code}: {}", text.trim().replace('\n', " "))));
                }
                Err(e) => return Err(http(transport_message(e))),
            }
        }
        unreachable!("a second 401 returns above")
    }

    /// The Authorization header for `challenge`: Basic with the credentials, or a Bearer
    /// token from the challenge's realm (asked for with the credentials, if any).
    fn answer(&self, challenge: &str) -> Result<String, String> {
        if challenge.starts_with("Basic") {
            let creds = self
                .creds
                .as_ref()
                .ok_or("HTTP 401: the registry wants a user and password (--creds or --authfile)")?;
            return Ok(creds.basic());
        }
        let params = challenge.strip_prefix("Bearer ").ok_or("HTTP 401, and no Basic or Bearer challenge")?;
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
        if let Some(c) = &self.creds {
            req = req.set("Authorization", &c.basic());
        }
        let resp = req.call().map_err(|e| format!("token from {realm}: {}", transport_message(e)))?;
        let body: Value =
            serde_json::from_str(&resp.into_string().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let token = body["token"].as_str().or(body["access_token"].as_str()).ok_or("no token")?;
        Ok(format!("Bearer {token}"))
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

/// A ureq error in one line: its Display repeats the URL that our errors name already.
fn transport_message(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("HTTP {code}"),
        ureq::Error::Transport(t) => {
            let cause = std::error::Error::source(&t).map(|c| format!(": {c}")).unwrap_or_default();
            format!("{}{cause}", t.kind())
        }
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
    creds: Option<Credentials>,
    progress: &mut dyn FnMut(PullProgress),
) -> Result<(), PullError> {
    let mut c = Client::new(r, insecure, creds);
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
    fn credentials_come_from_auth_files_as_podman_and_docker_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // "alice:pa:ss" and "bob:x", base64.
        let text = r#"{"auths": {"reg.example:5000": {"auth": "YWxpY2U6cGE6c3M="},
                                 "https://other.example/v1/": {"auth": "Ym9iOng="}}}"#;
        std::fs::write(&path, text).unwrap();
        let alice = Credentials::from_auth_file(&path, "reg.example:5000").unwrap().unwrap();
        assert_eq!((alice.user.as_str(), alice.password.as_str()), ("alice", "pa:ss"));
        assert_eq!(alice.basic(), "Basic YWxpY2U6cGE6c3M=");
        let bob = Credentials::from_auth_file(&path, "other.example").unwrap().unwrap();
        assert_eq!(bob.user, "bob");
        assert_eq!(Credentials::from_auth_file(&path, "reg.example").unwrap(), None);
        std::fs::write(&path, r#"{"auths": {"r.example": {"auth": "!!"}}}"#).unwrap();
        let err = Credentials::from_auth_file(&path, "r.example").unwrap_err().to_string();
        assert!(err.contains("auths.\"r.example\".auth: not base64"), "{err}");
        assert!(!format!("{alice:?}").contains("pa:ss"), "the password stays out of Debug");
        assert_eq!(Credentials::parse(":x"), None);
    }

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
