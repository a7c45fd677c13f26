//! skiff's own HTTP/2 server codec (RFC 9113): frames ([`frame`]), HPACK
//! ([`hpack`]), request heads ([`request`]), what a stream shares between
//! the connection and the task that answers it ([`stream`]), and the
//! connection itself ([`conn`]). It knows nothing of routes or clusters:
//! the connection runs, for each request, the future its owner gives it
//! ([`crate::server::h2`] gives the proxy's).

pub(crate) mod conn;
pub mod frame;
pub(crate) mod hpack;
pub(crate) mod request;
pub(crate) mod stream;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use stream::RequestBody;

/// How many streams an HTTP/2 connection has open, and since when none.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    open: AtomicUsize,
    /// Milliseconds from `start` to when the last stream closed.
    idle_since: AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A stream opened.
    fn open(&self) {
        self.open.fetch_add(1, SeqCst);
    }

    /// A stream closed.
    fn close(&self) {
        // Stamped before the count drops, so a watcher that sees no
        // stream open also sees when the last one closed.
        self.idle_since.store(self.now(), SeqCst);
        self.open.fetch_sub(1, SeqCst);
    }

    /// Resolves once the connection has had no stream for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        let limit = timeout.as_millis() as u64;
        loop {
            let wait = if self.open.load(SeqCst) > 0 {
                limit
            } else {
                let idle = self.now().saturating_sub(self.idle_since.load(SeqCst));
                if idle >= limit {
                    return;
                }
                limit - idle
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}
