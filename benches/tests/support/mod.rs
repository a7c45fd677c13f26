//! Test servers for the load generator's tests, beyond the plain backend of
//! `skiff-tests`: one that can stall a single response, fail, or drop
//! connections, and counts connections and concurrency; plain (HTTP/1.1 and
//! h2c) or HTTPS with a fresh self-signed certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use skiff_tests::TempDir;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How a test server answers.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Request number `.0` (counting from 1) waits `.1` before its answer.
    pub stall: Option<(u64, Duration)>,
    /// Every other request waits this long.
    pub delay: Duration,
    pub status: StatusCode,
    /// Every request whose number is a multiple of this gets its connection
    /// dropped instead of an answer.
    pub drop_every: Option<u64>,
    /// Stop listening after accepting this many connections: later ones
    /// are refused.
    pub last_connection: Option<u64>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            stall: None,
            delay: Duration::ZERO,
            status: StatusCode::OK,
            drop_every: None,
            last_connection: None,
        }
    }
}

/// What a test server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// A server on 127.0.0.1, stopped when dropped.
pub struct Server {
    pub address: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body every answer carries.
pub const ANSWER: &[u8] = b"hello from the test server";

impl Server {
    /// Serves HTTP/1.1 and h2c (prior knowledge).
    pub async fn plain(behaviour: Behaviour) -> Server {
        Self::start(behaviour, None).await
    }

    /// Serves HTTP/1.1 over TLS with `identity`'s certificate.
    pub async fn https(behaviour: Behaviour, identity: &Identity) -> Server {
        Self::start(behaviour, Some(identity.acceptor())).await
    }

    pub fn url(&self, scheme: &str) -> http::Uri {
        format!("{scheme}://{}/", self.address)
            .parse()
            .expect("server URL")
    }

    async fn start(behaviour: Behaviour, tls: Option<TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            Arc::new(behaviour),
            seen.clone(),
        ));
        Server {
            address,
            seen,
            task,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    behaviour: Arc<Behaviour>,
    seen: Arc<Seen>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted = seen.connections.fetch_add(1, SeqCst) + 1;
        let last = behaviour.last_connection == Some(accepted);
        let (behaviour, seen, tls) = (behaviour.clone(), seen.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (behaviour, seen) = (behaviour.clone(), seen.clone());
                async move { answer(request, &behaviour, &seen).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Errors here are the client going away, or a dropped
            // connection the behaviour asked for.
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
        if last {
            return;
        }
    }
}

async fn answer(
    _request: Request<Incoming>,
    behaviour: &Behaviour,
    seen: &Seen,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let number = seen.requests.fetch_add(1, SeqCst) + 1;
    let in_flight = seen.in_flight.fetch_add(1, SeqCst) + 1;
    seen.max_in_flight.fetch_max(in_flight, SeqCst);
    let wait = match behaviour.stall {
        Some((stalled, stall)) if stalled == number => stall,
        _ => behaviour.delay,
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    seen.in_flight.fetch_sub(1, SeqCst);
    if behaviour
        .drop_every
        .is_some_and(|every| number.is_multiple_of(every))
    {
        // A service error makes hyper drop the connection unanswered.
        return Err(std::io::Error::other("dropped on purpose"));
    }
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    *response.status_mut() = behaviour.status;
    Ok(response)
}

/// A self-signed certificate for 127.0.0.1 and its key, with the
/// certificate also written to a PEM file for `--cacert`.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    pub ca_file: PathBuf,
    _dir: TempDir,
}

impl Identity {
    pub fn new() -> Identity {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("generate a certificate");
        let dir = TempDir::new("bench-tls");
        let ca_file = dir.write("ca.pem", &certified.cert.pem());
        Identity {
            cert: certified.cert.der().clone(),
            key: certified.signing_key.serialize_der(),
            ca_file,
            _dir: dir,
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)
            .expect("server certificate");
        TlsAcceptor::from(Arc::new(config))
    }
}
