//! HTTP/1.1 upgrades (WebSocket): the request goes on a connection of
//! its own, and a `101 Switching Protocols` turns both connections into
//! a tunnel that copies bytes both ways.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;

use super::failure::Failure;
use super::headers::origin_form;
use super::send::{with_timeout, Received, Sent};
use crate::cluster::endpoint::InFlight;
use crate::cluster::pool::Pool;
use crate::http::body::UpstreamBody;

/// Sends an HTTP/1.1 upgrade request (WebSocket) on a dedicated upstream
/// connection, which becomes a [`Tunnel`] if the upstream agrees.
pub(super) async fn upgrade_request(
    mut req: Request<UpstreamBody>,
    address: SocketAddr,
    tls: Option<&crate::tls::client::Connector>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Sent, Failure> {
    *req.uri_mut() = origin_form(req.uri());
    let mut tx = Pool::connect_upgradable(address, tls, connect_timeout)
        .await
        .map_err(Failure::Connect)?;
    let resp = with_timeout(request_timeout, tx.send_request(req))
        .await?
        .map_err(|e| Failure::Reset(Box::new(e)))?;
    Ok((resp.map(Received::Hyper), None))
}

/// An upgraded connection (WebSocket) to an upstream, waiting for the
/// client side; holds the endpoint's in-flight count while it lasts.
#[derive(Debug)]
pub(crate) struct Tunnel {
    in_flight: InFlight,
    upstream: hyper::upgrade::OnUpgrade,
}

impl Tunnel {
    pub(super) fn new(in_flight: InFlight, upstream: hyper::upgrade::OnUpgrade) -> Tunnel {
        Tunnel {
            in_flight,
            upstream,
        }
    }

    /// Copies bytes both ways between `client` and the upstream until
    /// either side closes; `pending` is what the client sent early.
    pub(crate) async fn run<C>(self, mut client: C, pending: Bytes)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt as _;
        let address = self.in_flight.endpoint.address;
        let upstream = match self.upstream.await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%address, "upgrade failed: {e}");
                return;
            }
        };
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        if !pending.is_empty() && upstream.write_all(&pending).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}
