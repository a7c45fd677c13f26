//! When each request goes out, and when its latency starts.
//!
//! Closed loop: a stream sends its next request as soon as the previous one
//! is answered, so a slow server slows the load down and latency runs from
//! the moment of sending. Open loop: requests are due on a fixed schedule at
//! the given rate, shared by every stream of every connection; the first free
//! stream takes the next due request. A request taken after it was due (every
//! stream was busy, say behind a stalled response) is charged from the time it
//! was due, so a stall shows in the latency of every request queued behind it
//! instead of being omitted (wrk2's "coordinated omission" correction). A
//! request still unsent a whole timeout after it was due has timed out
//! already: it is counted as failed, not sent, which also bounds how long an
//! overloaded run drains after its window.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How a run spaces its requests.
pub(crate) enum Pacing {
    /// As fast as the streams can go, until `end`.
    Closed { end: Instant },
    /// On a schedule; requests due at or after `end` are not sent, and those
    /// still waiting `patience` after they were due expire unsent.
    Open {
        schedule: Schedule,
        next_slot: AtomicU64,
        end: Instant,
        patience: Duration,
    },
}

/// A stream's next request: when its latency starts and when it was due.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Turn {
    /// Where latency is measured from.
    pub latency_from: Instant,
    /// When the request was due: decides whether it falls in the warmup.
    pub due: Instant,
    /// Waited past its patience: to be counted as timed out, not sent.
    pub expired: bool,
}

/// Evenly spaced intended send times, `1 / rate` apart from `origin`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    origin: Instant,
    interval_ns: f64,
}

impl Schedule {
    pub fn new(origin: Instant, rate: f64) -> Self {
        Schedule {
            origin,
            interval_ns: 1e9 / rate,
        }
    }

    /// When request number `slot` (from 0) is due.
    pub fn intended(&self, slot: u64) -> Instant {
        // Multiplying rather than adding intervals keeps rounding from
        // accumulating over millions of slots.
        self.origin + Duration::from_nanos((slot as f64 * self.interval_ns) as u64)
    }

    /// The first slot due at or after `time`.
    fn first_due_at(&self, time: Instant) -> u64 {
        let offset_ns = time.saturating_duration_since(self.origin).as_nanos() as f64;
        // The division lands on the slot or next to it; rounding in
        // `intended` decides which.
        let mut slot = (offset_ns / self.interval_ns) as u64;
        while slot > 0 && self.intended(slot - 1) >= time {
            slot -= 1;
        }
        while self.intended(slot) < time {
            slot += 1;
        }
        slot
    }
}

impl Pacing {
    pub fn closed(end: Instant) -> Self {
        Pacing::Closed { end }
    }

    pub fn open(origin: Instant, rate: f64, end: Instant, patience: Duration) -> Self {
        Pacing::Open {
            schedule: Schedule::new(origin, rate),
            next_slot: AtomicU64::new(0),
            end,
            patience,
        }
    }

    /// Waits until the calling stream may send; `None` once the run is over.
    pub async fn next_turn(&self) -> Option<Turn> {
        match self {
            Pacing::Closed { end } => {
                let now = Instant::now();
                (now < *end).then_some(Turn {
                    latency_from: now,
                    due: now,
                    expired: false,
                })
            }
            Pacing::Open {
                schedule,
                next_slot,
                end,
                patience,
            } => {
                let due = schedule.intended(next_slot.fetch_add(1, Relaxed));
                if due >= *end {
                    return None;
                }
                let now = Instant::now();
                if due <= now {
                    // Late: every stream was busy when it fell due. The wait
                    // is the server's doing, so it is part of the latency.
                    return Some(Turn {
                        latency_from: due,
                        due,
                        expired: now - due > *patience,
                    });
                }
                // Early: wait for it, on a timer finer than tokio's (whose
                // 1 ms ticks would send the requests of a millisecond in one
                // burst). It wakes up to its slack late; that lateness is
                // ours, not the server's, so latency starts at the send.
                super::timer::sleep_until(due).await;
                Some(Turn {
                    latency_from: Instant::now(),
                    due,
                    expired: false,
                })
            }
        }
    }

    /// True once no stream will get another turn, or, in open loop, once
    /// every request not yet taken would have expired (no connection could
    /// take them: the target went away).
    pub fn is_over(&self) -> bool {
        match self {
            Pacing::Closed { end } => Instant::now() >= *end,
            Pacing::Open {
                schedule,
                next_slot,
                end,
                patience,
            } => {
                schedule.intended(next_slot.load(Relaxed)) >= *end
                    || Instant::now() >= *end + *patience
            }
        }
    }

    /// Open-loop requests due from `from` on that no stream ever took; a run
    /// counts them as failed, so every request due is accounted for.
    pub fn untaken(&self, from: Instant) -> u64 {
        match self {
            Pacing::Closed { .. } => 0,
            Pacing::Open {
                schedule,
                next_slot,
                end,
                ..
            } => {
                let first = next_slot.load(Relaxed).max(schedule.first_due_at(from));
                schedule.first_due_at(*end).saturating_sub(first)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_at_the_rate() {
        let origin = Instant::now();
        let schedule = Schedule::new(origin, 200.0);
        for slot in 0..1000u64 {
            let offset = schedule.intended(slot) - origin;
            assert_eq!(offset, Duration::from_millis(5 * slot), "slot {slot}");
        }
        let odd = Schedule::new(origin, 3.0);
        let gaps: Vec<Duration> = (1..4)
            .map(|s| odd.intended(s) - odd.intended(s - 1))
            .collect();
        assert!(gaps
            .iter()
            .all(|g| g.abs_diff(Duration::from_nanos(333_333_333)) <= Duration::from_nanos(1)));
    }

    const PATIENCE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn open_loop_hands_out_rate_times_window_requests_then_stops() {
        let origin = Instant::now() - Duration::from_secs(10);
        let pacing = Pacing::open(
            origin,
            1000.0,
            origin + Duration::from_millis(250),
            PATIENCE,
        );
        let mut turns = 0;
        while pacing.next_turn().await.is_some() {
            turns += 1;
        }
        assert_eq!(turns, 250);
        assert!(pacing.is_over());
    }

    #[tokio::test]
    async fn requests_no_stream_took_are_counted_from_the_measured_window() {
        let origin = Instant::now() - Duration::from_secs(10);
        let end = origin + Duration::from_millis(500);
        let pacing = Pacing::open(origin, 100.0, end, PATIENCE);
        let measured_from = origin + Duration::from_millis(200);
        assert_eq!(pacing.untaken(measured_from), 30);
        for _ in 0..25 {
            pacing.next_turn().await.expect("a turn");
        }
        assert_eq!(pacing.untaken(measured_from), 25);
        while pacing.next_turn().await.is_some() {}
        assert_eq!(pacing.untaken(measured_from), 0);
        assert_eq!(Pacing::closed(end).untaken(measured_from), 0);
    }

    #[test]
    fn open_loop_is_over_once_every_untaken_request_has_expired() {
        let patience = Duration::from_millis(100);
        let ended = Instant::now() - patience;
        let abandoned = Pacing::open(ended - Duration::from_secs(1), 10.0, ended, patience);
        assert!(abandoned.is_over());
        let now = Instant::now();
        let running = Pacing::open(now, 10.0, now + Duration::from_secs(60), PATIENCE);
        assert!(!running.is_over());
    }

    #[tokio::test]
    async fn a_late_turn_is_charged_from_when_it_was_due() {
        let origin = Instant::now() - Duration::from_secs(1);
        let pacing = Pacing::open(origin, 10.0, origin + Duration::from_secs(60), PATIENCE);
        let turn = pacing.next_turn().await.expect("a turn");
        assert_eq!(turn.due, origin);
        assert_eq!(turn.latency_from, origin);
        assert!(!turn.expired);
    }

    #[tokio::test]
    async fn a_turn_overdue_past_its_patience_expires_unsent() {
        let origin = Instant::now() - Duration::from_secs(1);
        let patience = Duration::from_millis(550);
        let pacing = Pacing::open(origin, 10.0, origin + Duration::from_secs(60), patience);
        // Due 1 s, 0.9 s, ... 0.6 s ago: expired; 0.5 s ago: not yet.
        let expired: Vec<bool> = (0..6)
            .map(|_| futures_util::FutureExt::now_or_never(pacing.next_turn()))
            .map(|turn| turn.flatten().expect("a turn due already").expired)
            .collect();
        assert_eq!(expired, [true, true, true, true, true, false]);
    }

    #[tokio::test]
    async fn an_early_turn_waits_and_is_charged_from_the_send() {
        let origin = Instant::now() + Duration::from_millis(20);
        let pacing = Pacing::open(origin, 10.0, origin + Duration::from_secs(60), PATIENCE);
        let turn = pacing.next_turn().await.expect("a turn");
        assert_eq!(turn.due, origin);
        assert!(turn.latency_from >= origin);
        assert!(Instant::now() >= origin);
    }

    #[tokio::test]
    async fn closed_loop_ends_at_its_deadline() {
        let ended = Pacing::closed(Instant::now());
        assert!(ended.next_turn().await.is_none());
        assert!(ended.is_over());
        let running = Pacing::closed(Instant::now() + Duration::from_secs(60));
        assert!(running.next_turn().await.is_some());
        assert!(!running.is_over());
    }
}
