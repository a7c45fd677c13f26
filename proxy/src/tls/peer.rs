//! What a TLS client connection's requests carry upstream, as its
//! handshake established it: that they came over TLS, and who the client
//! proved to be (inbound mTLS), in the listener's identity header.

use http::header::{HeaderName, HeaderValue};
use http::Request;

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What every request of one TLS connection carries upstream.
#[derive(Debug)]
pub(crate) struct TlsPeer {
    /// The configured identity header and the client's identity, if it
    /// presented a certificate.
    identity: Option<(HeaderName, Option<HeaderValue>)>,
}

impl TlsPeer {
    /// The configured identity header with the client's identity, if the
    /// listener names one.
    pub(crate) fn new(identity: Option<(HeaderName, Option<HeaderValue>)>) -> TlsPeer {
        TlsPeer { identity }
    }

    /// Marks a request as arrived over TLS: `x-forwarded-proto: https`, and
    /// the verified client identity in its header (a value the client sent
    /// itself under that name is removed, never trusted).
    pub(crate) fn tag<B>(&self, req: &mut Request<B>) {
        let headers = req.headers_mut();
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        if let Some((name, value)) = &self.identity {
            headers.remove(name);
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}
