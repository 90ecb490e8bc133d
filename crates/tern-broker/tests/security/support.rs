//! Helpers: a raw MQTT peer over any byte stream, a temporary directory, test
//! certificates, and TLS / WebSocket client streams.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::{BrokerBuilder, BrokerHandle};
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::{ConnAck, Connect, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const V5: ProtocolVersion = ProtocolVersion::V5;
pub const WAIT: Duration = Duration::from_secs(5);

/// Any byte stream a peer can talk over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("tern_broker=debug")
        .try_init();
}

/// Start a broker; `f` adds listeners and settings (a plain TCP listener on port 0 is always first).
pub async fn start(f: impl FnOnce(BrokerBuilder) -> BrokerBuilder) -> BrokerHandle {
    init_logs();
    f(BrokerBuilder::new().listen("127.0.0.1:0".parse().unwrap()))
        .bind()
        .await
        .expect("bind")
        .spawn()
}

/// A raw MQTT peer.
pub struct Peer {
    io: Box<dyn Io>,
    buf: BytesMut,
    decoder: Decoder,
    pub version: ProtocolVersion,
}

impl Peer {
    pub fn over(io: impl Io + 'static, version: ProtocolVersion) -> Peer {
        Peer {
            io: Box::new(io),
            buf: BytesMut::new(),
            decoder: Decoder::new(version, 1 << 20),
            version,
        }
    }

    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion) -> Peer {
        let s = TcpStream::connect(addr).await.unwrap();
        // Small packets at once (Nagle would hold a PUBACK until the previous segment is acknowledged).
        s.set_nodelay(true).unwrap();
        Peer::over(s, version)
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(self.version, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next packet (`Ok(None)`: closed), `Err(())` after `d`.
    pub async fn next_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Decoded::Packet(p) = self.decoder.decode(&mut self.buf).expect("malformed packet") {
                return Ok(Some(p));
            }
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.next_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
            .expect("connection closed while waiting for a packet")
    }

    /// Expect the connection to close (a DISCONNECT may come first; its reason is returned).
    pub async fn expect_closed(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        loop {
            match self
                .next_within(WAIT)
                .await
                .expect("connection not closed in time")
            {
                None => return reason,
                Some(Packet::Disconnect(d)) => reason = Some(d.reason()),
                Some(p) => panic!("expected close, got {p:?}"),
            }
        }
    }

    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(p) = self.next_within(Duration::from_millis(ms)).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Send CONNECT and return the CONNACK.
    pub async fn connect(&mut self, c: Connect) -> ConnAck {
        self.send(Packet::Connect(Box::new(c))).await;
        match self.recv().await {
            Packet::ConnAck(a) => a,
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    pub async fn sync(&mut self) {
        self.send(Packet::PingReq).await;
        assert!(matches!(self.recv().await, Packet::PingResp));
    }
}

/// A CONNECT with a clean session, keep-alive 0 and optional credentials.
pub fn connect(version: ProtocolVersion, id: &str, user: Option<&str>, password: Option<&str>) -> Connect {
    let mut c = Connect::new(version, id);
    c.keep_alive = 0;
    c.username = user.map(Into::into);
    c.password = password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    c
}

/// Connect over TCP and expect `expected` in CONNACK.
pub async fn connect_tcp(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (Peer, ReasonCode) {
    let mut p = Peer::tcp(addr, version).await;
    let ack = p.connect(connect(version, id, user, password)).await;
    (p, ack.reason_code)
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tern-security-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A password file's text with these users (few iterations, to keep tests fast).
pub fn passwords(users: &[(&str, &str)]) -> String {
    use tern_broker::security::password::{PasswordFile, MIN_ITERATIONS};
    let mut f = PasswordFile::default();
    for (u, p) in users {
        f.add(u, p.as_bytes(), MIN_ITERATIONS).unwrap();
    }
    f.to_text()
}

pub fn write_passwords(path: &Path, users: &[(&str, &str)]) {
    std::fs::write(path, passwords(users)).unwrap();
}

/// Test certificates: a CA, a server certificate for localhost / 127.0.0.1, and
/// client certificates on demand, as PEM files in a temporary directory.
pub struct Pki {
    pub dir: TempDir,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let params = ca_params("Tern test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut sp =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        sp.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let server = sp.signed_by(&server_key, &issuer).unwrap();
        let ca_pem = ca_cert.pem();
        Pki {
            ca_file: dir.file("ca.pem", &ca_pem),
            server_cert: dir.file("server.pem", &server.pem()),
            server_key: dir.file("server.key", &server_key.serialize_pem()),
            server_cert_pem: server.pem(),
            ca_pem,
            dir,
            issuer,
        }
    }

    /// A client certificate with this CN, signed by the CA: (certificate PEM, key PEM).
    pub fn client(&self, cn: &str) -> (String, String) {
        self.client_with(cn, |_| {})
    }

    pub fn client_with(&self, cn: &str, f: impl FnOnce(&mut rcgen::CertificateParams)) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        f(&mut p);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A new server certificate for localhost / 127.0.0.1 with its own key: (certificate
    /// PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A CRL of this CA revoking these serial numbers (PEM).
    pub fn crl(&self, revoked: &[u64]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|n| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*n),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    /// A client certificate from a CA nobody trusts.
    pub fn stranger(cn: &str) -> (String, String) {
        let other = Pki::new("stranger");
        other.client(cn)
    }

    /// A tls/wss listener on port 0 with this PKI's server certificate; with
    /// `client_ca`, client certificates are required.
    pub fn listener(&self, kind: tern_broker::ListenerKind, client_ca: bool) -> tern_broker::ListenerConfig {
        let mut l = tern_broker::ListenerConfig::new(kind, "127.0.0.1:0".parse().unwrap());
        l.cert = Some(self.server_cert.clone());
        l.key = Some(self.server_key.clone());
        if client_ca {
            l.client_ca = Some(self.ca_file.clone());
        }
        l
    }

    /// A rustls client configuration trusting this CA, optionally with a client certificate.
    pub fn client_config(
        &self,
        identity: Option<&(String, String)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&str],
    ) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
            None => b.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS stream to `addr` (server name localhost).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&(String, String)>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = self.client_config(identity, &[&rustls::version::TLS13, &rustls::version::TLS12], &[]);
        tls_connect(addr, config).await
    }
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Whether an MQTT session can be established over `io`: CONNECT gets CONNACK Success.
/// With TLS 1.3 a refused client certificate shows only here, as a closed connection.
pub async fn mqtt_works(io: impl Io + 'static, id: &str) -> bool {
    let mut p = Peer::over(io, V5);
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(connect(V5, id, None, None)))
        .encode(V5, &mut out)
        .unwrap();
    if p.io.write_all(&out).await.is_err() || p.io.flush().await.is_err() {
        return false;
    }
    matches!(
        p.next_within(WAIT).await,
        Ok(Some(Packet::ConnAck(a))) if a.reason_code == ReasonCode::Success
    )
}
