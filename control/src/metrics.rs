//! Control-plane metrics, in the process-wide default registry (served on
//! the metrics port beside the data plane's).

use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

#[derive(Clone)]
pub struct ControlMetrics {
    pub generation: IntGauge,
    pub reload_successful: IntGauge,
    pub reloads: IntCounterVec,
    pub rollout_weight: GaugeVec,
    pub rollout_status: IntGaugeVec,
    pub rollbacks: IntCounterVec,
    pub fleet_connected: IntGauge,
    pub fleet_generation: IntGauge,
    pub fleet_judge: IntGauge,
}

impl ControlMetrics {
    /// The process's control metrics (registered once).
    pub fn get() -> ControlMetrics {
        static M: OnceLock<ControlMetrics> = OnceLock::new();
        M.get_or_init(|| {
            let m = ControlMetrics {
                generation: IntGauge::new("switchyard_config_generation", "Generation of the live routing state")
                    .expect("valid"),
                reload_successful: IntGauge::new(
                    "switchyard_config_last_reload_successful",
                    "1 when the last config file load or reload was applied, 0 when it was refused",
                )
                .expect("valid"),
                reloads: IntCounterVec::new(
                    Opts::new("switchyard_config_reloads_total", "Config file reloads, by result"),
                    &["result"],
                )
                .expect("valid"),
                rollout_weight: GaugeVec::new(
                    Opts::new("switchyard_rollout_canary_weight", "Current canary weight (percent) of a rollout"),
                    &["model", "canary"],
                )
                .expect("valid"),
                rollout_status: IntGaugeVec::new(
                    Opts::new(
                        "switchyard_rollout_status",
                        "Rollout state: 0 progressing, 1 promoted, 2 rolled back, 3 aborted",
                    ),
                    &["model", "canary"],
                )
                .expect("valid"),
                rollbacks: IntCounterVec::new(
                    Opts::new("switchyard_rollout_rollbacks_total", "Automated rollbacks, by model"),
                    &["model", "canary"],
                )
                .expect("valid"),
                fleet_connected: IntGauge::new(
                    "switchyard_fleet_connected",
                    "Fleet mode: 1 while the fleet's shared state in Redis is reachable, 0 while not",
                )
                .expect("valid"),
                fleet_generation: IntGauge::new(
                    "switchyard_fleet_generation",
                    "Fleet mode: generation of the shared control state this replica serves",
                )
                .expect("valid"),
                fleet_judge: IntGauge::new(
                    "switchyard_fleet_judge",
                    "Fleet mode: 1 while this replica holds the judge lease (runs rollouts and experiments)",
                )
                .expect("valid"),
            };
            let r = prometheus::default_registry();
            for c in [
                Box::new(m.generation.clone()) as Box<dyn Collector>,
                Box::new(m.reload_successful.clone()),
                Box::new(m.reloads.clone()),
                Box::new(m.rollout_weight.clone()),
                Box::new(m.rollout_status.clone()),
                Box::new(m.rollbacks.clone()),
                Box::new(m.fleet_connected.clone()),
                Box::new(m.fleet_generation.clone()),
                Box::new(m.fleet_judge.clone()),
            ] {
                let _ = r.register(c);
            }
            m
        })
        .clone()
    }

    pub fn reload_ok(&self, ok: bool) {
        self.reload_successful.set(ok as i64);
        self.reloads.with_label_values(&[if ok { "applied" } else { "refused" }]).inc();
    }
}
