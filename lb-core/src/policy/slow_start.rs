//! Slow start: a newly connected endpoint's share of traffic ramps up over a window.
//!
//! A fresh instance — cold caches, a JIT still compiling, connection pools still empty — is slower
//! than its peers at first, but a load-aware policy sees it with nothing in flight and no latency
//! history and sends it more than its share (least-request most of all). Envoy's slow start
//! (`slow_start_config` of its round robin and least-request balancers) scales such an endpoint's
//! weight by `max(min_weight, (t / window)^(1 / aggression))`, `t` being the time since it became
//! usable (at least one second), until the window ends. [`SlowStart`] does the same for any inner
//! policy: a pick that lands on a warming endpoint is kept with probability equal to that factor and
//! otherwise made again (up to [`SlowStart::MAX_ATTEMPTS`] picks, then the last one stands), so the
//! endpoint gets about the factor's fraction of what the inner policy would give it.
//!
//! An endpoint warms from the moment its current connection was established
//! ([`Candidate::ready_since`]); an endpoint that reconnects warms again, as Envoy's does after it
//! returns to health. While every healthy endpoint is warming — a pool that has just started —
//! nothing is held back: there is nothing colder to prefer. Outside the windows a pick costs one
//! comparison more than the inner policy's. Hashing policies are refused ([`SlowStart::new`] fails
//! on one, as does the C ABI's `slow_start_ms`): a re-pick would break the affinity they exist for.

use std::time::Duration;

use tokio::time::Instant;

use super::rng::SharedRng;
use super::{Candidate, PickContext, Picker, Policy};

/// Picks made before a warming endpoint is accepted anyway.
const MAX_ATTEMPTS: usize = 4;

/// Wraps a policy so that newly connected endpoints ramp up over a window (Envoy's slow start).
///
/// A pick that lands on an endpoint connected `t` ago is kept with probability
/// `max(min_weight, (t / window)^(1 / aggression))` (`t` at least one second) and otherwise made
/// again, at most [`SlowStart::MAX_ATTEMPTS`] picks in all; nothing is held back while every healthy
/// endpoint is warming. A hashing policy cannot be wrapped: a re-pick would break its affinity.
#[derive(Debug)]
pub struct SlowStart<P> {
    inner: P,
    window: Duration,
    aggression: f64,
    min_weight: f64,
}

impl<P: Policy> SlowStart<P> {
    /// Picks made before a warming endpoint is accepted anyway.
    pub const MAX_ATTEMPTS: usize = MAX_ATTEMPTS;

    /// Ramps endpoints up linearly over `window` (Envoy's default aggression 1.0), never below
    /// 10 % of their share (Envoy's default `min_weight_percent`).
    ///
    /// Fails when `inner` is a hashing policy ([`Policy::is_hashing`]: [`RingHash`](super::RingHash),
    /// [`Maglev`](super::Maglev), or a [`Topology`](super::Topology) around one): re-picking a key's
    /// endpoint would send the key elsewhere while it warms, which is what those policies exist to
    /// prevent. Envoy offers slow start only on round robin and least request for the same reason.
    pub fn new(inner: P, window: Duration) -> Result<Self, SlowStartError> {
        if inner.is_hashing() {
            return Err(SlowStartError { inner: format!("{inner:?}") });
        }
        Ok(SlowStart {
            inner,
            window,
            aggression: 1.0,
            min_weight: 0.1,
        })
    }

    /// The ramp's shape: the factor is `(t / window)^(1 / aggression)`; above 1 an endpoint gets
    /// traffic sooner, below 1 later. Values that are not finite and positive are ignored.
    pub fn aggression(mut self, aggression: f64) -> Self {
        if aggression.is_finite() && aggression > 0.0 {
            self.aggression = aggression;
        }
        self
    }

    /// The smallest fraction of its share a warming endpoint gets (clamped to 0..=1).
    pub fn min_weight(mut self, fraction: f64) -> Self {
        if fraction.is_finite() {
            self.min_weight = fraction.clamp(0.0, 1.0);
        }
        self
    }
}

/// [`SlowStart::new`] was given a hashing policy.
#[derive(Debug)]
pub struct SlowStartError {
    inner: String,
}

impl std::fmt::Display for SlowStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.inner.split([' ', '{', '(']).next().unwrap_or("");
        write!(
            f,
            "slow start cannot wrap the hashing policy {name}: its re-picks would send a key to another endpoint and break the affinity"
        )
    }
}

impl std::error::Error for SlowStartError {}

impl<P: Policy> Policy for SlowStart<P> {
    fn rebuild_every(&self) -> Option<std::time::Duration> {
        self.inner.rebuild_every()
    }

    fn is_topology_aware(&self) -> bool {
        self.inner.is_topology_aware()
    }

    fn is_hashing(&self) -> bool {
        self.inner.is_hashing()
    }

    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let inner = self.inner.build(candidates);
        let ends: Vec<Option<Instant>> = candidates.iter().map(|c| c.ready_since.map(|t| t + self.window)).collect();
        // Warming applies between the first healthy endpoint's end of window (before it, every
        // healthy endpoint is warming) and the last one's (after it, none is).
        let mut first_done: Option<Instant> = None;
        let mut last_done: Option<Instant> = None;
        let mut any_settled = false;
        for (c, end) in candidates.iter().zip(&ends) {
            if !c.healthy {
                continue;
            }
            match end {
                None => any_settled = true,
                Some(end) => {
                    first_done = Some(first_done.map_or(*end, |f| f.min(*end)));
                    last_done = Some(last_done.map_or(*end, |l| l.max(*end)));
                }
            }
        }
        match last_done {
            None => inner,
            Some(last_done) => Box::new(SlowStartPicker {
                inner,
                starts: candidates.iter().map(|c| c.ready_since).collect(),
                window: self.window,
                exponent: 1.0 / self.aggression,
                min_weight: self.min_weight,
                // With an endpoint that never warms (no connection time), warming applies at once.
                first_done: if any_settled { None } else { first_done },
                last_done,
                rng: SharedRng::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct SlowStartPicker {
    inner: Box<dyn Picker>,
    starts: Vec<Option<Instant>>,
    window: Duration,
    exponent: f64,
    min_weight: f64,
    first_done: Option<Instant>,
    last_done: Instant,
    rng: SharedRng,
}

impl SlowStartPicker {
    /// The fraction of its share endpoint `i` gets at `now` (1 outside its window).
    fn factor(&self, i: usize, now: Instant) -> f64 {
        let Some(Some(start)) = self.starts.get(i) else { return 1.0 };
        let elapsed = now.saturating_duration_since(*start);
        if elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.max(Duration::from_secs(1)).as_secs_f64() / self.window.as_secs_f64();
        t.min(1.0).powf(self.exponent).max(self.min_weight)
    }

    fn accept(&self, factor: f64) -> bool {
        // A uniform draw in [0, 1) with 53 bits.
        ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < factor
    }
}

impl Picker for SlowStartPicker {
    fn pick(&self, ctx: &PickContext) -> Option<usize> {
        self.pick_at(ctx, Instant::now())
    }

    fn pick_at(&self, ctx: &PickContext, now: Instant) -> Option<usize> {
        let mut i = self.inner.pick_at(ctx, now)?;
        if now >= self.last_done || self.first_done.is_some_and(|f| now < f) {
            return Some(i);
        }
        for _ in 1..MAX_ATTEMPTS {
            let f = self.factor(i, now);
            if f >= 1.0 || self.accept(f) {
                return Some(i);
            }
            i = self.inner.pick_at(ctx, now)?;
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RoundRobin;
    use crate::Endpoint;

    fn candidates(starts: &[Option<Instant>]) -> Vec<Candidate> {
        starts
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = Candidate::new(Endpoint::new(([10, 0, 0, i as u8 + 1], 80).into()));
                c.ready_since = *s;
                c
            })
            .collect()
    }

    fn shares(p: &dyn Picker, n: usize, at: Instant, picks: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for _ in 0..picks {
            counts[p.pick_at(&PickContext::default(), at).expect("a healthy candidate")] += 1;
        }
        counts.iter().map(|c| *c as f64 / picks as f64).collect()
    }

    #[test]
    fn a_new_endpoint_ramps_up_over_the_window() {
        // Instants before `now` may not exist on a freshly booted machine: count forwards.
        let old = Some(Instant::now());
        let t0 = Instant::now() + Duration::from_secs(3600);
        let window = Duration::from_secs(60);
        let c = candidates(&[old, old, old, Some(t0)]);
        let p = SlowStart::new(RoundRobin::new(), window).expect("not hashing").build(&c);
        // At 1 s: factor max(0.1, 1/60) = 0.1. Round robin re-picks land on the next endpoint, so
        // the newcomer keeps about 0.1 of its 25 % (plus a sliver from truncated re-picks).
        let early = shares(&*p, 4, t0 + Duration::from_secs(1), 40_000)[3];
        assert!(early > 0.015 && early < 0.045, "at 1 s: {early}");
        // Half way: factor 0.5 → about 12.5 %.
        let half = shares(&*p, 4, t0 + Duration::from_secs(30), 40_000)[3];
        assert!(half > 0.10 && half < 0.16, "at 30 s: {half}");
        // After the window: the full 25 %.
        let after = shares(&*p, 4, t0 + Duration::from_secs(61), 40_000)[3];
        assert!((after - 0.25).abs() < 0.005, "after the window: {after}");
        assert!(early < half && half < after);
    }

    #[test]
    fn nothing_is_held_back_while_every_endpoint_is_warming() {
        let t0 = Instant::now();
        let c = candidates(&[Some(t0), Some(t0 + Duration::from_millis(5)), Some(t0)]);
        let p = SlowStart::new(RoundRobin::new(), Duration::from_secs(30)).expect("not hashing").build(&c);
        let s = shares(&*p, 3, t0 + Duration::from_secs(2), 30_000);
        assert!(s.iter().all(|x| (x - 1.0 / 3.0).abs() < 0.01), "a starting pool is balanced as usual: {s:?}");
    }

    #[test]
    fn aggression_and_min_weight_shape_the_ramp() {
        let old = Some(Instant::now());
        let t0 = Instant::now() + Duration::from_secs(3600);
        let c = candidates(&[old, Some(t0)]);
        let at = t0 + Duration::from_secs(25); // t = 0.25 of a 100 s window
        let linear = SlowStart::new(RoundRobin::new(), Duration::from_secs(100)).expect("not hashing").build(&c);
        let eager = SlowStart::new(RoundRobin::new(), Duration::from_secs(100)).expect("not hashing").aggression(4.0).build(&c);
        let lazy = SlowStart::new(RoundRobin::new(), Duration::from_secs(100)).expect("not hashing").aggression(0.25).min_weight(0.0).build(&c);
        let (l, e, z) = (shares(&*linear, 2, at, 20_000)[1], shares(&*eager, 2, at, 20_000)[1], shares(&*lazy, 2, at, 20_000)[1]);
        // Factors 0.25, 0.25^(1/4) ≈ 0.71 and 0.25^4 ≈ 0.004.
        assert!(z < l && l < e, "lazy {z} < linear {l} < eager {e}");
        assert!(z < 0.02, "min weight 0 lets the factor fall to ~0: {z}");
    }

    #[test]
    fn without_connection_times_the_inner_picker_is_used_as_is() {
        let c = candidates(&[None, None]);
        let p = SlowStart::new(RoundRobin::new(), Duration::from_secs(30)).expect("not hashing").build(&c);
        assert!(!format!("{p:?}").contains("SlowStartPicker"), "{p:?}");
        let none = candidates(&[]);
        assert_eq!(SlowStart::new(RoundRobin::new(), Duration::from_secs(30)).expect("not hashing").build(&none).pick(&PickContext::default()), None);
    }

    #[test]
    fn hashing_policies_are_refused_whatever_wraps_them() {
        use crate::policy::{Maglev, P2c, RingHash, Topology};
        use crate::{Locality, Policy};
        let window = Duration::from_secs(30);
        let here = Locality::unknown().with_zone("a");
        let refused: Vec<(&str, Box<dyn Policy>)> = vec![
            ("RingHash", Box::new(RingHash::new())),
            ("Maglev", Box::new(Maglev::new())),
            ("Topology", Box::new(Topology::new(RingHash::new(), here.clone()))),
            ("Topology", Box::new(std::sync::Arc::new(Topology::new(Maglev::new(), here.clone())))),
        ];
        for (name, inner) in refused {
            let err = SlowStart::new(inner, window).expect_err("a hashing policy");
            let message = err.to_string();
            assert!(message.contains(name) && message.contains("affinity"), "{message}");
        }
        assert!(SlowStart::new(P2c::peak_ewma(), window).is_ok());
        assert!(SlowStart::new(Topology::new(RoundRobin::new(), here), window).is_ok());
    }
}
