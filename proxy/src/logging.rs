//! Logging: text or JSON lines on stderr, a level that can change while
//! skiff runs (`POST /logging?level=...` on the admin server, as Envoy's),
//! and the access log's target.
//!
//! The binary installs the subscriber ([`init`]); the library only knows
//! how to change its filter, so tests and embedders that install their own
//! subscriber are left alone.

use parking_lot::Mutex;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The `tracing` target of access log lines (`skiff::access=off` in the
/// filter silences them without touching the rest).
pub(crate) const ACCESS_TARGET: &str = "skiff::access";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the global subscriber writing to stderr with `filter` (an
/// `EnvFilter` directive such as `info` or `skiff=debug,hyper=info`).
/// Returns an error naming a bad filter; `info` is used then.
pub fn init(filter: &str, format: Format, ansi: bool) -> Result<(), String> {
    let (parsed, error) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new("info"),
            Some(format!("bad log level `{filter}`: {e}; using info")),
        ),
    };
    let current = if error.is_some() { "info" } else { filter };
    let (layer, handle) = reload::Layer::new(parsed);
    let registry = tracing_subscriber::registry().with(layer);
    let installed = match format {
        Format::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = CONTROL.set(Control {
            handle,
            current: Mutex::new(current.to_string()),
        });
    }
    error.map_or(Ok(()), Err)
}

/// The filter in force, when [`init`] installed the subscriber.
pub(crate) fn level() -> Option<String> {
    CONTROL.get().map(|c| c.current.lock().clone())
}

/// Replaces the filter while running; a bad directive changes nothing.
pub(crate) fn set_level(filter: &str) -> Result<(), String> {
    let control = CONTROL
        .get()
        .ok_or("logging is not controlled by skiff in this process")?;
    let parsed =
        EnvFilter::try_new(filter).map_err(|e| format!("bad log level `{filter}`: {e}"))?;
    control
        .handle
        .reload(parsed)
        .map_err(|e| format!("cannot change the log level: {e}"))?;
    *control.current.lock() = filter.to_string();
    tracing::info!("log level set to `{filter}`");
    Ok(())
}
