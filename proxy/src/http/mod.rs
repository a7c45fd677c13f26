//! HTTP below the proxy: the request body types skiff sends upstream
//! ([`body`], [`capped`]), and skiff's own HTTP/1 codec and client
//! ([`h1`]), which know nothing of routes or clusters.

pub mod body;
pub mod capped;
pub mod h1;
