//! A circuit breaker in front of Redis (the response cache's L2, the
//! fleet-wide rate limits): `threshold` consecutive failures open it, and
//! while it is open no call is made at all. After `cooldown` exactly one
//! probe goes through; its success closes the breaker, its failure re-opens
//! it. Opening and closing are logged once each (never once per request)
//! and exported as a gauge. A leaf: lock-free atomics only.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

/// Breaker states, as the `*_breaker_state` gauges export them.
pub const CLOSED: i64 = 0;
pub const OPEN: i64 = 1;
pub const HALF_OPEN: i64 = 2;

pub struct Breaker {
    /// What it guards, for the log lines (`cache L2`, `answer store`, `rate limits`).
    what: &'static str,
    threshold: u32,
    cooldown: Duration,
    base: Instant,
    failures: AtomicU32,
    /// Millis since `base` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    state: IntGauge,
}

impl Breaker {
    pub fn new(what: &'static str, threshold: u32, cooldown: Duration, state: IntGauge) -> Breaker {
        state.set(CLOSED);
        Breaker {
            what,
            threshold: threshold.max(1),
            cooldown,
            base: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            state,
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Whether a call may go to Redis now.
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until {
            return false;
        }
        // Cool-down over: exactly one probe.
        let probe = self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if probe {
            self.state.set(HALF_OPEN);
        }
        probe
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(breaker = self.what, "redis is back: breaker closed");
        }
        self.probing.store(false, Ordering::Release);
        self.state.set(CLOSED);
    }

    /// The breaker let a call through but there is no connection to make it on.
    pub fn no_connection(&self) {
        if self.probing.load(Ordering::Acquire) || self.open_until.load(Ordering::Acquire) != 0 {
            self.failure();
        }
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.probing.swap(false, Ordering::AcqRel);
        if probing || n >= self.threshold {
            let was = self.open_until.swap(self.now_ms() + self.cooldown.as_millis() as u64, Ordering::AcqRel);
            if was == 0 {
                tracing::warn!(breaker = self.what, failures = n, cooldown = ?self.cooldown, "redis failing: breaker open");
            }
            self.state.set(OPEN);
        }
    }

    /// `OPEN`, `CLOSED` or `HALF_OPEN`.
    pub fn state(&self) -> i64 {
        self.state.get()
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_probes_once_and_recovers() {
        let b = Breaker::new("test", 3, Duration::from_millis(30), IntGauge::new("b", "b").unwrap());
        b.failure();
        b.failure();
        assert!(b.allow(), "below the threshold it stays closed");
        b.success();
        b.failure();
        b.failure();
        assert!(b.allow(), "success resets the count");
        b.failure();
        assert!(!b.allow(), "open after 3 consecutive failures");
        assert_eq!(b.state(), OPEN);
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after the cool-down");
        assert!(!b.allow(), "only one");
        assert_eq!(b.state(), HALF_OPEN);
        b.failure();
        assert!(!b.allow(), "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow());
        assert_eq!(b.state(), CLOSED);
    }
}
