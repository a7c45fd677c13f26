//! What a run measured, with the figures reports are made of.

use std::time::Duration;

use super::latency::{CurvePoint, Latencies};
use super::LoadSpec;

/// The outcome of one [`LoadSpec`]: counts over the measured window (warmup
/// excluded) and the latency distribution of every response in it.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// The spec's label.
    pub label: String,
    pub spec: LoadSpec,
    /// Responses received, whatever their status.
    pub requests: u64,
    /// Responses with a status outside 2xx; their latency is recorded too.
    pub status_errors: u64,
    /// Requests that got no response (refused, reset, timed out), open-loop
    /// requests still unsent a timeout after they were due, and failed
    /// attempts to reopen a connection.
    pub transport_errors: u64,
    /// What the first transport error was, if there was one.
    pub first_transport_error: Option<String>,
    /// Response body bytes.
    pub bytes_received: u64,
    /// From the end of the warmup to the last response.
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl LoadResult {
    /// Non-2xx responses and transport errors together.
    pub fn errors(&self) -> u64 {
        self.status_errors + self.transport_errors
    }

    /// Responses per second over the measured window.
    pub fn requests_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.requests as f64 / seconds
        } else {
            0.0
        }
    }

    /// The latency that `percentile`% (0 to 100) of responses stayed within.
    pub fn percentile(&self, percentile: f64) -> Duration {
        self.latencies.percentile(percentile)
    }

    pub fn max(&self) -> Duration {
        self.latencies.max()
    }

    pub fn mean(&self) -> Duration {
        self.latencies.mean()
    }

    /// The latency percentile curve, 0% to 100%.
    pub fn curve(&self) -> Vec<CurvePoint> {
        self.latencies.curve()
    }
}
