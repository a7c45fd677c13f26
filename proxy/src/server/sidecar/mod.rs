//! The sidecar role: listeners that take the connections `skiff iptables`
//! captures, find where each was going, and balance it.
//!
//! A listener with `capture:` ([`skiff_config::sidecar`]) serves captured
//! connections instead of routing by host and path. Each accepted connection's original destination is read
//! (`SO_ORIGINAL_DST`), then its protocol detected ([`detect`]). Outbound,
//! a destination that is a Service's ClusterIP and port is balanced over
//! that Service's EndpointSlice endpoints: per request for HTTP/1 and
//! HTTP/2 (so one HTTP/2 connection's requests spread over every pod), per
//! connection for anything else. Any other destination passes through to
//! the address it was going to. Inbound, HTTP is proxied per request to
//! the app (counted in skiff's metrics) and anything else is copied as is.
//! With a `mesh:` section, sidecars speak mTLS to each other ([`mesh`]).
//!
//! `skiff run --sidecar` runs this with the config
//! [`skiff_config::sidecar::default_config_text`] makes, on the ports
//! `skiff inject` and `skiff iptables` use.

pub mod detect;
pub(crate) mod mesh;
mod routes;
mod serve;

pub(crate) use serve::{Accepted, Captured, Shared};
