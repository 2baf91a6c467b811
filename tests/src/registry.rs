//! Image sources for tests: the built-in busybox image (scripts/make-busybox-image.sh) and a
//! real OCI distribution registry (Debian's docker-registry) on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};

/// The busybox image dir (layout/, busybox-oci.tar, busybox-docker.tar).
pub fn busybox_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(ws.join("scripts/make-busybox-image.sh")).output().unwrap();
        assert!(out.status.success(), "make-busybox-image.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// Debian's docker-registry on a free 127.0.0.1 port, its storage in `dir`; killed on drop.
pub struct Registry {
    child: std::process::Child,
    /// HOST:PORT
    pub addr: String,
    /// Its storage (blobs under docker/registry/v2/blobs).
    pub data: PathBuf,
    /// USER:PASSWORD for pushing, when the registry wants one.
    creds: Option<String>,
}

impl Registry {
    pub fn start(dir: &Path) -> Result<Registry> {
        Registry::start_with(dir, None)
    }

    /// With `user` and `password` in an htpasswd file (bcrypt, the only kind it reads):
    /// the registry then answers every request without them with a Basic challenge.
    pub fn start_with(dir: &Path, user: Option<(&str, &str)>) -> Result<Registry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.join("registry");
        let config = dir.join("registry.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            data.display()
        );
        let mut text = text;
        if let Some((name, password)) = user {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{name}:{}\n", bcrypt::hash(password, 4)?))?;
            text += &format!("auth:\n  htpasswd:\n    realm: warren-test\n    path: {}\n", htpasswd.display());
        }
        std::fs::write(&config, text)?;
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("docker-registry (scripts/setup.sh installs it)")?;
        let creds = user.map(|(u, p)| format!("{u}:{p}"));
        let reg = Registry { child, addr, data, creds };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            ensure!(std::time::Instant::now() < end, "the registry did not listen on {}", reg.addr);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// Copies the oci-archive `archive` to NAME (repo:tag) in the registry.
    pub fn push(&self, archive: &Path, name: &str) -> Result<()> {
        self.push_from(&format!("oci-archive:{}", archive.display()), name)
    }

    /// Copies the image skopeo names `source` (transport:ref) to NAME in the registry.
    pub fn push_from(&self, source: &str, name: &str) -> Result<()> {
        let mut cmd = std::process::Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if let Some(c) = &self.creds {
            cmd.arg(format!("--dest-creds={c}"));
        }
        let out = cmd.arg(source).arg(format!("docker://{}/{name}", self.addr)).output()?;
        ensure!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
