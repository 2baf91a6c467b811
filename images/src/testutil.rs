//! Test-only builders: layer tars written byte by byte (so that they can be
//! as malformed as an attacker's), and OCI layouts around them.

use crate::digest::Digest;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use tar::{EntryType, Header};

/// A layer tar built entry by entry, names and link targets taken verbatim.
#[derive(Default)]
pub struct Layer {
    buf: Vec<u8>,
}

/// One entry's fields.
pub struct E<'a> {
    pub name: &'a str,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: &'a str,
    pub data: &'a [u8],
    pub dev: (u32, u32),
    pub pax: &'a [(&'a str, &'a [u8])],
}

impl Default for E<'_> {
    fn default() -> Self {
        E {
            name: "",
            kind: EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            link: "",
            data: b"",
            dev: (0, 0),
            pax: &[],
        }
    }
}

fn pax_records(pax: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pax {
        let body_len = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    fn raw(&mut self, name: &[u8], kind: EntryType, e: &E, size: u64) {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
    }

    fn data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn add(mut self, e: E) -> Layer {
        if !e.pax.is_empty() {
            let records = pax_records(e.pax);
            self.raw(b"pax", EntryType::XHeader, &E::default(), records.len() as u64);
            self.data(&records);
        }
        self.raw(e.name.as_bytes(), e.kind, &e, e.data.len() as u64);
        self.data(e.data);
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Layer {
        self.add(E { name, data, ..Default::default() })
    }
    pub fn dir(self, name: &str) -> Layer {
        self.add(E { name, kind: EntryType::Directory, mode: 0o755, ..Default::default() })
    }
    pub fn symlink(self, name: &str, link: &str) -> Layer {
        self.add(E { name, kind: EntryType::Symlink, mode: 0o777, link, ..Default::default() })
    }
    pub fn hardlink(self, name: &str, link: &str) -> Layer {
        self.add(E { name, kind: EntryType::Link, link, ..Default::default() })
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 1).unwrap()
}

/// Writes a blob into the layout at `dir`; returns its digest.
pub fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A layer as a manifest lists it: (media type, blob, uncompressed tar).
pub struct Blob {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
    pub tar: Vec<u8>,
}

impl Blob {
    pub fn gz(tar: Vec<u8>) -> Blob {
        Blob { media_type: GZIP_LAYER, blob: gzip(&tar), tar }
    }
}

/// Writes an OCI layout at `dir` with one image of `layers` (ref name
/// `refname`); returns the manifest digest.
pub fn layout(dir: &Path, refname: &str, layers: &[Blob], config_extra: serde_json::Value) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = put_blob(dir, &l.blob);
        descs.push(json!({"mediaType": l.media_type, "digest": d.as_str(), "size": l.blob.len()}));
        diff_ids.push(Digest::of(&l.tar).to_string());
    }
    let mut config =
        json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    if let Some(extra) = config_extra.as_object() {
        for (k, v) in extra {
            config[k] = v.clone();
        }
    }
    let config = serde_json::to_vec(&config).unwrap();
    let cd = put_blob(dir, &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.as_str(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": refname},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}
