//! Sending a request to one endpoint and waiting for its response head,
//! on a pooled or new connection: skiff's own HTTP/1 client, or hyper's
//! HTTP/1 and HTTP/2 clients, as the cluster's protocol and TLS ask.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use skiff_config::cluster::UpstreamProtocol;

use super::failure::Failure;
use crate::cluster::pool::{PendingLimit, Pool, Sender};
use crate::http::body::UpstreamBody;
use crate::http::h1::client;
use crate::http::BodyError;

pub(super) type Sent = (Response<Received>, Option<http1::SendRequest<UpstreamBody>>);

/// Sends `req` on a pooled or new connection and waits for response
/// headers. Gives the request back whenever it was not consumed: never
/// sent (the connection failed), or sent by skiff's own HTTP/1 client,
/// which only borrows it; hyper's clients take it.
///
/// A plain function returning an `async move` block: an `async fn` would
/// keep its parameters and a second copy of them in its future, and this
/// future is part of every request's (moved, and boxed, per request).
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
pub(super) fn send<'a>(
    mut req: Request<UpstreamBody>,
    pool: &'a Pool,
    address: SocketAddr,
    pending: PendingLimit<'a>,
    settings: &'a crate::cluster::Settings,
    request_timeout: Duration,
) -> impl std::future::Future<Output = (Result<Sent, Failure>, Option<Request<UpstreamBody>>)> + 'a
{
    async move {
        let tls = settings.connector.as_ref();
        let (protocol, connect_timeout) = (settings.protocol, settings.timeouts.connect);
        let own =
            protocol == UpstreamProtocol::Http1 && tls.is_none() && client::can_send(&mut req);
        // A pooled keep-alive connection can be closed by the upstream just as
        // we pick it; hyper hands the request back unsent in that case, and
        // then it is safe to try once more on a fresh connection.
        for attempt in 0..2 {
            let sender = match pool
                .checkout(address, pending, protocol, tls, connect_timeout, own)
                .await
            {
                Ok(sender) => sender,
                // Never sent: the request goes back for a retry elsewhere.
                Err(e) => return (Err(Failure::Connect(e)), Some(req)),
            };
            let error = match sender {
                Sender::Own(conn) => {
                    // Pinned where it is made: the timeout then holds a
                    // pointer, and the future is not copied into it.
                    let sent = {
                        let fut = std::pin::pin!(client::send(conn, &req));
                        limited(request_timeout, fut).await
                    };
                    let result = match sent {
                        Err(_) => Err(Failure::Timeout(request_timeout)),
                        Ok(Ok(resp)) => Ok((resp.map(Received::Own), None)),
                        Ok(Err(failed)) if failed.resend && attempt == 0 => continue,
                        Ok(Err(failed)) => Err(Failure::Reset(Box::new(failed.error))),
                    };
                    return (result, Some(req));
                }
                Sender::Http1(mut tx) => {
                    let fut = std::pin::pin!(tx.try_send_request(req));
                    let Ok(sent) = limited(request_timeout, fut).await else {
                        return (Err(Failure::Timeout(request_timeout)), None);
                    };
                    match sent {
                        Ok(resp) => return (Ok((resp.map(Received::Hyper), Some(tx))), None),
                        Err(mut e) => match e.take_message() {
                            Some(back) if attempt == 0 => {
                                req = back;
                                continue;
                            }
                            _ => e.into_error(),
                        },
                    }
                }
                Sender::Http2(mut tx) => {
                    let fut = std::pin::pin!(tx.try_send_request(req));
                    let Ok(sent) = limited(request_timeout, fut).await else {
                        return (Err(Failure::Timeout(request_timeout)), None);
                    };
                    match sent {
                        Ok(resp) => return (Ok((resp.map(Received::Hyper), None)), None),
                        Err(mut e) => match e.take_message() {
                            Some(back) if attempt == 0 => {
                                req = back;
                                continue;
                            }
                            _ => e.into_error(),
                        },
                    }
                }
            };
            // A user error is the request body skiff streams from the client.
            let failure = if error.is_user() {
                Failure::ClientBody(Box::new(error))
            } else {
                Failure::Reset(Box::new(error))
            };
            return (Err(failure), None);
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// `fut` bounded by `limit` (zero: unbounded, in practice). A timeout
/// itself, not an `async fn` around one, which would hold `fut` twice.
pub(super) fn limited<F: std::future::Future>(limit: Duration, fut: F) -> tokio::time::Timeout<F> {
    // Far enough never to fire; tokio clamps it to its timer's range.
    const UNBOUNDED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    tokio::time::timeout(if limit.is_zero() { UNBOUNDED } else { limit }, fut)
}

pub(super) async fn with_timeout<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, Failure> {
    if limit.is_zero() {
        return Ok(fut.await);
    }
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Failure::Timeout(limit))
}

/// A response body as an upstream client delivers it.
#[derive(Debug)]
pub(crate) enum Received {
    Hyper(Incoming),
    Own(client::ResponseBody),
}

impl Received {
    /// skiff's own client's connection, once the body ended cleanly.
    pub(super) fn take_reusable(&mut self) -> Option<Box<client::Connection>> {
        match self {
            Received::Hyper(_) => None,
            Received::Own(body) => body.take_reusable(),
        }
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Received::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(b) => b.is_end_stream(),
            Received::Own(b) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(b) => b.size_hint(),
            Received::Own(b) => b.size_hint(),
        }
    }
}
