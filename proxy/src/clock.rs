//! The process's one monotonic epoch: times that many threads compare
//! (when a connection went idle, when an ejection ended, a retry budget's
//! second) are kept as integers since it, in atomics, instead of as
//! `Instant`s behind locks.

use std::sync::OnceLock;
use std::time::Instant;

/// When the process first asked for the time.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], plus one: never zero, so zero can mean
/// "not set" where a stamp is stored.
pub(crate) fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}
