//! Picks awaiting their report: a sharded map from token to the pick's `LoadGuard`.
//!
//! The guard is what feeds in-flight counts, PeakEWMA and outlier detection in `lb-core`; across
//! the C boundary it cannot be an RAII value, so the balancer keeps it until `lb_balancer_report`
//! names its token. Handing the guard's address to C instead would make a second report a
//! use-after-free; a map turns it into an error code.
//!
//! Tokens are `tag << 48 | shard << 43 | sequence`: the tag is random per balancer, so a token from another
//! balancer (or garbage) is recognised as unknown, and a token of ours that is no longer in the map
//! is known to be spent (reported, or expired). Shards keep two threads reporting at once from
//! contending on one lock; the pick itself takes no lock (the snapshot is read through an atomic
//! pointer).
//!
//! A pick never reported expires after `report_timeout`: its guard drops as `Cancelled`, which
//! releases its in-flight count and records neither success nor failure (lb-core's meaning of a
//! request whose end is unknown).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lb_core::LoadGuard;
use tokio::time::Instant;

const SHARD_BITS: u32 = 5;
const SHARDS: usize = 1 << SHARD_BITS;
const SEQ_BITS: u32 = 43;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const TAG_SHIFT: u32 = SEQ_BITS + SHARD_BITS;

/// Why a token cannot be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not issued by this balancer.
    Unknown,
    /// Issued here, but already reported or expired.
    Spent,
}

/// Tokens are unique integers already; one multiply spreads them over the table (SipHash, the
/// default, costs more than the rest of the map operation).
#[derive(Default)]
struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Map = HashMap<u64, LoadGuard, BuildHasherDefault<TokenHasher>>;

#[derive(Debug, Default)]
struct Shard {
    /// The next sequence number this shard hands out (starts at 1: token 0 is never valid).
    next: u64,
    pending: Map,
}

#[derive(Debug)]
pub(crate) struct Pending {
    shards: Box<[Mutex<Shard>]>,
    tag: u64,
    timeout: Duration,
}

/// Which shard this thread inserts into. Threads are spread over the shards once, so two threads
/// picking at once do not bounce the same lock and table between their cores; a token can still
/// be reported from any thread (its shard is part of the token).
fn home_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HOME.with(|h| {
        if h.get() == usize::MAX {
            h.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        h.get()
    })
}

impl Pending {
    pub(crate) fn new(timeout: Duration) -> Self {
        // A random, non-zero 16-bit tag (std's per-process random hasher keys; no RNG dependency).
        let tag = (RandomState::new().hash_one(0x6c62u64) & 0xffff).max(1);
        Pending {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        next: 1,
                        pending: Map::default(),
                    })
                })
                .collect(),
            tag,
            timeout,
        }
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic never happens while a shard is held (insert/remove only), but if one did the map
        // is still consistent: take it rather than poison every later call.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `guard` and returns its token (never zero).
    pub(crate) fn insert(&self, guard: LoadGuard) -> u64 {
        let i = home_shard();
        let mut shard = self.shard(i);
        let seq = shard.next & SEQ_MASK;
        shard.next += 1;
        let token = (self.tag << TAG_SHIFT) | ((i as u64) << SEQ_BITS) | seq;
        shard.pending.insert(token, guard);
        token
    }

    /// Removes the guard of `token`.
    pub(crate) fn take(&self, token: u64) -> Result<LoadGuard, TokenError> {
        let seq = token & SEQ_MASK;
        if token >> TAG_SHIFT != self.tag || seq == 0 {
            return Err(TokenError::Unknown);
        }
        let i = ((token >> SEQ_BITS) as usize) & (SHARDS - 1);
        let mut shard = self.shard(i);
        if let Some(guard) = shard.pending.remove(&token) {
            return Ok(guard);
        }
        if seq < shard.next || shard.next > SEQ_MASK {
            Err(TokenError::Spent)
        } else {
            Err(TokenError::Unknown)
        }
    }

    /// Drops, as cancelled, every guard older than the report timeout. Returns how many expired.
    pub(crate) fn expire(&self, now: Instant) -> usize {
        let mut expired: Vec<LoadGuard> = Vec::new();
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            let stale: Vec<u64> = shard
                .pending
                .iter()
                .filter(|(_, g)| now.saturating_duration_since(g.started_at()) >= self.timeout)
                .map(|(t, _)| *t)
                .collect();
            expired.extend(stale.iter().filter_map(|t| shard.pending.remove(t)));
        }
        // Dropped outside the locks; their outcome is still the default, `Cancelled`.
        expired.len()
    }

    /// Picks still awaiting a report.
    pub(crate) fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).pending.len()).sum()
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
        assert_eq!(
            p.take(t2 + 100).expect_err("not issued yet"),
            TokenError::Unknown
        );
        let mut other = Pending::new(Duration::from_secs(10));
        other.tag = p.tag % 0xffff + 1;
        assert_eq!(
            p.take(other.insert(load.start())).expect_err("foreign"),
            TokenError::Unknown
        );

        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(p.expire(Instant::now()), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(p.expire(Instant::now()), 1);
        assert_eq!(p.take(t2).expect_err("expired"), TokenError::Spent);
        assert_eq!(p.len(), 0);
        assert_eq!(
            load.in_flight(),
            1,
            "only the foreign-balancer pick is still in flight"
        );
        assert_eq!(
            load.consecutive_failures(),
            0,
            "an expired pick is not a failure"
        );
        assert_eq!(
            load.rtt_estimate(),
            untouched.rtt_estimate(),
            "nor a latency sample"
        );
    }
}
