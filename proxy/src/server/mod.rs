//! Serving clients: listeners and their accept loops, the HTTP/1 serve
//! loop, HTTP/2 connections, TLS termination, and the sidecar's captured
//! connections. Everything here ends in a request handed to
//! [`crate::proxy::forward`], and writes back what it answers.

pub(crate) mod h1;
pub(crate) mod h2;
pub(crate) mod listener;
pub mod sidecar;
pub(crate) mod state;
pub(crate) mod tls;
