//! One connection's share of a run. Each connection is one task; its
//! streams (one for HTTP/1.1, `streams` for HTTP/2) run inside that task and
//! record into the connection's own [`Tally`], which the run merges at the
//! end. A connection that breaks is reopened until the run is over.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;

use super::connect::{Connection, Connector, RequestBody, RequestTemplate, Sender};
use super::latency::Latencies;
use super::pacing::Pacing;

/// Pause between failed attempts to reopen a connection, so a target that
/// refuses connections is not hammered with them.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// Everything the connections of one run share, read-only.
pub(crate) struct Plan {
    pub connector: Connector,
    pub template: RequestTemplate,
    pub pacing: Pacing,
    /// Requests due before this are warmup: sent, but not recorded.
    pub measured_from: Instant,
    pub streams: usize,
    pub timeout: Duration,
    /// Each request on a new connection, whose setup its latency includes.
    pub new_connections: bool,
}

/// What one connection measured, or a whole run once merged.
#[derive(Default)]
pub(crate) struct Tally {
    pub latencies: Latencies,
    /// Responses received, whatever their status.
    pub requests: u64,
    /// Responses with a status outside 2xx.
    pub status_errors: u64,
    /// Requests that got no response: refused, reset, timed out.
    pub transport_errors: u64,
    /// Response body bytes.
    pub bytes_received: u64,
    pub last_response: Option<Instant>,
    /// The first transport error, to tell the user what went wrong.
    pub first_transport_error: Option<String>,
}

/// Requests a connection has finished, warmup included, for the progress
/// bar. Aligned to its own cache line: each is written by one connection.
#[derive(Default)]
#[repr(align(64))]
pub(crate) struct ProgressCounter(AtomicU64);

impl ProgressCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Tally {
    fn record_response(&mut self, latency: Duration, status: StatusCode, bytes: u64, at: Instant) {
        self.latencies.record(latency);
        self.requests += 1;
        if !status.is_success() {
            self.status_errors += 1;
        }
        self.bytes_received += bytes;
        self.last_response = Some(at);
    }

    fn record_failure(&mut self, describe: impl FnOnce() -> String) {
        self.transport_errors += 1;
        if self.first_transport_error.is_none() {
            self.first_transport_error = Some(describe());
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        self.requests += other.requests;
        self.status_errors += other.status_errors;
        self.transport_errors += other.transport_errors;
        self.bytes_received += other.bytes_received;
        self.last_response = self.last_response.max(other.last_response);
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
    }
}

/// Runs one connection until the plan's pacing says the run is over.
pub(crate) async fn drive_connection(
    plan: Arc<Plan>,
    first: Connection,
    progress: Arc<ProgressCounter>,
) -> Tally {
    // Locked once per response, only by this task's streams, so never
    // contended; a lock rather than a RefCell keeps the task Send.
    let tally = Mutex::new(Tally::default());
    if plan.new_connections {
        new_connection_each_time(&plan, first, &tally, &progress).await;
        return tally.into_inner().unwrap_or_else(PoisonError::into_inner);
    }
    let mut opened = Some(first);
    while !plan.pacing.is_over() {
        let mut connection = match opened.take() {
            Some(connection) => connection,
            None => match plan.connector.connect(plan.streams).await {
                Ok(connection) => connection,
                Err(error) => {
                    if Instant::now() >= plan.measured_from {
                        lock(&tally).record_failure(|| error.to_string());
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        let mut streams: FuturesUnordered<_> = connection
            .streams
            .iter_mut()
            .map(|sender| run_stream(&plan, sender, &tally, &progress))
            .collect();
        while streams.next().await.is_some() {}
    }
    tally.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// Sends requests on one stream until the run is over or the connection
/// needs reopening.
async fn run_stream(
    plan: &Plan,
    sender: &mut Sender,
    tally: &Mutex<Tally>,
    progress: &ProgressCounter,
) {
    loop {
        if sender.ready().await.is_err() {
            return;
        }
        let Some(turn) = plan.pacing.next_turn().await else {
            return;
        };
        let measured = turn.due >= plan.measured_from;
        if turn.expired {
            progress.0.fetch_add(1, Relaxed);
            if measured {
                lock(tally).record_failure(|| Failure::Unsent(plan.timeout).to_string());
            }
            continue;
        }
        let outcome =
            tokio::time::timeout(plan.timeout, exchange(sender, plan.template.request())).await;
        let done = Instant::now();
        progress.0.fetch_add(1, Relaxed);
        let failure = match outcome {
            Ok(Ok((status, bytes))) => {
                if measured {
                    lock(tally).record_response(done - turn.latency_from, status, bytes, done);
                }
                continue;
            }
            Ok(Err(error)) => Failure::Transport(error),
            Err(_) => Failure::Timeout(plan.timeout),
        };
        if measured {
            lock(tally).record_failure(|| failure.to_string());
        }
        if sender.needs_reconnect() {
            return;
        }
    }
}

/// Sends each request on a connection opened for it, and closes it after.
/// The first request takes the connection opened before the clock started.
async fn new_connection_each_time(
    plan: &Plan,
    first: Connection,
    tally: &Mutex<Tally>,
    progress: &ProgressCounter,
) {
    let mut opened = Some(first);
    while let Some(turn) = plan.pacing.next_turn().await {
        let measured = turn.due >= plan.measured_from;
        progress.0.fetch_add(1, Relaxed);
        if turn.expired {
            if measured {
                lock(tally).record_failure(|| Failure::Unsent(plan.timeout).to_string());
            }
            continue;
        }
        let once = async {
            let mut connection = match opened.take() {
                Some(connection) => connection,
                None => plan.connector.connect(1).await.map_err(Failure::Connect)?,
            };
            exchange(&mut connection.streams[0], plan.template.request())
                .await
                .map_err(Failure::Transport)
        };
        let outcome = tokio::time::timeout(plan.timeout, once)
            .await
            .unwrap_or(Err(Failure::Timeout(plan.timeout)));
        let done = Instant::now();
        // A target that refuses connections is not hammered with them.
        let refused = matches!(outcome, Err(Failure::Connect(_)));
        match outcome {
            Ok((status, bytes)) if measured => {
                lock(tally).record_response(done - turn.latency_from, status, bytes, done)
            }
            Err(failure) if measured => lock(tally).record_failure(|| failure.to_string()),
            _ => {}
        }
        if refused {
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }
}

/// Sends one request and reads the whole response body.
async fn exchange(
    sender: &mut Sender,
    request: http::Request<RequestBody>,
) -> Result<(StatusCode, u64), hyper::Error> {
    let response = sender.send(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}

enum Failure {
    Connect(super::LoadError),
    Transport(hyper::Error),
    Timeout(Duration),
    /// Open loop: still waiting for a free stream a timeout after it was due.
    Unsent(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "{error}"),
            Failure::Timeout(after) => write!(f, "no response within {after:?}"),
            Failure::Unsent(after) => write!(
                f,
                "not sent within {after:?} of when it was due: every connection was busy \
                 (the target is slower than the rate)"
            ),
            Failure::Transport(error) => {
                // hyper's own message is terse; the cause is in its sources.
                write!(f, "{error}")?;
                let mut source = error.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}
