//! Opening connections to the target: TCP with `TCP_NODELAY`, TLS when the
//! protocol says so, then the HTTP/1.1 or HTTP/2 handshake of hyper's client
//! connection API. Also builds the request every send clones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::{LoadError, LoadSpec, Protocol, TlsOptions};

/// The body type of every generated request.
pub(crate) type RequestBody = Full<Bytes>;

/// Opens connections to one target; shared by all of a run's connections so
/// that they can reconnect.
pub(crate) struct Connector {
    /// `host:port` as the user wrote it, for error messages.
    target: String,
    addresses: Vec<SocketAddr>,
    protocol: Protocol,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

/// An open connection: one sender per stream, and the task driving it.
pub(crate) struct Connection {
    pub streams: Vec<Sender>,
    _driver: AbortOnDrop,
}

/// Sends requests over one connection.
pub(crate) enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// Aborts the connection's task when the connection is dropped, so a run
/// leaves no connection behind, even one waiting on a timed-out response.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connector {
    /// Resolves the target and prepares TLS; connects nothing yet.
    pub async fn new(spec: &LoadSpec) -> Result<Self, LoadError> {
        let target = spec.authority()?;
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host(&target)
            .await
            .map_err(|cause| LoadError::Resolve {
                target: target.clone(),
                cause,
            })?
            .collect();
        if addresses.is_empty() {
            return Err(LoadError::Resolve {
                target,
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            });
        }
        let tls = match spec.protocol {
            Protocol::Https => Some((
                TlsConnector::from(Arc::new(tls_config(&spec.tls, spec.new_connections)?)),
                server_name(spec)?,
            )),
            Protocol::Http1 | Protocol::H2 => None,
        };
        Ok(Connector {
            target,
            addresses,
            protocol: spec.protocol,
            tls,
            timeout: spec.timeout,
        })
    }

    /// Opens one connection carrying `streams` requests at a time.
    pub async fn connect(&self, streams: usize) -> Result<Connection, LoadError> {
        let tcp = self.connect_tcp().await?;
        match &self.tls {
            None => self.handshake(tcp, streams).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .unwrap_or_else(|_| Err(timed_out(self.timeout)))
                    .map_err(|cause| LoadError::Tls {
                        target: self.target.clone(),
                        cause,
                    })?;
                self.handshake(tls, streams).await
            }
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, LoadError> {
        let mut last_error = None;
        for address in &self.addresses {
            let attempt = tokio::time::timeout(self.timeout, TcpStream::connect(address))
                .await
                .unwrap_or_else(|_| Err(timed_out(self.timeout)));
            match attempt {
                Ok(stream) => {
                    // Small requests and responses: no Nagle delay.
                    stream
                        .set_nodelay(true)
                        .map_err(|cause| LoadError::Connect {
                            target: self.target.clone(),
                            cause,
                        })?;
                    return Ok(stream);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(LoadError::Connect {
            target: self.target.clone(),
            cause: last_error.unwrap_or_else(|| timed_out(self.timeout)),
        })
    }

    async fn handshake<I>(&self, io: I, streams: usize) -> Result<Connection, LoadError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let handshake_error = |version, cause| LoadError::Handshake {
            target: self.target.clone(),
            version,
            cause,
        };
        // The driver's own error is dropped: it also fails the requests in
        // flight, which is where it is counted.
        match self.protocol {
            Protocol::Http1 | Protocol::Https => {
                let (sender, driver) = http1::handshake(io)
                    .await
                    .map_err(|e| handshake_error("HTTP/1.1", e))?;
                Ok(Connection {
                    streams: vec![Sender::Http1(sender)],
                    _driver: AbortOnDrop(tokio::spawn(async move {
                        let _ = driver.await;
                    })),
                })
            }
            Protocol::H2 => {
                let (sender, driver) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| handshake_error("HTTP/2", e))?;
                Ok(Connection {
                    streams: (0..streams)
                        .map(|_| Sender::Http2(sender.clone()))
                        .collect(),
                    _driver: AbortOnDrop(tokio::spawn(async move {
                        let _ = driver.await;
                    })),
                })
            }
        }
    }
}

impl Sender {
    /// Waits until the connection can take a request; an error means it has
    /// closed (the server may close an idle or `Connection: close` one).
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::Http1(sender) => sender.ready().await,
            Sender::Http2(sender) => sender.ready().await,
        }
    }

    pub async fn send(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(request).await,
        }
    }

    /// True when a failed request left the connection unusable: an HTTP/1.1
    /// connection always is, an HTTP/2 one only if it has closed.
    pub fn needs_reconnect(&self) -> bool {
        match self {
            Sender::Http1(_) => true,
            Sender::Http2(sender) => sender.is_closed(),
        }
    }
}

/// The request every send clones: cloning shares the URI's and body's bytes,
/// so the only per-request allocation is the header map's.
pub(crate) struct RequestTemplate {
    request: Request<RequestBody>,
}

impl RequestTemplate {
    pub fn new(spec: &LoadSpec) -> Result<Self, LoadError> {
        let mut request = Request::new(Full::new(spec.body.clone()));
        *request.method_mut() = spec.method.clone();
        *request.headers_mut() = spec.headers.clone();
        match spec.protocol {
            // HTTP/1.1 sends the path (origin form) and the host header.
            Protocol::Http1 | Protocol::Https => {
                let path = spec
                    .url
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse::<Uri>()
                    .map_err(|e| LoadError::InvalidSpec {
                        label: spec.label.clone(),
                        reason: format!("URL {} has no usable path: {e}", spec.url),
                    })?;
                *request.uri_mut() = path;
                if spec.new_connections {
                    request
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                if !request.headers().contains_key(HOST) {
                    let authority = spec.url.authority().map_or("", |a| a.as_str());
                    let host =
                        HeaderValue::from_str(authority).map_err(|e| LoadError::InvalidSpec {
                            label: spec.label.clone(),
                            reason: format!("URL {} has no usable host: {e}", spec.url),
                        })?;
                    request.headers_mut().insert(HOST, host);
                }
            }
            // HTTP/2 takes scheme and authority from the full URI.
            Protocol::H2 => *request.uri_mut() = spec.url.clone(),
        }
        Ok(RequestTemplate { request })
    }

    pub fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(self.request.body().clone());
        *request.method_mut() = self.request.method().clone();
        *request.uri_mut() = self.request.uri().clone();
        *request.headers_mut() = self.request.headers().clone();
        request
    }
}

fn timed_out(after: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("timed out after {after:?}"),
    )
}

fn server_name(spec: &LoadSpec) -> Result<ServerName<'static>, LoadError> {
    let host = spec.url.host().unwrap_or_default();
    // An IPv6 host comes bracketed in a URL.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| LoadError::InvalidSpec {
        label: spec.label.clone(),
        reason: format!("host {host} cannot be checked against a certificate: {e}"),
    })
}

/// With `full_handshakes`, sessions are not resumed.
fn tls_config(options: &TlsOptions, full_handshakes: bool) -> Result<ClientConfig, LoadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(LoadError::TlsConfig)?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(trusted_roots(options)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if full_handshakes {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

fn trusted_roots(options: &TlsOptions) -> Result<RootCertStore, LoadError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = &options.ca_cert else {
        return Ok(roots);
    };
    let ca_error = |reason: String| LoadError::CaCert {
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("no PEM certificate in the file".into()));
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted, but the handshake signatures
/// are still checked, as curl's `-k` does.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
