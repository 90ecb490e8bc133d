//! A test CA, a server certificate for the given names and a client certificate with a
//! common name, written as PEM files into a directory (removed on drop).

use std::path::{Path, PathBuf};

/// The files of a test PKI.
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate (for `server_names`).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client certificate (common name `client_cn`, client authentication).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Generate everything into `dir` (created).
    pub fn new(dir: &Path, server_names: &[&str], client_cn: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "tern test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        let mut sp = rcgen::CertificateParams::new(names).unwrap();
        sp.distinguished_name.push(
            rcgen::DnType::CommonName,
            server_names.first().copied().unwrap_or("server"),
        );
        let server = sp.signed_by(&server_key, &issuer).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name.push(rcgen::DnType::CommonName, client_cn);
        cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = cp.signed_by(&client_key, &issuer).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            client_cert: write("client.pem", &client.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
