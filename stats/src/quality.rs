//! Prediction quality from ground truth: a sliding window of the last
//! `capacity` (prediction, label) pairs a variant was given feedback for,
//! and the metrics computed from it — accuracy, precision, recall and F1
//! (binary when every class is 0 or 1, with 1 the positive class; otherwise
//! macro averages, micro beside them) for classification, MAE and RMSE for
//! regression. Written by the feedback handler, read by the control plane
//! and the metrics; never touched by the request path.

use std::collections::{BTreeMap, VecDeque};

/// What a model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A class index (the argmax of the named output).
    Classification,
    /// A value (the named output's first element per row).
    Regression,
}

/// The last `capacity` labelled predictions of one variant.
#[derive(Debug)]
pub struct QualityWindow {
    task: Task,
    capacity: usize,
    pairs: VecDeque<(f64, f64)>,
    total: u64,
}

/// Per-class counts (binary case: class 1 is the positive one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassCounts {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
}

/// Quality over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QualityReport {
    /// Labelled predictions in the window, and ever.
    pub count: u64,
    pub total: u64,
    pub classification: Option<Classification>,
    pub regression: Option<Regression>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Classification {
    pub correct: u64,
    pub accuracy: f64,
    /// Binary (class 1) when `binary`, else the macro average over the classes seen.
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub binary: bool,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Micro averages (single-label: all three equal accuracy).
    pub micro_f1: f64,
    /// Counts of the positive class (binary) — what significance tests on precision and recall use.
    pub positive: ClassCounts,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regression {
    pub mae: f64,
    pub rmse: f64,
    /// Sum of squared errors' variance terms for a Welch test on absolute errors.
    pub abs_error_variance: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

impl QualityWindow {
    pub fn new(task: Task, capacity: usize) -> QualityWindow {
        QualityWindow { task, capacity: capacity.max(1), pairs: VecDeque::new(), total: 0 }
    }

    pub fn task(&self) -> Task {
        self.task
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds one labelled prediction, forgetting the oldest beyond the capacity.
    pub fn add(&mut self, prediction: f64, label: f64) {
        if self.pairs.len() == self.capacity {
            self.pairs.pop_front();
        }
        self.pairs.push_back((prediction, label));
        self.total += 1;
    }

    /// Replaces the labelled predictions (oldest first; the newest `capacity`
    /// kept); `total` grows by the `joined` labels that came with them.
    pub fn replace(&mut self, pairs: impl IntoIterator<Item = (f64, f64)>, joined: u64) {
        self.total += joined;
        self.pairs.clear();
        for p in pairs {
            if self.pairs.len() == self.capacity {
                self.pairs.pop_front();
            }
            self.pairs.push_back(p);
        }
    }

    pub fn report(&self) -> QualityReport {
        let n = self.pairs.len() as u64;
        let mut r = QualityReport { count: n, total: self.total, ..Default::default() };
        if n == 0 {
            return r;
        }
        match self.task {
            Task::Regression => {
                let errs: Vec<f64> = self.pairs.iter().map(|(p, l)| (p - l).abs()).collect();
                let mae = errs.iter().sum::<f64>() / n as f64;
                let mse = errs.iter().map(|e| e * e).sum::<f64>() / n as f64;
                let var =
                    if n > 1 { errs.iter().map(|e| (e - mae).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
                r.regression = Some(Regression { mae, rmse: mse.sqrt(), abs_error_variance: var });
            }
            Task::Classification => {
                // Classes are integers; a label like 2.0 is class 2.
                let class = |x: f64| x.round() as i64;
                let mut per: BTreeMap<i64, ClassCounts> = BTreeMap::new();
                let mut correct = 0;
                for (p, l) in &self.pairs {
                    let (p, l) = (class(*p), class(*l));
                    if p == l {
                        correct += 1;
                        per.entry(p).or_default().true_positives += 1;
                    } else {
                        per.entry(p).or_default().false_positives += 1;
                        per.entry(l).or_default().false_negatives += 1;
                    }
                }
                let binary = per.keys().all(|c| *c == 0 || *c == 1);
                let pr = |c: &ClassCounts| {
                    let p = ratio(c.true_positives, c.true_positives + c.false_positives);
                    let r = ratio(c.true_positives, c.true_positives + c.false_negatives);
                    (p, r, f1(p, r))
                };
                let k = per.len() as f64;
                let (mp, mr, mf) = per.values().map(pr).fold((0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
                let (macro_precision, macro_recall, macro_f1) = (mp / k, mr / k, mf / k);
                let positive = per.get(&1).cloned().unwrap_or_default();
                let (bp, br, bf) = pr(&positive);
                let accuracy = ratio(correct, n);
                r.classification = Some(Classification {
                    correct,
                    accuracy,
                    precision: if binary { bp } else { macro_precision },
                    recall: if binary { br } else { macro_recall },
                    f1: if binary { bf } else { macro_f1 },
                    binary,
                    macro_precision,
                    macro_recall,
                    macro_f1,
                    micro_f1: accuracy,
                    positive,
                });
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(task: Task, pairs: &[(f64, f64)]) -> QualityWindow {
        let mut w = QualityWindow::new(task, 100);
        for (p, l) in pairs {
            w.add(*p, *l);
        }
        w
    }

    #[test]
    fn replace_keeps_the_newest_and_the_total() {
        let mut w = window(Task::Classification, &[(1.0, 1.0), (0.0, 1.0)]);
        w.replace((0..150).map(|i| (f64::from(i % 2), 1.0)), 3);
        let r = w.report();
        assert_eq!((r.count, r.total), (100, 5));
        assert_eq!(w.pairs.back(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn binary_metrics_match_hand_counts() {
        // tp=2 (1,1 ×2), fp=1 (pred 1, label 0), fn=1 (pred 0, label 1), tn=1.
        let w = window(Task::Classification, &[(1.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)]);
        let c = w.report().classification.unwrap();
        assert!(c.binary);
        assert_eq!((c.correct, c.accuracy), (3, 0.6));
        assert!((c.precision - 2.0 / 3.0).abs() < 1e-12 && (c.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn multiclass_uses_macro_averages() {
        // class 0: tp 1; class 1: tp 1, fn 1 (pred 2); class 2: fp 1.
        let w = window(Task::Classification, &[(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)]);
        let c = w.report().classification.unwrap();
        assert!(!c.binary);
        let want_p = (1.0 + 1.0 + 0.0) / 3.0;
        let want_r = (1.0 + 0.5 + 0.0) / 3.0;
        assert!((c.precision - want_p).abs() < 1e-12 && (c.recall - want_r).abs() < 1e-12);
        let want_f1 = (1.0 + f1(1.0, 0.5) + 0.0) / 3.0;
        assert!((c.f1 - want_f1).abs() < 1e-12);
        assert!((c.micro_f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn regression_and_the_sliding_window() {
        let mut w = QualityWindow::new(Task::Regression, 2);
        w.add(10.0, 0.0);
        w.add(1.0, 0.0);
        w.add(3.0, 0.0);
        let r = w.report();
        assert_eq!((r.count, r.total), (2, 3));
        let g = r.regression.unwrap();
        assert_eq!(g.mae, 2.0);
        assert!((g.rmse - 5f64.sqrt()).abs() < 1e-12);
    }
}
