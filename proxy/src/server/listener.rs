//! Listeners: accept loops that serve HTTP/1.1 and HTTP/2 on one port.
//!
//! Each accepted connection is served by [`crate::server::h1`] (HTTP/1.x, and
//! WebSocket upgrades), which hands it to [`crate::server::h2`] when the client
//! opens with the HTTP/2 preface. A listener's routes
//! sit in an `ArcSwap`, so a reload swaps them under live connections.
//! Shutdown is two steps: stop accepting, then ask every connection to
//! finish (HTTP/2 GOAWAY, HTTP/1.1 `connection: close` on the response in
//! progress) and wait for them.
//!
//! The listener's [`ListenerLimits`] are read once per accepted
//! connection: past `max_connections` a new connection is closed at once
//! and counted; the rest travel with the connection to its server.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::io::conn::Conn;
use crate::io::workers::Workers;
use crate::server::sidecar::Captured;
use crate::server::state::{ConnectionGuard, ListenerState, Tracker};
use skiff_config::limits::ListenerLimits;

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 4096;

/// A bound, listening, non-blocking socket.
fn socket(address: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// How often the registry looks for connections idle too long, at most;
/// a shorter `idle_timeout` is swept four times as often as it lasts, so
/// a connection goes within a quarter of its timeout late.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the registry sweeps, at least.
const SWEEP_MIN: Duration = Duration::from_millis(50);

/// A bound, accepting listener.
pub(crate) struct Listener {
    pub(crate) state: Arc<ListenerState>,
    /// Set on capture listeners (the sidecar role): connections are served
    /// by original destination instead of by the state's routes.
    pub(crate) capture: Arc<ArcSwapOption<Captured>>,
    pub(crate) address: SocketAddr,
    stop_accepting: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    tracker: Arc<Tracker>,
}

impl Listener {
    /// Binds `address` and starts accepting: on the current runtime without
    /// workers, else one `SO_REUSEPORT` socket and accept loop per worker.
    /// Must run inside a runtime.
    pub(crate) fn bind(
        address: SocketAddr,
        state: Arc<ListenerState>,
        workers: &Workers,
    ) -> std::io::Result<Listener> {
        let per_worker = !workers.handles().is_empty();
        let first = socket(address, per_worker)?;
        // Port 0: every worker's socket takes the port the first one got.
        let address = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("listener bound to a non-IP address"))?;
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (drain, drain_rx) = watch::channel(false);
        let tracker = Arc::new(Tracker::default());
        let capture: Arc<ArcSwapOption<Captured>> = Arc::default();
        tokio::spawn(sweep_idle(
            Arc::downgrade(&tracker),
            Arc::downgrade(&state),
            stop_rx.clone(),
        ));
        if per_worker {
            let mut sockets = vec![first];
            for _ in 1..workers.handles().len() {
                sockets.push(socket(address, true)?);
            }
            for (socket, handle) in sockets.into_iter().zip(workers.handles()) {
                let (state, capture, stop_rx, drain_rx, tracker) = (
                    state.clone(),
                    capture.clone(),
                    stop_rx.clone(),
                    drain_rx.clone(),
                    tracker.clone(),
                );
                handle.spawn(async move {
                    // Registered with this worker's reactor, so its
                    // connections are served here.
                    match TcpListener::from_std(socket.into()) {
                        Ok(l) => {
                            let served = (state, capture);
                            accept_loop(l, served, stop_rx, drain_rx, tracker).await
                        }
                        Err(e) => tracing::error!(%address, "worker listener failed: {e}"),
                    }
                });
            }
        } else {
            let listener = TcpListener::from_std(first.into())?;
            tokio::spawn(accept_loop(
                listener,
                (state.clone(), capture.clone()),
                stop_rx,
                drain_rx,
                tracker.clone(),
            ));
        }
        Ok(Listener {
            state,
            capture,
            address,
            stop_accepting,
            drain,
            tracker,
        })
    }

    /// Stops accepting; the port is released.
    pub(crate) fn stop_accepting(&self) {
        let _ = self.stop_accepting.send(true);
    }

    /// Asks every open connection to finish its requests and close.
    pub(crate) fn drain_connections(&self) {
        // The flag first: a connection going idle after the sweep below
        // sees it (see `crate::io::conn`).
        let _ = self.drain.send(true);
        self.tracker.conns.close_idle();
    }

    /// Open connections right now.
    pub(crate) fn open_connections(&self) -> usize {
        self.tracker.open.load(Relaxed)
    }

    /// Waits until every connection has closed, or `limit` passes.
    /// Returns whether all closed.
    pub(crate) async fn wait_closed(&self, limit: Duration) -> bool {
        let tracker = self.tracker.clone();
        tokio::time::timeout(limit, async move {
            loop {
                let notified = tracker.idle.notified();
                if tracker.open.load(Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    /// Stops accepting and drains, in the background, within `grace`.
    pub(crate) fn retire(self, grace: Duration) {
        self.stop_accepting();
        self.drain_connections();
        tokio::spawn(async move {
            if !self.wait_closed(grace).await {
                tracing::warn!(listener = %self.state.routes.name, open = self.open_connections(), "retired listener still had connections at the end of the grace period");
            }
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    (state, capture): (Arc<ListenerState>, Arc<ArcSwapOption<Captured>>),
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly
                // instead of spinning on the error.
                tracing::warn!(listener = %state.routes.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let limits = state.limits.load_full();
        // Counted before the check, so accept loops on other workers
        // cannot both take the last place.
        let open = tracker.open.fetch_add(1, Relaxed) + 1;
        if limits
            .max_connections
            .is_some_and(|max| open > max as usize)
        {
            tracker.open.fetch_sub(1, Relaxed);
            state.refused.fetch_add(1, Relaxed);
            tracing::debug!(listener = %state.routes.name, %peer, "connection refused: max_connections open");
            // Closed unread: the client sees its connection end at once.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::new(tracker.clone(), state.clone());
        if let Some(tls) = state.tls.load_full() {
            // HTTP/1 connections join the idle registry once the
            // handshake is done; HTTP/2 ones are drained by their task.
            let (state, drain) = (state.clone(), drain.clone());
            tokio::spawn(crate::server::tls::serve(
                stream, peer, tls, state, limits, drain, guard,
            ));
            continue;
        }
        if let Some(capture) = capture.load_full() {
            let (drain, tracker) = (drain.clone(), tracker.clone());
            tokio::spawn(async move {
                // Opaque connections are served inside `accept`; HTTP
                // comes back with the destination's routes.
                match capture.accept(stream, peer).await {
                    crate::server::sidecar::Accepted::Http(stream, routes) => {
                        let conn = Arc::new(Conn::new(stream));
                        tracker.conns.register(&conn);
                        crate::server::h1::serve(conn, routes, limits, peer, drain, guard).await;
                    }
                    crate::server::sidecar::Accepted::Mesh(stream, destination) => {
                        capture
                            .serve_mesh(stream, peer, destination, limits, drain, guard)
                            .await;
                    }
                    crate::server::sidecar::Accepted::Done => {}
                }
            });
            continue;
        }
        let conn = Arc::new(Conn::new(stream));
        tracker.conns.register(&conn);
        let state = state.clone();
        let drain = drain.clone();
        tokio::spawn(crate::server::h1::serve(
            conn, state, limits, peer, drain, guard,
        ));
    }
}

/// Closes connections idle past the listener's `idle_timeout`, until the
/// listener stops accepting and its connections have gone.
async fn sweep_idle(
    tracker: std::sync::Weak<Tracker>,
    state: std::sync::Weak<ListenerState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut stopped = false;
    let mut idle_timeout = ListenerLimits::default().idle_timeout;
    loop {
        let every = (idle_timeout / 4).clamp(SWEEP_MIN, SWEEP_EVERY);
        if stopped {
            tokio::time::sleep(every).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => stopped = true,
            }
        }
        let (Some(tracker), Some(state)) = (tracker.upgrade(), state.upgrade()) else {
            return;
        };
        idle_timeout = state.limits.load().idle_timeout;
        tracker.conns.sweep(idle_timeout);
        if stopped && tracker.open.load(Relaxed) == 0 {
            return;
        }
    }
}
