//! Shadow traffic: a sampled copy of a model's requests is mirrored to its
//! shadow variants off the request path. The shadow's answer is never
//! returned; it is compared with the primary's (argmax agreement per row, max
//! absolute error over every element) and recorded. Mirrors are bounded: when
//! too many are in flight a copy is dropped (and counted), never queued, so a
//! slow or dead shadow cannot slow or fail the primary.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use half::{bf16, f16};
use switchyard_runtime::{DataType, InferRequest, InferResponse, Tensor};
use switchyard_stats::ShadowOutcome;
use tokio::sync::{oneshot, Semaphore};

use crate::routing::Route;

/// Mirrored requests in flight across the process; beyond this copies are dropped.
const MAX_IN_FLIGHT: usize = 256;
/// A shadow answer later than this is a failure.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(10);

static IN_FLIGHT: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT)));

/// Senders that hand the primary's response to the mirrors started for a request.
pub struct Mirrors(Vec<oneshot::Sender<Arc<InferResponse>>>);

impl Mirrors {
    /// Gives every mirror the primary's answer to compare against.
    pub fn primary_answered(self, resp: &InferResponse) {
        if self.0.is_empty() {
            return;
        }
        let resp = Arc::new(resp.clone());
        for tx in self.0 {
            let _ = tx.send(resp.clone());
        }
    }
}

/// Starts the mirrors this request is sampled for (none for most requests).
pub fn start(route: &Route, primary: usize, model: &str, version: Option<&str>, req: &InferRequest) -> Mirrors {
    let mut out = Vec::new();
    for &i in &route.shadows {
        let v = &route.variants[i];
        let Some(percent) = v.shadow_percent else { continue };
        if i == primary || !route.sample_shadow(i, percent) {
            continue;
        }
        let Ok(permit) = IN_FLIGHT.clone().try_acquire_owned() else {
            v.stats.record_shadow(ShadowOutcome::Dropped);
            v.metrics.shadow_outcome("dropped");
            continue;
        };
        let (tx, rx) = oneshot::channel::<Arc<InferResponse>>();
        out.push(tx);
        let backend = v.backend.clone();
        let target = route.target_of(i, model, version);
        let stats = v.stats.clone();
        let metrics = v.metrics.clone();
        let mut copy = req.clone();
        copy.id = None;
        tokio::spawn(async move {
            let _permit = permit;
            let answer = tokio::time::timeout(SHADOW_TIMEOUT, backend.infer(&target, copy)).await;
            match answer {
                Ok(Ok(shadow)) => {
                    // The primary failed: nothing to compare against, and no blame on the shadow.
                    let Ok(primary) = rx.await else { return };
                    let (rows, agreeing, max_abs_error) = compare(&primary, &shadow);
                    metrics.shadow_compared(rows, agreeing, max_abs_error);
                    stats.record_shadow(ShadowOutcome::Compared { rows, agreeing, max_abs_error });
                }
                _ => {
                    metrics.shadow_outcome("failed");
                    stats.record_shadow(ShadowOutcome::Failed);
                }
            }
        });
    }
    Mirrors(out)
}

fn floats(t: &Tensor) -> Option<Vec<f64>> {
    let d = &t.data[..];
    Some(match t.datatype {
        DataType::Fp32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64).collect(),
        DataType::Fp64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8"))).collect(),
        DataType::Fp16 => d.chunks_exact(2).map(|c| f16::from_le_bytes(c.try_into().expect("2")).to_f64()).collect(),
        DataType::Bf16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes(c.try_into().expect("2")).to_f64()).collect(),
        _ => return None,
    })
}

/// (rows compared, rows whose argmax agrees, max absolute error) over the
/// outputs both answers have with the same name, shape and float datatype.
pub fn compare(primary: &InferResponse, shadow: &InferResponse) -> (u64, u64, f64) {
    let mut rows = 0;
    let mut agreeing = 0;
    let mut max_abs: f64 = 0.0;
    for p in &primary.outputs {
        let Some(s) = shadow.outputs.iter().find(|s| s.name == p.name) else { continue };
        if s.shape != p.shape || s.datatype != p.datatype {
            continue;
        }
        let (Some(a), Some(b)) = (floats(p), floats(s)) else { continue };
        for (x, y) in a.iter().zip(&b) {
            max_abs = max_abs.max((x - y).abs());
        }
        // Argmax per row of the first compared output (classification scores).
        if rows == 0 && !a.is_empty() {
            let n = p.shape.first().copied().unwrap_or(1).max(1) as usize;
            let width = a.len() / n;
            if width > 0 {
                for r in 0..n {
                    let row = |v: &[f64]| argmax(&v[r * width..(r + 1) * width]);
                    rows += 1;
                    agreeing += (row(&a) == row(&b)) as u64;
                }
            }
        }
    }
    (rows, agreeing, max_abs)
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn resp(v: &[f32], rows: i64) -> InferResponse {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        InferResponse {
            outputs: vec![Tensor::new("p", DataType::Fp32, vec![rows, v.len() as i64 / rows], Bytes::from(data))],
            ..Default::default()
        }
    }

    #[test]
    fn compare_counts_agreeing_rows_and_max_error() {
        let a = resp(&[0.1, 0.9, 0.8, 0.2], 2);
        let b = resp(&[0.2, 0.8, 0.3, 0.7], 2);
        let (rows, agree, err) = compare(&a, &b);
        assert_eq!((rows, agree), (2, 1));
        assert!((err - 0.5).abs() < 1e-6, "{err}");
        assert_eq!(compare(&a, &a), (2, 2, 0.0));
    }
}
