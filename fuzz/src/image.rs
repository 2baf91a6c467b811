//! The image target's input: a mode byte, then documents separated by NUL bytes (JSON never
//! holds one). Document 0 is index.json (or manifest.json for docker's format); document N
//! (1..=9) is stored as blobs/sha256/HEX. Inside document i, for any later document N,
//! `@N` becomes its digest (`sha256:HEX`), `%N` its hex and `#N` its size, so references
//! stay valid however the fuzzer mutates the documents they point at.

use std::path::{Path, PathBuf};

use warren_images::digest::Digest;

/// Mode bits: docker's manifest.json instead of an OCI index.json ...
pub const MODE_DOCKER: u8 = 1;
/// ... the files in a tar (oci-archive, docker save) instead of a directory ...
pub const MODE_TAR: u8 = 2;
/// ... and `--ref latest` given.
pub const MODE_REFNAME: u8 = 4;

const MAX_DOCS: usize = 10;

pub struct Image {
    mode: u8,
    /// (path inside the image, content), document 0 first.
    files: Vec<(String, Vec<u8>)>,
}

impl Image {
    pub fn from_input(mode: u8, rest: &[u8]) -> Image {
        let mut docs: Vec<Vec<u8>> = rest.splitn(MAX_DOCS, |b| *b == 0).map(<[u8]>::to_vec).collect();
        let mut refs: Vec<Option<Digest>> = vec![None; docs.len()];
        for i in (0..docs.len()).rev() {
            docs[i] = substitute(&docs[i], i, &refs, &docs);
            refs[i] = Some(Digest::of(&docs[i]));
        }
        let first = if mode & MODE_DOCKER != 0 { "manifest.json" } else { "index.json" };
        let files = docs
            .into_iter()
            .zip(refs)
            .enumerate()
            .map(|(i, (doc, digest))| {
                let name = match i {
                    0 => first.to_string(),
                    _ => format!("blobs/sha256/{}", digest.expect("set above").hex()),
                };
                (name, doc)
            })
            .collect();
        Image { mode, files }
    }

    /// The inverse of the substitution, for seeds: `docs` (document 0 first) with the
    /// digests, hexes and sizes of the documents each one names written as references.
    pub fn encode(docs: &[&[u8]], mode: u8) -> Vec<u8> {
        let mut out = vec![mode];
        for (i, doc) in docs.iter().enumerate() {
            let mut text = String::from_utf8_lossy(doc).into_owned();
            for (n, blob) in docs.iter().enumerate().skip(i + 1) {
                let d = Digest::of(blob);
                text = text.replace(d.as_str(), &format!("@{n}")).replace(d.hex(), &format!("%{n}"));
                for sep in [":", ": "] {
                    text = text.replace(&format!("\"size\"{sep}{},", blob.len()), &format!("\"size\"{sep}#{n},"));
                    text = text.replace(&format!("\"size\"{sep}{}}}", blob.len()), &format!("\"size\"{sep}#{n}}}"));
                }
            }
            if i > 0 {
                out.push(0);
            }
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// Writes the image under `dir`; returns the path to import (a directory or a tar).
    pub fn write(&self, dir: &Path) -> PathBuf {
        if self.mode & MODE_TAR != 0 {
            let path = dir.join("image.tar");
            let file = std::fs::File::create(&path).expect("scratch file");
            let mut tar = tar::Builder::new(file);
            for (name, content) in &self.files {
                let mut h = tar::Header::new_ustar();
                h.set_size(content.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, name, content.as_slice()).expect("tar entry");
            }
            tar.finish().expect("tar end");
            path
        } else {
            let layout = dir.join("layout");
            std::fs::create_dir_all(layout.join("blobs/sha256")).expect("scratch dir");
            for (name, content) in &self.files {
                std::fs::write(layout.join(name), content).expect("scratch file");
            }
            layout
        }
    }
}

/// Document `i` with its references to later documents filled in.
fn substitute(doc: &[u8], i: usize, refs: &[Option<Digest>], docs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len());
    let mut k = 0;
    while k < doc.len() {
        let target = doc.get(k + 1).and_then(|d| d.is_ascii_digit().then(|| (d - b'0') as usize));
        match (doc[k], target.and_then(|n| (n > i).then(|| refs.get(n).cloned().flatten()).flatten())) {
            (b'@', Some(d)) => out.extend_from_slice(d.as_str().as_bytes()),
            (b'%', Some(d)) => out.extend_from_slice(d.hex().as_bytes()),
            (b'#', Some(_)) => out.extend_from_slice(docs[target.expect("some")].len().to_string().as_bytes()),
            (b, _) => {
                out.push(b);
                k += 1;
                continue;
            }
        }
        k += 2;
    }
    out
}
