//! TLS (`mqtts://`, and under `wss://`) with rustls and the ring provider.
//!
//! [`TlsOptions`] says whom to trust and who we are: CA certificates (default: the
//! system's), a client certificate and key (mutual TLS), the server name sent
//! with SNI and checked against the certificate (default: the URL's host), ALPN,
//! and for tests a single server certificate to accept as is
//! ([`TlsOptions::accept_certificate`]).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{ConnectFuture, Connector, Endpoint, Transport};
use crate::ClientError;

/// Where PEM data comes from.
#[derive(Debug, Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Pem {
    fn certificates(&self, option: &'static str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
        let certs: Result<Vec<_>, _> = match self {
            Pem::File(p) => CertificateDer::pem_file_iter(p).and_then(|it| it.collect()),
            Pem::Bytes(b) => CertificateDer::pem_slice_iter(b).collect(),
        };
        let certs = certs.map_err(|e| invalid(option, format!("{}: {e}", self.name())))?;
        if certs.is_empty() {
            return Err(invalid(
                option,
                format!("{} holds no PEM certificate", self.name()),
            ));
        }
        Ok(certs)
    }

    fn key(&self, option: &'static str) -> Result<PrivateKeyDer<'static>, ClientError> {
        match self {
            Pem::File(p) => PrivateKeyDer::from_pem_file(p),
            Pem::Bytes(b) => PrivateKeyDer::from_pem_slice(b),
        }
        .map_err(|e| invalid(option, format!("{}: no usable PEM private key: {e}", self.name())))
    }

    fn name(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Bytes(_) => "the PEM data".to_string(),
        }
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ClientError {
    ClientError::InvalidOption {
        option,
        reason: reason.into(),
    }
}

/// TLS settings for `mqtts://` and `wss://` ([`crate::Options::tls`]).
///
/// ```
/// use tern_client::transport::TlsOptions;
/// let tls = TlsOptions::new()
///     .ca_file("ca.pem")
///     .client_auth_files("device.pem", "device.key")
///     .server_name("broker.example.com");
/// ```
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    ca: Vec<Pem>,
    identity: Option<(Pem, Pem)>,
    server_name: Option<String>,
    accept: Option<Pem>,
    alpn: Option<Vec<Vec<u8>>>,
}

impl TlsOptions {
    /// Trust the system's CA certificates.
    pub fn new() -> TlsOptions {
        TlsOptions::default()
    }

    /// Trust the CA certificates of this PEM file instead of the system's (repeatable).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> TlsOptions {
        self.ca.push(Pem::File(path.into()));
        self
    }

    /// Trust the CA certificates of this PEM text instead of the system's (repeatable).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> TlsOptions {
        self.ca.push(Pem::Bytes(pem.into()));
        self
    }

    /// Present this certificate chain and key (PEM files) to servers asking for one.
    pub fn client_auth_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsOptions {
        self.identity = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// Present this certificate chain and key (PEM text) to servers asking for one.
    pub fn client_auth_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> TlsOptions {
        self.identity = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self
    }

    /// The name sent with SNI and checked against the server's certificate
    /// (default: the host of the URL).
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// For tests: accept exactly this server certificate (PEM), whatever its issuer,
    /// names and dates; no other certificate is accepted. Signatures are still checked.
    pub fn accept_certificate(mut self, pem: impl Into<Vec<u8>>) -> TlsOptions {
        self.accept = Some(Pem::Bytes(pem.into()));
        self
    }

    /// ALPN protocols to offer (default `mqtt` for `mqtts://`, `http/1.1` for `wss://`).
    pub fn alpn(mut self, protocols: &[&str]) -> TlsOptions {
        self.alpn = Some(protocols.iter().map(|p| p.as_bytes().to_vec()).collect());
        self
    }

    /// Build the connector; errors name the option at fault.
    pub(crate) fn build(&self, default_alpn: &[u8]) -> Result<TlsConnector, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid("tls", e.to_string()))?;
        let builder = match &self.accept {
            Some(pem) => {
                let cert = pem
                    .certificates("tls.accept_certificate")?
                    .into_iter()
                    .next()
                    .ok_or_else(|| invalid("tls.accept_certificate", "no certificate"))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
            }
            None => {
                let mut roots = RootCertStore::empty();
                if self.ca.is_empty() {
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(invalid(
                            "tls.ca_file",
                            "no system CA certificates found; give the server's CA with TlsOptions::ca_file",
                        ));
                    }
                } else {
                    for pem in &self.ca {
                        for c in pem.certificates("tls.ca_file")? {
                            roots
                                .add(c)
                                .map_err(|e| invalid("tls.ca_file", format!("{}: {e}", pem.name())))?;
                        }
                    }
                }
                builder.with_root_certificates(roots)
            }
        };
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = cert.certificates("tls.client_auth")?;
                let key = key.key("tls.client_auth")?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid("tls.client_auth", e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone().unwrap_or_else(|| vec![default_alpn.to_vec()]);
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
        })
    }
}

/// Opens TLS connections (`mqtts://`).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector with these settings.
    pub fn new(options: &TlsOptions) -> Result<TlsConnector, ClientError> {
        options.build(b"mqtt")
    }

    /// TCP, then the TLS handshake.
    pub(crate) async fn open(&self, endpoint: &Endpoint) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        tcp.set_nodelay(true)?;
        let name = self.server_name.as_deref().unwrap_or(&endpoint.host);
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid TLS server name {name:?}: {e}"),
            )
        })?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

impl Connector for TlsConnector {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> ConnectFuture<'a> {
        Box::pin(async move { Ok(Box::new(self.open(endpoint).await?) as Box<dyn Transport>) })
    }
}

/// Accepts one certificate, byte for byte; checks handshake signatures normally.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
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
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server certificate is not the one given to accept_certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
