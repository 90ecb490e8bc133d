//! TLS for the tls and wss listeners: the rustls server configuration from PEM
//! files (TLS 1.2 and 1.3, ring provider), optional client-certificate
//! verification against a CA (mutual TLS), and the subject CN of a verified
//! client certificate, for `use_identity_as_username`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ListenerConfig, ListenerKind};
use crate::BrokerError;

fn bad(index: usize, field: &str, problem: impl std::fmt::Display) -> BrokerError {
    BrokerError::Config(format!("`listener[{index}].{field}`: {problem}"))
}

/// Every certificate in a PEM file; an error when there is none.
fn certificates(path: &Path, index: usize, field: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            bad(
                index,
                field,
                format!("cannot read certificates from {}: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            index,
            field,
            format!(
                "{} holds no certificate; give a PEM file with -----BEGIN CERTIFICATE----- blocks",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The rustls configuration of a tls/wss listener.
pub(super) fn server_config(l: &ListenerConfig, index: usize) -> Result<Arc<ServerConfig>, BrokerError> {
    let (Some(cert_path), Some(key_path)) = (&l.cert, &l.key) else {
        return Err(bad(index, "cert", "a tls/wss listener needs `cert` and `key`"));
    };
    let certs = certificates(cert_path, index, "cert")?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        bad(
            index,
            "key",
            format!(
                "cannot read a private key from {}: {e}; give a PEM file with a PKCS#8, PKCS#1 or SEC1 key",
                key_path.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(index, "cert", format!("TLS setup failed: {e}")))?;
    let builder = match &l.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca_path, index, "client_ca")? {
                roots.add(c).map_err(|e| {
                    bad(
                        index,
                        "client_ca",
                        format!(
                            "{} holds a certificate that is not a usable CA: {e}",
                            ca_path.display()
                        ),
                    )
                })?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl_path) = &l.crl_file {
                let crls = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(crl_path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(index, "crl_file", format!("{}: {e}", crl_path.display())))?;
                if crls.is_empty() {
                    return Err(bad(
                        index,
                        "crl_file",
                        format!("{}: no CRL in it", crl_path.display()),
                    ));
                }
                verifier = verifier.with_crls(crls);
            }
            let verifier = if l.require_client_cert.unwrap_or(true) {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| bad(index, "client_ca", format!("{}: {e}", ca_path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        bad(
            index,
            "key",
            format!("{e}; the key must be the private key of the first certificate in `cert`"),
        )
    })?;
    // ALPN: "mqtt" for MQTT over TLS; WebSocket over TLS is HTTP/1.1.
    config.alpn_protocols = match l.kind {
        ListenerKind::Wss => vec![b"http/1.1".to_vec()],
        _ => vec![b"mqtt".to_vec()],
    };
    Ok(Arc::new(config))
}

/// A listener's TLS configuration, replaced whole by [`TlsSlot::reload`]: new handshakes
/// use the new certificate, key, client CA and CRL; established connections keep theirs.
pub(crate) struct TlsSlot {
    listener: ListenerConfig,
    index: usize,
    acceptor: std::sync::RwLock<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for TlsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSlot")
            .field("index", &self.index)
            .field("address", &self.listener.address)
            .finish_non_exhaustive()
    }
}

impl TlsSlot {
    /// Load the listener's TLS files; errors name the field.
    pub fn new(l: &ListenerConfig, index: usize) -> Result<TlsSlot, BrokerError> {
        Ok(TlsSlot {
            listener: l.clone(),
            index,
            acceptor: std::sync::RwLock::new(tokio_rustls::TlsAcceptor::from(server_config(l, index)?)),
        })
    }

    /// The acceptor for a new handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let l = &self.listener;
        [&l.cert, &l.key, &l.client_ca, &l.crl_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Read the listener's files again. A file that does not load or a key that does not
    /// match its certificate keeps the configuration in force; the error names the field.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.listener, self.index).map_err(|e| e.to_string())?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = tokio_rustls::TlsAcceptor::from(config);
        Ok(())
    }
}

/// The subject CN of the client's verified certificate: `None` without a
/// certificate, `Some(None)` when it has no CN in UTF-8.
pub(super) fn peer_name(conn: &rustls::ServerConnection) -> Option<Option<String>> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(subject_common_name(leaf.as_ref()))
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*input.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, input.get(header..end)?, input.get(end..)?))
}

/// The first commonName (OID 2.5.4.3) of a certificate's subject, if it is a
/// UTF8String, PrintableString or IA5String holding valid UTF-8.
fn subject_common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, validity, subject.
    let (tag, _, r) = der(rest)?;
    if tag == 0xa0 {
        rest = r;
    }
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (SEQUENCE, mut rdns, _) = der(rest)? else {
        return None;
    };
    while !rdns.is_empty() {
        let (tag, set, r) = der(rdns)?;
        rdns = r;
        if tag != SET {
            return None;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, r) = der(atvs)?;
            atvs = r;
            if tag != SEQUENCE {
                return None;
            }
            let (0x06, oid, value) = der(atv)? else {
                return None;
            };
            if oid == CN_OID {
                let (vtag, v, _) = der(value)?;
                return match vtag {
                    0x0c | 0x13 | 0x16 => std::str::from_utf8(v).ok().map(str::to_string),
                    _ => None,
                };
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["device".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Tern");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-17");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()).as_deref(), Some("sensor-17"));

        let params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        let mut params = params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x02, 0x30, 0x05],
        ] {
            assert_eq!(subject_common_name(bytes), None);
        }
    }
}
