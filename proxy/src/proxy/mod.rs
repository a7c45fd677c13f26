//! The request path's decisions: which route a request takes
//! ([`route`], with the rules a route compiles to in [`rules`]), and
//! forwarding it to a cluster's endpoint and its response back
//! ([`forward`]): retries, header rewriting, upgrades, local answers, the
//! access log.

pub(crate) mod cors;
pub mod forward;
pub mod route;
pub(crate) mod rules;
