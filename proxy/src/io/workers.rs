//! Thread-per-core workers: the nginx/HAProxy/Envoy threading model.
//!
//! Each worker is an OS thread with its own current-thread tokio runtime,
//! its own accept loop per listener (all bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads connections), and its own upstream
//! connection pool per endpoint ([`current`] picks it). A request is served
//! start to finish on the worker that accepted its connection, so the
//! request path shares nothing across threads but the per-endpoint atomics.
//! The control path (admin, discovery, reloads) runs on the main runtime.

use std::cell::Cell;
use std::sync::OnceLock;

use tokio::runtime::Handle;

static COUNT: OnceLock<usize> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many per-worker pools an endpoint keeps (1 without workers).
pub(crate) fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The index of the worker running this thread (0 off the workers).
#[inline]
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Running worker threads; they live until the process exits.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// No workers: listeners accept on the runtime that binds them.
    pub fn none() -> Workers {
        Workers::default()
    }

    /// Starts `n` worker threads, each with a current-thread runtime.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let _ = COUNT.set(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("skiff-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("worker thread died before starting"))??;
            handles.push(handle);
        }
        Ok(Workers { handles })
    }

    /// The workers' runtimes; empty without workers.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
