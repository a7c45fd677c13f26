//! HTTP below the proxy: the request body types skiff sends upstream
//! ([`body`]), skiff's own HTTP/1 codec and client ([`h1`])
//! and its HTTP/2 server codec ([`h2`]), which know nothing of routes or
//! clusters.

pub(crate) mod body;
pub mod h1;
pub mod h2;

/// Errors a request or response body can end with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;
