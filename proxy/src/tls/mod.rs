//! TLS: termination on listeners, TLS to upstreams, and mutual TLS.
//!
//! rustls with the ring provider throughout. A listener with a `tls`
//! section hands each accepted socket to `server::tls`, which runs the
//! handshake (certificate by SNI, ALPN h2 or HTTP/1.1, client certificate
//! when required) and then serves HTTP on the encrypted stream. The
//! certificate files are watched and reloaded live ([`server`]). A cluster
//! with a `tls` section dials its endpoints through a [`client::Connector`].

pub mod certs;
pub(crate) mod client;
pub mod hello;
pub(crate) mod identity;
pub(crate) mod peer;
pub(crate) mod server;
pub(crate) mod session;

pub(crate) use certs::TlsError;
pub(crate) use peer::TlsPeer;
pub(crate) use server::ServerTls;
