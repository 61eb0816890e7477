//! Property tests of the policies.

use std::collections::HashSet;

use lb_core::policy::{
    hash_key, Candidate, Level, Maglev, P2c, PickContext, Picker, Policy, RingHash, RoundRobin, Topology, WeightedRoundRobin,
};
use lb_core::{Endpoint, Locality};
use proptest::prelude::*;

fn endpoint(i: usize) -> Endpoint {
    Endpoint::new(([10, 1, (i >> 8) as u8, i as u8], 8080).into())
}

fn pick(p: &dyn Picker) -> usize {
    p.pick(&PickContext::default()).expect("a healthy candidate exists")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over whole cycles, smooth weighted round robin is exact.
    #[test]
    fn weights_are_honoured(weights in prop::collection::vec(1u32..=100, 2..20)) {
        let cs: Vec<Candidate> = weights.iter().enumerate().map(|(i, &w)| Candidate::new(endpoint(i).with_weight(w))).collect();
        let p = WeightedRoundRobin::new().build(&cs);
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..total * 10 {
            counts[pick(&*p)] += 1;
        }
        for (c, w) in counts.iter().zip(&weights) {
            prop_assert_eq!(*c, w * 10);
        }
    }

    /// P2C compares two *distinct* endpoints: the single most loaded one always loses.
    #[test]
    fn p2c_samples_two_distinct_endpoints(n in 2usize..40, hot in 0usize..40, seed in any::<u64>()) {
        let hot = hot % n;
        let cs: Vec<Candidate> = (0..n).map(|i| Candidate::new(endpoint(i))).collect();
        let _busy: Vec<_> = (0..3).map(|_| cs[hot].load.start()).collect();
        let p = P2c::least_request().with_seed(seed).build(&cs);
        for _ in 0..200 {
            prop_assert_ne!(pick(&*p), hot);
        }
    }

    /// Topology never picks a farther tier while a nearer one qualifies (its health, overprovisioned
    /// by 1.4, covers all traffic), and never leaves the listed levels.
    #[test]
    fn topology_prefers_the_nearest_qualifying_tier(
        members in prop::collection::vec((0u8..2, 0u8..3, 0u8..3, any::<bool>()), 1..40),
        strict in any::<bool>(),
    ) {
        let caller = Locality::unknown().with_region("r0").with_zone("z0").with_node("n0");
        let cs: Vec<Candidate> = members
            .iter()
            .enumerate()
            .map(|(i, &(r, z, n, healthy))| {
                let loc = Locality::unknown()
                    .with_region(format!("r{r}"))
                    .with_zone(format!("z{r}{z}").replace("z00", "z0"))
                    .with_node(format!("n{r}{z}{n}").replace("n000", "n0"));
                let mut c = Candidate::new(endpoint(i).with_locality(loc));
                c.healthy = healthy;
                c
            })
            .collect();
        let levels: Vec<Level> = if strict { vec![Level::Zone] } else { Level::DEFAULT.to_vec() };
        let policy = Topology::new(RoundRobin::new(), caller.clone()).with_levels(levels.clone()).with_panic_threshold(0.0);
        let p = policy.build(&cs);
        let tier_of = |c: &Candidate| levels.iter().position(|l| match l {
            Level::Node => caller.same_node(c.endpoint.locality()),
            Level::Zone => caller.same_zone(c.endpoint.locality()),
            Level::Region => caller.same_region(c.endpoint.locality()),
            Level::Any => true,
        });
        let qualifying = (0..levels.len()).find(|&t| {
            let members: Vec<&Candidate> = cs.iter().filter(|c| tier_of(c) == Some(t)).collect();
            let healthy = members.iter().filter(|c| c.healthy).count();
            !members.is_empty() && 1.4 * healthy as f64 >= members.len() as f64
        });
        let any_healthy_listed = cs.iter().any(|c| c.healthy && tier_of(c).is_some());
        for _ in 0..100 {
            match p.pick(&PickContext::default()) {
                None => prop_assert!(!any_healthy_listed),
                Some(i) => {
                    prop_assert!(cs[i].healthy);
                    let t = tier_of(&cs[i]);
                    prop_assert!(t.is_some(), "picked outside the listed levels");
                    if let Some(q) = qualifying {
                        // Tiers nearer than q do not qualify but may take a share; farther ones never.
                        prop_assert!(t.expect("checked") <= q, "picked tier {:?} while tier {} qualifies", t, q);
                    }
                }
            }
        }
    }

    /// Ring hash: removing an endpoint moves only its keys; adding one moves keys only to it.
    #[test]
    fn hashing_is_stable_under_unrelated_changes(n in 2usize..30, victim in 0usize..30) {
        let victim = victim % n;
        let cs: Vec<Candidate> = (0..n).map(|i| Candidate::new(endpoint(i))).collect();
        let p_all = RingHash::new().build(&cs);
        let mut fewer = cs.clone();
        let removed = fewer.remove(victim).endpoint.id().to_string();
        let p_fewer = RingHash::new().build(&fewer);
        let mut more = cs.clone();
        more.push(Candidate::new(endpoint(200)));
        let added = more[n].endpoint.id().to_string();
        let p_more = RingHash::new().build(&more);
        for k in 0..500u64 {
            let key = hash_key(&k.to_be_bytes());
            let ctx = PickContext::with_hash(key);
            let before = cs[p_all.pick(&ctx).expect("non-empty")].endpoint.id().to_string();
            let after_remove = fewer[p_fewer.pick(&ctx).expect("non-empty")].endpoint.id().to_string();
            let after_add = more[p_more.pick(&ctx).expect("non-empty")].endpoint.id().to_string();
            if before != removed {
                prop_assert_eq!(&after_remove, &before);
            }
            if after_add != before {
                prop_assert_eq!(&after_add, &added);
            }
        }
    }

    /// Maglev: removing one of N endpoints moves its own keys (about 1/N) and few others; adding one
    /// moves keys mostly to it.
    ///
    /// Unlike a ring, Maglev also moves some keys between remaining endpoints: the removed
    /// endpoint's entries are re-contested, and the remaining endpoints' preference lists then
    /// advance differently. With the default table (65,537 entries) and N < 30 that extra is under
    /// 1% of keys (measured; it grows as the table size approaches N). The bounds below are: all moves ≤ 1/N + 10% absolute, moves among unchanged endpoints ≤ 5% of keys.
    /// Over 500 keys the removed endpoint's share has a standard deviation ≤ 2.2 points, so 10
    /// points of margin is far outside noise while still catching a table that reshuffles.
    #[test]
    fn maglev_moves_about_one_nth_on_removal(n in 3usize..30, victim in 0usize..30) {
        const KEYS: u64 = 500;
        let victim = victim % n;
        let cs: Vec<Candidate> = (0..n).map(|i| Candidate::new(endpoint(i))).collect();
        let p_all = Maglev::new().build(&cs);
        let mut fewer = cs.clone();
        let removed = fewer.remove(victim).endpoint.id().to_string();
        let p_fewer = Maglev::new().build(&fewer);
        let mut more = cs.clone();
        more.push(Candidate::new(endpoint(200)));
        let added = more[n].endpoint.id().to_string();
        let p_more = Maglev::new().build(&more);
        let (mut moved, mut moved_between_others, mut added_elsewhere) = (0, 0, 0);
        for k in 0..KEYS {
            let ctx = PickContext::with_hash(hash_key(&k.to_be_bytes()));
            let before = cs[p_all.pick(&ctx).expect("non-empty")].endpoint.id().to_string();
            let after_remove = fewer[p_fewer.pick(&ctx).expect("non-empty")].endpoint.id().to_string();
            let after_add = more[p_more.pick(&ctx).expect("non-empty")].endpoint.id().to_string();
            prop_assert_ne!(&after_remove, &removed);
            if after_remove != before {
                moved += 1;
                if before != removed {
                    moved_between_others += 1;
                }
            }
            if after_add != before && after_add != added {
                added_elsewhere += 1;
            }
        }
        let frac = |x: u64| x as f64 / KEYS as f64;
        prop_assert!(frac(moved) <= 1.0 / n as f64 + 0.10, "n={}: {} of keys moved", n, frac(moved));
        prop_assert!(frac(moved_between_others) <= 0.05, "n={}: {} moved between unchanged endpoints", n, frac(moved_between_others));
        prop_assert!(frac(added_elsewhere) <= 0.05, "n={}: {} moved, on addition, to an old endpoint", n, frac(added_elsewhere));
    }

    /// Maglev's table depends on membership only: the order candidates are listed in does not matter.
    #[test]
    fn maglev_ignores_candidate_order(n in 1usize..40, order in any::<u64>()) {
        let cs: Vec<Candidate> = (0..n).map(|i| Candidate::new(endpoint(i).with_weight(1 + i as u32 % 4))).collect();
        let mut shuffled = cs.clone();
        // A deterministic Fisher–Yates from the drawn seed.
        let mut s = order;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let (a, b) = (Maglev::new().build(&cs), Maglev::new().build(&shuffled));
        for k in 0..300u64 {
            let ctx = PickContext::with_hash(hash_key(&k.to_be_bytes()));
            prop_assert_eq!(cs[a.pick(&ctx).expect("non-empty")].endpoint.id(), shuffled[b.pick(&ctx).expect("non-empty")].endpoint.id());
        }
    }

    /// Maglev never maps a key (or a keyless request) to an unhealthy endpoint, nor to one of
    /// weight zero while a healthy endpoint has a positive weight.
    #[test]
    fn maglev_picks_only_eligible_endpoints(members in prop::collection::vec((0u32..4, any::<bool>()), 1..30)) {
        let cs: Vec<Candidate> = members
            .iter()
            .enumerate()
            .map(|(i, &(w, healthy))| {
                let mut c = Candidate::new(endpoint(i).with_weight(w));
                c.healthy = healthy;
                c
            })
            .collect();
        let p = Maglev::new().with_table_size(1_009).build(&cs);
        let any_healthy = cs.iter().any(|c| c.healthy);
        let any_weighted = cs.iter().any(|c| c.healthy && c.endpoint.weight() > 0);
        for k in 0..300u64 {
            let ctx = if k % 10 == 0 { PickContext::default() } else { PickContext::with_hash(hash_key(&k.to_be_bytes())) };
            match p.pick(&ctx) {
                None => prop_assert!(!any_healthy),
                Some(i) => {
                    prop_assert!(cs[i].healthy, "picked unhealthy {}", i);
                    prop_assert!(cs[i].endpoint.weight() > 0 || !any_weighted, "picked weight-0 {}", i);
                }
            }
        }
    }

    /// Round robin visits every healthy endpoint once per cycle, whatever the health pattern.
    #[test]
    fn round_robin_is_exact(health in prop::collection::vec(any::<bool>(), 1..30)) {
        let cs: Vec<Candidate> = health
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                let mut c = Candidate::new(endpoint(i));
                c.healthy = h;
                c
            })
            .collect();
        let p = RoundRobin::new().build(&cs);
        let healthy: HashSet<usize> = health.iter().enumerate().filter(|(_, &h)| h).map(|(i, _)| i).collect();
        if healthy.is_empty() {
            prop_assert!(p.pick(&PickContext::default()).is_none());
        } else {
            let seen: HashSet<usize> = (0..healthy.len()).map(|_| pick(&*p)).collect();
            prop_assert_eq!(seen, healthy);
        }
    }
}
