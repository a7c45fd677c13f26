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
//!
//! A mesh connector ([`Connector::mesh`], sidecar to sidecar) verifies
//! the peer differently: the chain against the mesh CA, then the
//! certificate's identity (a SAN URI such as
//! `spiffe://cluster.local/ns/shop/sa/order`) instead of a DNS name, as
//! linkerd2-proxy and Istio check the server's identity.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::certs::{self, TlsError};
use skiff_config::tls::{CertFiles, UpstreamTls};

/// Shortest time between two looks at the files for changes.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

type Stamps = Vec<Option<skiff_discovery::file::Stamp>>;

/// A cluster's TLS client settings, built when the config is read.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    loaded: Mutex<Loaded>,
}

/// What a connector's client config is built from.
struct Settings {
    ca: Option<PathBuf>,
    client_cert: Option<CertFiles>,
    /// ALPN protocols offered; empty: none.
    alpn: Vec<Vec<u8>>,
    server_name: Option<ServerName<'static>>,
    /// Mesh: the identity the server's certificate must have, checked
    /// instead of `server_name`.
    peer_identity: Option<String>,
}

struct Loaded {
    config: Arc<rustls::ClientConfig>,
    stamps: Stamps,
    checked: Instant,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.inner.settings.server_name)
            .field("peer_identity", &self.inner.settings.peer_identity)
            .finish()
    }
}

impl Connector {
    /// A cluster's connector, from its `tls` config: roots from `ca` (or
    /// the system), an optional client certificate, SNI, and ALPN for the
    /// cluster's protocol.
    pub(crate) fn for_cluster(tls: &UpstreamTls, http2: bool) -> Result<Connector, TlsError> {
        Connector::build(
            tls.ca.as_deref(),
            tls.client_cert.as_ref(),
            tls.sni.as_deref(),
            http2,
        )
    }

    /// Builds the client config: roots from `ca` (or the system), an
    /// optional client certificate, SNI, ALPN.
    pub(crate) fn build(
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
        Connector::with(Settings {
            ca: ca.map(Path::to_path_buf),
            client_cert: client_cert.cloned(),
            alpn: vec![alpn_of(http2)],
            server_name,
            peer_identity: None,
        })
    }

    /// A sidecar-to-sidecar connector: the client certificate `cert`, the
    /// server verified against `ca` to be `identity` (a SAN URI or DNS
    /// name), `sni` sent so the server's sidecar knows the connection is
    /// for it. `alpn`: the protocol inside (none for opaque TCP).
    pub(crate) fn mesh(
        ca: &Path,
        cert: &CertFiles,
        sni: &str,
        identity: &str,
        alpn: Option<&[u8]>,
    ) -> Result<Connector, TlsError> {
        let server_name = ServerName::try_from(sni.to_owned())
            .map_err(|_| TlsError::new(Path::new("(sni)"), format!("`{sni}` is not a DNS name")))?;
        Connector::with(Settings {
            ca: Some(ca.to_path_buf()),
            client_cert: Some(cert.clone()),
            alpn: alpn.map(<[u8]>::to_vec).into_iter().collect(),
            server_name: Some(server_name),
            peer_identity: Some(identity.to_owned()),
        })
    }

    fn with(settings: Settings) -> Result<Connector, TlsError> {
        let config = Arc::new(settings.client_config()?);
        let stamps = settings.stamps();
        Ok(Connector {
            inner: Arc::new(Inner {
                settings,
                loaded: Mutex::new(Loaded {
                    config,
                    stamps,
                    checked: Instant::now(),
                }),
            }),
        })
    }

    /// Runs the TLS handshake on a connected socket to `address`.
    pub(crate) async fn connect(
        &self,
        address: SocketAddr,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .inner
            .settings
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        tokio_rustls::TlsConnector::from(self.inner.current())
            .connect(name, stream)
            .await
            .map_err(readable)
    }
}

/// A refused certificate's reason in words: rustls shows an `Other` one
/// (a wrong mesh identity) by its Debug form.
fn readable(e: std::io::Error) -> std::io::Error {
    let other = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(why)) => {
                Some(why.0.to_string())
            }
            _ => None,
        });
    match other {
        Some(why) => std::io::Error::new(e.kind(), format!("invalid peer certificate: {why}")),
        None => e,
    }
}

fn alpn_of(http2: bool) -> Vec<u8> {
    if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }
}

impl Settings {
    fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        client_config(
            self.ca.as_deref(),
            self.client_cert.as_ref(),
            &self.alpn,
            self.peer_identity.as_deref(),
        )
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
}

impl Inner {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Loaded> {
        self.loaded.lock()
    }

    /// The config to dial with, reloaded first if its files changed.
    fn current(&self) -> Arc<rustls::ClientConfig> {
        let mut loaded = self.lock();
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let stamps = self.settings.stamps();
            if stamps != loaded.stamps {
                loaded.stamps = stamps;
                match self.settings.client_config() {
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
/// optional client certificate, ALPN; with `peer_identity`, the server is
/// verified to be that identity instead of the name dialled.
fn client_config(
    ca: Option<&Path>,
    client_cert: Option<&CertFiles>,
    alpn: &[Vec<u8>],
    peer_identity: Option<&str>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match ca {
        Some(ca) => certs::load_roots(ca)?,
        None => certs::system_roots()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new(Path::new("(tls)"), e.to_string()))?;
    let builder = match peer_identity {
        None => builder.with_root_certificates(roots),
        Some(identity) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerIdentity {
                roots: Arc::new(roots),
                identity: vec![identity.to_owned()],
            })),
    };
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
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// A server certificate refused for its identity, naming both: the log
/// line of a failed mesh connection must say who answered.
#[derive(Debug)]
pub(crate) struct WrongIdentity {
    pub(crate) expected: String,
    pub(crate) presented: String,
}

impl std::fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's identity is {}, expected {}",
            self.presented, self.expected
        )
    }
}

impl std::error::Error for WrongIdentity {}

/// Verifies a mesh peer: its chain up to the mesh CA (webpki, no name
/// check), then its identity against the one expected.
#[derive(Debug)]
struct PeerIdentity {
    roots: Arc<rustls::RootCertStore>,
    /// One entry, in the form [`super::identity::allowed`] takes.
    identity: Vec<String>,
}

impl ServerCertVerifier for PeerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            certs::provider().signature_verification_algorithms.all,
        )?;
        let names = super::identity::names(end_entity);
        if super::identity::allowed(&names, &self.identity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(WrongIdentity {
                    expected: self.identity.join(","),
                    presented: names.joined(),
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &certs::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &certs::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        certs::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
