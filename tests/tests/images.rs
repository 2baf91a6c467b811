//! Images: `warren image import|list|rm` and `warren bundle create|rm` with
//! the built-in busybox image (scripts/make-busybox-image.sh), containers run
//! from what they make, and broken or malicious images that must be refused
//! leaving the store as it was.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use warren_tests::*;

/// A store inside the test's dir, and shorthands for the image verbs.
struct Images<'a> {
    t: &'a Test,
    store: String,
}

impl<'a> Images<'a> {
    fn new(t: &'a Test) -> Images<'a> {
        Images { t, store: t.dir().join("store").to_string_lossy().into_owned() }
    }

    fn cmd(&self, group: &str, args: &[&str]) -> Result<Out> {
        let mut v = vec![group, "--store", &self.store];
        v.extend_from_slice(args);
        self.t.cmd(&v)
    }

    fn import(&self, path: &Path, name: &str) -> Result<Out> {
        self.cmd("image", &["import", "--name", name, &path.to_string_lossy()])
    }

    fn list(&self) -> Result<Vec<Value>> {
        let out = self.cmd("image", &["list", "--format", "json"])?;
        Ok(serde_json::from_str(&out.ok()?.stdout)?)
    }

    fn names(&self) -> Result<Vec<String>> {
        Ok(self.list()?.iter().map(|i| i["name"].as_str().unwrap_or("").to_string()).collect())
    }

    fn layers(&self) -> usize {
        std::fs::read_dir(Path::new(&self.store).join("layers")).map(|r| r.count()).unwrap_or(0)
    }

    /// `bundle create --image IMAGE FLAGS... DIR [-- ARGS...]`.
    fn bundle(&self, image: &str, dir: &Path, flags: &[&str], args: &[&str]) -> Result<Out> {
        let d = dir.to_string_lossy();
        let mut v = vec!["create", "--image", image];
        v.extend_from_slice(flags);
        v.push(&d);
        if !args.is_empty() {
            v.push("--");
            v.extend_from_slice(args);
        }
        self.cmd("bundle", &v)
    }

    /// `bundle create ... DIR -- sh -c SCRIPT`, which must succeed.
    fn bundle_sh(&self, image: &str, dir: &Path, flags: &[&str], script: &str) -> Result<()> {
        self.bundle(image, dir, flags, &["sh", "-c", script])?.ok()?;
        Ok(())
    }

    fn run(&self, id: &str, dir: &Path) -> Result<Out> {
        self.t.cmd(&["run", "--bundle", &dir.to_string_lossy(), &self.t.id(id)])
    }

    fn rm_bundle(&self, dir: &Path) -> Result<Out> {
        self.cmd("bundle", &["rm", &dir.to_string_lossy()])
    }
}

#[test]
fn import_all_three_forms_and_share_the_layer() -> Result<()> {
    let t = Test::new("img_forms");
    let im = Images::new(&t);
    let bb = busybox_image();
    im.import(&bb.join("layout"), "bb:layout")?.ok()?;
    im.import(&bb.join("busybox-oci.tar"), "bb:oci")?.ok()?;
    let out = im.cmd("image", &["import", &bb.join("busybox-docker.tar").to_string_lossy()])?;
    ensure!(out.ok()?.stdout.starts_with("warren/busybox:latest sha256:"), "{out}");
    let list = im.list()?;
    ensure!(list.len() == 3, "{list:?}");
    for i in &list {
        ensure!(i["layers"] == 1 && i["shared"] == 1 && i["size"].as_u64() > Some(1_000_000), "{i}");
    }
    ensure!(im.layers() == 1, "one unpacked copy of the shared layer");
    let table = im.cmd("image", &["list"])?;
    ensure!(table.ok()?.stdout.lines().next().unwrap_or("").starts_with("NAME"), "{table}");
    ensure!(table.stdout.contains("bb:oci"), "{table}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn overlay_bundle_runs_and_writes_only_its_upper_dir() -> Result<()> {
    let t = Test::new("img_overlay");
    let im = Images::new(&t);
    im.import(&busybox_image().join("busybox-oci.tar"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    im.bundle_sh("bb:1", &dir, &[], "echo hi from $(cat /etc/passwd | head -1); echo data > /root/f; pwd")?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    ensure!(cfg["annotations"]["org.opencontainers.image.ref.name"] == "bb:1", "{cfg}");
    ensure!(cfg["process"]["env"].to_string().contains("PATH=/usr/local/sbin"), "{cfg}");
    ensure!(!mounts_under(&dir.join("rootfs")).is_empty(), "rootfs is not a mount");
    // The image's set-id files must be out of host users' reach.
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.clone(), t.dir().join("store")] {
        let mode = std::fs::metadata(&p)?.permissions().mode() & 0o777;
        ensure!(mode == 0o700, "{} has mode {mode:o}", p.display());
    }
    let out = im.run("c", &dir)?;
    ensure!(out.ok()?.stdout == "hi from root:x:0:0:root:/root:/bin/sh\n/\n", "{out}");
    ensure!(std::fs::read(dir.join("upper/root/f"))? == b"data\n", "the write went to the upper dir");
    let layer_root = std::fs::read_dir(t.dir().join("store/layers"))?.next().context("a layer")??.path();
    ensure!(!layer_root.join("fs/root/f").exists(), "the shared layer was written to");
    im.rm_bundle(&dir)?.ok()?;
    ensure!(!dir.exists(), "bundle dir remains");
    ensure!(im.layers() == 1, "the image still holds its layer");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn copied_rootfs_runs_without_overlay() -> Result<()> {
    let t = Test::new("img_copy");
    let im = Images::new(&t);
    im.import(&busybox_image().join("layout"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    im.bundle_sh("bb:1", &dir, &["--copy"], "ls -ld /tmp | cut -c1-10; readlink /bin/sh; id -u")?;
    ensure!(mounts_under(&dir).is_empty(), "a copy needs no mount");
    ensure!(std::fs::symlink_metadata(dir.join("rootfs/bin/busybox"))?.len() > 1_000_000, "no busybox copied");
    let out = im.run("c", &dir)?;
    ensure!(out.ok()?.stdout == "drwxrwxrwt\n/bin/busybox\n0\n", "{out}");
    im.rm_bundle(&dir)?.ok()?;
    ensure!(!dir.exists(), "bundle dir remains");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn image_rm_keeps_layers_a_bundle_uses() -> Result<()> {
    let t = Test::new("img_refs");
    let im = Images::new(&t);
    im.import(&busybox_image().join("busybox-oci.tar"), "a:1")?.ok()?;
    im.import(&busybox_image().join("layout"), "b:1")?.ok()?;
    let dir = t.dir().join("b1");
    im.bundle_sh("a:1", &dir, &[], "echo still-here")?;
    im.cmd("image", &["rm", "a:1", "b:1"])?.ok()?;
    ensure!(im.names()?.is_empty(), "images remain");
    ensure!(im.layers() == 1, "the bundle's layer was deleted under it");
    let out = im.run("c", &dir)?;
    ensure!(out.ok()?.stdout == "still-here\n", "{out}");
    im.rm_bundle(&dir)?.ok()?;
    ensure!(im.layers() == 0, "unused layer kept after the last bundle went");
    let again = im.cmd("image", &["rm", "a:1"])?;
    ensure!(again.failed()?.error_line() == "warren: no image named \"a:1\"", "{again}");
    t.assert_no_leftovers();
    Ok(())
}

/// Python that writes an OCI layout from layer descriptions:
/// `[[name, kind, data_or_link_or_size], ...]` per layer; kinds: file, filler
/// (that many bytes), dir, symlink, hardlink.
const MAKE_LAYOUT: &str = r#"
import gzip, hashlib, io, json, os, sys, tarfile
out, layers, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
os.makedirs(out + "/blobs/sha256", exist_ok=True)
def blob(b):
    d = hashlib.sha256(b).hexdigest()
    open(out + "/blobs/sha256/" + d, "wb").write(b)
    return "sha256:" + d
descs, diffs = [], []
for entries in layers:
    buf = io.BytesIO()
    t = tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT)
    for name, kind, arg in entries:
        ti = tarfile.TarInfo(name)
        data = None
        if kind == "file":
            data = arg.encode(); ti.size = len(data)
        elif kind == "filler":
            data = b"x" * int(arg); ti.size = len(data)
        elif kind == "dir":
            ti.type = tarfile.DIRTYPE
        elif kind == "symlink":
            ti.type = tarfile.SYMTYPE; ti.linkname = arg
        elif kind == "hardlink":
            ti.type = tarfile.LNKTYPE; ti.linkname = arg
        t.addfile(ti, io.BytesIO(data) if data is not None else None)
    t.close()
    b = buf.getvalue()
    diffs.append("sha256:" + hashlib.sha256(b).hexdigest())
    media = "application/vnd.oci.image.layer.v1.tar"
    if mode != "tar":
        b, media = gzip.compress(b), media + "+gzip"
    if mode == "gzip-truncated":
        b = b[:len(b) // 2]
    descs.append({"mediaType": media, "digest": blob(b), "size": len(b)})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(cfg), "size": len(cfg)},
                  "layers": descs}).encode()
idx = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                          "digest": blob(man), "size": len(man)}]}
json.dump(idx, open(out + "/index.json", "w"))
open(out + "/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
"#;

fn make_layout(t: &Test, name: &str, layers: Value) -> Result<PathBuf> {
    make_layout_as(t, name, layers, "tar")
}

/// `mode`: tar, gzip, or gzip-truncated (the blob cut in half, its
/// descriptor matching the cut blob).
fn make_layout_as(t: &Test, name: &str, layers: Value, mode: &str) -> Result<PathBuf> {
    let dir = t.dir().join(name);
    host(t, "python3", &["-c", MAKE_LAYOUT, &dir.to_string_lossy(), &layers.to_string(), mode])?.ok()?;
    Ok(dir)
}

/// The sha256 of `bytes` in hex, by sha256sum(1).
fn sha256_hex(bytes: &[u8]) -> Result<String> {
    use std::io::Write;
    let mut child =
        command("sha256sum").stdout(std::process::Stdio::piped()).stdin(std::process::Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(bytes)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8(out.stdout)?.split(' ').next().unwrap_or("").to_string())
}

/// The import must fail with one line that contains `needle`, and leave the
/// store without images, layers or temp files.
fn refused(im: &Images, path: &Path, needle: &str) -> Result<()> {
    let out = im.import(path, "bad:1")?;
    let line = out.failed()?.error_line();
    ensure!(out.stderr.trim().lines().count() == 1, "not one line: {out}");
    ensure!(line.starts_with("warren: ") && line.contains(needle), "wanted {needle:?}: {out}");
    ensure!(im.names()?.is_empty() && im.layers() == 0, "something registered after: {out}");
    let tmp = Path::new(&im.store).join("tmp");
    ensure!(std::fs::read_dir(&tmp)?.next().is_none(), "tmp not empty after: {out}");
    Ok(())
}

#[test]
fn malicious_and_broken_images_are_refused_whole() -> Result<()> {
    let t = Test::new("img_bad");
    let im = Images::new(&t);
    let outside = t.dir().join("outside");
    std::fs::create_dir(&outside)?;
    let o = outside.to_string_lossy();
    let cases = [
        ("dotdot", json!([[["../outside/x", "file", "x"]]]), "entry \"../outside/x\": '..' in the path"),
        ("abs", json!([[["/etc/warren-evil", "file", "x"]]]), "entry \"/etc/warren-evil\": absolute path"),
        (
            "symlink",
            json!([[["ok", "file", "1"]], [["evil", "symlink", o], ["evil/x", "file", "x"]]]),
            "entry \"evil/x\": goes through symlink \"evil\"",
        ),
        (
            "lower-symlink",
            json!([[["evil", "symlink", "../../.."]], [["evil/x", "file", "x"]]]),
            "entry \"evil/x\": goes through symlink \"evil\"",
        ),
        ("hardlink", json!([[["h", "hardlink", "/etc/passwd"]]]), "entry \"h\": hard link to \"/etc/passwd\""),
        ("whiteout", json!([[["a", "file", "1"]], [[".wh.ghost", "file", ""]]]), "whiteout for \"ghost\""),
    ];
    for (name, layers, needle) in cases {
        let dir = make_layout(&t, name, layers)?;
        refused(&im, &dir, needle).with_context(|| name.to_string())?;
    }
    ensure!(std::fs::read_dir(&outside)?.next().is_none(), "something was written outside");
    ensure!(!Path::new("/etc/warren-evil").exists(), "absolute path written");

    // A good image, then broken copies of it.
    let good = make_layout(&t, "good", json!([[["etc", "dir", ""], ["etc/hostname", "file", "x\n"]]]))?;
    let index: Value = serde_json::from_slice(&std::fs::read(good.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mpath = good.join("blobs/sha256").join(&manifest_digest[7..]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(&mpath)?)?;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let lpath = good.join("blobs/sha256").join(&layer[7..]);
    let bytes = std::fs::read(&lpath)?;
    let mut tampered = bytes.clone();
    tampered[600] ^= 1;
    std::fs::write(&lpath, &tampered)?;
    refused(&im, &good, &format!("blob {layer}: content has digest"))?;
    std::fs::write(&lpath, [&bytes[..], b"x"].concat())?;
    refused(&im, &good, &format!("blob {layer}: size {}, its descriptor says {}", bytes.len() + 1, bytes.len()))?;
    std::fs::remove_file(&lpath)?;
    refused(&im, &good, &format!("blob {layer}: missing from the image"))?;
    std::fs::write(&lpath, &bytes)?;
    // Another media type: a new manifest blob, and index.json pointing at it.
    let mut odd = manifest.clone();
    odd["layers"][0]["mediaType"] = json!("application/vnd.example.layer+lz4");
    let odd = serde_json::to_vec(&odd)?;
    let odd_digest = sha256_hex(&odd)?;
    std::fs::write(good.join("blobs/sha256").join(&odd_digest), &odd)?;
    let mut index = index.clone();
    index["manifests"][0]["digest"] = json!(format!("sha256:{odd_digest}"));
    index["manifests"][0]["size"] = json!(odd.len());
    std::fs::write(good.join("index.json"), serde_json::to_vec(&index)?)?;
    refused(&im, &good, &format!("blob {layer}: unsupported media type \"application/vnd.example.layer+lz4\""))?;
    let layers = json!([[["big", "file", "y".repeat(100_000)]]]);
    let trunc = make_layout_as(&t, "trunc", layers, "gzip-truncated")?;
    refused(&im, &trunc, ": gzip: ")?;
    let empty = t.dir().join("empty");
    std::fs::create_dir(&empty)?;
    refused(&im, &empty, "neither an OCI image layout nor an image archive")?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn bundle_verbs_refuse_bad_input() -> Result<()> {
    let t = Test::new("img_bundle_bad");
    let im = Images::new(&t);
    im.import(&busybox_image().join("layout"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    let out = im.bundle("nope:1", &dir, &[], &[])?;
    ensure!(out.failed()?.error_line() == "warren: no image named \"nope:1\"", "{out}");
    ensure!(!dir.exists(), "bundle dir made for a failure");
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("keep"), b"mine")?;
    let out = im.bundle("bb:1", &dir, &[], &[])?;
    ensure!(out.failed()?.error_line().contains("already exists and is not empty"), "{out}");
    let out = im.rm_bundle(&dir)?;
    ensure!(out.failed()?.error_line().contains("not made by `bundle create`"), "{out}");
    ensure!(dir.join("keep").exists(), "bundle rm touched a directory it did not make");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn killed_import_leaves_nothing_to_trip_over() -> Result<()> {
    let t = Test::new("img_kill");
    let im = Images::new(&t);
    // A layer big enough to kill the import in the middle of it.
    let big: Vec<Value> = (0..400).map(|i| json!([format!("f{i}"), "filler", (256 << 10).to_string()])).collect();
    let dir = make_layout(&t, "big", json!([big]))?;
    let mut child =
        command(warren_bin()).args(["image", "--store", &im.store, "import", "--name", "big:1"]).arg(&dir).spawn()?;
    let tmp = Path::new(&im.store).join("tmp");
    let start = std::time::Instant::now();
    while std::fs::read_dir(&tmp).map(|mut r| r.next().is_none()).unwrap_or(true) {
        ensure!(start.elapsed().as_secs() < 20, "the import never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    child.kill()?;
    child.wait()?;
    ensure!(im.names()?.is_empty(), "a killed import registered an image");
    im.import(&busybox_image().join("layout"), "bb:1")?.ok()?;
    ensure!(im.names()? == ["bb:1"], "list after the kill");
    ensure!(std::fs::read_dir(&tmp)?.next().is_none(), "the killed import's files remain");
    ensure!(im.layers() == 1, "the killed import's layers remain");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn import_progress_shows_only_on_a_terminal() -> Result<()> {
    let t = Test::new("img_progress");
    let im = Images::new(&t);
    let layout = busybox_image().join("layout");
    let out = im.import(&layout, "p:pipe")?;
    ensure!(out.ok()?.stderr.is_empty(), "progress written to a pipe: {out}");
    // script(1) runs the import on a pty and copies what it prints to stdout.
    let cmd =
        format!("'{}' image --store '{}' import --name p:tty '{}'", warren_bin().display(), im.store, layout.display());
    let out = command("script").args(["-qec", &cmd, "/dev/null"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "script -c import: {text}");
    let bar = text.split('\r').rfind(|l| l.starts_with("importing [")).unwrap_or("");
    ensure!(bar.starts_with("importing [########################] 100%  "), "{text:?}");
    ensure!(bar.contains(" MiB  ") && bar.ends_with(" MiB/s\x1b[K"), "{text:?}");
    ensure!(text.contains("\np:tty sha256:"), "the result on its own line: {text:?}");
    ensure!(im.names()? == ["p:pipe", "p:tty"], "{:?}", im.names()?);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn bundle_with_a_plan_gets_its_resources() -> Result<()> {
    let t = Test::new("img_plan");
    let im = Images::new(&t);
    im.import(&busybox_image().join("layout"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    im.bundle_sh("bb:1", &dir, &["--plan", "small"], script)?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let r = &cfg["linux"]["resources"];
    ensure!(r["memory"]["limit"] == 512 << 20 && r["pids"]["limit"] == 256, "{r}");
    ensure!(r["devices"][0]["allow"] == false, "the default device rule was lost: {r}");
    let out = im.run("c", &dir)?;
    ensure!(out.ok()?.stdout.trim() == (512u64 << 20).to_string(), "{out}");
    let bad = im.bundle("bb:1", &t.dir().join("b2"), &["--plan", "no-such-plan"], &[])?;
    ensure!(bad.failed()?.error_line().contains("no-such-plan"), "{bad}");
    ensure!(!t.dir().join("b2").exists(), "bundle made for a bad plan");
    im.rm_bundle(&dir)?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn image_config_becomes_the_process() -> Result<()> {
    let t = Test::new("img_config");
    let im = Images::new(&t);
    // The busybox layer under a config with Entrypoint, Cmd, Env, WorkingDir,
    // User, StopSignal, Labels and Volumes.
    let src = busybox_image().join("layout");
    let dir = t.dir().join("img");
    host(&t, "cp", &["-a", &src.to_string_lossy(), &dir.to_string_lossy()])?.ok()?;
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let blob = |d: &str| dir.join("blobs/sha256").join(&d[7..]);
    let mdigest = index["manifests"][0]["digest"].as_str().context("manifest")?.to_string();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(blob(&mdigest))?)?;
    let cdigest = manifest["config"]["digest"].as_str().context("config")?.to_string();
    let mut config: Value = serde_json::from_slice(&std::fs::read(blob(&cdigest))?)?;
    config["config"] = json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo $GREETING; pwd; id -u; id -g; cat /proc/self/mountinfo | grep -c ' /data '"],
        "Env": ["GREETING=hello-from-env", "PATH=/bin"],
        "WorkingDir": "/tmp",
        "User": "daemon",
        "StopSignal": "SIGQUIT",
        "Labels": {"org.example.tier": "web"},
        "Volumes": {"/data": {}}
    });
    let put = |v: &Value| -> Result<(String, usize)> {
        let bytes = serde_json::to_vec(v)?;
        let hex = sha256_hex(&bytes)?;
        std::fs::write(dir.join("blobs/sha256").join(&hex), &bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let (cd, cs) = put(&config)?;
    manifest["config"]["digest"] = json!(cd);
    manifest["config"]["size"] = json!(cs);
    let (md, ms) = put(&manifest)?;
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": ms}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    im.import(&dir, "cfg:1")?.ok()?;
    let b = t.dir().join("b1");
    im.bundle("cfg:1", &b, &[], &[])?.ok()?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(b.join("config.json"))?)?;
    ensure!(cfg["annotations"]["org.opencontainers.image.stopSignal"] == "SIGQUIT", "{cfg}");
    ensure!(cfg["annotations"]["org.example.tier"] == "web", "{cfg}");
    ensure!(cfg["process"]["noNewPrivileges"] == true, "secure defaults lost: {cfg}");
    let out = im.run("c", &b)?;
    ensure!(out.ok()?.stdout == "hello-from-env\n/tmp\n1\n1\n1\n", "{out}");
    im.rm_bundle(&b)?.ok()?;
    // Volumes as bind mounts of bundle directories.
    im.bundle("cfg:1", &b, &["--volumes", "bind"], &[])?.ok()?;
    ensure!(b.join("volumes/0").is_dir(), "no volume dir in the bundle");
    let out = im.run("c2", &b)?;
    ensure!(out.ok()?.stdout.ends_with("/tmp\n1\n1\n1\n"), "{out}");
    im.rm_bundle(&b)?.ok()?;
    ensure!(!b.exists(), "bind volume dirs kept the bundle dir");
    // The same user, read from the image's files without a host mount.
    im.bundle("cfg:1", &b, &["--mount-in-container"], &[])?.ok()?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(b.join("config.json"))?)?;
    ensure!(cfg["process"]["user"]["uid"] == 1 && cfg["process"]["user"]["gid"] == 1, "{cfg}");
    let out = im.run("c3", &b)?;
    ensure!(out.ok()?.stdout == "hello-from-env\n/tmp\n1\n1\n1\n", "{out}");
    im.rm_bundle(&b)?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn concurrent_imports_and_bundles_take_turns() -> Result<()> {
    let t = Test::new("img_concurrent");
    let im = Images::new(&t);
    let bb = busybox_image();
    let outs: Vec<Result<Out>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (im, src) = (&im, bb.join(if i % 2 == 0 { "layout" } else { "busybox-oci.tar" }));
                s.spawn(move || im.import(&src, &format!("c:{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for out in outs {
        out?.ok()?;
    }
    ensure!(im.names()? == ["c:0", "c:1", "c:2", "c:3"], "{:?}", im.names()?);
    ensure!(im.layers() == 1, "one unpacked copy");
    let dirs: Vec<PathBuf> = (0..6).map(|i| t.dir().join(format!("b{i}"))).collect();
    let outs: Vec<Result<Out>> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs.iter().map(|d| s.spawn(|| im.bundle("c:0", d, &[], &["true"]))).collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for out in outs {
        out?.ok()?;
    }
    for d in &dirs {
        im.rm_bundle(d)?.ok()?;
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_bundle_mounted_in_its_container_adds_nothing_to_the_host_mount_table() -> Result<()> {
    let t = Test::new("img_private");
    let im = Images::new(&t);
    im.import(&busybox_image().join("busybox-oci.tar"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    // Written through a rename, so a reader never sees it half-written.
    let counter =
        "i=$(cat /root/n 2>/dev/null || echo 0); echo $((i+1)) > /root/n.new; mv /root/n.new /root/n; exec sleep 1000";
    im.bundle_sh("bb:1", &dir, &["--mount-in-container"], counter)?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    let overlay = cfg["annotations"]["org.warren.rootfs.overlay"].as_str().context("no overlay annotation")?;
    ensure!(overlay.contains(&format!("upperdir={}", dir.join("upper").display())), "{overlay}");
    ensure!(mounts_under(&dir).is_empty(), "bundle create mounted something on the host");
    ensure!(std::fs::read_dir(dir.join("rootfs"))?.next().is_none(), "rootfs on the host is not empty");
    for round in 1..=2 {
        let id = t.id(&format!("c{round}"));
        t.cmd(&["run", "-d", "--bundle", &dir.to_string_lossy(), &id])?.ok()?;
        let c = t.warren.adopt(&id);
        // (Other tests run beside this one: only what is under this test's dir is ours.)
        let ours = mounts_under(t.dir());
        ensure!(ours.is_empty(), "a running container added host mounts: {ours:?}");
        // `run -d` returns once the process is started, not once it has written: wait for it.
        let seen = wait_counter_above(&dir.join("upper/root/n"), round - 1, std::time::Duration::from_secs(10))?;
        ensure!(seen == round, "round {round}: the counter says {seen}");
        // The container's own root is the overlay, and what it wrote lives in the upper dir.
        let n = c.exec(&[], &["cat", "/root/n"])?;
        ensure!(n.ok()?.stdout == format!("{round}\n"), "round {round}: {n}");
        let root = c.exec(&[], &["awk", "$5 == \"/\" { print $9 }", "/proc/self/mountinfo"])?;
        ensure!(root.ok()?.stdout == "overlay\n", "{root}");
        ensure!(std::fs::read_to_string(dir.join("upper/root/n"))? == format!("{round}\n"), "not in upper");
        c.kill("KILL")?.ok()?;
        c.wait_status("stopped", std::time::Duration::from_secs(10))?;
        c.delete()?.ok()?;
    }
    im.rm_bundle(&dir)?.ok()?;
    ensure!(!dir.exists(), "bundle dir remains");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_bad_overlay_annotation_is_one_line_and_leaves_nothing() -> Result<()> {
    let t = Test::new("img_badoverlay");
    let b = t.bundle(&["true"])?;
    let upper = t.dir().join("up");
    std::fs::create_dir_all(&upper)?;
    let cases = [
        ("lowerdir=/x,upperdir=/u", "workdir is missing".to_string()),
        ("lowerdir=/x,upperdir=/u,workdir=/w,index=on", "unknown key \"index\"".to_string()),
        (
            &*format!("lowerdir=/nonexistent-layer,upperdir={0},workdir={0}", upper.display()),
            "lowerdir /nonexistent-layer: No such file or directory".to_string(),
        ),
    ];
    for (value, want) in cases {
        b.edit(|cfg| cfg["annotations"]["org.warren.rootfs.overlay"] = Value::String(value.to_string()))?;
        let out = t.warren.try_create(&t.id("c"), &b, &[])?;
        let line = out.failed()?.error_line();
        ensure!(line.starts_with("warren: config.json: annotations[\"org.warren.rootfs.overlay\"]: "), "{out}");
        ensure!(line.contains(&want), "{value}: want {want:?}: {out}");
        t.assert_no_leftovers();
    }
    Ok(())
}

#[test]
fn a_bundle_mounted_in_its_container_checkpoints_and_restores() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("img_private_cr");
    let im = Images::new(&t);
    im.import(&busybox_image().join("busybox-oci.tar"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    let counter = "i=0; while :; do i=$((i+1)); echo $i > /c.new; mv /c.new /count; sleep 0.05; done";
    im.bundle_sh("bb:1", &dir, &["--mount-in-container"], counter)?;
    // A mount on a path the image lacks: criu makes its mount point again at restore.
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["mounts"].as_array_mut().context("mounts")?.push(serde_json::json!(
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}));
    std::fs::write(&path, serde_json::to_vec(&cfg)?)?;
    let (id, b) = (t.id("c"), dir.to_string_lossy().into_owned());
    let c = t.warren.adopt(&id);
    t.cmd(&["run", "-d", "--bundle", &b, &id])?.ok()?;
    let count = dir.join("upper/count");
    let before = wait_counter_above(&count, 5, std::time::Duration::from_secs(10))?;
    let images = t.dir().join("ck").to_string_lossy().into_owned();
    t.cmd(&["checkpoint", "--image-path", &images, &id])?.ok().context("checkpoint")?;
    t.cmd(&["restore", "--detach", "--bundle", &b, "--image-path", &images, &id])?.ok().context("restore")?;
    // It goes on from its memory, not from 0, on the overlay the restore attached.
    let at_restore = read_counter(&count)?;
    ensure!(at_restore >= before, "counter went back: {before} -> {at_restore}");
    wait_counter_above(&count, at_restore + 5, std::time::Duration::from_secs(10))?;
    let ours = mounts_under(t.dir());
    ensure!(ours.is_empty(), "restore left host mounts: {ours:?}");
    let stray: Vec<_> = std::fs::read_dir(dir.join("rootfs"))?.flatten().map(|e| e.file_name()).collect();
    ensure!(stray.is_empty(), "the host's rootfs dir is not empty after restore: {stray:?}");
    drop(c);
    im.rm_bundle(&dir)?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn idmapped_lowers_give_a_user_namespaced_container_the_shared_layers_as_its_own() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = Test::new("img_idmap");
    let im = Images::new(&t);
    im.import(&busybox_image().join("busybox-oci.tar"), "bb:1")?.ok()?;
    let dir = t.dir().join("b1");
    let script = "stat -c '%u:%g' /bin/busybox; touch /bin/mine; stat -c '%u:%g' /bin/mine; cat /proc/self/uid_map";
    im.bundle_sh("bb:1", &dir, &["--mount-in-container"], script)?;
    // Root in the container is host id 300000: it must be able to reach root.path.
    for d in [t.dir(), &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
    }
    let base = 300_000u32;
    std::os::unix::fs::chown(dir.join("upper"), Some(base), Some(base))?;
    let bundle_cfg = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&bundle_cfg)?)?;
    let overlay = cfg["annotations"]["org.warren.rootfs.overlay"].as_str().context("no overlay annotation")?;
    let plain = overlay.to_string();
    cfg["annotations"]["org.warren.rootfs.overlay"] = Value::String(format!("{plain},idmap"));
    let map = serde_json::json!([{"containerID": 0, "hostID": base, "size": 65536}]);
    cfg["linux"]["uidMappings"] = map.clone();
    cfg["linux"]["gidMappings"] = map;
    cfg["linux"]["namespaces"].as_array_mut().context("namespaces")?.push(serde_json::json!({"type": "user"}));
    std::fs::write(&bundle_cfg, serde_json::to_vec(&cfg)?)?;
    let out = im.run("c1", &dir)?;
    let lines: Vec<String> =
        out.ok()?.stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    // The layer's files (host root's on disk) are the container root's; what it writes is
    // host id 300000's in the upper dir, and the shared layer is unchanged.
    ensure!(lines == ["0:0", "0:0", "0 300000 65536"], "{lines:?}");
    let mine = std::fs::metadata(dir.join("upper/bin/mine"))?;
    ensure!((mine.uid(), mine.gid()) == (base, base), "upper file owned by {}:{}", mine.uid(), mine.gid());
    let layer = std::fs::metadata(plain.split(['=', ',']).nth(1).context("lowerdir")?)?;
    ensure!(layer.uid() == 0, "the shared layer changed owner");
    // Without a user namespace, idmap is refused in one line naming the annotation.
    cfg["linux"]["namespaces"].as_array_mut().context("namespaces")?.retain(|n| n["type"] != "user");
    cfg["linux"].as_object_mut().context("linux")?.retain(|k, _| !k.ends_with("Mappings"));
    std::fs::write(&bundle_cfg, serde_json::to_vec(&cfg)?)?;
    let out = im.run("c2", &dir)?;
    let line = out.failed()?.error_line();
    ensure!(line.contains("org.warren.rootfs.overlay") && line.contains("idmap needs a new user namespace"), "{out}");
    im.rm_bundle(&dir)?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn image_pull_from_a_registry_verifies_and_shares_the_layers() -> Result<()> {
    let t = Test::new("img_pull");
    let im = Images::new(&t);
    let reg = Registry::start(t.dir())?;
    reg.push(&busybox_image().join("busybox-oci.tar"), "tools/busybox:1")?;
    let name = format!("{}/tools/busybox:1", reg.addr);
    let out = im.cmd("image", &["pull", &name])?;
    ensure!(out.ok()?.stdout.starts_with(&format!("{name} sha256:")), "{out}");
    ensure!(im.names()? == [name.clone()], "{:?}", im.names()?);
    // The same image imported from its archive shares the pulled layer.
    im.import(&busybox_image().join("busybox-oci.tar"), "bb:1")?.ok()?;
    ensure!(im.layers() == 1, "{} layers", im.layers());
    let dir = t.dir().join("b1");
    im.bundle_sh(&name, &dir, &[], "echo pulled-and-running")?;
    let run = im.run("c1", &dir)?;
    ensure!(run.ok()?.stdout == "pulled-and-running\n", "{run}");
    im.rm_bundle(&dir)?.ok()?;
    // A tag the registry lacks, and a blob altered in the registry's storage: one line
    // each, and the store is as it was.
    let out = im.cmd("image", &["pull", &format!("{}/tools/busybox:2", reg.addr)])?;
    ensure!(out.failed()?.error_line().contains("manifest unknown"), "{out}");
    reg.push(&busybox_image().join("busybox-oci.tar"), "other/busybox:1")?;
    let blobs = reg.data.join("docker/registry/v2/blobs/sha256");
    let mut altered = 0;
    for prefix in std::fs::read_dir(&blobs)?.flatten() {
        for blob in std::fs::read_dir(prefix.path())?.flatten() {
            let data = blob.path().join("data");
            if std::fs::metadata(&data)?.len() > 100_000 {
                let mut bytes = std::fs::read(&data)?;
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                std::fs::write(&data, bytes)?;
                altered += 1;
            }
        }
    }
    ensure!(altered == 1, "{altered} layer blobs altered");
    let out = im.cmd("image", &["pull", &format!("{}/other/busybox:1", reg.addr)])?;
    let line = out.failed()?.error_line();
    ensure!(line.contains("digest sha256:") && line.contains("expected sha256:"), "{out}");
    ensure!(im.names()?.len() == 2, "{:?}", im.names()?);
    let parent = t.dir();
    let temp: Vec<_> =
        std::fs::read_dir(parent)?.flatten().filter(|e| e.file_name().to_string_lossy().contains("pull")).collect();
    ensure!(temp.is_empty(), "a pull's temp dir is left");
    drop(reg);
    t.assert_no_leftovers();
    Ok(())
}

/// A registry that wants a user and password: refused anonymous or with a wrong password
/// (one line, nothing stored), pulled with --creds and with an auth file as podman writes it.
#[test]
fn image_pull_with_credentials_from_the_flag_or_an_auth_file() -> Result<()> {
    let t = Test::new("img_pull_auth");
    let im = Images::new(&t);
    let reg = Registry::start_with(t.dir(), Some(("alice", "s3cret:x")))?;
    reg.push(&busybox_image().join("busybox-oci.tar"), "private/busybox:1")?;
    let name = format!("{}/private/busybox:1", reg.addr);
    let out = im.cmd("image", &["pull", &name])?;
    ensure!(out.failed()?.error_line().contains("wants a user and password (--creds or --authfile)"), "{out}");
    let out = im.cmd("image", &["pull", "--creds", "alice:wrong", &name])?;
    ensure!(out.failed()?.error_line().contains("HTTP 401: unauthorized as user \"alice\""), "{out}");
    ensure!(out.stderr.lines().count() == 1 && !out.stderr.contains("wrong"), "{out}");
    ensure!(im.names()?.is_empty(), "{:?}", im.names()?);
    im.cmd("image", &["pull", "--creds", "alice:s3cret:x", &name])?.ok()?;
    // "alice:s3cret:x" in base64, under the registry's host:port, as `podman login` writes it.
    let auth = t.dir().join("auth.json");
    let entry = format!(r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0Ong="}}}}}}"#, reg.addr);
    std::fs::write(&auth, entry)?;
    let out = im.cmd("image", &["pull", "--authfile", &auth.to_string_lossy(), "--name", "again:1", &name])?;
    out.ok()?;
    ensure!(im.names()?.len() == 2 && im.layers() == 1, "{:?} {} layers", im.names()?, im.layers());
    drop(reg);
    t.assert_no_leftovers();
    Ok(())
}
