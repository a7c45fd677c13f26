//! Sockets and threads: a client connection's socket with its TLS
//! session ([`conn`]), and the thread-per-core workers ([`workers`]).

pub mod conn;
pub mod workers;
