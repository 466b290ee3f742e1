//! TLS settings shared by the services: the files a server presents (and,
//! for mutual TLS, the CA its clients' certificates must chain to), and the
//! files a client trusts and presents. Keys are read from files only, never
//! from the config text, and no key material is ever logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// What a TLS server presents. Off while `cert_file` is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    /// PEM certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Set = mutual TLS: clients must present a certificate this CA (PEM) signed.
    pub client_ca_file: PathBuf,
}

/// What a TLS client trusts and presents. Off while `ca_file` is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    /// PEM CA the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// For mutual TLS: this client's PEM certificate and key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The name checked against the server's certificate; empty = the host dialled.
    pub domain_name: String,
}

impl ServerTls {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    pub fn mutual(&self) -> bool {
        !self.client_ca_file.as_os_str().is_empty()
    }

    /// Checks that the files are given together.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let (cert, tls_key) = (self.enabled(), !self.key_file.as_os_str().is_empty());
        if cert != tls_key || (self.mutual() && !cert) {
            return Err(ConfigError::Invalid(format!(
                "{key}: cert_file and key_file go together (and client_ca_file needs them)"
            )));
        }
        Ok(())
    }

    /// A rustls server config (HTTP/1.1 and HTTP/2 by ALPN), reading the files now.
    pub fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?;
        let builder = if self.mutual() {
            let roots = Arc::new(roots(&self.client_ca_file)?);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| ConfigError::Invalid(format!("TLS client CA {}: {e}", self.client_ca_file.display())))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(certificates(&self.cert_file)?, private_key(&self.key_file)?)
            .map_err(|e| ConfigError::Invalid(format!("TLS certificate {}: {e}", self.cert_file.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ClientTls {
    pub fn enabled(&self) -> bool {
        !self.ca_file.as_os_str().is_empty()
    }

    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let (cert, tls_key) = (!self.cert_file.as_os_str().is_empty(), !self.key_file.as_os_str().is_empty());
        if cert != tls_key || (cert && !self.enabled()) {
            return Err(ConfigError::Invalid(format!("{key}: cert_file and key_file go together, with ca_file")));
        }
        Ok(())
    }
}

/// The bytes of a PEM file, with an error naming it and what it is.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read { path: format!("{what} {}", path.display()), source })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_pem(path, "TLS certificate")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::Invalid(format!("TLS certificate {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::Invalid(format!("TLS certificate {}: no certificate in it", path.display())));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_pem(path, "TLS key")?;
    // The error names the file, never its content.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| ConfigError::Invalid(format!("TLS key {}: no PEM private key in it", path.display())))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert).map_err(|e| ConfigError::Invalid(format!("TLS CA {}: {e}", path.display())))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_together() {
        let half = ServerTls { cert_file: "c.pem".into(), ..ServerTls::default() };
        assert!(half.validate("grpc.tls").unwrap_err().to_string().contains("grpc.tls"));
        assert!(ServerTls::default().validate("x").is_ok());
        let client = ClientTls { cert_file: "c.pem".into(), key_file: "k.pem".into(), ..ClientTls::default() };
        assert!(client.validate("routing.tls").is_err());
    }

    #[test]
    fn a_server_config_is_built_from_pem_files_and_bad_keys_are_named_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let tls = ServerTls {
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
            client_ca_file: dir.path().join("cert.pem"),
        };
        assert!(tls.rustls().is_ok());
        std::fs::write(dir.path().join("key.pem"), "SECRET-NOT-A-KEY").unwrap();
        let err = tls.rustls().unwrap_err().to_string();
        assert!(err.contains("key.pem") && !err.contains("SECRET"), "{err}");
        let missing = ServerTls { cert_file: dir.path().join("nope.pem"), ..tls };
        assert!(missing.rustls().unwrap_err().to_string().contains("nope.pem"));
    }
}
