//! Sockets and threads: a client connection's socket with its TLS
//! session ([`conn`]), where a captured connection was going
//! ([`original_dst`]), and the thread-per-core workers ([`workers`]).

pub(crate) mod conn;
pub mod original_dst;
pub mod workers;
