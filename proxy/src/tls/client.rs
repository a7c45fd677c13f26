//! Upstream TLS: how skiff connects to a cluster's endpoints when the
//! cluster has a `tls` section.
//!
//! The endpoint's certificate is verified against the cluster's CA bundle
//! (or the system's roots) for the `sni` name, or for the endpoint's IP
//! address when no name is given. ALPN offers exactly the cluster's
//! protocol, so an `http2` cluster gets h2 and an `http1` one HTTP/1.1.
//!
//! The CA bundle and client certificate are re-read when their files
//! change (a rotated mesh certificate), looked at when a new upstream
//! connection is dialled, at most once per [`RECHECK`]: dials are rare
//! next to requests, and no task is needed. A new set that does not load
//! is logged and the last good one stays.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::certs::{self, TlsError};
use super::config::CertFiles;

/// Shortest time between two looks at the files for changes.
pub const RECHECK: Duration = Duration::from_secs(1);

type Stamps = Vec<Option<skiff_discovery::file::Stamp>>;

/// A cluster's TLS client settings, built when the config is read.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Option<PathBuf>,
    client_cert: Option<CertFiles>,
    http2: bool,
    server_name: Option<ServerName<'static>>,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    config: Arc<rustls::ClientConfig>,
    stamps: Stamps,
    checked: Instant,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.inner.server_name)
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
        let server_name = sni
            .map(|s| {
                ServerName::try_from(s.to_owned()).map_err(|_| {
                    TlsError::new(Path::new("(sni)"), format!("`{s}` is not a DNS name"))
                })
            })
            .transpose()?;
        let inner = Inner {
            ca: ca.map(Path::to_path_buf),
            client_cert: client_cert.cloned(),
            http2,
            server_name,
            loaded: Mutex::new(Loaded {
                config: Arc::new(client_config(ca, client_cert, http2)?),
                stamps: Vec::new(),
                checked: Instant::now(),
            }),
        };
        let stamps = inner.stamps();
        inner.lock().stamps = stamps;
        Ok(Connector {
            inner: Arc::new(inner),
        })
    }

    /// Runs the TLS handshake on a connected socket to `address`.
    pub async fn connect(
        &self,
        address: SocketAddr,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .inner
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        tokio_rustls::TlsConnector::from(self.inner.current())
            .connect(name, stream)
            .await
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self.ca.iter().map(PathBuf::as_path).collect();
        if let Some(c) = &self.client_cert {
            files.push(&c.cert);
            files.push(&c.key);
        }
        files
    }

    fn stamps(&self) -> Stamps {
        self.files()
            .iter()
            .map(|f| skiff_discovery::file::stamp(f).ok())
            .collect()
    }

    /// The config to dial with, reloaded first if its files changed.
    fn current(&self) -> Arc<rustls::ClientConfig> {
        let mut loaded = self.lock();
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let stamps = self.stamps();
            if stamps != loaded.stamps {
                loaded.stamps = stamps;
                match client_config(self.ca.as_deref(), self.client_cert.as_ref(), self.http2) {
                    Ok(config) => {
                        loaded.config = Arc::new(config);
                        tracing::info!("upstream TLS files reloaded");
                    }
                    Err(e) => tracing::error!(
                        "new upstream TLS files refused, the running ones stay: {e}"
                    ),
                }
            }
        }
        loaded.config.clone()
    }
}

/// Builds the client config: roots from `ca` (or the system), an
/// optional client certificate, ALPN.
fn client_config(
    ca: Option<&Path>,
    client_cert: Option<&CertFiles>,
    http2: bool,
) -> Result<rustls::ClientConfig, TlsError> {
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
    Ok(config)
}
