//! The sidecar role's fixed points: the ports and uid that `skiff inject`
//! writes into pods, `skiff iptables` redirects to, and `skiff run
//! --sidecar` listens on. One place, so the three always agree.
//!
//! The numbers are linkerd2-proxy's, so clusters that already allow those
//! ports in their network policies need nothing new.

/// Where captured outbound connections (the app's calls) are redirected.
pub const OUTBOUND_PORT: u16 = 4140;
/// Where captured inbound connections (calls to the app) are redirected.
pub const INBOUND_PORT: u16 = 4143;
/// The sidecar's admin server: probes and metrics; never captured.
pub const ADMIN_PORT: u16 = 4191;
/// The uid the sidecar runs as; its own connections are never captured.
pub const PROXY_UID: u32 = 2102;
