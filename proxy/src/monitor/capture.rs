//! Reference capture from live traffic: the sampled requests of a chosen
//! window (a number of rows, a duration, or whichever comes first) summarised
//! into a reference profile — the same `switchyard-profile/1` a
//! `switchyard profile` run writes, built by the same `ProfileBuilder`.
//!
//! Captures tap the drift summarisers, never the request path: a variant's
//! summariser hands each sample it already received to its model's running
//! capture (one relaxed load when none runs). Memory is bounded by
//! `MAX_CAPTURE_ROWS` (the builder keeps every value until it summarises).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_runtime::Tensor;
use tokio::sync::oneshot;

use super::profile::ProfileBuilder;

/// Most rows one capture keeps (and the most a `samples` capture may ask for).
pub const MAX_CAPTURE_ROWS: u64 = 100_000;

/// What a finished capture hands back: the profile's JSON and its rows.
pub type CaptureResult = Result<(String, u64), String>;

/// One model's capture in progress.
struct Capture {
    /// Variants whose samples count; `None`: all of the model's.
    variants: Option<HashSet<String>>,
    /// Rows at which it ends (at most `MAX_CAPTURE_ROWS`).
    target: u64,
    builder: Mutex<Option<ProfileBuilder>>,
    rows: Arc<AtomicU64>,
    done: Mutex<Option<oneshot::Sender<CaptureResult>>>,
}

impl Capture {
    /// Builds the profile and hands it over, once; later calls do nothing.
    fn finish(&self, capped: bool) {
        let Some(tx) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let Some(builder) = self.builder.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let rows = builder.input_rows();
        let profile = builder.build();
        let result = if profile.inputs.is_empty() {
            Err(format!("the window held {rows} sampled rows and no input feature to profile"))
        } else {
            if capped {
                tracing::info!(rows, "reference capture stopped at its row cap");
            }
            Ok((profile.to_json(), rows))
        };
        let _ = tx.send(result);
    }
}

/// The running captures, by model; shared by every summariser.
#[derive(Default)]
pub struct Captures {
    /// How many run: summarisers look no further when none does.
    active: AtomicUsize,
    by_model: Mutex<HashMap<String, Arc<Capture>>>,
}

/// A started capture: its result when it ends, and its rows so far.
#[derive(Debug)]
pub struct Ticket {
    pub result: oneshot::Receiver<CaptureResult>,
    pub rows: Arc<AtomicU64>,
}

impl Captures {
    /// Starts capturing `model`'s sampled traffic (of `variants`, or all) until
    /// `samples` rows or `duration` — whichever comes first. One at a time per model.
    pub fn start(
        self: &Arc<Self>,
        model: &str,
        variants: Option<HashSet<String>>,
        samples: Option<u64>,
        duration: Option<Duration>,
    ) -> Result<Ticket, String> {
        if samples.is_none() && duration.is_none() {
            return Err("a capture needs samples, a duration, or both".into());
        }
        let target = samples.unwrap_or(MAX_CAPTURE_ROWS).min(MAX_CAPTURE_ROWS);
        let (tx, rx) = oneshot::channel();
        let rows = Arc::new(AtomicU64::new(0));
        let capture = Arc::new(Capture {
            variants,
            target,
            builder: Mutex::new(Some(ProfileBuilder::default())),
            rows: rows.clone(),
            done: Mutex::new(Some(tx)),
        });
        {
            let mut by_model = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
            if by_model.get(model).is_some_and(|c| c.done.lock().map(|d| d.is_some()).unwrap_or(false)) {
                return Err(format!("a reference capture of model '{model}' is already running"));
            }
            if by_model.insert(model.to_string(), capture.clone()).is_none() {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(d) = duration {
            let (this, model, capture) = (self.clone(), model.to_string(), capture.clone());
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                capture.finish(false);
                this.forget(&model, &capture);
            });
        }
        Ok(Ticket { result: rx, rows })
    }

    /// Drops a finished capture (if it is still the model's).
    fn forget(&self, model: &str, capture: &Arc<Capture>) {
        let mut by_model = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        if by_model.get(model).is_some_and(|c| Arc::ptr_eq(c, capture)) {
            by_model.remove(model);
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Ends a model's capture now (its model is no longer monitored): the waiter is told.
    pub fn cancel(&self, model: &str) {
        let removed = self.by_model.lock().unwrap_or_else(|e| e.into_inner()).remove(model);
        if let Some(c) = removed {
            self.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(tx) = c.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(Err(format!("model '{model}' is no longer monitored for drift")));
            }
        }
    }

    /// Cancels the captures of models `keep` refuses (no longer monitored).
    pub(super) fn retain(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let by_model = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
            by_model.keys().filter(|m| !keep(m)).cloned().collect()
        };
        for m in gone {
            self.cancel(&m);
        }
    }

    /// A summariser's sample: added to its model's capture, if one runs for this variant.
    pub(super) fn offer(&self, model: &str, variant: &str, inputs: &[Tensor], outputs: &[Tensor]) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(c) = self.by_model.lock().unwrap_or_else(|e| e.into_inner()).get(model).cloned() else { return };
        if c.variants.as_ref().is_some_and(|v| !v.contains(variant)) {
            return;
        }
        let rows = {
            let mut b = c.builder.lock().unwrap_or_else(|e| e.into_inner());
            let Some(b) = b.as_mut() else { return };
            b.add_inputs(inputs);
            b.add_outputs(outputs);
            b.input_rows()
        };
        c.rows.store(rows, Ordering::Relaxed);
        if rows >= c.target {
            c.finish(rows >= MAX_CAPTURE_ROWS);
            self.forget(model, &c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_runtime::DataType;

    fn rows(n: usize, base: f32) -> Vec<Tensor> {
        let data: Vec<u8> = (0..n).flat_map(|i| (base + i as f32).to_le_bytes()).collect();
        vec![Tensor::new("x", DataType::Fp32, vec![n as i64, 1], Bytes::from(data))]
    }

    #[tokio::test]
    async fn a_samples_capture_ends_at_its_rows_with_the_profile_of_what_it_saw() {
        let c = Arc::new(Captures::default());
        let t = c.start("m", Some(["v1".to_string()].into()), Some(20), None).unwrap();
        assert!(c.start("m", None, Some(5), None).unwrap_err().contains("already running"));
        c.offer("m", "v2", &rows(50, 100.0), &[]);
        c.offer("other", "v1", &rows(50, 100.0), &[]);
        assert_eq!(t.rows.load(Ordering::Relaxed), 0, "other variants and models do not count");
        c.offer("m", "v1", &rows(10, 0.0), &[]);
        c.offer("m", "v1", &rows(10, 10.0), &[]);
        let (json, n) = t.result.await.unwrap().unwrap();
        assert_eq!(n, 20);
        let mut b = ProfileBuilder::default();
        b.add_inputs(&rows(20, 0.0));
        assert_eq!(json, b.build().to_json(), "the same profile `switchyard profile` builds from those rows");
        assert_eq!(c.active.load(Ordering::Relaxed), 0);
        c.start("m", None, Some(5), None).expect("a new capture once the last one ended");
    }

    #[tokio::test]
    async fn a_duration_capture_ends_on_time_and_an_empty_one_says_why() {
        let c = Arc::new(Captures::default());
        let t = c.start("m", None, None, Some(Duration::from_millis(20))).unwrap();
        let e = t.result.await.unwrap().unwrap_err();
        assert!(e.contains("0 sampled rows"), "{e}");
        let t = c.start("m", None, Some(1000), None).unwrap();
        c.cancel("m");
        assert!(t.result.await.unwrap().unwrap_err().contains("no longer monitored"));
    }
}
