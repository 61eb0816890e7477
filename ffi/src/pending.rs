//! Picks awaiting their report: a sharded map from token to the pick's `LoadGuard`.
//!
//! The guard is what feeds in-flight counts, PeakEWMA and outlier detection in `lb-core`; across
//! the C boundary it cannot be an RAII value, so the balancer keeps it until `lb_balancer_report`
//! names its token. Handing the guard's address to C instead would make a second report a
//! use-after-free; a map turns it into an error code.
//!
//! Tokens are `tag << 48 | sequence`: the tag is random per balancer, so a token from another
//! balancer (or garbage) is recognised as unknown, and a token of ours that is no longer in the map
//! is known to be spent (reported, or expired). Shards keep two threads reporting at once from
//! contending on one lock; the pick itself takes no lock (the snapshot is read through an atomic
//! pointer).
//!
//! A pick never reported expires after `report_timeout`: its guard drops as `Cancelled`, which
//! releases its in-flight count and records neither success nor failure (lb-core's meaning of a
//! request whose end is unknown).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lb_core::LoadGuard;
use tokio::time::Instant;

const SHARDS: usize = 32;
const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// Why a token cannot be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not issued by this balancer.
    Unknown,
    /// Issued here, but already reported or expired.
    Spent,
}

#[derive(Debug)]
pub(crate) struct Pending {
    shards: Box<[Mutex<HashMap<u64, LoadGuard>>]>,
    next: AtomicU64,
    tag: u64,
    timeout: Duration,
}

impl Pending {
    pub(crate) fn new(timeout: Duration) -> Self {
        // A random, non-zero 16-bit tag (std's per-process random hasher keys; no RNG dependency).
        let tag = (RandomState::new().hash_one(0x6c62u64) & 0xffff).max(1);
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next: AtomicU64::new(1),
            tag,
            timeout,
        }
    }

    fn shard(&self, seq: u64) -> MutexGuard<'_, HashMap<u64, LoadGuard>> {
        // A panic never happens while a shard is held (insert/remove only), but if one did the map
        // is still consistent: take it rather than poison every later call.
        self.shards[(seq as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `guard` and returns its token (never zero).
    pub(crate) fn insert(&self, guard: LoadGuard) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::Relaxed) & SEQ_MASK;
        let token = (self.tag << SEQ_BITS) | seq;
        self.shard(seq).insert(token, guard);
        token
    }

    /// Removes the guard of `token`.
    pub(crate) fn take(&self, token: u64) -> Result<LoadGuard, TokenError> {
        let seq = token & SEQ_MASK;
        if token >> SEQ_BITS != self.tag || seq == 0 {
            return Err(TokenError::Unknown);
        }
        if let Some(guard) = self.shard(seq).remove(&token) {
            return Ok(guard);
        }
        if seq < self.next.load(Ordering::Relaxed) & SEQ_MASK || self.next.load(Ordering::Relaxed) > SEQ_MASK {
            Err(TokenError::Spent)
        } else {
            Err(TokenError::Unknown)
        }
    }

    /// Drops, as cancelled, every guard older than the report timeout. Returns how many expired.
    pub(crate) fn expire(&self, now: Instant) -> usize {
        let mut expired: Vec<LoadGuard> = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let stale: Vec<u64> = shard
                .iter()
                .filter(|(_, g)| now.saturating_duration_since(g.started_at()) >= self.timeout)
                .map(|(t, _)| *t)
                .collect();
            expired.extend(stale.iter().filter_map(|t| shard.remove(t)));
        }
        // Dropped outside the locks; their outcome is still the default, `Cancelled`.
        expired.len()
    }

    /// Picks still awaiting a report.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::Load;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reported_once_and_expire() {
        let load = Arc::new(Load::default());
        let untouched = Arc::new(Load::default());
        let p = Pending::new(Duration::from_secs(10));
        let t1 = p.insert(load.start());
        let t2 = p.insert(load.start());
        assert_ne!(t1, t2);
        assert_eq!(load.in_flight(), 2);
        drop(p.take(t1).expect("pending"));
        assert_eq!(p.take(t1).expect_err("twice"), TokenError::Spent);
        assert_eq!(p.take(0).expect_err("zero"), TokenError::Unknown);
        assert_eq!(p.take(t2 + 100).expect_err("not issued yet"), TokenError::Unknown);
        let mut other = Pending::new(Duration::from_secs(10));
        other.tag = p.tag % 0xffff + 1;
        assert_eq!(p.take(other.insert(load.start())).expect_err("foreign"), TokenError::Unknown);

        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(p.expire(Instant::now()), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(p.expire(Instant::now()), 1);
        assert_eq!(p.take(t2).expect_err("expired"), TokenError::Spent);
        assert_eq!(p.len(), 0);
        assert_eq!(load.in_flight(), 1, "only the foreign-balancer pick is still in flight");
        assert_eq!(load.consecutive_failures(), 0, "an expired pick is not a failure");
        assert_eq!(load.rtt_estimate(), untouched.rtt_estimate(), "nor a latency sample");
    }
}
