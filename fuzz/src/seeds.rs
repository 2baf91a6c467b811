//! Seed inputs for the corpora, made from real inputs: the busybox image of
//! scripts/make-busybox-image.sh, small layer tars of every entry kind the unpacker handles,
//! migration streams written by the source end itself, and the shipped plan files.

use std::io::Write;
use std::path::Path;

use warren::migrate::wire::{CriuFlags, Hello, Part, RootfsOffer, SourceEnd};
use warren_images::digest::{chain_ids, Digest};
use warren_images::transfer::{ImageRef, LayerRef};

use crate::image::{Image, MODE_DOCKER, MODE_REFNAME, MODE_TAR};
use crate::Pipe;

/// Writes every seed under `out/TARGET/seed-NAME`; `busybox` is the OCI layout of the image.
pub fn write_all(out: &Path, busybox: &Path) -> std::io::Result<()> {
    let sets = [("image", image(busybox)?), ("unpack", unpack()), ("migrate", migrate()), ("plan", plan())];
    for (target, seeds) in sets {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}

type Seeds = Vec<(String, Vec<u8>)>;

fn image(busybox: &Path) -> std::io::Result<Seeds> {
    let blob = |d: &str| std::fs::read(busybox.join("blobs/sha256").join(d.trim_start_matches("sha256:")));
    let index = std::fs::read(busybox.join("index.json"))?;
    let index_doc: serde_json::Value = serde_json::from_slice(&index)?;
    let manifest = blob(index_doc["manifests"][0]["digest"].as_str().unwrap_or_default())?;
    let manifest_doc: serde_json::Value = serde_json::from_slice(&manifest)?;
    let config = blob(manifest_doc["config"]["digest"].as_str().unwrap_or_default())?;
    // The real layer is a megabyte of gzip holding NULs (the document separator): a small
    // stand-in keeps the seed small; find() only hashes layer blobs.
    let layer = b"a layer blob".to_vec();
    let mut m = manifest_doc.clone();
    m["layers"][0]["digest"] = Digest::of(&layer).to_string().into();
    m["layers"][0]["size"] = layer.len().into();
    let manifest = serde_json::to_vec(&m)?;
    let mut index_doc = index_doc;
    index_doc["manifests"][0]["digest"] = Digest::of(&manifest).to_string().into();
    index_doc["manifests"][0]["size"] = manifest.len().into();
    let index = serde_json::to_vec(&index_doc)?;
    // An index whose only entry is a nested index (as multi-platform images have).
    let nested = index.clone();
    let outer = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": Digest::of(&nested).to_string(), "size": nested.len(),
        "annotations": {"io.containerd.image.name": "docker.io/library/busybox:latest"}}]});
    let outer = serde_json::to_vec(&outer)?;
    let cfg = Digest::of(&config);
    let docker = serde_json::json!([{"Config": format!("blobs/sha256/{}", cfg.hex()),
        "RepoTags": ["busybox:latest"], "Layers": [format!("blobs/sha256/{}", Digest::of(&layer).hex())]}]);
    let docker = serde_json::to_vec(&docker)?;
    let oci: [&[u8]; 4] = [&index, &manifest, &config, &layer];
    let two: [&[u8]; 5] = [&outer, &nested, &manifest, &config, &layer];
    let dock: [&[u8]; 3] = [&docker, &config, &layer];
    Ok(vec![
        ("oci-dir".into(), Image::encode(&oci, 0)),
        ("oci-tar-ref".into(), Image::encode(&oci, MODE_TAR | MODE_REFNAME)),
        ("oci-nested".into(), Image::encode(&two, 0)),
        ("docker-dir".into(), Image::encode(&dock, MODE_DOCKER)),
        ("docker-tar".into(), Image::encode(&dock, MODE_DOCKER | MODE_TAR)),
    ])
}

/// A tar of `entries`: (path, type, content or link target). Names are written raw: the tar
/// crate's builder would refuse the `..` that some seeds need.
fn tar(entries: &[(&str, tar::EntryType, &str)], pax: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        let link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
        if link {
            gnu.linkname[..data.len()].copy_from_slice(data.as_bytes());
        }
        let content = if link { &b""[..] } else { data.as_bytes() };
        h.set_size(content.len() as u64);
        h.set_cksum();
        if let Some((key, value)) = pax.filter(|_| kind.is_file()) {
            b.append_pax_extensions([(key, value)]).expect("in memory");
        }
        b.append(&h, content).expect("in memory");
    }
    b.into_inner().expect("in memory")
}

fn unpack() -> Seeds {
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};
    let lower = tar(
        &[
            ("etc/", D, ""),
            ("etc/passwd", F, "root:x:0:0::/root:/bin/sh\n"),
            ("bin/", D, ""),
            ("bin/busybox", F, "\x7fELF"),
            ("bin/sh", L, "busybox"),
            ("bin/ls", H, "bin/busybox"),
            ("lib", L, "/usr/lib"),
            ("usr/lib/", D, ""),
            ("var/", D, ""),
            ("var/run", L, "../run"),
        ],
        None,
    );
    let upper = tar(
        &[
            ("etc/.wh.passwd", F, ""),
            ("var/.wh..wh..opq", F, ""),
            ("var/log/", D, ""),
            ("lib/libc.so", F, "lib"),
            ("bin/ln", H, "bin/busybox"),
        ],
        None,
    );
    let xattrs = tar(&[("cap/", D, ""), ("cap/ping", F, "ping")], Some(("SCHILY.xattr.user.origin", b"seed")));
    let escapes = tar(&[("a", L, "/"), ("a/x", F, "no"), ("b", L, ".."), ("b/y", F, "no"), ("../z", F, "no")], None);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&lower).expect("in memory");
    let gz = gz.finish().expect("in memory");
    vec![
        ("lower".into(), lower.clone()),
        ("two-layers".into(), [lower, upper].concat()),
        ("xattrs".into(), xattrs),
        ("escapes".into(), escapes),
        ("gzip".into(), gz),
    ]
}

/// A stream as `warren migrate` sends it, written by the source end into memory.
fn stream(hello: &Hello, parts: &[(Part, &[u8])], end: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut src = SourceEnd::new(Pipe::new(b"", &mut bytes), "seed".into()).expect("zstd context");
    src.send_hello(hello).expect("in memory");
    for (part, content) in parts {
        src.send_part(part.clone(), |w| w.write_all(content).map_err(|_| w.take_error().expect("in memory")))
            .expect("in memory");
    }
    src.send_manifest().expect("in memory");
    drop(src);
    // What the source says after the target's report: commit or abort.
    bytes.extend_from_slice(end);
    bytes
}

fn migrate() -> Seeds {
    let flags = CriuFlags { tcp_established: true, ..Default::default() };
    let plain = Hello { id: "web-1".into(), rootfs: RootfsOffer::Plain, criu: flags.clone(), tenant: None };
    let config = br#"{"ociVersion":"1.2.0","root":{"path":"/old/rootfs"},"process":{"args":["sh"],"cwd":"/"}}"#;
    let rootfs = tar(&[("hello", tar::EntryType::Regular, "world")], None);
    let commit = [8u8, 0, 0, 0, 2, b'{', b'}'];
    let diff = [Digest::of(b"layer")];
    let chains = chain_ids(&diff);
    let image = ImageRef {
        name: "busybox:latest".into(),
        digest: Digest::of(b"manifest"),
        config: Digest::of(b"{}"),
        layers: vec![LayerRef { chain_id: chains[0].clone(), diff_id: diff[0].clone() }],
    };
    let offer = Hello { id: "web-2".into(), rootfs: RootfsOffer::Image(image), criu: flags, tenant: None };
    vec![
        (
            "plain".into(),
            stream(
                &plain,
                &[(Part::Config, config), (Part::Rootfs, &rootfs), (Part::Criu("pages-1.img".into()), &[0u8; 4096])],
                &commit,
            ),
        ),
        (
            "image".into(),
            stream(
                &offer,
                &[
                    (Part::Layer(chains[0].clone()), &rootfs),
                    (Part::ImageConfig, b"{}"),
                    (Part::Config, config),
                    (Part::Upper, &rootfs),
                    (Part::Criu("core-1.img".into()), b"core"),
                ],
                &[9, 0, 0, 0, 2, b'{', b'}'],
            ),
        ),
    ]
}

fn plan() -> Seeds {
    [
        ("nano", &include_bytes!("../../config/plans/nano.toml")[..]),
        ("small", include_bytes!("../../config/plans/small.toml")),
        ("medium", include_bytes!("../../config/plans/medium.toml")),
        ("large", include_bytes!("../../config/plans/large.toml")),
        ("host", include_bytes!("../../config/host.toml")),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b.to_vec()))
    .collect()
}
