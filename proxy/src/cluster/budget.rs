//! The retry budget: retries may add at most a share of a cluster's
//! requests, plus a small number per second whatever the share, so that
//! when every endpoint fails, retries cannot multiply the load (Linkerd's
//! retry budget; Envoy's `retry_budget`).
//!
//! Counted over a sliding window of the current and the previous second,
//! in two buckets of atomics; the request path adds one increment.

use crate::clock::epoch;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Requests and retries of one cluster, for its budget.
#[derive(Debug, Default)]
pub(crate) struct RetryBudget {
    /// The second (since the process's [`epoch`]) the current bucket counts.
    second: AtomicU64,
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

fn second_of(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_secs()
}

impl RetryBudget {
    /// Counts a request that arrived at `at`.
    #[inline]
    pub(crate) fn record_request(&self, at: Instant) {
        let s = self.roll(second_of(at));
        self.requests[(s % 2) as usize].fetch_add(1, Relaxed);
    }

    /// Takes a retry from the budget, if there is one: fewer than
    /// `min_per_second` retries this second, or retries under
    /// `percent`% of the requests over the window.
    pub(crate) fn try_retry(&self, percent: u32, min_per_second: u32) -> bool {
        let s = self.roll(second_of(Instant::now()));
        let (cur, prev) = ((s % 2) as usize, ((s + 1) % 2) as usize);
        let retries_now = self.retries[cur].load(Relaxed);
        let retries = retries_now + self.retries[prev].load(Relaxed);
        let requests = self.requests[cur].load(Relaxed) + self.requests[prev].load(Relaxed);
        let allowed = retries_now < u64::from(min_per_second)
            || retries * 100 < requests * u64::from(percent);
        if allowed {
            self.retries[cur].fetch_add(1, Relaxed);
        }
        allowed
    }

    /// Moves the window to second `s`, clearing buckets that fell out of
    /// it. Returns `s`. (Racing callers may lose a count at a boundary;
    /// the budget is an estimate either way.)
    fn roll(&self, s: u64) -> u64 {
        let old = self.second.load(Relaxed);
        if old < s
            && self
                .second
                .compare_exchange(old, s, Relaxed, Relaxed)
                .is_ok()
        {
            let stale: &[u64] = if s - old >= 2 { &[0, 1] } else { &[s % 2] };
            for &b in stale {
                self.requests[b as usize].store(0, Relaxed);
                self.retries[b as usize].store(0, Relaxed);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_with_a_floor() {
        let budget = RetryBudget::default();
        let now = Instant::now();
        // No requests: only the per-second minimum.
        let granted = (0..100).filter(|_| budget.try_retry(20, 10)).count();
        assert_eq!(granted, 10);
        // 1,000 requests: 20% of them, counting the ten already taken.
        for _ in 0..1000 {
            budget.record_request(now);
        }
        let more = (0..1000).filter(|_| budget.try_retry(20, 10)).count();
        assert_eq!(granted + more, 200);
    }

    #[test]
    fn a_zero_budget_allows_only_the_minimum() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.record_request(Instant::now());
        }
        assert_eq!((0..50).filter(|_| budget.try_retry(0, 3)).count(), 3);
    }
}
