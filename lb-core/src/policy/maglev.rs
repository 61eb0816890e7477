//! Maglev consistent hashing: affinity on a request key with an O(1) pick.
//!
//! The lookup table of Google's Maglev load balancer (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4), with weights filled in as Envoy's `maglev_lb`
//! does (gRPC has no Maglev policy). The table has a prime number `M` of entries. Every endpoint
//! derives a preference list — a permutation of `0..M` — from two independent hashes of its *id*:
//! `offset = h₁ % M`, `skip = h₂ % (M − 1) + 1`, entry `j` being `(offset + j·skip) % M`. Endpoints
//! then take turns, round after round, claiming the next free entry of their own list until the table
//! is full. A request key goes to `table[hash % M]`.
//!
//! Weights follow Envoy's weighted Maglev: in round `t` an endpoint of weight `w` takes a turn only
//! while its turns so far, times the largest weight `W`, do not exceed `t·w`; the heaviest endpoints
//! take a turn every round, one of weight `W/3` every third round. Each endpoint's share of the
//! table is then its share of the total weight, to within a few entries. As for [`RingHash`],
//! unhealthy endpoints get no entries, nor do endpoints of weight zero unless every healthy endpoint
//! has weight zero (then all count as equal).
//!
//! Endpoints take their turns in id order and their lists depend only on their ids, so the table
//! depends only on membership: identical across clients and processes that see the same endpoints,
//! whatever order discovery lists them in.
//!
//! Compared with [`RingHash`]: a pick is one index into the table — O(1), no allocation, no lock —
//! instead of a binary search. Building the table takes about `M·ln M` steps whatever the endpoint
//! count, while a ring's build grows with it (100 points per endpoint to hash and sort): Maglev
//! builds faster past a few hundred endpoints, a ring faster below that. Entries are split as evenly
//! as the weights allow (equal weights: every endpoint owns ⌊M/N⌋ or ⌈M/N⌉ entries). The price is
//! disruption: removing one of N endpoints moves its own keys (about 1/N) plus a small fraction of
//! other keys, whose entries are re-contested as the remaining endpoints' preference lists advance
//! differently; a ring moves only the removed endpoint's keys. Keep `M` well above the endpoint
//! count (the paper suggests `M ≥ 100·N`): the default 65 537 (as Envoy's) suits up to several
//! hundred endpoints.
//!
//! A request without a key is sent to a random healthy endpoint, as with [`RingHash`].
//!
//! [`RingHash`]: super::RingHash

use super::hash::hash_key;
use super::rng::SharedRng;
use super::{eligible, Candidate, Empty, PickContext, Picker, Policy};

/// The Maglev consistent-hashing policy.
#[derive(Clone, Debug)]
pub struct Maglev {
    table_size: u32,
}

impl Default for Maglev {
    fn default() -> Self {
        Maglev {
            table_size: Self::DEFAULT_TABLE_SIZE,
        }
    }
}

impl Maglev {
    /// The default table size, a prime (as Envoy's).
    pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

    /// The smallest table size: the prime that first satisfies the paper's `M ≥ 100·N` for a single
    /// endpoint. Smaller requests are raised to it.
    pub const MIN_TABLE_SIZE: u32 = 101;

    /// The largest table size (Envoy's limit; 4 bytes per entry, about 19 MiB). Larger requests are
    /// lowered to it.
    pub const MAX_TABLE_SIZE: u32 = 5_000_011;

    /// Creates the policy with the default table size.
    pub fn new() -> Self {
        Maglev::default()
    }

    /// Sets the number of table entries. Maglev needs a prime: `size` is rounded up to the next
    /// prime, after being clamped to [`Maglev::MIN_TABLE_SIZE`]..=[`Maglev::MAX_TABLE_SIZE`] (both
    /// prime); [`Maglev::table_size`] tells the size in use. A bigger table splits keys more evenly
    /// and costs more memory and build time; it must exceed the endpoint count, or the endpoints
    /// after the first `size` (in id order) get no entries.
    pub fn with_table_size(mut self, size: u32) -> Self {
        self.table_size = next_prime(size.clamp(Self::MIN_TABLE_SIZE, Self::MAX_TABLE_SIZE));
        self
    }

    /// The number of table entries, a prime.
    pub fn table_size(&self) -> u32 {
        self.table_size
    }

    /// The lookup table: for each entry, the index into `candidates` of its owner. `idx` (from
    /// [`eligible`]) is non-empty.
    fn populate(&self, candidates: &[Candidate], idx: &[u32]) -> Vec<u32> {
        const FREE: u32 = u32::MAX;
        let m = u64::from(self.table_size);
        let mut order = idx.to_vec();
        order.sort_by(|&a, &b| candidates[a as usize].endpoint.id().cmp(candidates[b as usize].endpoint.id()));
        if order.len() as u64 > m {
            tracing::warn!(
                endpoints = order.len(),
                table_size = m,
                "maglev table smaller than the endpoint count: some endpoints get no keys"
            );
        }
        let mut buf = Vec::new();
        let mut turns: Vec<Turn> = order
            .iter()
            .map(|&i| {
                let ep = &candidates[i as usize].endpoint;
                let id = ep.id().as_str().as_bytes();
                buf.clear();
                buf.extend_from_slice(id);
                buf.extend_from_slice(b"#maglev-offset");
                let offset = hash_key(&buf) % m;
                buf.truncate(id.len());
                buf.extend_from_slice(b"#maglev-skip");
                let skip = hash_key(&buf) % (m - 1) + 1;
                Turn {
                    index: i,
                    next: offset,
                    skip,
                    weight: u64::from(ep.weight().max(1)),
                    due: 0,
                }
            })
            .collect();
        let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);
        let mut table = vec![FREE; m as usize];
        let mut filled = 0u64;
        // The heaviest endpoints take a turn every round, so there are at most `m` rounds and
        // `round * weight` stays below 2⁵⁵. `m` is prime and `skip` in 1..m, so each list visits
        // every entry: while the table has a free entry, a turn finds one.
        let mut round = 1u64;
        while filled < m {
            for t in turns.iter_mut() {
                if filled == m {
                    break;
                }
                if round * t.weight < t.due {
                    continue;
                }
                t.due += max_weight;
                while table[t.next as usize] != FREE {
                    t.next = advance(t.next, t.skip, m);
                }
                table[t.next as usize] = t.index;
                t.next = advance(t.next, t.skip, m);
                filled += 1;
            }
            round += 1;
        }
        table
    }
}

/// One endpoint's progress through table population.
struct Turn {
    /// Its index into the candidates.
    index: u32,
    /// The next entry of its preference list.
    next: u64,
    /// The step of its preference list, in `1..m`.
    skip: u64,
    /// Its weight (at least 1).
    weight: u64,
    /// Its turns so far times the largest weight: it takes a turn in round `t` if `t·weight ≥ due`.
    due: u64,
}

/// `(at + skip) % m` for `at, skip < m`.
#[inline]
fn advance(at: u64, skip: u64, m: u64) -> u64 {
    let n = at + skip;
    if n >= m {
        n - m
    } else {
        n
    }
}

/// The smallest prime `≥ n` (`n ≥ 2`; trial division, fine for table sizes).
fn next_prime(n: u32) -> u32 {
    let is_prime = |n: u32| n >= 2 && (2..).take_while(|d: &u32| d * d <= n).all(|d| n % d != 0);
    (n..).find(|&n| is_prime(n)).unwrap_or(n)
}

impl Policy for Maglev {
    fn is_hashing(&self) -> bool {
        true
    }

    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let idx = eligible(candidates);
        if idx.is_empty() {
            return Box::new(Empty);
        }
        let table = self.populate(candidates, &idx);
        // Candidate indices fit in 16 bits for all but huge memberships: half the memory, and half
        // the cache footprint when keys are spread.
        if candidates.len() <= usize::from(u16::MAX) {
            Box::new(MaglevPicker {
                table: table.into_iter().map(|i| i as u16).collect::<Vec<u16>>(),
                fallback: idx,
                rng: SharedRng::new(),
            })
        } else {
            Box::new(MaglevPicker {
                table,
                fallback: idx,
                rng: SharedRng::new(),
            })
        }
    }
}

/// A table entry: a candidate index, 16 or 32 bits wide.
trait Slot: Copy + Send + Sync + std::fmt::Debug + 'static {
    fn index(self) -> usize;
}

impl Slot for u16 {
    #[inline]
    fn index(self) -> usize {
        usize::from(self)
    }
}

impl Slot for u32 {
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct MaglevPicker<S> {
    table: Vec<S>,
    fallback: Vec<u32>,
    rng: SharedRng,
}

impl<S: Slot> Picker for MaglevPicker<S> {
    fn pick(&self, ctx: &PickContext) -> Option<usize> {
        let Some(h) = ctx.hash else {
            return Some(self.fallback[self.rng.below(self.fallback.len())] as usize);
        };
        Some(self.table[(h % self.table.len() as u64) as usize].index())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::endpoint::Endpoint;

    /// Entries owned by each candidate.
    fn entries(m: &Maglev, c: &[Candidate]) -> Vec<u64> {
        let idx = eligible(c);
        let mut counts = vec![0; c.len()];
        for i in m.populate(c, &idx) {
            counts[i as usize] += 1;
        }
        counts
    }

    fn key(k: u64) -> PickContext {
        PickContext::with_hash(hash_key(&k.to_le_bytes()))
    }

    fn owners(c: &[Candidate], keys: u64) -> Vec<String> {
        let p = Maglev::new().build(c);
        (0..keys)
            .map(|k| c[p.pick(&key(k)).expect("non-empty table")].endpoint.id().to_string())
            .collect()
    }

    #[test]
    fn table_sizes_are_prime_and_bounded() {
        assert_eq!(Maglev::new().table_size(), 65_537);
        assert_eq!(Maglev::new().with_table_size(65_537).table_size(), 65_537);
        assert_eq!(Maglev::new().with_table_size(1_000).table_size(), 1_009);
        assert_eq!(Maglev::new().with_table_size(0).table_size(), Maglev::MIN_TABLE_SIZE);
        assert_eq!(Maglev::new().with_table_size(u32::MAX).table_size(), Maglev::MAX_TABLE_SIZE);
        assert_eq!(next_prime(Maglev::MIN_TABLE_SIZE), Maglev::MIN_TABLE_SIZE);
        assert_eq!(next_prime(Maglev::MAX_TABLE_SIZE), Maglev::MAX_TABLE_SIZE);
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(24), 29);
    }

    #[test]
    fn the_table_depends_on_membership_not_order() {
        let c = candidates(20);
        let before = owners(&c, 5_000);
        let mut shuffled = c.clone();
        shuffled.reverse();
        shuffled.swap(3, 11);
        assert_eq!(owners(&shuffled, 5_000), before);
        // And the table itself is pinned by ids: a fresh picker over the same members agrees.
        assert_eq!(owners(&c, 5_000), before);
    }

    #[test]
    fn equal_weights_own_floor_or_ceil_of_m_over_n() {
        // Every round each endpoint takes exactly one entry, so counts differ by at most one.
        for (n, size) in [(1, 65_537), (3, 65_537), (10, 65_537), (97, 65_537), (250, 1_009)] {
            let m = Maglev::new().with_table_size(size);
            let m_size = u64::from(m.table_size());
            let counts = entries(&m, &candidates(n));
            let (lo, hi) = (m_size / n as u64, m_size.div_ceil(n as u64));
            for &e in &counts {
                assert!((lo..=hi).contains(&e), "n={n}: {e} outside {lo}..={hi}");
            }
            assert_eq!(counts.iter().sum::<u64>(), m_size);
        }
    }

    #[test]
    fn entries_are_proportional_to_weight() {
        // With N endpoints of weights wᵢ (sum S), an endpoint takes ⌊t·wᵢ/W⌋ + 1 turns in the first t
        // rounds; summing over endpoints bounds the round count, which gives
        // M·wᵢ/S − N·wᵢ/S − 1 ≤ entriesᵢ ≤ M·wᵢ/S + 2.
        for weights in [vec![1, 2, 3, 4, 5], vec![1, 100], vec![7, 7, 1, 3, 50, 2, 2, 9], vec![1_000_000, 1, 3]] {
            let c: Vec<Candidate> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Candidate::new(Endpoint::new(([10, 0, 0, i as u8], 80).into()).with_weight(w)))
                .collect();
            let m = Maglev::new();
            let counts = entries(&m, &c);
            let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let n = weights.len() as f64;
            for (&e, &w) in counts.iter().zip(&weights) {
                let share = f64::from(w) / sum as f64;
                let ideal = f64::from(m.table_size()) * share;
                assert!(e >= 1, "{weights:?}: weight {w} got no entries");
                assert!((e as f64 - ideal).abs() <= n * share + 2.0, "{weights:?}: weight {w} owns {e}, ideal {ideal:.1}");
            }
        }
    }

    #[test]
    fn picks_follow_the_table_shares() {
        let c: Vec<Candidate> = [1u32, 3]
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate::new(Endpoint::new(([10, 0, 0, i as u8], 80).into()).with_weight(w)))
            .collect();
        let p = Maglev::new().build(&c);
        let mut counts = [0usize; 2];
        for k in 0..40_000 {
            counts[p.pick(&key(k)).expect("non-empty")] += 1;
        }
        // Expected 10,000 / 30,000; binomial sd ≈ 87.
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn unhealthy_and_zero_weight_endpoints_get_no_entries() {
        let mut c = candidates(6);
        c[1].healthy = false;
        c[4] = Candidate::new(c[4].endpoint.as_ref().clone().with_weight(0));
        let counts = entries(&Maglev::new(), &c);
        assert_eq!(counts[1], 0);
        assert_eq!(counts[4], 0);
        for i in [0, 2, 3, 5] {
            assert!((16_384..=16_385).contains(&counts[i]), "{counts:?}");
        }
        let p = Maglev::new().build(&c);
        for k in 0..10_000 {
            let i = p.pick(&key(k)).expect("non-empty");
            assert!(i != 1 && i != 4, "picked {i}");
        }
        for _ in 0..1_000 {
            let i = p.pick(&PickContext::default()).expect("non-empty");
            assert!(i != 1 && i != 4, "picked {i} without a key");
        }
    }

    #[test]
    fn all_zero_weights_count_as_equal() {
        let c: Vec<Candidate> = candidates(4)
            .into_iter()
            .map(|c| Candidate::new(c.endpoint.as_ref().clone().with_weight(0)))
            .collect();
        let counts = entries(&Maglev::new(), &c);
        for &e in &counts {
            assert!((16_384..=16_385).contains(&e), "{counts:?}");
        }
    }

    #[test]
    fn a_single_endpoint_owns_every_key() {
        let c = candidates(1);
        let p = Maglev::new().with_table_size(0).build(&c);
        for k in 0..1_000 {
            assert_eq!(p.pick(&key(k)), Some(0));
        }
        assert_eq!(p.pick(&PickContext::default()), Some(0));
    }

    #[test]
    fn nothing_healthy_picks_nothing() {
        assert_eq!(Maglev::new().build(&[]).pick(&key(1)), None);
        let mut c = candidates(3);
        c.iter_mut().for_each(|c| c.healthy = false);
        let p = Maglev::new().build(&c);
        assert_eq!(p.pick(&key(1)), None);
        assert_eq!(p.pick(&PickContext::default()), None);
    }

    #[test]
    fn a_key_without_hash_goes_to_a_random_healthy_endpoint() {
        let c = candidates(4);
        let p = Maglev::new().build(&c);
        let counts = counts(&*p, 4, 40_000, &PickContext::default());
        for &n in &counts {
            assert!((9_000..11_000).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_its_keys_and_few_others() {
        let c = candidates(10);
        let before = owners(&c, 20_000);
        let removed = c[3].endpoint.id().to_string();
        let mut fewer = c.clone();
        fewer.remove(3);
        let after = owners(&fewer, 20_000);
        let (mut own, mut others) = (0, 0);
        for (b, a) in before.iter().zip(&after) {
            if b == &removed {
                own += 1;
            } else if b != a {
                others += 1;
            }
        }
        let (own, others) = (own as f64 / 20_000.0, others as f64 / 20_000.0);
        assert!((0.08..0.12).contains(&own), "owned {own}");
        assert!(others < 0.05, "{others} of keys on remaining endpoints moved");
    }

    #[test]
    fn wide_memberships_use_32_bit_entries() {
        // More candidates than u16 can index (most unhealthy, to keep the table small).
        let mut c: Vec<Candidate> = (0..70_000u32)
            .map(|i| Candidate::new(Endpoint::new(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80).into())))
            .collect();
        c.iter_mut().take(69_990).for_each(|c| c.healthy = false);
        let p = Maglev::new().with_table_size(1_009).build(&c);
        for k in 0..1_000 {
            let i = p.pick(&key(k)).expect("non-empty");
            assert!(i >= 69_990, "picked {i}");
        }
    }
}
