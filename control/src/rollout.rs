//! Automated canary analysis. A model with a `rollout` walks its canary
//! through the configured weight steps. Every `interval` the canary's live
//! stats since the step began are judged against the baseline's over the same
//! time: if its error rate exceeds the baseline's by more than
//! `max_error_rate_increase`, or its p99 latency exceeds `max_p99_ratio` times
//! the baseline's, the canary goes to weight 0 at once and a rollback is
//! recorded with the reason; otherwise, once it has `min_requests`, it is
//! promoted to the next step. Reaching the last step promotes it for good.
//! A manual traffic shift or rollback on that model aborts the rollout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_config::{RolloutConfig, ValidatedConfig};
use switchyard_stats::Snapshot;

use crate::state::Source;
use crate::ControlPlane;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Progressing,
    Promoted,
    RolledBack,
    Aborted,
}

impl Status {
    fn code(self) -> i64 {
        match self {
            Status::Progressing => 0,
            Status::Promoted => 1,
            Status::RolledBack => 2,
            Status::Aborted => 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedRollout {
    pub step: usize,
    pub status: Status,
    pub reason: Option<String>,
    /// The rollout config it belongs to; a changed config starts over.
    pub fingerprint: String,
}

#[derive(Clone)]
pub struct RolloutState {
    cfg: RolloutConfig,
    step: usize,
    status: Status,
    reason: Option<String>,
    /// When the current step's weights went live (None: still to apply).
    step_started: Option<Instant>,
    canary_at_step: Snapshot,
    baseline_at_step: Snapshot,
}

fn fingerprint(cfg: &RolloutConfig) -> String {
    format!("{cfg:?}")
}

impl RolloutState {
    fn new(cfg: RolloutConfig) -> RolloutState {
        RolloutState {
            cfg,
            step: 0,
            status: Status::Progressing,
            reason: None,
            step_started: None,
            canary_at_step: Snapshot::default(),
            baseline_at_step: Snapshot::default(),
        }
    }

    pub fn abort(&mut self, reason: &str) {
        if self.status == Status::Progressing {
            self.status = Status::Aborted;
            self.reason = Some(reason.to_string());
        }
    }

    pub fn persisted(&self) -> PersistedRollout {
        PersistedRollout {
            step: self.step,
            status: self.status,
            reason: self.reason.clone(),
            fingerprint: fingerprint(&self.cfg),
        }
    }

    /// `live_weight`: the canary's weight in the live routing state.
    pub fn status_json(&self, live_weight: Option<f64>) -> Value {
        json!({
            "baseline": self.cfg.baseline.as_ref(),
            "canary": self.cfg.canary.as_ref(),
            "status": self.status,
            "step": self.step,
            "steps": self.cfg.steps,
            "canary_weight": live_weight,
            "reason": self.reason,
        })
    }

    fn weights(&self, canary: f64) -> BTreeMap<String, f64> {
        [(self.cfg.canary.to_string(), canary), (self.cfg.baseline.to_string(), 100.0 - canary)].into()
    }
}

/// Rollouts of a freshly started process: persisted progress resumes when the config is the same.
pub fn resume(
    eff: &ValidatedConfig,
    mut persisted: BTreeMap<String, PersistedRollout>,
) -> BTreeMap<String, RolloutState> {
    let mut out = BTreeMap::new();
    for (name, m) in &eff.models {
        let Some(cfg) = &m.rollout else { continue };
        let mut r = RolloutState::new(cfg.clone());
        if let Some(p) = persisted.remove(name.as_ref()).filter(|p| p.fingerprint == fingerprint(cfg)) {
            r.step = p.step.min(cfg.steps.len() - 1);
            r.status = p.status;
            r.reason = p.reason;
        }
        out.insert(name.to_string(), r);
    }
    out
}

/// After a config reload: new rollouts start, removed ones stop, changed ones start over.
pub fn reconcile(rollouts: &mut BTreeMap<String, RolloutState>, eff: &ValidatedConfig) {
    rollouts.retain(|name, r| eff.models.get(name.as_str()).and_then(|m| m.rollout.as_ref()) == Some(&r.cfg));
    for (name, m) in &eff.models {
        if let Some(cfg) = &m.rollout {
            rollouts.entry(name.to_string()).or_insert_with(|| RolloutState::new(cfg.clone()));
        }
    }
}

enum Action {
    Apply { model: String, weights: BTreeMap<String, f64>, reason: String },
}

impl ControlPlane {
    /// One pass of the canary analysis; the control loop calls it a few times per interval.
    pub async fn tick_rollouts(&self) {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        let data = self.data().clone();
        let mut actions = Vec::new();
        for (model, r) in inner.rollouts.iter_mut() {
            let labels = [model.as_str(), r.cfg.canary.as_ref()];
            self.metrics().rollout_status.with_label_values(&labels).set(r.status.code());
            if r.status != Status::Progressing {
                continue;
            }
            let stats = |v: &str| data.stats(model, v).unwrap_or_default();
            let Some(started) = r.step_started else {
                let w = r.cfg.steps[r.step];
                actions.push(Action::Apply {
                    model: model.clone(),
                    weights: r.weights(w),
                    reason: format!(
                        "rollout step {} of {}: canary {} at {w}%",
                        r.step + 1,
                        r.cfg.steps.len(),
                        r.cfg.canary
                    ),
                });
                r.step_started = Some(now);
                r.canary_at_step = stats(&r.cfg.canary);
                r.baseline_at_step = stats(&r.cfg.baseline);
                self.metrics().rollout_weight.with_label_values(&labels).set(w);
                continue;
            };
            if now.duration_since(started) < r.cfg.interval {
                continue;
            }
            let canary = stats(&r.cfg.canary).since(&r.canary_at_step);
            let baseline = stats(&r.cfg.baseline).since(&r.baseline_at_step);
            if canary.requests < r.cfg.min_requests {
                // Too little evidence to judge either way: keep the step running.
                continue;
            }
            let breach = judge(&r.cfg, &canary, &baseline);
            if let Some(reason) = breach {
                r.status = Status::RolledBack;
                r.reason = Some(reason.clone());
                self.metrics().rollbacks.with_label_values(&labels).inc();
                self.metrics().rollout_weight.with_label_values(&labels).set(0.0);
                tracing::warn!(target: "audit", model, canary = %r.cfg.canary, reason, "canary rolled back");
                actions.push(Action::Apply {
                    model: model.clone(),
                    weights: r.weights(0.0),
                    reason: format!("automated rollback: {reason}"),
                });
                continue;
            }
            r.step += 1;
            r.step_started = None;
            if r.step + 1 >= r.cfg.steps.len() {
                r.step = r.cfg.steps.len() - 1;
                r.status = Status::Promoted;
                let w = r.cfg.steps[r.step];
                self.metrics().rollout_weight.with_label_values(&labels).set(w);
                tracing::info!(target: "audit", model, canary = %r.cfg.canary, "canary promoted");
                actions.push(Action::Apply {
                    model: model.clone(),
                    weights: r.weights(w),
                    reason: "rollout promoted".into(),
                });
            }
        }
        for Action::Apply { model, weights, reason } in actions {
            if let Err(e) = self.set_weights_locked(&mut inner, &model, weights, Source::Rollout, &reason).await {
                tracing::error!(model, error = %e.message, "rollout could not apply its weights");
            }
        }
    }

    pub async fn rollout_status(&self, model: &str) -> Option<Value> {
        let inner = self.inner.lock().await;
        // Read under the lock: a rollout step publishes its weights before releasing it.
        let eff = self.published().effective.clone();
        inner.rollouts.get(model).map(|r| {
            let live = eff
                .models
                .get(model)
                .and_then(|m| m.variants.iter().find(|v| v.name == r.cfg.canary))
                .map(|v| v.weight);
            r.status_json(live)
        })
    }

    pub(crate) async fn abort_rollout(&self, model: &str, reason: &str) {
        if let Some(r) = self.inner.lock().await.rollouts.get_mut(model) {
            r.abort(reason);
        }
    }
}

/// Smallest p99 difference (ms) that can count as a latency breach.
const P99_SLACK_MS: f64 = 10.0;

/// Why the canary fails this interval, if it does.
fn judge(cfg: &RolloutConfig, canary: &Snapshot, baseline: &Snapshot) -> Option<String> {
    if canary.requests == 0 {
        return None;
    }
    let (ce, be) = (canary.error_rate(), baseline.error_rate());
    if ce - be > cfg.max_error_rate_increase {
        return Some(format!(
            "canary error rate {:.2}% exceeds baseline {:.2}% by more than {:.2} points ({} of {} requests failed)",
            ce * 100.0,
            be * 100.0,
            cfg.max_error_rate_increase * 100.0,
            canary.errors,
            canary.requests
        ));
    }
    if baseline.requests > 0 {
        if let (Some(cp), Some(bp)) = (canary.quantile_ms(0.99), baseline.quantile_ms(0.99)) {
            // The ratio alone would trip on a millisecond of scheduling noise
            // when both are fast; a breach must also be P99_SLACK_MS slower.
            if cp > cfg.max_p99_ratio * bp && cp - bp > P99_SLACK_MS {
                return Some(format!("canary p99 {cp:.1} ms exceeds {} × baseline p99 {bp:.1} ms", cfg.max_p99_ratio));
            }
        }
    }
    None
}

/// How often the control loop runs for the shortest rollout interval.
pub fn tick_period(eff: &ValidatedConfig) -> Duration {
    eff.models
        .values()
        .filter_map(|m| m.rollout.as_ref().map(|r| r.interval / 4))
        .min()
        .unwrap_or(Duration::from_millis(500))
        .clamp(Duration::from_millis(50), Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RolloutConfig {
        RolloutConfig {
            baseline: "v1".into(),
            canary: "v2".into(),
            steps: vec![10.0, 50.0, 100.0],
            interval: Duration::from_secs(1),
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            min_requests: 10,
        }
    }

    fn snap(requests: u64, errors: u64, latency_ms: u64) -> Snapshot {
        let s = switchyard_stats::LiveStats::default();
        for i in 0..requests {
            s.record(Duration::from_millis(latency_ms), i < errors);
        }
        s.snapshot()
    }

    #[test]
    fn judge_errors_latency_and_health() {
        let c = cfg();
        assert!(judge(&c, &snap(100, 5, 10), &snap(100, 0, 10)).unwrap().contains("error rate"));
        assert!(judge(&c, &snap(100, 0, 300), &snap(100, 0, 10)).unwrap().contains("p99"));
        assert_eq!(judge(&c, &snap(100, 0, 11), &snap(100, 0, 10)), None);
        // Twice as slow but only by a few milliseconds: noise, not a breach.
        assert_eq!(judge(&c, &snap(100, 0, 8), &snap(100, 0, 3)), None);
        assert_eq!(judge(&c, &snap(0, 0, 0), &snap(100, 0, 10)), None);
    }
}
