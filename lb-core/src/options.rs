//! The balancing options every face reads: policy, locality, waiting, connections, outliers.
//!
//! `lb-hyper`'s `LbClient`, `lb-tonic`'s `LbChannel` and the C ABI's `options_json` are all built
//! from one [`Options`]; a [`PoolLayer`](crate::pool::PoolLayer) takes one too. Setters only record;
//! [`Options::validate`] (which every `build()` calls) rejects combinations that cannot mean what
//! they say, so an option is never silently ignored.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::Wait;
use crate::discover::BoxDiscover;
use crate::endpoint::Locality;
use crate::load::EwmaConfig;
use crate::policy::{P2c, Policy, Topology};
use crate::pool::{Connect, HealthCheck, OutlierConfig, Pool, PoolConfig};

/// Deterministic subsetting: connect to only `size` endpoints, chosen for `client_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    /// How many endpoints each client connects to.
    pub size: usize,
    /// This client instance's stable id (a pod name).
    pub client_id: String,
}

/// The balancing options; see the [module docs](self).
#[derive(Clone)]
pub struct Options {
    policy: Option<Arc<dyn Policy>>,
    locality: Option<Locality>,
    wait: Wait,
    max_reroutes: u8,
    connect_timeout: Duration,
    outlier: Option<OutlierConfig>,
    ewma: EwmaConfig,
    subset: Option<Subset>,
    overload_penalty_cap: Option<Duration>,
    limits: crate::balance::Limits,
    metrics_endpoint_labels: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: None,
            locality: None,
            wait: Wait::default(),
            max_reroutes: crate::Balance::<(), ()>::DEFAULT_MAX_REROUTES,
            connect_timeout: PoolConfig::default().connect_timeout,
            outlier: Some(OutlierConfig::default()),
            ewma: EwmaConfig::default(),
            subset: None,
            overload_penalty_cap: PoolConfig::default().overload_penalty_cap,
            limits: crate::balance::Limits::default(),
            metrics_endpoint_labels: false,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("policy", &self.policy)
            .field("locality", &self.locality)
            .field("wait", &self.wait)
            .field("max_reroutes", &self.max_reroutes)
            .field("connect_timeout", &self.connect_timeout)
            .field("outlier", &self.outlier)
            .field("ewma", &self.ewma)
            .field("subset", &self.subset)
            .field("overload_penalty_cap", &self.overload_penalty_cap)
            .field("limits", &self.limits)
            .field("metrics_endpoint_labels", &self.metrics_endpoint_labels)
            .finish()
    }
}

/// Why a set of [`Options`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionsError {
    message: String,
}

impl OptionsError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        OptionsError {
            message: message.into(),
        }
    }
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OptionsError {}

impl Options {
    /// The defaults: P2C PeakEWMA, a 3 s wait for an endpoint, outlier detection on.
    pub fn new() -> Self {
        Options::default()
    }

    /// The balancing policy (default `P2c::peak_ewma()`).
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// The caller's locality: the policy is wrapped in [`Topology`], which prefers endpoints on the
    /// same node, then zone, then region, spilling over as Envoy does. A policy that is already
    /// topology-aware is refused with it (give the locality to that `Topology` instead).
    pub fn locality(mut self, locality: Locality) -> Self {
        self.locality = Some(locality);
        self
    }

    /// The longest a request waits for an endpoint that can take it (default 3 s). It fails after
    /// that as unavailable (gRPC `UNAVAILABLE`, HTTP 503). A request does not wait at all while
    /// every endpoint's last connection attempt has failed, unless [`Options::wait_for_ready`].
    pub fn endpoint_wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait.timeout = timeout;
        self
    }

    /// Renamed [`Options::endpoint_wait_timeout`].
    #[deprecated(note = "renamed `endpoint_wait_timeout`: it is the longest wait for an endpoint")]
    pub fn failfast(self, timeout: Duration) -> Self {
        self.endpoint_wait_timeout(timeout)
    }

    /// Whether a request waits out [`Options::endpoint_wait_timeout`] even while every endpoint is
    /// failing to connect (gRPC's wait-for-ready; default `false`: it fails at once, naming the
    /// last connection error).
    pub fn wait_for_ready(mut self, on: bool) -> Self {
        self.wait.wait_for_ready = on;
        self
    }

    /// How many times a request that never reached its endpoint is sent to another (default 3).
    pub fn max_reroutes(mut self, n: u8) -> Self {
        self.max_reroutes = n;
        self
    }

    /// Gives up on a connection attempt after this long (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Passive outlier detection (default on with [`OutlierConfig::default`]); `None` disables it.
    pub fn outlier_detection(mut self, config: Option<OutlierConfig>) -> Self {
        self.outlier = config;
        self
    }

    /// The latency estimate's tuning: the decay time constant τ (default 10 s, linkerd's) and the
    /// estimate before an endpoint's first answer (default 30 ms). A shorter τ forgets a latency
    /// spike sooner at the cost of probing slow endpoints more often.
    pub fn peak_ewma_config(mut self, config: EwmaConfig) -> Self {
        self.ewma = config;
        self
    }

    /// Deterministic subsetting for large fleets: connect to only `size` of the target's endpoints,
    /// chosen by rendezvous hashing on `client_id` (see [`crate::discover::subsetting`]). Give each
    /// client instance its own stable id (a pod name): clients sharing an id share a subset, and
    /// across many clients every endpoint gets about `clients · size / endpoints` of them. Removing
    /// an endpoint replaces at most one member of a subset. `size` 0 turns it off.
    pub fn subset(mut self, size: usize, client_id: impl Into<String>) -> Self {
        self.subset = (size > 0).then(|| Subset {
            size,
            client_id: client_id.into(),
        });
        self
    }

    /// The longest an endpoint is kept out of picks after answering that it is overloaded —
    /// gRPC `RESOURCE_EXHAUSTED` (for `grpc-retry-pushback-ms`, else 1 s), HTTP 429 or 503 with
    /// `Retry-After` (for that long) — default 30 s; `None` ignores such answers. At most the
    /// outlier detector's share of the endpoints is out at once.
    pub fn overload_penalty_cap(mut self, cap: Option<Duration>) -> Self {
        self.overload_penalty_cap = cap;
        self
    }

    /// Circuit breaking: at most `n` requests of the target in flight at once (to the end of their
    /// responses); more fail at once (gRPC `RESOURCE_EXHAUSTED`, HTTP 503). Default unbounded.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.limits.max_in_flight = Some(n);
        self
    }

    /// Circuit breaking: an endpoint with `n` requests in flight is not picked; when every
    /// endpoint the pick tries is at that bound, the request fails at once. Default unbounded.
    pub fn max_in_flight_per_endpoint(mut self, n: u32) -> Self {
        self.limits.max_in_flight_per_endpoint = Some(n);
        self
    }

    /// Circuit breaking: at most `n` requests wait for an endpoint at once; more fail at once.
    /// Default unbounded.
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.limits.max_waiting = Some(n);
        self
    }

    /// The circuit-breaker bounds.
    pub fn limits(&self) -> crate::balance::Limits {
        self.limits
    }

    /// Labels the per-attempt metrics (`grpc.client.attempt.*`) with the endpoint's address,
    /// `lb.endpoint` (default off: a latency histogram per status per endpoint multiplies series by
    /// the fleet's size). The per-endpoint `lb_endpoint_*` series are kept either way; see
    /// [`crate::metrics`].
    pub fn metrics_endpoint_labels(mut self, on: bool) -> Self {
        self.metrics_endpoint_labels = on;
        self
    }

    /// How requests wait for an endpoint.
    pub fn wait(&self) -> Wait {
        self.wait
    }

    /// The reroute limit.
    pub fn reroutes(&self) -> u8 {
        self.max_reroutes
    }

    /// The caller's locality, if given.
    pub fn caller_locality(&self) -> Option<&Locality> {
        self.locality.as_ref()
    }

    /// The subsetting configuration, if on.
    pub fn subsetting(&self) -> Option<&Subset> {
        self.subset.as_ref()
    }

    /// Checks that the options mean what they say: a topology-aware policy together with a
    /// separate [`Options::locality`] would prefer nearby endpoints twice over, on two sets of
    /// thresholds; a subset needs a client id.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.locality.is_some() && self.policy.as_ref().is_some_and(|p| p.is_topology_aware()) {
            return Err(OptionsError::new(
                "the policy is already topology-aware and a locality was given too: give the caller's locality to \
                 the Topology policy, or give a plain policy with the locality",
            ));
        }
        if let Some(s) = &self.subset {
            if s.client_id.is_empty() {
                return Err(OptionsError::new(
                    "subsetting needs a non-empty client id (this instance's stable name, e.g. its pod name)",
                ));
            }
        }
        Ok(())
    }

    /// The policy to run: the configured one (default P2C PeakEWMA), inside [`Topology`] when a
    /// locality was given.
    pub fn build_policy(&self) -> Arc<dyn Policy> {
        let policy: Arc<dyn Policy> = match &self.policy {
            Some(p) => Arc::clone(p),
            None => Arc::new(P2c::peak_ewma()),
        };
        match &self.locality {
            Some(l) => Arc::new(Topology::new(policy, l.clone())),
            None => policy,
        }
    }

    /// The pool configuration for a target named `name`.
    pub fn pool_config(&self, name: &str) -> PoolConfig {
        let mut config = PoolConfig::new(name);
        config.connect_timeout = self.connect_timeout;
        config.outlier = self.outlier.clone();
        config.ewma = self.ewma;
        config.overload_penalty_cap = self.overload_penalty_cap;
        config.metrics_endpoint_labels = self.metrics_endpoint_labels;
        config
    }

    /// Applies subsetting, when configured, to a discovery stream.
    pub fn discover(&self, discover: BoxDiscover) -> BoxDiscover {
        match &self.subset {
            Some(s) => crate::discover::subset(discover, s.size, &s.client_id),
            None => discover,
        }
    }

    /// Validates the options and spawns the pool of a target named `name` on the current Tokio
    /// runtime. Fails, rather than panicking, outside a runtime.
    pub fn spawn_pool<K: Connect>(
        &self,
        name: &str,
        discover: BoxDiscover,
        connector: K,
        health: Option<Arc<dyn HealthCheck<K::Connection>>>,
    ) -> Result<Pool<K::Connection>, OptionsError> {
        self.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(OptionsError::new(format!(
                "`{name}`: a balancer must be built inside a Tokio runtime (its pool runs as a task on it); \
                 call build() from async code or inside Runtime::enter()"
            )));
        }
        Ok(Pool::spawn_with_health(
            self.discover(discover),
            connector,
            self.build_policy(),
            self.pool_config(name),
            health,
        ))
    }

    /// A [`Balance`](crate::Balance) over `pool` that waits and reroutes as configured.
    pub fn balance<C, Req>(&self, pool: Pool<C>) -> crate::Balance<C, Req> {
        crate::Balance::new(pool)
            .wait(self.wait)
            .max_reroutes(self.max_reroutes)
            .limits(self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RoundRobin;

    #[test]
    fn a_locality_with_a_topology_policy_is_refused() {
        let here = Locality::unknown().with_zone("a");
        let o = Options::new().policy(Topology::new(RoundRobin::new(), here.clone())).locality(here.clone());
        let err = o.validate().expect_err("twice topology-aware");
        assert!(err.to_string().contains("already topology-aware"), "{err}");
        // Either one alone is fine, and a locality wraps the plain policy once.
        assert!(Options::new().policy(Topology::new(RoundRobin::new(), here.clone())).validate().is_ok());
        let o = Options::new().policy(RoundRobin::new()).locality(here);
        assert!(o.validate().is_ok());
        assert!(o.build_policy().is_topology_aware());
        assert!(!Options::new().build_policy().is_topology_aware());
    }

    #[test]
    fn subsetting_needs_an_id() {
        assert!(Options::new().subset(3, "").validate().is_err());
        assert!(Options::new().subset(0, "").validate().is_ok(), "size 0 is off");
        assert_eq!(Options::new().subset(3, "pod-1").subsetting().map(|s| s.size), Some(3));
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error() {
        let err = Options::new()
            .spawn_pool("t", crate::discover::fixed(vec![]), crate::test_util::TestConnector::with_connection(|_| ()), None)
            .expect_err("no runtime here");
        assert!(err.to_string().contains("inside a Tokio runtime"), "{err}");
    }
}
