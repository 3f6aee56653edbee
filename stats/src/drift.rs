//! Drift arithmetic: a reference profile per feature (quantile bin edges of
//! a reference sample, or its top-k categories), a bounded live window of
//! counts in the same bins, and the scores that compare the two — the
//! population stability index (PSI) and the Kolmogorov–Smirnov statistic.
//! Also the `DriftBoard`, where the data plane publishes the latest scores
//! and the control plane reads them.
//!
//! Memory is fixed by the profile, never by traffic: a numeric feature keeps
//! `KS_BINS + PSI_BINS` counters per window slot, a categorical one `k + 1`.
//!
//! Accuracy, stated: PSI is computed on the reference's decile bins and is
//! exact for those bins (a numpy PSI over the same edges and the same
//! samples agrees to rounding). KS is evaluated at up to `KS_BINS - 1`
//! reference quantiles, where both empirical CDFs are exact; between two
//! edges the true supremum can exceed it by at most the mass inside the
//! bin, so every score carries `ks_upper`, an upper bound: the exact
//! two-sample statistic lies in `[ks, ks_upper]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Fine bins for KS (reference percentiles).
pub const KS_BINS: usize = 100;
/// Coarse bins for PSI (reference deciles), the usual choice.
pub const PSI_BINS: usize = 10;
/// Categories kept per categorical feature (the rest is "other").
pub const TOP_K: usize = 20;
/// Proportions are floored here before PSI's logarithm, so an empty bin costs a bounded amount.
pub const PSI_EPSILON: f64 = 1e-4;

/// One feature of a reference profile.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureProfile {
    /// Bin `i` holds `edges[i-1] < x <= edges[i]`; the first and last bins are open.
    Numeric { ks_edges: Vec<f64>, ks_ref: Vec<f64>, psi_edges: Vec<f64>, psi_ref: Vec<f64> },
    /// The reference's most frequent values and their shares; `other` is the share of every other value.
    Categorical { values: Vec<String>, shares: Vec<f64>, other: f64 },
}

/// A named feature's profile: `input[3]`, `probabilities[0]`, `s`.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub name: String,
    pub profile: FeatureProfile,
}

/// Index of the bin `x` falls in: the number of edges below it.
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|e| *e < x)
}

/// Quantile edges of a sorted sample at `i / bins`, without duplicates.
fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    let n = sorted.len();
    let mut edges: Vec<f64> = (1..bins).map(|i| sorted[((i * n) / bins).min(n - 1)]).collect();
    edges.dedup();
    edges
}

fn shares(edges: &[f64], sample: &[f64]) -> Vec<f64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for x in sample {
        counts[bin_of(edges, *x)] += 1;
    }
    let n = sample.len().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

impl FeatureProfile {
    /// The profile of a numeric reference sample (NaNs are ignored); `None` if none is left.
    pub fn numeric(sample: &[f64]) -> Option<FeatureProfile> {
        let mut sorted: Vec<f64> = sample.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let ks_edges = quantile_edges(&sorted, KS_BINS);
        let psi_edges = quantile_edges(&sorted, PSI_BINS);
        Some(FeatureProfile::Numeric {
            ks_ref: shares(&ks_edges, &sorted),
            psi_ref: shares(&psi_edges, &sorted),
            ks_edges,
            psi_edges,
        })
    }

    /// The profile of a categorical reference sample: its `TOP_K` most frequent values.
    pub fn categorical<'a>(sample: impl IntoIterator<Item = &'a str>) -> Option<FeatureProfile> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        let mut n = 0u64;
        for v in sample {
            *counts.entry(v).or_default() += 1;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let mut top: Vec<(&str, u64)> = counts.into_iter().collect();
        // Most frequent first; ties by value, so a profile is reproducible.
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(TOP_K);
        let kept: u64 = top.iter().map(|t| t.1).sum();
        Some(FeatureProfile::Categorical {
            values: top.iter().map(|t| t.0.to_string()).collect(),
            shares: top.iter().map(|t| t.1 as f64 / n as f64).collect(),
            other: (n - kept) as f64 / n as f64,
        })
    }

    /// Counters one window slot needs for this feature.
    fn slots(&self) -> usize {
        match self {
            FeatureProfile::Numeric { ks_ref, psi_ref, .. } => ks_ref.len() + psi_ref.len(),
            FeatureProfile::Categorical { values, .. } => values.len() + 1,
        }
    }
}

/// A value of one feature in one sampled row.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Number(f64),
    Category(&'a [u8]),
}

/// Population stability index of `actual` against `expected` proportions (both floored at `PSI_EPSILON`).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(PSI_EPSILON), a.max(PSI_EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// KS statistic between two binned distributions, evaluated at the edges, and
/// its upper bound (the largest difference reachable inside a bin).
pub fn ks_binned(reference: &[f64], live: &[f64]) -> (f64, f64) {
    let (mut fr, mut fl, mut ks, mut upper) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (r, l) in reference.iter().zip(live) {
        let d = fr - fl;
        // Inside this bin the difference moves within [d - l, d + r].
        upper = upper.max((d - l).abs()).max((d + r).abs());
        fr += r;
        fl += l;
        ks = ks.max((fr - fl).abs());
    }
    (ks, upper.max(ks))
}

/// Scores of one feature over the live window.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureScore {
    pub name: String,
    pub psi: f64,
    /// `None` for categorical features.
    pub ks: Option<f64>,
    /// Upper bound of the exact KS statistic (see the module doc).
    pub ks_upper: Option<f64>,
}

/// The live window of one side (inputs or outputs) of one variant: `SLOTS`
/// ring slots of `window / SLOTS` rows each. Scores cover every slot, so
/// between ¾ of the window and all of it; rows older than the window are
/// forgotten a slot at a time. A shift that starts at row `t` owns the whole
/// window by row `t + window`.
pub struct Window {
    features: Vec<Feature>,
    /// Start of each feature's counters in a slot.
    offsets: Vec<usize>,
    width: usize,
    slots: Vec<Vec<u32>>,
    rows: Vec<usize>,
    current: usize,
    per_slot: usize,
}

/// Slots a window is split into.
pub const SLOTS: usize = 4;

impl Window {
    pub fn new(features: Vec<Feature>, window: usize) -> Window {
        let mut offsets = Vec::with_capacity(features.len());
        let mut width = 0;
        for f in &features {
            offsets.push(width);
            width += f.profile.slots();
        }
        Window {
            features,
            offsets,
            width,
            slots: vec![vec![0; width]; SLOTS],
            rows: vec![0; SLOTS],
            current: 0,
            per_slot: window.div_ceil(SLOTS).max(1),
        }
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Rows the window summarises now.
    pub fn rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Starts a row: rotates to the next slot (forgetting its rows) when the current one is full.
    pub fn start_row(&mut self) {
        if self.rows[self.current] >= self.per_slot {
            self.current = (self.current + 1) % SLOTS;
            self.rows[self.current] = 0;
            self.slots[self.current].iter_mut().for_each(|c| *c = 0);
        }
        self.rows[self.current] += 1;
    }

    /// Adds feature `i`'s value of the row started last. NaN is not counted.
    pub fn add(&mut self, i: usize, value: Value<'_>) {
        let Some(f) = self.features.get(i) else { return };
        let base = self.offsets[i];
        let slot = &mut self.slots[self.current];
        match (&f.profile, value) {
            (FeatureProfile::Numeric { ks_edges, psi_edges, ks_ref, .. }, Value::Number(x)) if !x.is_nan() => {
                slot[base + bin_of(ks_edges, x)] += 1;
                slot[base + ks_ref.len() + bin_of(psi_edges, x)] += 1;
            }
            (FeatureProfile::Categorical { values, .. }, Value::Category(v)) => {
                let k = values.iter().position(|c| c.as_bytes() == v).unwrap_or(values.len());
                slot[base + k] += 1;
            }
            _ => {}
        }
    }

    /// Every feature's scores over the window.
    pub fn scores(&self) -> Vec<FeatureScore> {
        let mut total = vec![0u64; self.width];
        for s in &self.slots {
            for (t, c) in total.iter_mut().zip(s) {
                *t += u64::from(*c);
            }
        }
        let proportions = |counts: &[u64]| -> Vec<f64> {
            let n: u64 = counts.iter().sum();
            counts.iter().map(|c| if n == 0 { 0.0 } else { *c as f64 / n as f64 }).collect()
        };
        self.features
            .iter()
            .zip(&self.offsets)
            .map(|(f, &base)| match &f.profile {
                FeatureProfile::Numeric { ks_ref, psi_ref, .. } => {
                    let ks_live = proportions(&total[base..base + ks_ref.len()]);
                    let psi_live = proportions(&total[base + ks_ref.len()..base + ks_ref.len() + psi_ref.len()]);
                    let (ks, upper) = ks_binned(ks_ref, &ks_live);
                    FeatureScore {
                        name: f.name.clone(),
                        psi: psi(psi_ref, &psi_live),
                        ks: Some(ks),
                        ks_upper: Some(upper),
                    }
                }
                FeatureProfile::Categorical { values, shares, other } => {
                    let live = proportions(&total[base..base + values.len() + 1]);
                    let mut reference = shares.clone();
                    reference.push(*other);
                    FeatureScore { name: f.name.clone(), psi: psi(&reference, &live), ks: None, ks_upper: None }
                }
            })
            .collect()
    }
}

/// The latest drift report of one variant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftReport {
    /// Rows in the input window when scored.
    pub input_rows: usize,
    pub output_rows: usize,
    /// Empty until the window holds `min_samples` rows.
    pub inputs: Vec<FeatureScore>,
    pub outputs: Vec<FeatureScore>,
    /// Largest input PSI (data drift); `None` until scored.
    pub data_drift: Option<f64>,
    /// Largest output PSI (prediction drift); `None` until scored or with no output profile.
    pub model_drift: Option<f64>,
    pub threshold: f64,
    /// Requests sampled, and samples dropped because the summariser was behind.
    pub sampled: u64,
    pub dropped: u64,
}

impl DriftReport {
    /// Whether either score is above the threshold.
    pub fn drifted(&self) -> bool {
        self.data_drift.into_iter().chain(self.model_drift).any(|s| s > self.threshold)
    }
}

/// Latest drift reports per (model, variant): written by the summariser tasks, read by the control plane.
#[derive(Default, Clone)]
pub struct DriftBoard {
    inner: Arc<Mutex<HashMap<(String, String), DriftReport>>>,
}

impl DriftBoard {
    pub fn publish(&self, model: &str, variant: &str, report: DriftReport) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.insert((model.to_string(), variant.to_string()), report);
    }

    pub fn get(&self, model: &str, variant: &str) -> Option<DriftReport> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(model.to_string(), variant.to_string())).cloned()
    }

    /// Forgets a variant whose monitoring was turned off.
    pub fn remove(&self, model: &str, variant: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&(model.to_string(), variant.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(n: usize, lo: f64, hi: f64) -> Vec<f64> {
        // A deterministic low-discrepancy sequence: no RNG needed.
        (0..n).map(|i| lo + (hi - lo) * ((i as f64 * 0.618_033_988_75) % 1.0)).collect()
    }

    fn window_of(reference: &[f64], live: &[f64]) -> Window {
        let f = Feature { name: "x".into(), profile: FeatureProfile::numeric(reference).unwrap() };
        let mut w = Window::new(vec![f], live.len());
        for x in live {
            w.start_row();
            w.add(0, Value::Number(*x));
        }
        w
    }

    #[test]
    fn same_distribution_scores_near_zero() {
        let s = window_of(&uniform(5000, 0.0, 2.0), &uniform(1000, 0.0, 2.0)).scores();
        assert!(s[0].psi < 0.01, "{:?}", s[0]);
        assert!(s[0].ks.unwrap() < 0.02, "{:?}", s[0]);
    }

    #[test]
    fn shifted_distribution_scores_high_and_ks_is_bracketed() {
        let s = window_of(&uniform(5000, 0.0, 2.0), &uniform(1000, 1.0, 3.0)).scores();
        assert!(s[0].psi > 1.0, "{:?}", s[0]);
        // Exact KS of U(0,2) vs U(1,3) is 0.5.
        let (ks, upper) = (s[0].ks.unwrap(), s[0].ks_upper.unwrap());
        assert!(ks <= 0.5 + 0.01 && upper >= 0.5 - 0.01 && upper - ks <= 0.03, "{ks} {upper}");
    }

    #[test]
    fn window_forgets_rows_older_than_the_window() {
        let reference = uniform(5000, 0.0, 2.0);
        let f = Feature { name: "x".into(), profile: FeatureProfile::numeric(&reference).unwrap() };
        let mut w = Window::new(vec![f], 400);
        for x in uniform(400, 5.0, 6.0) {
            w.start_row();
            w.add(0, Value::Number(x));
        }
        assert!(w.scores()[0].psi > 1.0);
        for x in uniform(400, 0.0, 2.0) {
            w.start_row();
            w.add(0, Value::Number(x));
        }
        assert!(w.rows() <= 400);
        assert!(w.scores()[0].psi < 0.1, "{:?}", w.scores());
    }

    #[test]
    fn categorical_psi_counts_unseen_values_as_other() {
        let reference: Vec<String> = (0..1000).map(|i| format!("c{}", i % 4)).collect();
        let p = FeatureProfile::categorical(reference.iter().map(String::as_str)).unwrap();
        let mut w = Window::new(vec![Feature { name: "s".into(), profile: p }], 100);
        for _ in 0..100 {
            w.start_row();
            w.add(0, Value::Category(b"new"));
        }
        let s = w.scores();
        assert!(s[0].psi > 1.0 && s[0].ks.is_none(), "{s:?}");
    }

    #[test]
    fn psi_matches_the_formula() {
        let e = [0.5, 0.5];
        let a = [0.25, 0.75];
        let want = (0.25f64 - 0.5) * (0.25f64 / 0.5).ln() + (0.75f64 - 0.5) * (0.75f64 / 0.5).ln();
        assert!((psi(&e, &a) - want).abs() < 1e-12);
    }
}
