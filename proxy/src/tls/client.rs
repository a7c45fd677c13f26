//! Upstream TLS: how skiff connects to a cluster's endpoints when the
//! cluster has a `tls` section.
//!
//! The endpoint's certificate is verified against the cluster's CA bundle
//! (or the system's roots) for the `sni` name, or for the endpoint's IP
//! address when no name is given. ALPN offers exactly the cluster's
//! protocol, so an `http2` cluster gets h2 and an `http1` one HTTP/1.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::certs::{self, TlsError};
use super::config::CertFiles;

/// A cluster's TLS client settings, built once when the config is read.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Two connectors built from the same fields are the same; the fields
/// beside it in the config decide equality.
impl PartialEq for Connector {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Connector {
    /// Builds the client config: roots from `ca` (or the system), an
    /// optional client certificate, SNI, ALPN.
    pub fn build(
        ca: Option<&Path>,
        client_cert: Option<&CertFiles>,
        sni: Option<&str>,
        http2: bool,
    ) -> Result<Connector, TlsError> {
        let roots = match ca {
            Some(ca) => certs::load_roots(ca)?,
            None => certs::system_roots()?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::new(Path::new("(tls)"), e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let key = certs::load_pair(&files.cert, &files.key)?;
                builder
                    .with_client_auth_cert(key.cert, certs::load_key(&files.key)?)
                    .map_err(|e| {
                        TlsError::new(&files.cert, format!("unusable client certificate: {e}"))
                    })?
            }
        };
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = sni
            .map(|s| {
                ServerName::try_from(s.to_owned()).map_err(|_| {
                    TlsError::new(Path::new("(sni)"), format!("`{s}` is not a DNS name"))
                })
            })
            .transpose()?;
        Ok(Connector {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Runs the TLS handshake on a connected socket to `address`.
    pub async fn connect(
        &self,
        address: SocketAddr,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }
}
