//! The HTTP load generator: puts a [`LoadSpec`]'s load on one target and
//! measures it into a [`LoadResult`].
//!
//! The connections are opened before the clock starts, so connection setup
//! is never request latency (unless every request gets a new connection,
//! `new_connections`, which measures setup). Each connection is one task that records into
//! its own histogram; the histograms are merged when the run ends. Closed
//! loop sends as fast as responses come back. Open loop (`rate`) sends on a
//! fixed schedule shared by all connections, and a request sent late because
//! every connection was busy is charged from the time it was due, so a stall
//! shows in the latency of everything queued behind it (no coordinated
//! omission, as in wrk2).
//!
//! ```no_run
//! # async fn example() -> Result<(), skiff_bench::load::LoadError> {
//! use skiff_bench::load::{self, LoadSpec, Protocol};
//!
//! let mut spec = LoadSpec::new("http://127.0.0.1:8080/".parse().unwrap(), Protocol::H2);
//! spec.streams = 100;
//! spec.rate = Some(5_000.0);
//! let result = load::run(&spec).await?;
//! println!("p99 {:?}", result.percentile(99.0));
//! # Ok(())
//! # }
//! ```

mod connect;
mod latency;
mod pacing;
mod result;
mod spec;
mod timer;
mod worker;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinSet;

pub use latency::{CurvePoint, Latencies};
pub use result::LoadResult;
pub use spec::{
    LoadSpec, Protocol, TlsOptions, DEFAULT_CONNECTIONS, DEFAULT_DURATION, DEFAULT_TIMEOUT,
    DEFAULT_WARMUP,
};

use connect::{Connector, RequestTemplate};
use pacing::Pacing;
use worker::{Plan, ProgressCounter, Tally};

/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Why a run could not start. Failures during a run are counted in the
/// result, not returned. Each message is whole, cause included, so the
/// causes are not also chained as `source`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{label}: {reason}")]
    InvalidSpec { label: String, reason: String },
    #[error("resolve {target}: {cause}")]
    Resolve {
        target: String,
        cause: std::io::Error,
    },
    #[error("connect to {target}: {cause}")]
    Connect {
        target: String,
        cause: std::io::Error,
    },
    #[error("TLS handshake with {target}: {cause}")]
    Tls {
        target: String,
        cause: std::io::Error,
    },
    #[error("{version} handshake with {target}: {cause}")]
    Handshake {
        target: String,
        version: &'static str,
        cause: hyper::Error,
    },
    #[error("read CA certificates from {}: {reason}", path.display())]
    CaCert { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    TlsConfig(rustls::Error),
}

/// Runs `spec` and returns what it measured.
pub async fn run(spec: &LoadSpec) -> Result<LoadResult, LoadError> {
    run_with_progress(spec, &ProgressBar::hidden()).await
}

/// A progress bar for [`run_with_progress`] on stderr, hidden when stderr is
/// not a terminal.
pub fn progress_bar(spec: &LoadSpec) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let total = spec.warmup + spec.duration;
    let bar = ProgressBar::with_draw_target(Some(total.as_millis() as u64), target);
    let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(spec.label.clone());
    bar
}

/// Runs `spec`, showing elapsed time and finished requests on `bar`.
pub async fn run_with_progress(
    spec: &LoadSpec,
    bar: &ProgressBar,
) -> Result<LoadResult, LoadError> {
    spec.validate()?;
    let connector = Connector::new(spec).await?;
    let template = RequestTemplate::new(spec)?;
    let mut connections = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        connections.push(connector.connect(spec.streams).await?);
    }

    let origin = Instant::now();
    let measured_from = origin + spec.warmup;
    let measured_until = measured_from + spec.duration;
    let pacing = match spec.rate {
        Some(rate) => Pacing::open(origin, rate, measured_until, spec.timeout),
        None => Pacing::closed(measured_until),
    };
    let plan = Arc::new(Plan {
        connector,
        template,
        pacing,
        measured_from,
        streams: spec.streams,
        timeout: spec.timeout,
        new_connections: spec.new_connections,
    });

    let mut tasks = JoinSet::new();
    let mut counters = Vec::with_capacity(connections.len());
    for connection in connections {
        let counter = Arc::new(ProgressCounter::default());
        counters.push(counter.clone());
        tasks.spawn(worker::drive_connection(plan.clone(), connection, counter));
    }
    let progress = tokio::spawn(show_progress(bar.clone(), counters, origin, measured_from));

    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(connection) => tally.merge(connection),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => {}
        }
    }
    progress.abort();
    let untaken = plan.pacing.untaken(measured_from);
    if untaken > 0 {
        tally.transport_errors += untaken;
        tally.first_transport_error.get_or_insert_with(|| {
            format!("{untaken} requests never sent: no connection to the target took them")
        });
    }
    bar.set_position(bar.length().unwrap_or(0));

    let end = tally
        .last_response
        .map_or(measured_until, |last| last.max(measured_until));
    Ok(LoadResult {
        label: spec.label.clone(),
        spec: spec.clone(),
        requests: tally.requests,
        status_errors: tally.status_errors,
        transport_errors: tally.transport_errors,
        first_transport_error: tally.first_transport_error,
        bytes_received: tally.bytes_received,
        elapsed: end - measured_from,
        latencies: tally.latencies,
    })
}

async fn show_progress(
    bar: ProgressBar,
    counters: Vec<Arc<ProgressCounter>>,
    origin: Instant,
    measured_from: Instant,
) {
    let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let finished: u64 = counters.iter().map(|c| c.get()).sum();
        let phase = if now < measured_from { "warmup, " } else { "" };
        bar.set_position((now - origin).as_millis() as u64);
        bar.set_message(format!("{phase}{finished} requests"));
    }
}
