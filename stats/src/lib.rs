//! Live per-variant statistics: request and error counts and a log-bucketed
//! latency histogram, bumped with relaxed atomics on the request path and read
//! as cumulative snapshots (the difference of two is an interval). The
//! control plane judges canaries and experiments from these, with the
//! significance tests below; no Prometheus round trip is needed.
//!
//! The histogram has 192 buckets growing by 10% from 10 µs (the last reaches
//! ~14 minutes), so a quantile is within 10% of the true value.

pub mod access_log;
pub mod drift;
pub mod fleet;
pub mod quality;
pub mod sources;
pub mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Number of latency buckets (fixed: fleet-wide counters add bucket by bucket).
pub const BUCKETS: usize = 192;
const MIN_US: f64 = 10.0;
const RATIO: f64 = 1.1;

fn bucket_of(us: f64) -> usize {
    if us <= MIN_US {
        return 0;
    }
    (((us / MIN_US).ln() / RATIO.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, in microseconds.
fn bucket_upper(i: usize) -> f64 {
    MIN_US * RATIO.powi(i as i32)
}

/// A representative value of bucket `i` (geometric middle), in microseconds.
fn bucket_mid(i: usize) -> f64 {
    if i == 0 {
        MIN_US / 2.0
    } else {
        bucket_upper(i) / RATIO.sqrt()
    }
}

pub struct LiveStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_us_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    shadow: ShadowStats,
    /// Latest drift scores (f64 bits; NaN: not scored), set by the variant's drift monitor.
    data_drift: AtomicU64,
    model_drift: AtomicU64,
    /// Labelled predictions (feedback); `None` until the model turns quality monitoring on.
    /// Locked by feedback and readers only, never on the request path.
    quality: Mutex<Option<quality::QualityWindow>>,
    /// When counting began: throughput is requests over the time since.
    created: std::time::Instant,
}

/// How a shadow variant's mirrored answers compare with the primary's.
#[derive(Default)]
struct ShadowStats {
    mirrored: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    compared_rows: AtomicU64,
    agreeing_rows: AtomicU64,
    /// f64 bits; non-negative floats order like their bits.
    max_abs_error: AtomicU64,
}

/// One mirrored request's outcome.
pub enum ShadowOutcome {
    /// Answered; `rows` compared by argmax, `agreeing` of them equal, `max_abs_error` over every element.
    Compared { rows: u64, agreeing: u64, max_abs_error: f64 },
    /// The shadow failed or timed out.
    Failed,
    /// Not sent: too many shadow requests already in flight.
    Dropped,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us_sum: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            shadow: ShadowStats::default(),
            data_drift: AtomicU64::new(f64::NAN.to_bits()),
            model_drift: AtomicU64::new(f64::NAN.to_bits()),
            quality: Mutex::new(None),
            created: std::time::Instant::now(),
        }
    }
}

impl LiveStats {
    /// Records one answered request. `error` is a failure the variant is to blame for (5xx).
    pub fn record(&self, latency: Duration, error: bool) {
        let us = latency.as_micros() as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        self.buckets[bucket_of(us as f64)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_shadow(&self, outcome: ShadowOutcome) {
        let s = &self.shadow;
        match outcome {
            ShadowOutcome::Compared { rows, agreeing, max_abs_error } => {
                s.mirrored.fetch_add(1, Ordering::Relaxed);
                s.compared_rows.fetch_add(rows, Ordering::Relaxed);
                s.agreeing_rows.fetch_add(agreeing, Ordering::Relaxed);
                if max_abs_error.is_finite() && max_abs_error >= 0.0 {
                    s.max_abs_error.fetch_max(max_abs_error.to_bits(), Ordering::Relaxed);
                }
            }
            ShadowOutcome::Failed => {
                s.mirrored.fetch_add(1, Ordering::Relaxed);
                s.failed.fetch_add(1, Ordering::Relaxed);
            }
            ShadowOutcome::Dropped => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The latest drift scores of this variant's live window (`None`: not scored yet).
    pub fn set_drift(&self, data: Option<f64>, model: Option<f64>) {
        self.data_drift.store(data.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
        self.model_drift.store(model.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }

    /// Turns quality tracking on with this task and window (a changed setting starts a new window).
    pub fn configure_quality(&self, task: quality::Task, window: usize) {
        let mut q = self.quality.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*q, Some(w) if w.task() == task && w.capacity() == window) {
            *q = Some(quality::QualityWindow::new(task, window));
        }
    }

    /// Records labelled predictions; `false` when quality tracking is off.
    pub fn record_feedback(&self, pairs: impl IntoIterator<Item = (f64, f64)>) -> bool {
        let mut q = self.quality.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = q.as_mut() else { return false };
        for (p, l) in pairs {
            w.add(p, l);
        }
        true
    }

    /// Replaces the window's labelled predictions (oldest first) with a shared
    /// window's (fleet mode: the fleet's latest labels); `total` counts the
    /// `joined` labels this replica added. `false` when quality tracking is off.
    pub fn replace_feedback(&self, pairs: impl IntoIterator<Item = (f64, f64)>, joined: u64) -> bool {
        let mut q = self.quality.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = q.as_mut() else { return false };
        w.replace(pairs, joined);
        true
    }

    /// Quality over the feedback window, when tracked.
    pub fn quality(&self) -> Option<quality::QualityReport> {
        self.quality.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|w| w.report())
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = &self.shadow;
        let drift = |a: &AtomicU64| Some(f64::from_bits(a.load(Ordering::Relaxed))).filter(|x| !x.is_nan());
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_us_sum: self.latency_us_sum.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            shadow: ShadowSnapshot {
                mirrored: s.mirrored.load(Ordering::Relaxed),
                failed: s.failed.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
                compared_rows: s.compared_rows.load(Ordering::Relaxed),
                agreeing_rows: s.agreeing_rows.load(Ordering::Relaxed),
                max_abs_error: f64::from_bits(s.max_abs_error.load(Ordering::Relaxed)),
            },
            data_drift: drift(&self.data_drift),
            model_drift: drift(&self.model_drift),
            quality: self.quality(),
            elapsed_secs: self.created.elapsed().as_secs_f64(),
        }
    }
}

/// Cumulative counts at one moment; `since` turns two into an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    pub latency_us_sum: u64,
    pub buckets: Vec<u64>,
    pub shadow: ShadowSnapshot,
    /// Latest largest input PSI (a level, not a count: `since` keeps the later one).
    pub data_drift: Option<f64>,
    /// Latest largest output PSI.
    pub model_drift: Option<f64>,
    /// Quality over the feedback window (a window, not a count: `since` keeps the later one).
    pub quality: Option<quality::QualityReport>,
    /// Seconds the counts cover (since the variant's stats were created, or the interval).
    pub elapsed_secs: f64,
}

/// Shadow comparison counts (cumulative; `max_abs_error` is the largest seen since start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShadowSnapshot {
    pub mirrored: u64,
    pub failed: u64,
    pub dropped: u64,
    pub compared_rows: u64,
    pub agreeing_rows: u64,
    pub max_abs_error: f64,
}

impl ShadowSnapshot {
    /// Share of compared rows whose argmax matched the primary's.
    pub fn agreement(&self) -> Option<f64> {
        (self.compared_rows > 0).then(|| self.agreeing_rows as f64 / self.compared_rows as f64)
    }
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_us_sum: self.latency_us_sum.saturating_sub(earlier.latency_us_sum),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
            shadow: ShadowSnapshot {
                mirrored: self.shadow.mirrored.saturating_sub(earlier.shadow.mirrored),
                failed: self.shadow.failed.saturating_sub(earlier.shadow.failed),
                dropped: self.shadow.dropped.saturating_sub(earlier.shadow.dropped),
                compared_rows: self.shadow.compared_rows.saturating_sub(earlier.shadow.compared_rows),
                agreeing_rows: self.shadow.agreeing_rows.saturating_sub(earlier.shadow.agreeing_rows),
                max_abs_error: self.shadow.max_abs_error,
            },
            data_drift: self.data_drift,
            model_drift: self.model_drift,
            quality: self.quality.clone(),
            elapsed_secs: (self.elapsed_secs - earlier.elapsed_secs).max(0.0),
        }
    }

    /// Requests per second over the time the counts cover; `None` when that
    /// time is unknown (fleet-wide counters, merged from replicas of different ages).
    pub fn throughput(&self) -> Option<f64> {
        (self.elapsed_secs > 0.0).then(|| self.requests as f64 / self.elapsed_secs)
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    pub fn mean_latency_ms(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.latency_us_sum as f64 / self.requests as f64 / 1000.0
        }
    }

    /// Latency quantile in milliseconds (`q` in [0,1]); `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(i) / 1000.0);
            }
        }
        Some(bucket_upper(BUCKETS - 1) / 1000.0)
    }

    /// Sample variance of latency in ms², estimated from bucket middles.
    pub fn latency_variance_ms2(&self) -> f64 {
        let n: u64 = self.buckets.iter().sum();
        if n < 2 {
            return 0.0;
        }
        let mean =
            self.buckets.iter().enumerate().map(|(i, &c)| c as f64 * bucket_mid(i) / 1000.0).sum::<f64>() / n as f64;
        let ss: f64 = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let d = bucket_mid(i) / 1000.0 - mean;
                c as f64 * d * d
            })
            .sum();
        ss / (n - 1) as f64
    }
}

/// Live stats per (model, variant), kept across routing snapshots so that a
/// traffic shift does not reset what the canary analysis is judging.
#[derive(Default)]
pub struct StatsRegistry {
    inner: Mutex<HashMap<(String, String), Arc<LiveStats>>>,
}

impl StatsRegistry {
    /// The stats of a variant, created on first use (when a snapshot is built).
    pub fn get_or_create(&self, model: &str, variant: &str) -> Arc<LiveStats> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((model.to_string(), variant.to_string())).or_default().clone()
    }

    pub fn snapshot(&self, model: &str, variant: &str) -> Option<Snapshot> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(model.to_string(), variant.to_string())).map(|s| s.snapshot())
    }
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// Two-sided two-proportion z-test: (z, p-value) for x1/n1 vs x2/n2.
pub fn two_proportion_z_test(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<(f64, f64)> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 {
        return Some((0.0, 1.0));
    }
    let z = (p1 - p2) / se;
    Some((z, 2.0 * (1.0 - normal_cdf(z.abs()))))
}

/// Two-sided Welch's t-test: (t, degrees of freedom, p-value).
pub fn welch_t_test(mean1: f64, var1: f64, n1: u64, mean2: f64, var2: f64, n2: u64) -> Option<(f64, f64, f64)> {
    if n1 < 2 || n2 < 2 {
        return None;
    }
    let (a, b) = (var1 / n1 as f64, var2 / n2 as f64);
    if a + b == 0.0 {
        return Some((0.0, (n1 + n2 - 2) as f64, 1.0));
    }
    let t = (mean1 - mean2) / (a + b).sqrt();
    let df = (a + b).powi(2) / (a * a / (n1 - 1) as f64 + b * b / (n2 - 1) as f64);
    // P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2).
    let p = incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    Some((t, df, p))
}

/// Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes §6.4).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-12 {
            break;
        }
    }
    h
}

/// ln Γ(x) (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let s = LiveStats::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), ms % 10 == 0);
        }
        let snap = s.snapshot();
        assert_eq!(snap.requests, 100);
        assert_eq!(snap.errors, 10);
        let p50 = snap.quantile_ms(0.5).unwrap();
        let p99 = snap.quantile_ms(0.99).unwrap();
        assert!((50.0..=55.0).contains(&p50), "p50 {p50}");
        assert!((99.0..=109.0).contains(&p99), "p99 {p99}");
        assert!((snap.mean_latency_ms() - 50.5).abs() < 0.01);
        let later = {
            s.record(Duration::from_millis(500), true);
            s.snapshot()
        };
        let d = later.since(&snap);
        assert_eq!((d.requests, d.errors), (1, 1));
        assert!(d.quantile_ms(0.5).unwrap() >= 500.0);
    }

    #[test]
    fn normal_and_t_distributions_match_tables() {
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
        assert!((normal_cdf(-1.0) - 0.158_655).abs() < 1e-5);
        // t = 2.228 with 10 df is the two-sided 5% point.
        let p = incomplete_beta(5.0, 0.5, 10.0 / (10.0 + 2.228 * 2.228));
        assert!((p - 0.05).abs() < 1e-3, "{p}");
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-10);
    }

    #[test]
    fn significance_tests_decide_the_obvious_cases() {
        let (_, p) = two_proportion_z_test(10, 1000, 60, 1000).unwrap();
        assert!(p < 0.001, "{p}");
        let (_, p) = two_proportion_z_test(50, 1000, 52, 1000).unwrap();
        assert!(p > 0.5, "{p}");
        let (_, _, p) = welch_t_test(10.0, 4.0, 500, 12.0, 4.0, 500).unwrap();
        assert!(p < 1e-6, "{p}");
        let (_, _, p) = welch_t_test(10.0, 4.0, 500, 10.05, 4.0, 500).unwrap();
        assert!(p > 0.5, "{p}");
    }
}
