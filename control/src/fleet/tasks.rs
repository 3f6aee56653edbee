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

/// Adds this replica's stats since the last successful publish to the
/// fleet's counters (and to the counters of running A/B tests). A failed
/// publish is retried with the larger delta: no sample is lost or counted twice.
async fn publish(plane: Arc<ControlPlane>, fleet: Arc<Fleet>) {
    let every = fleet.config().poll_interval;
    let last: Arc<tokio::sync::Mutex<HashMap<(String, String), Snapshot>>> = Arc::default();
    guarded(move || {
        let (plane, fleet, last) = (plane.clone(), fleet.clone(), last.clone());
        async move {
            tokio::time::sleep(every).await;
            let mut last = last.lock().await;
            let experiments = plane.running_experiments().await;
            let eff = plane.published().effective.clone();
            let now = now_secs();
            let mut batch = Vec::new();
            let mut taken = Vec::new();
            for (model, m) in &eff.models {
                for v in &m.variants {
                    let k = (model.to_string(), v.name.to_string());
                    let Some(cur) = plane.serving().stats(model, &v.name) else { continue };
                    let delta = cur.since(last.get(&k).unwrap_or(&Snapshot::default()));
                    if stats::is_empty(&delta) {
                        continue;
                    }
                    batch.push((vec![fleet.stats_key(model, &v.name)], STATS_TTL, delta.clone()));
                    for (test, _, _, ends_at) in experiments
                        .iter()
                        .filter(|(_, em, vs, _)| em == model.as_ref() && vs.iter().any(|x| x == v.name.as_ref()))
                    {
                        let ttl = Duration::from_secs(ends_at.saturating_sub(now)) + AB_TTL_AFTER_END;
                        batch.push((vec![fleet.ab_key(test, &v.name)], ttl, delta.clone()));
                    }
                    taken.push((k, cur));
                }
            }
            if fleet.add_stats(batch).await.is_ok() {
                last.extend(taken);
            }
            true
        }
    })
    .await;
}
