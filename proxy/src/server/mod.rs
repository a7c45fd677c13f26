//! Serving clients: listeners and their accept loops, the HTTP/1 serve
//! loop, HTTP/2 connections, TLS termination, and the sidecar's captured
//! connections. Everything here ends in a request handed to
//! [`crate::proxy::forward`], and writes back what it answers.

pub mod h1;
pub mod h2;
pub mod listener;
pub mod sidecar;
pub mod state;
pub mod tls;
