//! The request body skiff sends upstream, whichever way it arrived.
//!
//! One concrete type (not a boxed trait object) so the upstream
//! connection pools hold one kind of sender and no request allocates for
//! its body: most requests have none, HTTP/1.x bodies are read by skiff's
//! own server, HTTP/2 bodies by hyper's.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::h1::body::RequestBody;

/// Errors a request body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (most requests).
    Empty,
    /// Read from an HTTP/1.x client connection.
    Http1(RequestBody),
    /// A stream of an HTTP/2 client connection.
    Http2(crate::http::h2::RequestBody),
    /// Read whole before sending, so a retry can send it again (bodies of
    /// retryable requests up to `forward::MAX_REPLAY_BODY`).
    Buffered {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    /// Of unknown length, on a route with `max_request_body` (boxed: rare,
    /// and it holds one of the others).
    Capped(Box<crate::http::capped::CappedBody>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Buffered { data, trailers } => {
                Poll::Ready(match data.take().filter(|d| !d.is_empty()) {
                    Some(d) => Some(Ok(Frame::data(d))),
                    None => trailers.take().map(|t| Ok(Frame::trailers(t))),
                })
            }
            UpstreamBody::Capped(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Http1(b) => b.is_end_stream(),
            UpstreamBody::Http2(b) => b.is_end_stream(),
            UpstreamBody::Buffered { data, trailers } => {
                data.as_ref().is_none_or(|d| d.is_empty()) && trailers.is_none()
            }
            UpstreamBody::Capped(b) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Http1(b) => b.size_hint(),
            UpstreamBody::Http2(b) => b.size_hint(),
            UpstreamBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Capped(b) => b.size_hint(),
        }
    }
}
