//! Picking an endpoint: weighted round-robin and least-request (P2C).
//!
//! Both picks are O(1) in the number of endpoints and take no lock. The
//! round-robin schedule is computed once per endpoint-set change (control
//! path) and indexed with an atomic cursor; least-request draws two
//! endpoints and compares their in-flight counts, which are atomics that
//! live in the endpoint and survive snapshot swaps.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::endpoint::Endpoint;
use skiff_config::cluster::LbPolicy;

/// Longest round-robin schedule kept. Past it weights are scaled down
/// (keeping every endpoint at weight ≥ 1), trading exactness over a cycle
/// for bounded memory: 1 Mi entries × 4 bytes.
pub(crate) const MAX_SCHEDULE: u64 = 1 << 20;

/// How a snapshot picks.
#[derive(Debug)]
pub enum Balancer {
    /// Weighted round-robin over a schedule made once per set ([`smooth_schedule`]). `None` when all weights are equal, so the
    /// schedule is the identity and costs no memory.
    RoundRobin(Option<Box<[u32]>>),
    /// Power of two choices over in-flight counts; `weighted` when weights
    /// differ, which switches to comparing `weight / (in_flight + 1)`.
    LeastRequest { weighted: bool },
}

impl Balancer {
    /// Builds the balancer for `endpoints` under `policy`.
    pub fn new(policy: LbPolicy, endpoints: &[Arc<Endpoint>]) -> Balancer {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight()).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        match policy {
            LbPolicy::RoundRobin if uniform => Balancer::RoundRobin(None),
            LbPolicy::RoundRobin => Balancer::RoundRobin(Some(smooth_schedule(&weights))),
            LbPolicy::LeastRequest => Balancer::LeastRequest { weighted: !uniform },
        }
    }

    /// Picks an index into `endpoints`; `None` only when it is empty.
    #[inline]
    pub(crate) fn pick(&self, endpoints: &[Arc<Endpoint>], cursor: &AtomicUsize) -> Option<usize> {
        let n = endpoints.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        match self {
            Balancer::RoundRobin(None) => Some(cursor.fetch_add(1, Relaxed) % n),
            Balancer::RoundRobin(Some(schedule)) => {
                let i = cursor.fetch_add(1, Relaxed) % schedule.len();
                Some(schedule[i] as usize)
            }
            Balancer::LeastRequest { weighted } => {
                let r = random();
                let a = (r % n as u64) as usize;
                let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&endpoints[a], &endpoints[b]);
                let (la, lb) = (ea.in_flight() + 1, eb.in_flight() + 1);
                let a_wins = if *weighted {
                    // weight_a / la >= weight_b / lb, without dividing.
                    ea.weight() as u64 * lb >= eb.weight() as u64 * la
                } else {
                    la <= lb
                };
                Some(if a_wins { a } else { b })
            }
        }
    }
}

/// A schedule in which endpoint `i` appears exactly `weights[i]` times per
/// cycle (after dividing by the weights' gcd), each endpoint's own turns
/// spread evenly: turn k of endpoint i sits at the middle of the k-th of
/// wᵢ equal slices of the cycle, (k − ½) / wᵢ, and all turns are taken in
/// that order, ties to the lower index. So weights 5, 1, 1 give
/// `0 0 0 1 2 0 0`: the two light endpoints' single turns both sit
/// mid-cycle and come together, where nginx's smooth weighted round-robin
/// gives `0 0 1 0 2 0 0`. Computed once per endpoint set with a heap
/// (O(total · log n)) instead of O(n) per pick.
pub(crate) fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|&w| (w as u64 / g).max(1)).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        for w in &mut reduced {
            *w = ((*w as f64 * scale) as u64).max(1);
        }
    }
    // Min-heap on the turn's midpoint (2k − 1) / 2w, compared exactly as
    // (2k₁ − 1)·w₂ < (2k₂ − 1)·w₁.
    #[derive(PartialEq, Eq)]
    struct Turn {
        k: u64,
        w: u64,
        index: u32,
    }
    impl Ord for Turn {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            ((2 * other.k - 1) * self.w)
                .cmp(&((2 * self.k - 1) * other.w))
                .then(other.index.cmp(&self.index))
        }
    }
    impl PartialOrd for Turn {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    let total: u64 = reduced.iter().sum();
    let mut heap: std::collections::BinaryHeap<Turn> = reduced
        .iter()
        .enumerate()
        .map(|(i, &w)| Turn {
            k: 1,
            w,
            index: i as u32,
        })
        .collect();
    let mut schedule = Vec::with_capacity(total as usize);
    while let Some(mut turn) = heap.pop() {
        schedule.push(turn.index);
        if turn.k < turn.w {
            turn.k += 1;
            heap.push(turn);
        }
    }
    schedule.into_boxed_slice()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // Distinct per thread and per process; quality only needs to be good
    // enough for load balancing.
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (addr ^ nanos.rotate_left(17) ^ u64::from(std::process::id())) | 1
}

/// A fast thread-local pseudo-random number (xorshift64*).
#[inline]
pub(crate) fn random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exact_and_smooth() {
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        // Turns by their midpoints 0.1, 0.3, 0.5 (three ties, lower index
        // first), 0.7, 0.9.
        assert_eq!(&s[..], &[0, 0, 0, 1, 2, 0, 0]);
        let s = smooth_schedule(&[2, 4, 6]);
        assert_eq!(s.len(), 6, "reduced by the gcd");
        assert_eq!(s.iter().filter(|&&i| i == 2).count(), 3);
    }

    #[test]
    fn schedule_spreads_turns_evenly() {
        // 1/6, 3/6 and 5/6 against 1/2: the light endpoint's turn is not
        // at the start, and not next to itself in the next cycle.
        assert_eq!(&smooth_schedule(&[3, 1])[..], &[0, 0, 1, 0]);
        let s = smooth_schedule(&[1, 1, 2]);
        assert_eq!(s.len(), 4);
        assert!(s.windows(2).all(|w| w[0] != w[1] || w[0] == 2));
    }

    #[test]
    fn huge_schedules_are_capped() {
        let weights: Vec<u32> = (1..=3000).collect();
        let s = smooth_schedule(&weights);
        assert!(s.len() as u64 <= MAX_SCHEDULE + weights.len() as u64);
    }

    #[test]
    fn random_draws_differ() {
        let a = random();
        let b = random();
        assert_ne!(a, b);
    }
}
