//! Waking at an instant finer than tokio's timer does.
//!
//! tokio's timer wheel turns once a millisecond, so an open-loop run at
//! 20,000 requests/s sent its requests in bursts of about 20, one burst a
//! millisecond: not the even rate it claimed, and each burst queues at the
//! server. Here one thread keeps the sleepers in a heap ordered by due
//! time and sleeps on a condition variable until the earliest is due (the
//! kernel's high-resolution timer, within the thread's timer slack of
//! about 50 µs), then wakes the tasks that are due. A sleeper registers
//! once; the thread is signalled only when a new sleeper is due before all
//! the others, which in a paced run (slots taken in order) is rare.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Resolves at `due` or just after, to within the timer thread's slack.
pub(crate) fn sleep_until(due: Instant) -> Sleep {
    Sleep {
        due,
        registered: None,
    }
}

pub(crate) struct Sleep {
    due: Instant,
    /// The waker the timer thread holds for this sleep.
    registered: Option<Waker>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.due {
            return Poll::Ready(());
        }
        // Polled again before its time (woken by something else): the
        // waker it registered still wakes it, unless it is another one now.
        if !self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            Timers::get().add(self.due, cx.waker().clone());
            self.registered = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A sleeper: when, and whom to wake. Ordered by `due` alone.
struct Entry {
    due: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

struct Timers {
    sleepers: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Condvar,
}

impl Timers {
    /// The process's timer thread, started on first use.
    fn get() -> &'static Timers {
        static TIMERS: OnceLock<&'static Timers> = OnceLock::new();
        TIMERS.get_or_init(|| {
            let timers: &'static Timers = Box::leak(Box::new(Timers {
                sleepers: Mutex::new(BinaryHeap::new()),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("skiff-bench-timer".into())
                .spawn(move || timers.run())
                .expect("start the timer thread");
            timers
        })
    }

    fn add(&self, due: Instant, waker: Waker) {
        let mut sleepers = self.sleepers.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = sleepers.peek().is_none_or(|Reverse(first)| due < first.due);
        sleepers.push(Reverse(Entry { due, waker }));
        drop(sleepers);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut sleepers = self.sleepers.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while sleepers
                .peek()
                .is_some_and(|Reverse(first)| first.due <= now)
            {
                if let Some(Reverse(entry)) = sleepers.pop() {
                    due.push(entry.waker);
                }
            }
            if !due.is_empty() {
                // Woken outside the lock: a woken task may sleep again at once.
                drop(sleepers);
                due.into_iter().for_each(Waker::wake);
                sleepers = self.sleepers.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            sleepers = match sleepers.peek().map(|Reverse(first)| first.due - now) {
                None => self
                    .changed
                    .wait(sleepers)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(wait) => {
                    self.changed
                        .wait_timeout(sleepers, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleepers_registered_in_any_order_all_wake_and_none_early() {
        let start = Instant::now() + Duration::from_millis(5);
        let mut tasks = Vec::new();
        // Registered out of order, due 300 µs apart.
        for i in [7u32, 2, 9, 0, 5, 1, 8, 3, 6, 4] {
            let due = start + Duration::from_micros(300) * i;
            tasks.push(tokio::spawn(async move {
                sleep_until(due).await;
                (i, due, Instant::now())
            }));
        }
        for task in tasks {
            let (i, due, at) = task.await.expect("task");
            assert!(at >= due, "sleeper {i} woke before its time");
        }
    }

    #[tokio::test]
    async fn a_sleep_already_due_is_ready_at_once() {
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(
            futures_util::FutureExt::now_or_never(sleep_until(past)),
            Some(())
        );
    }
}
