//! TLS settings of a connection (rustls with the ring provider).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// How to reach a server started with `--tls-cert`: the CA to trust, and optionally a client
/// certificate for servers started with `--tls-client-ca`.
///
/// ```no_run
/// # async fn demo() -> rpyc_client::Result<()> {
/// use rpyc_client::{Connection, TlsOptions};
/// let conn = Connection::builder("rpycs://lab-host:18812")
///     .tls(TlsOptions::new().ca_file("ca.pem").client_cert("me.pem", "me.key"))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TlsOptions {
    ca_files: Vec<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

impl TlsOptions {
    /// No CA yet: add one with [`ca_file`](Self::ca_file).
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Trusts the CA certificates in this PEM file (may be given several times).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Presents this PEM certificate chain and key (for mutual TLS).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Checks the server certificate against this name instead of the host of the address.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The connector and the name to verify, for a connection to `addr` (`host:port`).
    pub(crate) fn connector(&self, addr: &str) -> Result<(TlsConnector, ServerName<'static>)> {
        let invalid =
            |what: String| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
        if self.ca_files.is_empty() {
            return Err(invalid(
                "TLS needs a CA to trust: TlsOptions::new().ca_file(\"ca.pem\")".to_owned(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for path in &self.ca_files {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("CA file {}: {e}", path.display())))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| invalid(format!("client key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid(format!("client certificate {}: {e}", cert.display())))?
            }
        };
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_owned(),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| invalid(format!("{host:?} is not a valid TLS server name: {e}")))?;
        Ok((TlsConnector::from(Arc::new(config)), name))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let invalid = |e: rustls::pki_types::pem::Error| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot read certificates from {}: {e}", path.display()),
        ))
    };
    CertificateDer::pem_file_iter(path)
        .map_err(invalid)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("lab-host:18812"), "lab-host");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:18812"), "::1");
        assert_eq!(host_of("name"), "name");
    }
}
