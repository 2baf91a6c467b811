//! Mutual TLS for the migration stream: TLS 1.3 only, ring's algorithms, and both ends
//! pinned. Each host has a key and a self-signed certificate (`warren migrate keygen`); a peer
//! is trusted when its certificate is byte for byte one of the trusted set (DIR/peers/*.crt and
//! `--peer` files). There are no CAs, names or expiry dates to check: the operator's copy of
//! the peer's certificate is the trust. The handshake signatures are still verified, so only
//! the holder of the pinned certificate's key gets through. Resumption and early data are off:
//! every connection makes a full handshake with fresh keys, so a recorded stream cannot be
//! replayed to a receiver.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, ServerConnection, SignatureScheme, StreamOwned,
};
use sha2::{Digest as _, Sha256};
use warren_images::digest::Digest;

/// Where a host keeps its migration identity and the certificates it trusts.
pub const DEFAULT_DIR: &str = "/etc/warren/migrate";
pub const KEY_FILE: &str = "host.key";
pub const CERT_FILE: &str = "host.crt";
pub const PEERS_DIR: &str = "peers";

/// The server name the source asks for; the pinning ignores names.
const SERVER_NAME: &str = "warren-migrate";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: missing: this host has no migration identity (`warren migrate keygen --dir {dir}` makes one)", dir = .path.parent().unwrap_or(Path::new("/")).display(), path = .path.display())]
    NoIdentity { path: PathBuf },
    #[error("{path}: not a PEM {what}: {source}", path = .path.display())]
    BadPem { path: PathBuf, what: &'static str, source: rustls::pki_types::pem::Error },
    #[error("{path}: no trusted peer certificates: put the peer's host.crt (made there by `warren migrate keygen`) in {path} or pass --peer FILE", path = .dir.display())]
    NoPeers { dir: PathBuf },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unusable with {cert}: {source}", path = .key.display(), cert = .cert.display())]
    BadIdentity { key: PathBuf, cert: PathBuf, source: rustls::Error },
    #[error("{path} exists: keygen does not replace a host key (remove it first to make a new identity)", path = .path.display())]
    KeyExists { path: PathBuf },
    #[error("keygen: {source}")]
    Keygen { source: rcgen::Error },
    #[error("TLS with {peer}: {source}")]
    Handshake { peer: String, source: rustls::Error },
    #[error("TLS with {peer}: its certificate {fingerprint} is not among the trusted peers")]
    Untrusted { peer: String, fingerprint: Digest },
    #[error("TLS with {peer}: it does not trust this host's certificate {fingerprint} (it answered {alert:?})")]
    NotTrusted { peer: String, fingerprint: Digest, alert: AlertDescription },
    #[error("TLS with {peer}: {source}")]
    Stream { peer: String, source: std::io::Error },
}

/// A peer certificate that is not among the trusted ones (wrapped in rustls's error).
#[derive(Debug, thiserror::Error)]
#[error("certificate {0} is not among the trusted peers")]
struct NotPinned(Digest);

/// The SHA-256 of a certificate's DER bytes: what `keygen` prints and errors name.
pub fn fingerprint(cert: &[u8]) -> Digest {
    Digest::from_hasher(Sha256::new_with_prefix(cert))
}

/// Writes a new key (mode 0600) and a self-signed certificate for it into `dir`, and makes
/// `dir/peers`; returns the certificate's fingerprint. An existing key is never replaced.
pub fn keygen(dir: &Path) -> Result<Digest, TlsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir.join(PEERS_DIR)).map_err(io(dir))?;
    let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
    if key_path.exists() {
        return Err(TlsError::KeyExists { path: key_path });
    }
    let key = rcgen::KeyPair::generate().map_err(|source| TlsError::Keygen { source })?;
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "warren".into());
    let mut params =
        rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(|source| TlsError::Keygen { source })?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("warren migrate {host}"));
    let cert = params.self_signed(&key).map_err(|source| TlsError::Keygen { source })?;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::AlreadyExists => TlsError::KeyExists { path: key_path.clone() },
                _ => TlsError::Io { path: key_path.clone(), source },
            }
        })?;
    let written = file
        .write_all(key.serialize_pem().as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io(&key_path))
        .and_then(|_| std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path)));
    if let Err(e) = written {
        // No key without its certificate: the next keygen must be able to start over.
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(fingerprint(cert.der()))
}

/// This host's identity and the peers it trusts, as client and server configurations.
#[derive(Clone)]
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// This host's certificate, by fingerprint (for the error a distrustful peer causes).
    own: Digest,
}

impl Tls {
    /// Loads `dir/host.key`, `dir/host.crt` and the trusted certificates: `dir/peers/*.crt`
    /// and `extra_peers`.
    pub fn load(dir: &Path, extra_peers: &[PathBuf]) -> Result<Tls, TlsError> {
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        if let Some(path) = [&key_path, &cert_path].into_iter().find(|p| !p.exists()) {
            return Err(TlsError::NoIdentity { path: path.clone() });
        }
        let cert = read_cert(&cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|source| TlsError::BadPem {
            path: key_path.clone(),
            what: "private key",
            source,
        })?;
        let peers_dir = dir.join(PEERS_DIR);
        let mut trusted = Vec::new();
        for path in peer_files(&peers_dir)?.iter().chain(extra_peers) {
            trusted.push(read_cert(path)?);
        }
        if trusted.is_empty() {
            return Err(TlsError::NoPeers { dir: peers_dir });
        }
        // Deprecated for lacking post-quantum key exchange, which only aws-lc offers; ring
        // builds into the static binary without a C toolchain's extras (scripts/build.sh).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pinned = Arc::new(Pinned { trusted, algorithms: provider.signature_verification_algorithms });
        let bad = |source| TlsError::BadIdentity { key: key_path.clone(), cert: cert_path.clone(), source };
        let own = fingerprint(&cert);
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .dangerous()
            .with_custom_certificate_verifier(pinned.clone())
            .with_client_auth_cert(vec![cert.clone()], key.clone_key())
            .map_err(bad)?;
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_early_data = false;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .with_client_cert_verifier(pinned)
            .with_single_cert(vec![cert], key)
            .map_err(bad)?;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.max_early_data_size = 0;
        Ok(Tls { client: Arc::new(client), server: Arc::new(server), own })
    }

    /// The client's handshake on a connected socket: it fails unless the server holds the
    /// key of a pinned certificate and accepts this host's.
    pub fn connect(&self, tcp: TcpStream, peer: &str) -> Result<StreamOwned<ClientConnection, TcpStream>, TlsError> {
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        let conn = ClientConnection::new(self.client.clone(), name)
            .map_err(|source| TlsError::Handshake { peer: peer.into(), source })?;
        self.handshake(StreamOwned::new(conn, tcp), peer)
    }

    /// The server's handshake on an accepted socket: it fails unless the client presents a
    /// pinned certificate and proves it holds its key.
    pub fn accept(&self, tcp: TcpStream, peer: &str) -> Result<StreamOwned<ServerConnection, TcpStream>, TlsError> {
        let conn = ServerConnection::new(self.server.clone())
            .map_err(|source| TlsError::Handshake { peer: peer.into(), source })?;
        self.handshake(StreamOwned::new(conn, tcp), peer)
    }

    fn handshake<C, D>(
        &self,
        mut s: StreamOwned<C, TcpStream>,
        peer: &str,
    ) -> Result<StreamOwned<C, TcpStream>, TlsError>
    where
        C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
        D: rustls::SideData,
    {
        while s.conn.is_handshaking() {
            if let Err(e) = s.conn.complete_io(&mut s.sock) {
                return Err(self.error(peer, e));
            }
        }
        Ok(s)
    }

    /// Whether a stream error is TLS's (an alert, a record that does not decrypt).
    pub fn is_tls_error(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
    }

    /// A failed handshake or stream as one line: rustls's reason when it has one.
    pub fn error(&self, peer: &str, e: std::io::Error) -> TlsError {
        let peer = peer.to_string();
        let tls = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned();
        let not_pinned = match &tls {
            Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(why)))) => {
                why.downcast_ref::<NotPinned>().map(|n| n.0.clone())
            }
            _ => None,
        };
        if let Some(fingerprint) = not_pinned {
            return TlsError::Untrusted { peer, fingerprint };
        }
        match tls {
            Some(rustls::Error::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRequired
                | AlertDescription::UnknownCA),
            )) => TlsError::NotTrusted { peer, fingerprint: self.own.clone(), alert },
            Some(source) => TlsError::Handshake { peer, source },
            None => TlsError::Stream { peer, source: e },
        }
    }
}

/// The peer's certificate of a finished handshake, by fingerprint.
pub fn peer_fingerprint<D>(conn: &rustls::ConnectionCommon<D>) -> Option<Digest> {
    conn.peer_certificates().and_then(|c| c.first()).map(|c| fingerprint(c))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(&read(path)?).map_err(|source| TlsError::BadPem {
        path: path.to_path_buf(),
        what: "certificate",
        source,
    })
}

/// `dir/*.crt`, sorted; no directory is no peers.
fn peer_files(dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(TlsError::Io { path: dir.to_path_buf(), source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?.path();
        if path.extension().is_some_and(|e| e == "crt") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Trusts exactly the given end-entity certificates, whichever side presents them.
#[derive(Debug)]
struct Pinned {
    trusted: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.trusted.iter().any(|t| t.as_ref() == cert.as_ref()) {
            return Ok(());
        }
        let why = OtherError(Arc::new(NotPinned(fingerprint(cert))));
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(why)))
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_makes_a_loadable_identity_and_never_replaces_a_key() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fp = keygen(a.path()).unwrap();
        keygen(b.path()).unwrap();
        let cert = std::fs::read(a.path().join(CERT_FILE)).unwrap();
        assert_eq!(fingerprint(CertificateDer::from_pem_slice(&cert).unwrap().as_ref()), fp);
        let mode = std::fs::metadata(a.path().join(KEY_FILE)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert!(matches!(keygen(a.path()), Err(TlsError::KeyExists { .. })));
        // No peers yet: refused by name; with B's certificate it loads.
        assert!(matches!(Tls::load(a.path(), &[]), Err(TlsError::NoPeers { .. })));
        Tls::load(a.path(), &[b.path().join(CERT_FILE)]).unwrap();
        let none = tempfile::tempdir().unwrap();
        let e = Tls::load(none.path(), &[]).err().unwrap().to_string();
        assert!(e.contains("host.key: missing") && e.contains("warren migrate keygen"), "{e}");
    }

    /// Three identities; `trust[i]` lists whom identity i trusts.
    fn identities(trust: [&[usize]; 3]) -> (Vec<tempfile::TempDir>, Vec<Tls>) {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        dirs.iter().for_each(|d| drop(keygen(d.path()).unwrap()));
        let tls = trust
            .iter()
            .map(|peers| peers.iter().map(|&p| dirs[p].path().join(CERT_FILE)).collect::<Vec<_>>())
            .enumerate()
            .map(|(i, certs)| Tls::load(dirs[i].path(), &certs).unwrap())
            .collect();
        (dirs, tls)
    }

    /// A handshake between `client` and `server` on loopback: each side's result.
    fn handshake(client: &Tls, server: &Tls) -> (Result<(), TlsError>, Result<(), TlsError>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.clone();
        let accepted = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut s = server.accept(tcp, "client")?;
            let mut byte = [0u8];
            s.read_exact(&mut byte).map_err(|e| server.error("client", e))
        });
        let tcp = TcpStream::connect(addr).unwrap();
        let connected = client.connect(tcp, "server").and_then(|mut s| {
            s.write_all(b"x").and_then(|_| s.flush()).map_err(|e| client.error("server", e))?;
            // The server's verdict on this client's certificate comes after the handshake.
            let mut rest = Vec::new();
            match s.read_to_end(&mut rest) {
                Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => Err(client.error("server", e)),
                _ => Ok(()),
            }
        });
        (connected, accepted.join().unwrap())
    }

    #[test]
    fn only_pinned_peers_get_through_either_way() {
        // 0 and 1 trust each other; 2 trusts 0, but no one trusts 2.
        let (_dirs, tls) = identities([&[1], &[0], &[0]]);
        let (c, s) = handshake(&tls[0], &tls[1]);
        c.unwrap();
        s.unwrap();
        // The server is not pinned by the client: the client stops in the handshake.
        let (c, s) = handshake(&tls[1], &tls[2]);
        let c = c.unwrap_err().to_string();
        assert!(c.contains("its certificate sha256:") && c.contains("is not among the trusted peers"), "{c}");
        assert!(matches!(s, Err(TlsError::NotTrusted { .. })), "{s:?}");
        // The client is not pinned by the server.
        let (c, s) = handshake(&tls[2], &tls[0]);
        assert!(s.unwrap_err().to_string().contains("is not among the trusted peers"));
        assert!(matches!(c, Err(TlsError::NotTrusted { .. })), "{c:?}");
    }
}
