//! The commands besides `run`, as the binary calls them: `skiff demo`,
//! `skiff inject`, `skiff iptables` and `skiff check --manifests`. They use the proxy; nothing in
//! the proxy uses them.

pub mod demo;
pub mod inject;
pub mod iptables;
pub mod manifests;
