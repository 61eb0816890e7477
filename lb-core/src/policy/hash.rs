//! Consistent hashing on a request key, for affinity (caches, sticky sessions, sharded state).
//!
//! A Karger-style hash ring, as in gRPC's `ring_hash` (A42) and Envoy: every endpoint is placed on a
//! 64-bit ring at many pseudo-random points ("virtual nodes", proportional to its weight); a request
//! key goes to the first point at or after its hash. Removing one of N endpoints moves only the keys
//! that endpoint owned — about 1/N of them — and adding one takes about 1/(N+1); keys on unrelated
//! endpoints never move.
//!
//! Points are derived from the endpoint *id*, not its position in any list, so the ring is identical
//! across clients and processes that see the same membership. The minimum positive weight gets
//! [`RingHash::DEFAULT_VNODES`] points and heavier endpoints proportionally more, so with equal weights
//! (the common case) an endpoint's points do not depend on anyone else. The ring is capped at 2²⁰
//! points; past that, counts are scaled down.
//!
//! A pick is a binary search over the ring: O(log points), no allocation. A request without a key is
//! sent to a random healthy endpoint.

use super::rng::{mix, SharedRng};
use super::{eligible, Candidate, Empty, PickContext, Picker, Policy};

/// Hashes an affinity key (a user id, a header value) into the `u64` a [`PickContext`] carries.
///
/// FNV-1a followed by SplitMix64's finaliser: stable across processes, platforms and releases, so
/// every client — Rust or C ABI — maps a key to the same endpoint.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The consistent-hashing (ring hash) policy.
#[derive(Clone, Debug)]
pub struct RingHash {
    vnodes: u32,
    max_points: usize,
}

impl Default for RingHash {
    fn default() -> Self {
        RingHash {
            vnodes: Self::DEFAULT_VNODES,
            max_points: 1 << 20,
        }
    }
}

impl RingHash {
    /// Points on the ring for an endpoint of the minimum weight.
    pub const DEFAULT_VNODES: u32 = 100;

    /// Creates the policy with default sizes.
    pub fn new() -> Self {
        RingHash::default()
    }

    /// Sets the points per minimum-weight endpoint (more points: more even split, bigger ring).
    pub fn with_vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes.max(1);
        self
    }
}

impl Policy for RingHash {
    fn is_hashing(&self) -> bool {
        true
    }

    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let idx = eligible(candidates);
        if idx.is_empty() {
            return Box::new(Empty);
        }
        let min_w = idx
            .iter()
            .map(|&i| u64::from(candidates[i as usize].endpoint.weight().max(1)))
            .min()
            .unwrap_or(1);
        let mut counts: Vec<u64> = idx
            .iter()
            .map(|&i| {
                let w = u64::from(candidates[i as usize].endpoint.weight().max(1));
                (w * u64::from(self.vnodes)).div_ceil(min_w)
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total > self.max_points as u64 {
            let scale = self.max_points as f64 / total as f64;
            counts.iter_mut().for_each(|c| *c = ((*c as f64 * scale) as u64).max(1));
        }
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        let mut buf = Vec::new();
        for (&i, &count) in idx.iter().zip(&counts) {
            let id = candidates[i as usize].endpoint.id().as_str().as_bytes();
            for r in 0..count {
                buf.clear();
                buf.extend_from_slice(id);
                buf.push(b'#');
                buf.extend_from_slice(&r.to_le_bytes());
                ring.push((hash_key(&buf), i));
            }
        }
        // Ties (astronomically rare) are broken by id order so every client builds the same ring.
        ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                candidates[a.1 as usize]
                    .endpoint
                    .id()
                    .cmp(candidates[b.1 as usize].endpoint.id())
            })
        });
        Box::new(RingPicker {
            ring,
            fallback: idx,
            rng: SharedRng::new(),
        })
    }
}

#[derive(Debug)]
struct RingPicker {
    ring: Vec<(u64, u32)>,
    fallback: Vec<u32>,
    rng: SharedRng,
}

impl Picker for RingPicker {
    fn pick(&self, ctx: &PickContext) -> Option<usize> {
        let Some(h) = ctx.hash else {
            return Some(self.fallback[self.rng.below(self.fallback.len())] as usize);
        };
        let at = self.ring.partition_point(|&(p, _)| p < h);
        let (_, i) = self.ring[if at == self.ring.len() { 0 } else { at }];
        Some(i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn owners(c: &[Candidate], keys: u64) -> Vec<String> {
        let p = RingHash::new().build(c);
        (0..keys)
            .map(|k| {
                let i = p.pick(&PickContext::with_hash(hash_key(&k.to_le_bytes()))).expect("non-empty ring");
                c[i].endpoint.id().to_string()
            })
            .collect()
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let c = candidates(10);
        let before = owners(&c, 20_000);
        let removed = c[3].endpoint.id().to_string();
        let mut fewer = c.clone();
        fewer.remove(3);
        let after = owners(&fewer, 20_000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(b, &removed, "a key not owned by the removed endpoint moved");
                moved += 1;
            }
        }
        let frac = moved as f64 / 20_000.0;
        assert!((0.05..0.15).contains(&frac), "moved {frac}");
    }

    #[test]
    fn spread_is_even_enough() {
        let c = candidates(8);
        let p = RingHash::new().build(&c);
        let mut counts = vec![0usize; 8];
        for k in 0..80_000u64 {
            counts[p.pick(&PickContext::with_hash(hash_key(&k.to_le_bytes()))).expect("non-empty")] += 1;
        }
        for n in counts.iter() {
            assert!((6_000..14_000).contains(n), "{counts:?}");
        }
    }

    #[test]
    fn hash_key_is_stable() {
        // Pinned: clients in other processes and languages rely on the same mapping.
        assert_eq!(hash_key(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
        assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
    }
}
