//! TLS settings of both ends, read from PEM files when the configuration is
//! validated (so a missing or unreadable file is reported before any socket
//! opens, naming its flag).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Reads a PEM file given with `flag`.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(format!("{flag} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// The coordinator's certificate and key, and optionally the CA whose client
/// certificates it requires (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl ServerTls {
    /// From `--tls-cert`, `--tls-key` and `--tls-client-ca`; `None` when no TLS flag is given.
    pub fn load(cert: Option<&Path>, key: Option<&Path>, client_ca: Option<&Path>) -> Result<Option<Self>, String> {
        match (cert, key) {
            (None, None) if client_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(ServerTls {
                cert: read_pem("--tls-cert", cert)?,
                key: read_pem("--tls-key", key)?,
                client_ca: client_ca.map(|ca| read_pem("--tls-client-ca", ca)).transpose()?,
            })),
            _ => Err("--tls-cert and --tls-key go together (and --tls-client-ca needs both)".to_owned()),
        }
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    pub fn config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// The CA a worker trusts for the coordinator's certificate, and optionally
/// the worker's own certificate and key for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// From `--tls-ca`, `--tls-cert` and `--tls-key`; `None` when no TLS flag is given.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, String> {
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?)),
            _ => return Err("--tls-cert and --tls-key go together".to_owned()),
        };
        match ca {
            Some(ca) => Ok(Some(ClientTls { ca: read_pem("--tls-ca", ca)?, identity })),
            None if identity.is_some() => Err("--tls-cert needs --tls-ca (the coordinator's CA)".to_owned()),
            None => Ok(None),
        }
    }

    /// The client configuration for a coordinator whose certificate names `domain`.
    pub fn config(&self, domain: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca)).domain_name(domain);
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_must_come_in_pairs_and_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("a.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello").unwrap();
        assert_eq!(ServerTls::load(None, None, None), Ok(None));
        assert!(ServerTls::load(Some(&pem), None, None).unwrap_err().contains("go together"));
        assert!(ServerTls::load(Some(&pem), Some(&junk), None).unwrap_err().starts_with("--tls-key"));
        let missing = dir.path().join("missing.pem");
        assert!(ClientTls::load(Some(&missing), None, None).unwrap_err().starts_with("--tls-ca"));
        assert!(ClientTls::load(None, Some(&pem), Some(&pem)).unwrap_err().contains("needs --tls-ca"));
        assert!(ClientTls::load(Some(&pem), None, None).unwrap().is_some());
    }
}
