//! TLS: termination on listeners, TLS to upstreams, and mutual TLS.
//!
//! rustls with the ring provider throughout. A listener with a `tls`
//! section hands each accepted socket to `server::tls`, which runs the
//! handshake (certificate by SNI, ALPN h2 or HTTP/1.1, client certificate
//! when required) and then serves HTTP on the encrypted stream. The
//! certificate files are watched and reloaded live ([`server`]). A cluster
//! with a `tls` section dials its endpoints through a [`client::Connector`].

pub mod certs;
pub mod client;
pub mod hello;
pub mod identity;
pub mod peer;
pub mod server;
pub mod session;

pub use certs::TlsError;
pub use peer::TlsPeer;
pub use server::ServerTls;
