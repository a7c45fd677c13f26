//! skiff's HTTP/1.x codec: request heads ([`parse`]), request bodies read
//! from a client connection ([`body`]), responses written to one
//! ([`write`]), response heads read from an upstream ([`response`], for
//! the client and the health checker), the upstream client ([`client`])
//! and the per-thread spare buffers they share ([`buffers`]). The serve loop that drives them for
//! a client connection is [`crate::server::h1`].

pub mod body;
pub(crate) mod buffers;
pub(crate) mod client;
pub mod parse;
pub mod response;
pub(crate) mod write;
