//! The benchmark's upstream pool: fast HTTP servers with a fixed response.
//!
//! Every peer in a comparison forwards to the same pool, so the upstream
//! must cost as little as possible and the same for everyone: one
//! current-thread runtime serving several ports (HTTP/1.1 keep-alive and
//! h2c on each), answering every request with the same preallocated body.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Serves `body_size`-byte responses on every address until the process ends.
pub async fn serve(addresses: &[SocketAddr], body_size: usize) -> std::io::Result<()> {
    let body = Bytes::from(vec![b'x'; body_size]);
    let mut tasks = Vec::new();
    for address in addresses {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind {address}: {e}")))?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
