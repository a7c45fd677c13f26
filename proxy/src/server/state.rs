//! What a listener's connections share: the listener's routes, counters,
//! limits and TLS ([`ListenerState`], swapped in place on reload), and the
//! guard each open connection holds so that a drain can wait for the last
//! one ([`ConnectionGuard`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use skiff_config::limits::ListenerLimits;
use tokio::sync::Notify;

use crate::io::conn::{Conn, Registry};
use crate::metrics::Gauge;
use crate::proxy::route::ListenerRoutes;

/// What a request on a listener needs: its name, routes and counters.
#[derive(Debug)]
pub(crate) struct ListenerState {
    /// The listener's name, routes and unrouted counter: what the request
    /// path reads of it.
    pub(crate) routes: ListenerRoutes,
    pub(crate) connections: Arc<Gauge>,
    /// Connections closed at accept because `max_connections` were open.
    pub(crate) refused: Arc<AtomicU64>,
    /// What clients sent that skiff refused as a protocol error.
    pub(crate) protocol_errors: Arc<crate::metrics::ProtocolErrors>,
    /// What clients may send and hold; swapped on reload.
    pub(crate) limits: ArcSwap<ListenerLimits>,
    /// TLS termination, when the listener has it; swapped on reload.
    pub(crate) tls: arc_swap::ArcSwapOption<crate::tls::ServerTls>,
}

/// Counts open connections so shutdown can wait for the last one, and
/// closes idle ones.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub(crate) open: AtomicUsize,
    pub(crate) idle: Notify,
    pub(crate) conns: Registry,
}

/// Held for as long as a connection is open.
pub(crate) struct ConnectionGuard {
    tracker: Arc<Tracker>,
    state: Arc<ListenerState>,
}

impl ConnectionGuard {
    /// Counts a connection that was just accepted; the count drops when
    /// the guard does.
    pub(crate) fn new(tracker: Arc<Tracker>, state: Arc<ListenerState>) -> ConnectionGuard {
        state.connections.inc();
        ConnectionGuard { tracker, state }
    }

    /// Puts a connection in its listener's registry, which closes it when
    /// it has been idle too long or when the listener drains.
    pub(crate) fn register(&self, conn: &Arc<Conn>) {
        self.tracker.conns.register(conn);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.connections.dec();
        if self.tracker.open.fetch_sub(1, Relaxed) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}
