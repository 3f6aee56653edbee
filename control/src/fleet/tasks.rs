//! Fleet mode's background work, each loop supervised: keeping this replica
//! at the shared record's generation (pub/sub notification, with polling
//! every `poll_interval` as the fallback for a missed message or a lost
//! subscription), holding or contending for the judge lease, and adding this
//! replica's stats to the fleet's counters every `poll_interval`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use switchyard_stats::Snapshot;
use tokio::sync::Notify;

use crate::fleet::{stats, Fleet, AB_TTL_AFTER_END, STATS_TTL};
use crate::plane::ControlPlane;
use crate::supervise::{self, TaskFailure, FLEET_TASK};

/// Silence after which the change subscription is renewed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(60);

/// Starts the fleet's loops on the current runtime (nothing without fleet mode).
pub fn spawn(plane: Arc<ControlPlane>) {
    let Some(fleet) = plane.fleet().cloned() else { return };
    let changed = Arc::new(Notify::new());
    supervise::spawn(FLEET_TASK, subscribe(fleet.clone(), changed.clone()));
    supervise::spawn(FLEET_TASK, sync(plane.clone(), fleet.clone(), changed));
    supervise::spawn(FLEET_TASK, lease(plane.clone(), fleet.clone()));
    supervise::spawn(FLEET_TASK, publish(plane, fleet));
}

/// Runs `f` in a task of its own until it returns `false`; a panic is recorded and the loop goes on.
async fn guarded<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    loop {
        match supervise::isolated(FLEET_TASK, f()).await {
            Ok(true) => {}
            Ok(false) | Err(TaskFailure::Cancelled) => return,
            Err(TaskFailure::Panicked(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Wakes `changed` on every change notification; resubscribes after any failure.
async fn subscribe(fleet: Arc<Fleet>, changed: Arc<Notify>) {
    let pause = fleet.config().poll_interval;
    loop {
        let connect = async {
            let mut ps = fleet.client().get_async_pubsub().await?;
            ps.subscribe(fleet.channel()).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(fleet.config().timeout * 2, connect).await {
            Ok(Ok(ps)) => {
                // A notification may have been missed while subscribing.
                changed.notify_one();
                let mut messages = ps.into_on_message();
                // A connection that died without a reset would stay silent
                // forever: after a quiet spell the subscription is renewed
                // (polling covers the meantime either way).
                while let Ok(Some(_)) = tokio::time::timeout(RESUBSCRIBE_AFTER, messages.next()).await {
                    changed.notify_one();
                }
                tracing::debug!(fleet = %fleet.name(), "fleet: change subscription ended or went quiet; resubscribing");
            }
            Ok(Err(e)) => tracing::debug!(fleet = %fleet.name(), error = %e, "fleet: cannot subscribe to changes"),
            Err(_) => tracing::debug!(fleet = %fleet.name(), "fleet: subscribing to changes timed out"),
        }
        tokio::time::sleep(pause).await;
    }
}

/// Applies the shared record whenever notified, and at least every `poll_interval`.
async fn sync(plane: Arc<ControlPlane>, fleet: Arc<Fleet>, changed: Arc<Notify>) {
    let poll = fleet.config().poll_interval;
    guarded(move || {
        let (plane, changed) = (plane.clone(), changed.clone());
        async move {
            let _ = tokio::time::timeout(poll, changed.notified()).await;
            if let Err(e) = plane.sync_fleet().await {
                tracing::debug!(error = %e, "fleet: sync failed; serving the last state");
            }
            true
        }
    })
    .await;
}

/// Acquires or renews the judge lease every third of its lifetime.
async fn lease(plane: Arc<ControlPlane>, fleet: Arc<Fleet>) {
    let every = fleet.config().lease_ttl / 3;
    let was = Arc::new(std::sync::atomic::AtomicBool::new(false));
    guarded(move || {
        let (plane, fleet, was) = (plane.clone(), fleet.clone(), was.clone());
        async move {
            let judge = fleet.renew_lease().await;
            if judge && !was.swap(true, std::sync::atomic::Ordering::AcqRel) {
                // Catch up first: decisions are taken on the latest shared state.
                let _ = plane.sync_fleet().await;
                plane.became_judge().await;
            }
            if !judge {
                was.store(false, std::sync::atomic::Ordering::Release);
            }
            tokio::time::sleep(every).await;
            true
        }
    })
    .await;
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One publish on its way: what it carries, and the cumulative stats it
/// brings the fleet's counters up to.
struct Pending {
    seq: u64,
    entries: String,
    upto: Vec<((String, String), Snapshot)>,
}

/// Adds this replica's stats since its last applied publish to the fleet's
/// counters (and to the counters of running A/B tests). A publish that
/// failed is sent again unchanged, with its sequence number, until it is
/// known to be applied: Redis applies each sequence once, so a publish that
/// timed out but landed is not counted twice, and no sample is lost.
async fn publish(plane: Arc<ControlPlane>, fleet: Arc<Fleet>) {
    let every = fleet.config().poll_interval;
    #[derive(Default)]
    struct State {
        last: HashMap<(String, String), Snapshot>,
        pending: Option<Pending>,
        seq: u64,
    }
    let state: Arc<tokio::sync::Mutex<State>> = Arc::default();
    guarded(move || {
        let (plane, fleet, state) = (plane.clone(), fleet.clone(), state.clone());
        async move {
            tokio::time::sleep(every).await;
            let mut st = state.lock().await;
            if st.pending.is_none() {
                let experiments = plane.running_experiments().await;
                let eff = plane.published().effective.clone();
                let now = now_secs();
                let mut entries = Vec::new();
                let mut upto = Vec::new();
                for (model, m) in &eff.models {
                    for v in &m.variants {
                        let k = (model.to_string(), v.name.to_string());
                        let Some(cur) = plane.serving().stats(model, &v.name) else { continue };
                        let delta = cur.since(st.last.get(&k).unwrap_or(&Snapshot::default()));
                        if stats::is_empty(&delta) {
                            continue;
                        }
                        let key = fleet.stats_key(model, &v.name);
                        entries.push(stats::Entry { key, ttl: STATS_TTL, delta: delta.clone() });
                        for (test, _, _, ends_at) in experiments
                            .iter()
                            .filter(|(_, em, vs, _)| em == model.as_ref() && vs.iter().any(|x| x == v.name.as_ref()))
                        {
                            let ttl = Duration::from_secs(ends_at.saturating_sub(now)) + AB_TTL_AFTER_END;
                            entries.push(stats::Entry { key: fleet.ab_key(test, &v.name), ttl, delta: delta.clone() });
                        }
                        upto.push((k, cur));
                    }
                }
                if entries.is_empty() {
                    return true;
                }
                st.seq += 1;
                st.pending = Some(Pending { seq: st.seq, entries: stats::encode(&entries), upto });
            }
            let Some(p) = &st.pending else { return true };
            if fleet.add_stats(p.seq, p.entries.clone()).await.is_ok() {
                let p = st.pending.take().expect("checked above");
                st.last.extend(p.upto);
            }
            true
        }
    })
    .await;
}
