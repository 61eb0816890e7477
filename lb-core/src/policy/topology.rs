//! Topology-aware balancing: prefer the caller's node, then zone, then region, then anywhere.
//!
//! Candidates are split into disjoint tiers by the first [`Level`] of the configured list that they
//! share with the caller (Kubernetes' `topologyKeys`: `kubernetes.io/hostname`,
//! `topology.kubernetes.io/zone`, `topology.kubernetes.io/region`, `*`). A candidate that matches no
//! listed level is never used, so a list without [`Level::Any`] never leaves its last level, and
//! `[Level::Node]` alone is strict node-local.
//!
//! Traffic is shared between tiers as Envoy shares it between priority levels:
//! a tier's *health* is `min(1, overprovisioning × healthy / total)` (default factor 1.4); the nearest
//! tier takes as much traffic as its health allows and the rest spills to the next tier, and so on.
//! With the default factor a tier keeps all of its traffic while at least 1/1.4 ≈ 71.4% of its
//! endpoints are healthy, and spills gradually below that. When the tiers' health adds up to less
//! than 1, shares are normalised so all traffic still goes somewhere.
//!
//! Panic threshold (Envoy, default 50%): when fewer than that fraction of all candidates in the
//! listed tiers are healthy, the fleet is in trouble and concentrating traffic on the few nearby
//! survivors would topple them too. Locality is then ignored and the inner policy balances over every
//! healthy candidate in the listed tiers. Set it to 0 to disable.
//!
//! Inside a tier any policy chooses: `Topology::new(P2c::peak_ewma(), caller)`.

use std::sync::Arc;

use super::rng::SharedRng;
use super::{Candidate, Empty, PickContext, Picker, Policy};
use crate::endpoint::Locality;

/// One topology level, nearest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Same node (`kubernetes.io/hostname`).
    Node,
    /// Same zone (`topology.kubernetes.io/zone`).
    Zone,
    /// Same region (`topology.kubernetes.io/region`).
    Region,
    /// Anywhere (`*`).
    Any,
}

impl Level {
    /// The default preference list: node → zone → region → anywhere.
    pub const DEFAULT: [Level; 4] = [Level::Node, Level::Zone, Level::Region, Level::Any];

    /// Parses a Kubernetes topology key (`kubernetes.io/hostname`, `topology.kubernetes.io/zone`,
    /// `topology.kubernetes.io/region`, `*`); the short names `node`, `zone`, `region`, `any` are
    /// accepted too.
    pub fn from_topology_key(key: &str) -> Option<Level> {
        match key {
            "kubernetes.io/hostname" | "node" => Some(Level::Node),
            "topology.kubernetes.io/zone" | "failure-domain.beta.kubernetes.io/zone" | "zone" => Some(Level::Zone),
            "topology.kubernetes.io/region" | "failure-domain.beta.kubernetes.io/region" | "region" => {
                Some(Level::Region)
            }
            "*" | "any" => Some(Level::Any),
            _ => None,
        }
    }

    fn matches(self, caller: &Locality, other: &Locality) -> bool {
        match self {
            Level::Node => caller.same_node(other),
            Level::Zone => caller.same_zone(other),
            Level::Region => caller.same_region(other),
            Level::Any => true,
        }
    }
}

/// A `topologyKeys` list that [`Topology::from_topology_keys`] cannot accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyKeyError {
    key: String,
    why: &'static str,
}

impl TopologyKeyError {
    fn new(key: &str, why: &'static str) -> Self {
        TopologyKeyError { key: key.to_string(), why }
    }

    /// The offending key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for TopologyKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topology key `{}` {} (expected kubernetes.io/hostname, topology.kubernetes.io/zone, topology.kubernetes.io/region, or a final \"*\")",
            self.key, self.why
        )
    }
}

impl std::error::Error for TopologyKeyError {}

/// The topology-aware wrapper policy.
#[derive(Clone, Debug)]
pub struct Topology<P> {
    inner: P,
    caller: Locality,
    levels: Arc<[Level]>,
    overprovisioning: f64,
    panic_threshold: f64,
}

impl<P: Policy> Topology<P> {
    /// Envoy's default overprovisioning factor.
    pub const DEFAULT_OVERPROVISIONING: f64 = 1.4;
    /// Envoy's default panic threshold.
    pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

    /// Wraps `inner`, preferring endpoints near `caller` with the default levels.
    pub fn new(inner: P, caller: Locality) -> Self {
        Topology {
            inner,
            caller,
            levels: Arc::from(&Level::DEFAULT[..]),
            overprovisioning: Self::DEFAULT_OVERPROVISIONING,
            panic_threshold: Self::DEFAULT_PANIC_THRESHOLD,
        }
    }

    /// Sets the ordered preference list. Levels after [`Level::Any`] are unreachable and ignored;
    /// an empty list matches nothing.
    pub fn with_levels(mut self, levels: impl IntoIterator<Item = Level>) -> Self {
        let mut v: Vec<Level> = Vec::new();
        for l in levels {
            if !v.contains(&l) {
                v.push(l);
            }
            if l == Level::Any {
                break;
            }
        }
        self.levels = Arc::from(v);
        self
    }

    /// Configures the policy from a Kubernetes Service `topologyKeys` list (the alpha field removed
    /// in Kubernetes 1.22), with its semantics: traffic goes to the first key's tier that has a
    /// healthy endpoint, then the next key's, and so on; a list without `"*"` never goes past its
    /// last key, so `["kubernetes.io/hostname"]` alone is strict node-local and fails rather than
    /// leave the node. An empty list means no preference (`["*"]`), as an unset field did.
    ///
    /// Kubernetes moved a tier's traffic only when it had no endpoint left, so the overprovisioning
    /// factor is infinite and there is no panic threshold; chain
    /// [`with_overprovisioning`](Self::with_overprovisioning) and
    /// [`with_panic_threshold`](Self::with_panic_threshold) for Envoy's gradual spill instead.
    ///
    /// Keys are those of [`Level::from_topology_key`]. As the API server did, this rejects unknown
    /// keys, duplicates, and `"*"` anywhere but last. A level the caller's locality leaves unknown
    /// matches no endpoint (so `["kubernetes.io/hostname"]` with no node configured picks nothing).
    ///
    /// ```
    /// use lb_core::policy::{RoundRobin, Topology};
    /// use lb_core::Locality;
    ///
    /// let caller = Locality::unknown().with_node("n1").with_zone("eu-west-1a");
    /// let keys = ["kubernetes.io/hostname", "topology.kubernetes.io/zone", "*"];
    /// let policy = Topology::from_topology_keys(RoundRobin::new(), caller, &keys).expect("valid keys");
    /// # let _ = policy;
    /// ```
    pub fn from_topology_keys<K: AsRef<str>>(inner: P, caller: Locality, keys: &[K]) -> Result<Self, TopologyKeyError> {
        let mut levels = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            let level = Level::from_topology_key(key).ok_or_else(|| TopologyKeyError::new(key, "is not a known topology key"))?;
            if levels.contains(&level) {
                return Err(TopologyKeyError::new(key, "is listed twice"));
            }
            if level == Level::Any && i + 1 != keys.len() {
                return Err(TopologyKeyError::new(key, "must be the last key"));
            }
            levels.push(level);
        }
        if levels.is_empty() {
            levels.push(Level::Any);
        }
        Ok(Topology::new(inner, caller)
            .with_levels(levels)
            .with_overprovisioning(f64::INFINITY)
            .with_panic_threshold(0.0))
    }

    /// Strict mode: only endpoints sharing `level` with the caller are ever used.
    pub fn strict(self, level: Level) -> Self {
        self.with_levels([level])
    }

    /// Sets the overprovisioning factor (≥ 1; `f64::INFINITY` keeps all traffic in the nearest tier
    /// that has any healthy endpoint, as Kubernetes' `topologyKeys` did).
    pub fn with_overprovisioning(mut self, factor: f64) -> Self {
        self.overprovisioning = if factor.is_nan() { 1.0 } else { factor.max(1.0) };
        self
    }

    /// Sets the panic threshold in `[0, 1]`.
    pub fn with_panic_threshold(mut self, threshold: f64) -> Self {
        self.panic_threshold = if threshold.is_nan() { 0.0 } else { threshold.clamp(0.0, 1.0) };
        self
    }

    /// The caller's locality.
    pub fn caller(&self) -> &Locality {
        &self.caller
    }

    /// The preference list.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }
}

impl<P: Policy> Policy for Topology<P> {
    fn rebuild_every(&self) -> Option<std::time::Duration> {
        self.inner.rebuild_every()
    }

    fn is_topology_aware(&self) -> bool {
        true
    }

    fn is_hashing(&self) -> bool {
        self.inner.is_hashing()
    }

    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); self.levels.len()];
        for (i, c) in candidates.iter().enumerate() {
            if let Some(t) = self.levels.iter().position(|l| l.matches(&self.caller, c.endpoint.locality())) {
                members[t].push(i as u32);
            }
        }
        let total: usize = members.iter().map(Vec::len).sum();
        let healthy: usize = members
            .iter()
            .flatten()
            .filter(|&&i| candidates[i as usize].healthy)
            .count();
        if healthy == 0 {
            return Box::new(Empty);
        }

        let sub = |ids: &[u32]| -> (Vec<u32>, Box<dyn Picker>) {
            let cs: Vec<Candidate> = ids.iter().map(|&i| candidates[i as usize].clone()).collect();
            (ids.to_vec(), self.inner.build(&cs))
        };

        if (healthy as f64) < self.panic_threshold * total as f64 {
            let all: Vec<u32> = members.iter().flatten().copied().collect();
            let (map, picker) = sub(&all);
            tracing::debug!(healthy, total, "topology panic: locality ignored");
            return Box::new(TopologyPicker {
                tiers: vec![Tier { map, picker, upto: u64::MAX }],
                rng: SharedRng::new(),
            });
        }

        let health: Vec<f64> = members
            .iter()
            .map(|ids| {
                if ids.is_empty() {
                    return 0.0;
                }
                let h = ids.iter().filter(|&&i| candidates[i as usize].healthy).count();
                if h == 0 {
                    // Not `factor × 0`: with an infinite factor that is NaN, and `NaN.min(1.0)`
                    // is 1.0 — a tier with no healthy endpoint would take all the traffic.
                    return 0.0;
                }
                (self.overprovisioning * h as f64 / ids.len() as f64).min(1.0)
            })
            .collect();
        let sum: f64 = health.iter().sum();
        let mut remaining = 1.0f64;
        let mut cumulative = 0.0f64;
        let mut tiers = Vec::new();
        for (ids, h) in members.iter().zip(&health) {
            let share = if sum < 1.0 { h / sum } else { h.min(remaining) };
            remaining -= share;
            if share <= 0.0 {
                continue;
            }
            cumulative += share;
            let (map, picker) = sub(ids);
            let upto = if cumulative >= 1.0 - 1e-12 { u64::MAX } else { (cumulative * u64::MAX as f64) as u64 };
            tiers.push(Tier { map, picker, upto });
            if upto == u64::MAX {
                break;
            }
        }
        if let Some(last) = tiers.last_mut() {
            last.upto = u64::MAX;
        }
        Box::new(TopologyPicker { tiers, rng: SharedRng::new() })
    }
}

#[derive(Debug)]
struct Tier {
    map: Vec<u32>,
    picker: Box<dyn Picker>,
    /// This tier takes draws below `upto` (cumulative share scaled to `u64`).
    upto: u64,
}

#[derive(Debug)]
struct TopologyPicker {
    tiers: Vec<Tier>,
    rng: SharedRng,
}

impl TopologyPicker {
    #[inline]
    fn choose(&self, pick: impl Fn(&dyn Picker) -> Option<usize>) -> Option<usize> {
        let tier = if self.tiers.len() == 1 {
            &self.tiers[0]
        } else {
            let draw = self.rng.next_u64();
            let k = self.tiers.iter().position(|t| draw < t.upto).unwrap_or(self.tiers.len() - 1);
            &self.tiers[k]
        };
        // A tier is only listed with a healthy member, but its inner policy may still decline (a
        // custom policy); fall back to the other tiers in order rather than fail the request.
        if let Some(i) = pick(&*tier.picker) {
            return Some(tier.map[i] as usize);
        }
        self.tiers
            .iter()
            .find_map(|t| pick(&*t.picker).map(|i| t.map[i] as usize))
    }
}

impl Picker for TopologyPicker {
    fn pick(&self, ctx: &PickContext) -> Option<usize> {
        self.choose(|p| p.pick(ctx))
    }

    fn pick_at(&self, ctx: &PickContext, now: tokio::time::Instant) -> Option<usize> {
        self.choose(|p| p.pick_at(ctx, now))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::RoundRobin;
    use super::*;
    use crate::endpoint::Endpoint;

    /// node n1 zone z1: 0; zone z1 other node: 1, 2; zone z2 same region: 3, 4; region r2: 5.
    fn fleet() -> Vec<Candidate> {
        let e = |i: u8| Endpoint::new(([10, 0, 0, i], 80).into());
        vec![
            Candidate::new(with_locality(e(0), "r1", "z1", "n1")),
            Candidate::new(with_locality(e(1), "r1", "z1", "n2")),
            Candidate::new(with_locality(e(2), "r1", "z1", "n3")),
            Candidate::new(with_locality(e(3), "r1", "z2", "n4")),
            Candidate::new(with_locality(e(4), "r1", "z2", "n5")),
            Candidate::new(with_locality(e(5), "r2", "z9", "n6")),
        ]
    }

    fn caller() -> Locality {
        Locality::unknown().with_region("r1").with_zone("z1").with_node("n1")
    }

    #[test]
    fn nearest_healthy_tier_takes_everything() {
        let mut c = fleet();
        let p = Topology::new(RoundRobin::new(), caller()).build(&c);
        assert_eq!(counts(&*p, 6, 100, &PickContext::default())[0], 100);

        c[0].healthy = false;
        let p = Topology::new(RoundRobin::new(), caller()).build(&c);
        let n = counts(&*p, 6, 100, &PickContext::default());
        assert_eq!(n[1] + n[2], 100, "same zone next: {n:?}");
    }

    #[test]
    fn spills_in_proportion_below_the_overprovisioned_health() {
        let mut c = fleet();
        let topo = Topology::new(RoundRobin::new(), caller()).with_levels([Level::Zone, Level::Any]);
        // Zone z1 has 3 members; 1 healthy of 3 → health 1.4/3 ≈ 0.467; the rest spills.
        c[0].healthy = false;
        c[1].healthy = false;
        let p = topo.build(&c);
        let n = counts(&*p, 6, 20_000, &PickContext::default());
        let local = n[2] as f64 / 20_000.0;
        assert!((0.43..0.50).contains(&local), "local share {local}: {n:?}");
    }

    #[test]
    fn strict_never_leaves_its_tier() {
        let mut c = fleet();
        c[0].healthy = false;
        let p = Topology::new(RoundRobin::new(), caller()).strict(Level::Node).build(&c);
        assert_eq!(p.pick(&PickContext::default()), None);
    }

    #[test]
    fn list_without_any_stops_at_its_last_key() {
        let mut c = fleet();
        for e in c.iter_mut().take(5) {
            e.healthy = false;
        }
        let p = Topology::new(RoundRobin::new(), caller())
            .with_levels([Level::Node, Level::Zone, Level::Region])
            .with_panic_threshold(0.0)
            .build(&c);
        assert_eq!(p.pick(&PickContext::default()), None, "endpoint 5 is in another region");
    }

    #[test]
    fn panic_spreads_over_survivors() {
        let mut c = fleet();
        // 2 of 6 healthy (< 50%): the healthy local one must not take everything.
        for i in [1, 2, 3, 4] {
            c[i].healthy = false;
        }
        let p = Topology::new(RoundRobin::new(), caller()).build(&c);
        let n = counts(&*p, 6, 100, &PickContext::default());
        assert_eq!((n[0], n[5]), (50, 50), "{n:?}");
    }

    #[test]
    fn topology_keys_lists() {
        let keys = ["kubernetes.io/hostname", "topology.kubernetes.io/zone", "*"];
        let mut c = fleet();
        // The node-local endpoint down: everything goes to the zone (no gradual spill), then to the
        // rest when the whole zone is down.
        c[0].healthy = false;
        let p = Topology::from_topology_keys(RoundRobin::new(), caller(), &keys).expect("valid").build(&c);
        let n = counts(&*p, 6, 100, &PickContext::default());
        assert_eq!(n[1] + n[2], 100, "{n:?}");
        c[1].healthy = false;
        c[2].healthy = false;
        let p = Topology::from_topology_keys(RoundRobin::new(), caller(), &keys).expect("valid").build(&c);
        let n = counts(&*p, 6, 300, &PickContext::default());
        assert_eq!(n[3] + n[4] + n[5], 300, "{n:?}");

        let strict = Topology::from_topology_keys(RoundRobin::new(), caller(), &["kubernetes.io/hostname"]).expect("valid");
        assert_eq!(strict.build(&c).pick(&PickContext::default()), None);

        let none: [&str; 0] = [];
        let any = Topology::from_topology_keys(RoundRobin::new(), caller(), &none).expect("valid");
        assert_eq!(any.levels(), &[Level::Any]);

        for bad in [&["*", "kubernetes.io/hostname"][..], &["zone", "zone"], &["rack"]] {
            let err = Topology::from_topology_keys(RoundRobin::new(), caller(), bad).expect_err("invalid");
            assert!(bad.contains(&err.key()), "{err}");
        }
    }

    #[test]
    fn infinite_overprovisioning_skips_a_dead_tier() {
        let mut c = fleet();
        c[0].healthy = false;
        let p = Topology::new(RoundRobin::new(), caller())
            .with_overprovisioning(f64::INFINITY)
            .with_panic_threshold(0.0)
            .build(&c);
        let n = counts(&*p, 6, 100, &PickContext::default());
        assert_eq!(n[1] + n[2], 100, "{n:?}");
    }

    #[test]
    fn topology_keys_parse() {
        let keys = ["kubernetes.io/hostname", "topology.kubernetes.io/zone", "topology.kubernetes.io/region", "*"];
        let levels: Vec<_> = keys.iter().filter_map(|k| Level::from_topology_key(k)).collect();
        assert_eq!(levels, Level::DEFAULT.to_vec());
        assert_eq!(Level::from_topology_key("bogus"), None);
    }
}
