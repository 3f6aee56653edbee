//! Single-flight: concurrent identical misses make one backend call.
//!
//! The first request for a key becomes the leader; later ones subscribe to
//! its outcome (the answer or the error) on a `watch` channel. A leader that
//! is cancelled (its client hung up) drops its sender: every follower wakes
//! with `LeaderGone`, looks the key up again, and the first of them to get
//! back into the table leads the next attempt — nobody waits on a call that
//! will never finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

const SHARDS: usize = 16;

type Slot<T> = watch::Sender<Option<Arc<T>>>;

pub struct Flights<T> {
    shards: [Mutex<HashMap<u128, Arc<Slot<T>>>>; SHARDS],
}

pub enum Join<'a, T> {
    Leader(Leader<'a, T>),
    Follower(Follower<T>),
}

/// The leader's duty: run the call, then `finish` with its outcome.
pub struct Leader<'a, T> {
    flights: &'a Flights<T>,
    key: u128,
    slot: Arc<Slot<T>>,
    done: bool,
}

pub struct Follower<T> {
    rx: watch::Receiver<Option<Arc<T>>>,
}

/// The leader went away without an outcome.
#[derive(Debug, PartialEq, Eq)]
pub struct LeaderGone;

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights { shards: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }
}

impl<T> Flights<T> {
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Arc<Slot<T>>>> {
        self.shards[(key as usize) % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads the call for `key`, or follows the one in flight.
    pub fn join(&self, key: u128) -> Join<'_, T> {
        let mut shard = self.shard(key);
        if let Some(slot) = shard.get(&key) {
            return Join::Follower(Follower { rx: slot.subscribe() });
        }
        let slot = Arc::new(watch::channel(None).0);
        shard.insert(key, slot.clone());
        Join::Leader(Leader { flights: self, key, slot, done: false })
    }

    /// Calls in flight now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, key: u128, slot: &Arc<Slot<T>>) {
        let mut shard = self.shard(key);
        if shard.get(&key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            shard.remove(&key);
        }
    }
}

impl<T> Leader<'_, T> {
    /// Hands the outcome to every follower and retires the flight.
    pub fn finish(mut self, outcome: Arc<T>) {
        self.done = true;
        self.flights.remove(self.key, &self.slot);
        self.slot.send_replace(Some(outcome));
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            // Cancelled: followers see the sender close once this slot's last Arc goes.
            self.flights.remove(self.key, &self.slot);
        }
    }
}

impl<T> Follower<T> {
    /// The leader's outcome, or `LeaderGone` if it was dropped first.
    pub async fn wait(mut self) -> Result<Arc<T>, LeaderGone> {
        loop {
            if let Some(v) = self.rx.borrow_and_update().clone() {
                return Ok(v);
            }
            if self.rx.changed().await.is_err() {
                return self.rx.borrow().clone().ok_or(LeaderGone);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_share_the_leaders_outcome() {
        let f: Flights<u32> = Flights::default();
        let Join::Leader(lead) = f.join(1) else { panic!("first is leader") };
        let followers: Vec<_> = (0..100)
            .map(|_| match f.join(1) {
                Join::Follower(x) => x,
                Join::Leader(_) => panic!("one leader per key"),
            })
            .collect();
        assert!(matches!(f.join(2), Join::Leader(_)), "other keys are independent");
        let waits = tokio::spawn(async move {
            let mut out = Vec::new();
            for x in followers {
                out.push(*x.wait().await.unwrap());
            }
            out
        });
        lead.finish(Arc::new(42));
        assert!(waits.await.unwrap().iter().all(|v| *v == 42));
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_strand_followers() {
        let f: Flights<u32> = Flights::default();
        let Join::Leader(lead) = f.join(7) else { panic!() };
        let Join::Follower(a) = f.join(7) else { panic!() };
        let Join::Follower(b) = f.join(7) else { panic!() };
        drop(lead);
        assert_eq!(a.wait().await.unwrap_err(), LeaderGone);
        assert_eq!(b.wait().await.unwrap_err(), LeaderGone);
        // The next to arrive leads a fresh attempt.
        assert!(matches!(f.join(7), Join::Leader(_)));
    }
}
