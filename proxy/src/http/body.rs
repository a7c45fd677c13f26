//! The request body skiff sends upstream, whichever way it arrived.
//!
//! One concrete type (not a boxed trait object) so the upstream
//! connection pools hold one kind of sender and no request allocates for
//! its body: most requests have none, HTTP/1.x bodies are read by skiff's
//! own server, HTTP/2 bodies by its own HTTP/2 server.
//!
//! A route's `max_request_body` on a body of unknown length is a
//! [`CappedBody`]: capped as it streams, so the upstream request is
//! aborted at the first byte past the limit and the client answered `413`
//! (Envoy's buffer limit answers the same way). Bodies that declare their
//! length are refused before they are read.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::h1::body::RequestBody;
use crate::http::BodyError;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub(crate) enum UpstreamBody {
    /// No body (most requests).
    Empty,
    /// Read from an HTTP/1.x client connection.
    Http1(RequestBody),
    /// A stream of an HTTP/2 client connection.
    Http2(crate::http::h2::RequestBody),
    /// Read whole before sending, so a retry can send it again (bodies of
    /// retryable requests up to 64 KiB, `MAX_REPLAY_BODY` in `proxy::forward`).
    Buffered {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    /// Of unknown length, on a route with `max_request_body` (boxed: rare,
    /// and it holds one of the others).
    Capped(Box<CappedBody>),
    /// Copied for mirrors as it streams (boxed: rare).
    Tee(Box<TeeBody>),
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
            UpstreamBody::Tee(b) => Pin::new(&mut **b).poll_frame(cx),
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
            UpstreamBody::Tee(b) => b.inner.is_end_stream(),
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
            UpstreamBody::Tee(b) => b.inner.size_hint(),
        }
    }
}

/// A request body past its route's `max_request_body`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body larger than {limit} bytes (the route's max_request_body)")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

/// Set once a capped body went past its limit; read by the request path
/// to answer `413` whatever the upstream protocol made of the abort.
#[derive(Debug, Default)]
pub(crate) struct Exceeded(AtomicBool);

impl Exceeded {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// A request body of unknown length on a route with `max_request_body`:
/// streamed as it comes, ended with [`BodyTooLarge`] at the first byte
/// past the limit, which aborts the upstream request. (Bodies that
/// declare their length are refused before they are read.)
#[derive(Debug)]
pub(crate) struct CappedBody {
    inner: UpstreamBody,
    left: u64,
    limit: u64,
    exceeded: Arc<Exceeded>,
}

impl CappedBody {
    pub(crate) fn new(inner: UpstreamBody, limit: u64) -> (CappedBody, Arc<Exceeded>) {
        let exceeded = Arc::new(Exceeded::default());
        let body = CappedBody {
            inner,
            left: limit,
            limit,
            exceeded: exceeded.clone(),
        };
        (body, exceeded)
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    this.exceeded.0.store(true, Relaxed);
                    let error = BodyTooLarge { limit: this.limit };
                    return Poll::Ready(Some(Err(error.into())));
                }
                this.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_capped_body_ends_with_an_error_past_its_limit() {
        use http_body_util::BodyExt;
        let inner = UpstreamBody::Buffered {
            data: Some(Bytes::from_static(b"0123456789")),
            trailers: None,
        };
        let (body, exceeded) = CappedBody::new(inner, 9);
        let err = body.collect().await.unwrap_err();
        assert!(err.downcast_ref::<BodyTooLarge>().is_some(), "{err}");
        assert!(exceeded.get());

        let inner = UpstreamBody::Buffered {
            data: Some(Bytes::from_static(b"0123456789")),
            trailers: None,
        };
        let (body, exceeded) = CappedBody::new(inner, 10);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"0123456789");
        assert!(!exceeded.get());
    }
}

/// What a [`TeeBody`] copies: the frames, and whether the body ended
/// whole.
#[derive(Debug)]
pub(crate) enum Copied {
    Data(Bytes),
    Trailers(http::HeaderMap),
    End,
}

/// A request body copied for mirrors as it streams to its upstream.
/// Copying never waits: when the copies fall behind (the channel is
/// full) or pass `limit` bytes, copying stops and the mirrors give up,
/// and the request itself goes on as if nothing were copied.
#[derive(Debug)]
pub(crate) struct TeeBody {
    inner: UpstreamBody,
    tx: Option<tokio::sync::mpsc::Sender<Copied>>,
    left: usize,
    /// The body's declared length, when it has one: a client that stops
    /// polling once it is sent (HTTP/1 with a length) never sees the end.
    declared: Option<u64>,
    copied: u64,
}

impl TeeBody {
    /// `inner`, copied up to `limit` bytes into the receiver returned.
    pub(crate) fn new(
        inner: UpstreamBody,
        limit: usize,
    ) -> (TeeBody, tokio::sync::mpsc::Receiver<Copied>) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let declared = inner.size_hint().exact();
        let body = TeeBody {
            inner,
            tx: Some(tx),
            left: limit,
            declared,
            copied: 0,
        };
        (body, rx)
    }

    fn copy(&mut self, frame: &Frame<Bytes>) {
        let Some(tx) = &self.tx else { return };
        let copy = match (frame.data_ref(), frame.trailers_ref()) {
            (Some(d), _) if d.len() <= self.left => {
                self.left -= d.len();
                self.copied += d.len() as u64;
                Some(Copied::Data(d.clone()))
            }
            (None, Some(t)) => Some(Copied::Trailers(t.clone())),
            _ => None,
        };
        let sent = copy.is_some_and(|c| tx.try_send(c).is_ok());
        if !sent {
            self.tx = None;
        } else if self.inner.is_end_stream() || self.declared == Some(self.copied) {
            self.end();
        }
    }

    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Copied::End);
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.copy(frame),
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Err(_))) => this.tx = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
