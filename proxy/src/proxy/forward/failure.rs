//! Why a request got no upstream response, and how skiff answers it
//! (`502`, `503` with `x-skiff-overflow`, `504`, `400` for the client's
//! own broken body) and counts it.

use std::time::Duration;

use crate::cluster::pool::ConnectError;
use crate::http::body::BodyError;

/// Why a request got no upstream response.
pub(super) enum Failure {
    Connect(ConnectError),
    Timeout(Duration),
    Reset(BodyError),
    /// The client's request body broke while it was sent (malformed
    /// chunking, the client left mid-body): the client's fault, so never
    /// retried and never counted against the endpoint.
    ClientBody(BodyError),
}

impl Failure {
    pub(super) fn message(&self) -> String {
        match self {
            Failure::Connect(ConnectError::Timeout(d)) => {
                format!("upstream connect timeout: no connection after {d:?}\n")
            }
            Failure::Connect(ConnectError::Overflow(_)) => {
                "upstream overflow: too many requests already wait for a new upstream connection (max_pending)\n".to_string()
            }
            Failure::Connect(e) => format!("upstream connect error: {e}\n"),
            Failure::Timeout(d) => {
                format!("upstream request timeout: no response headers after {d:?}\n")
            }
            Failure::Reset(e) => {
                // hyper's own words are terse ("connection error"); the
                // cause (a TLS alert, say) is what tells the user why.
                let mut text = format!("upstream reset before response headers: {e}");
                let mut source = std::error::Error::source(&**e);
                while let Some(cause) = source {
                    text.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                text.push('\n');
                text
            }
            Failure::ClientBody(e) => match std::error::Error::source(&**e) {
                Some(cause) => format!("bad request body: {cause}\n"),
                None => format!("bad request body: {e}\n"),
            },
        }
    }
}
