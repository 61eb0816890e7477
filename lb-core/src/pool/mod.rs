//! The pool: one background task per target that owns the endpoints and publishes picker snapshots.
//!
//! [`Pool::spawn`] starts a task that
//! - applies discovery updates as they arrive, whether or not requests flow (tower's balancer only
//!   applies them inside `poll_ready`, so an idle balancer never learns anything; linkerd added a queue
//!   to fix that);
//! - runs one state machine per endpoint:
//!   `Idle → Connecting → Ready → Ejected(backoff) → Draining` (see [`EndpointPhase`]), opening
//!   connections through a [`Connect`] implementation that a protocol crate provides;
//! - ejects outliers passively (consecutive failures, failure rate) with a growing but bounded ejection
//!   time and a cap on the ejected fraction (see [`OutlierConfig`]), and, when a [`HealthCheck`] is
//!   configured, actively;
//! - publishes after every batch of changes an immutable [`Snapshot`] through an atomic pointer swap,
//!   so request paths read the current picker without taking a lock.
//!
//! The task stops when the last [`Pool`] handle is dropped. Requests already in flight keep their own
//! clone of the connection and finish normally.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::BoxStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::discover::BoxDiscover;
use crate::endpoint::Endpoint;
use crate::load::{EwmaConfig, Load, LoadGuard};
use crate::metrics::TargetSeries;
use crate::policy::{PickContext, Picker, Policy};
use crate::BoxError;

mod connect_fn;
mod layer;
mod outlier;
mod task;

pub use self::connect_fn::{connect_fn, ConnectFn};
pub use self::layer::{MakeDiscover, PoolLayer};
pub use self::outlier::OutlierConfig;

/// Opens connections to endpoints; implemented by protocol crates.
///
/// A connection is a cheap `Clone` handle (hyper's `SendRequest`, a tonic `Channel`): every request
/// clones it, so no request waits on another. The close signal given to [`Connected::new`] tells the pool when the
/// connection can no longer carry requests, so it reconnects without waiting for a request to fail.
pub trait Connect: Send + Sync + 'static {
    /// The per-endpoint connection handle.
    type Connection: Clone + Send + Sync + 'static;
    /// Why a connection could not be opened.
    type Error: Into<BoxError>;
    /// The connect future.
    type Future: Future<Output = Result<Connected<Self::Connection>, Self::Error>> + Send + 'static;

    /// Opens a connection to `endpoint`.
    fn connect(&self, endpoint: &Endpoint) -> Self::Future;
}

/// A freshly opened connection and the signal of its end.
pub struct Connected<C> {
    pub(crate) connection: C,
    pub(crate) closed: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl<C> Connected<C> {
    /// A connection whose end is signalled by `closed` completing.
    pub fn new(connection: C, closed: impl Future<Output = ()> + Send + 'static) -> Self {
        Connected {
            connection,
            closed: Box::pin(closed),
        }
    }

    /// A connection with no end signal (it is replaced only when its endpoint changes or is ejected).
    pub fn without_close_signal(connection: C) -> Self {
        Connected::new(connection, std::future::pending())
    }

    /// Splits into the connection and its end signal (for tests and wrappers of a connector).
    pub fn into_parts(self) -> (C, Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        (self.connection, self.closed)
    }
}

impl<C: fmt::Debug> fmt::Debug for Connected<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected").field("connection", &self.connection).finish()
    }
}

/// Active health checking, e.g. `grpc.health.v1.Health/Watch`.
///
/// When configured, an endpoint takes requests only after its stream first yields `true` (gRPC A17),
/// and stops taking them whenever it yields `false`. The stream is dropped when the connection is
/// replaced or the endpoint removed. A stream that ends leaves the last reported health in place.
pub trait HealthCheck<C>: Send + Sync + 'static {
    /// Watches the health of `endpoint` over `connection`.
    fn watch(&self, endpoint: &Endpoint, connection: &C) -> BoxStream<'static, bool>;
}

/// The phase of one endpoint's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointPhase {
    /// Known, with no connection wanted yet (discovery reports it as terminating).
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected; takes requests when its health check (if any) says so.
    Ready,
    /// Out of rotation until a deadline: connection failures (reconnect with exponential backoff) or
    /// outlier ejection (growing ejection time).
    Ejected,
    /// Removed by discovery or terminating: no new requests, in-flight ones finish.
    Draining,
}

/// Tunables of a [`Pool`].
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// A name for logs and metric labels, usually the target URI.
    pub target: Arc<str>,
    /// Gives up on one connection attempt after this long.
    pub connect_timeout: Duration,
    /// First reconnect delay after a failed attempt; doubles per failure (±20% jitter).
    pub reconnect_backoff: Duration,
    /// The longest reconnect delay.
    pub max_reconnect_backoff: Duration,
    /// Passive outlier detection; `None` disables it.
    pub outlier: Option<OutlierConfig>,
    /// PeakEWMA tuning.
    pub ewma: EwmaConfig,
    /// How long a removed endpoint with requests in flight is tracked before being forgotten.
    pub drain_timeout: Duration,
    /// The longest an endpoint is kept out of picks for answering that it is overloaded
    /// (`RESOURCE_EXHAUSTED`, HTTP 429/503 with `Retry-After`); `None` ignores such answers.
    pub overload_penalty_cap: Option<Duration>,
    /// Whether the per-attempt metrics carry an `lb.endpoint` label (see [`crate::metrics`]).
    pub metrics_endpoint_labels: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            target: Arc::from("unnamed"),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(100),
            max_reconnect_backoff: Duration::from_secs(10),
            outlier: Some(OutlierConfig::default()),
            ewma: EwmaConfig::default(),
            drain_timeout: Duration::from_secs(60),
            overload_penalty_cap: Some(Duration::from_secs(30)),
            metrics_endpoint_labels: false,
        }
    }
}

impl PoolConfig {
    /// The default configuration named after `target`.
    pub fn new(target: impl AsRef<str>) -> Self {
        PoolConfig {
            target: Arc::from(target.as_ref()),
            ..PoolConfig::default()
        }
    }
}

/// One entry of a [`Snapshot`]: an endpoint the picker may refer to.
#[derive(Debug)]
pub struct Entry<C> {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Its live load.
    pub load: Arc<Load>,
    /// Its connection when it has one.
    pub connection: Option<C>,
    /// Its phase when the snapshot was taken.
    pub phase: EndpointPhase,
    /// Whether the picker may choose it.
    pub healthy: bool,
}

/// An immutable view of the pool, published atomically after every change.
pub struct Snapshot<C> {
    entries: Vec<Entry<C>>,
    picker: Box<dyn Picker>,
    version: u64,
    initialized: bool,
    healthy: usize,
    connect_failing: bool,
    last_connect_error: Option<Arc<str>>,
    discovery_error: Option<Arc<str>>,
}

impl<C> fmt::Debug for Snapshot<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("initialized", &self.initialized)
            .field("entries", &self.entries.len())
            .field("healthy", &self.healthy)
            .field("connect_failing", &self.connect_failing)
            .finish()
    }
}

impl<C> Snapshot<C> {
    fn empty() -> Self {
        Snapshot {
            entries: Vec::new(),
            picker: Box::new(crate::policy::Empty),
            version: 0,
            initialized: false,
            healthy: 0,
            connect_failing: false,
            last_connect_error: None,
            discovery_error: None,
        }
    }

    /// Every endpoint the picker knows about (draining ones excluded).
    pub fn entries(&self) -> &[Entry<C>] {
        &self.entries
    }

    /// Increases with every publication.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True once discovery delivered a full set.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// The picker the policy built for this snapshot (e.g. to read the weights it uses).
    pub fn picker(&self) -> &dyn Picker {
        &*self.picker
    }

    /// How many endpoints can take requests.
    pub fn healthy(&self) -> usize {
        self.healthy
    }

    /// True when endpoints are known but the last connection attempt to every one of them failed
    /// (gRPC's `TRANSIENT_FAILURE`): requests fail at once instead of waiting for an endpoint,
    /// unless they ask to wait ([`Wait::wait_for_ready`](crate::balance::Wait)).
    pub fn is_connect_failing(&self) -> bool {
        self.connect_failing
    }

    /// The most recent connection error of any endpoint of the pool (`connection refused`, a TLS
    /// failure, a connect timeout), kept after the endpoint recovers so a later failure can say
    /// what went wrong last.
    pub fn last_connect_error(&self) -> Option<&Arc<str>> {
        self.last_connect_error.as_ref()
    }

    /// The error discovery last reported, while it has delivered nothing since (a registry that
    /// is unreachable, refuses the credentials, or filters the answer by ACLs). The pool keeps its
    /// last set meanwhile; this says why that set may be empty or old.
    pub fn discovery_error(&self) -> Option<&Arc<str>> {
        self.discovery_error.as_ref()
    }
}

impl<C: Clone> Snapshot<C> {
    /// Picks an endpoint and starts tracking a request against it. Lock-free and allocation-free
    /// (apart from whatever cloning the connection handle costs).
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Option<Picked<C>> {
        // One clock read serves the policy (PeakEWMA) and the request's start time.
        let now = Instant::now();
        let i = self.picker.pick_at(ctx, now)?;
        let entry = self.entries.get(i)?;
        let connection = entry.connection.clone()?;
        Some(Picked {
            endpoint: Arc::clone(&entry.endpoint),
            guard: entry.load.start_at(now),
            connection,
        })
    }
}

/// The result of a pick: where to send, over what, and the guard that counts the request.
#[derive(Debug)]
pub struct Picked<C> {
    /// The chosen endpoint.
    pub endpoint: Arc<Endpoint>,
    /// A clone of its connection.
    pub connection: C,
    /// Counts the request as in flight until dropped; set its outcome before dropping.
    pub guard: LoadGuard,
}

pub(crate) struct Shared<C> {
    snapshot: ArcSwap<Snapshot<C>>,
    version: watch::Sender<u64>,
    config: PoolConfig,
    series: Arc<TargetSeries>,
}

struct Handle<C> {
    shared: Arc<Shared<C>>,
    // Dropping the last handle drops this sender, which stops the background task.
    _shutdown: oneshot::Sender<()>,
}

/// A handle to a target's pool. Cheap to clone; the background task lives as long as any handle.
pub struct Pool<C> {
    handle: Arc<Handle<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.handle.shared.config.target)
            .field("snapshot", &**self.handle.shared.snapshot.load())
            .finish()
    }
}

impl<C: Clone + Send + Sync + 'static> Pool<C> {
    /// Spawns the pool's background task on the current Tokio runtime.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn spawn<K, P>(discover: BoxDiscover, connector: K, policy: P, config: PoolConfig) -> Self
    where
        K: Connect<Connection = C>,
        P: Policy,
    {
        Self::spawn_with_health(discover, connector, policy, config, None)
    }

    /// Like [`Pool::spawn`], with active health checking.
    pub fn spawn_with_health<K, P>(
        discover: BoxDiscover,
        connector: K,
        policy: P,
        config: PoolConfig,
        health: Option<Arc<dyn HealthCheck<C>>>,
    ) -> Self
    where
        K: Connect<Connection = C>,
        P: Policy,
    {
        let (version, _) = watch::channel(0);
        crate::metrics::describe();
        let series = Arc::new(TargetSeries::new(&config.target, config.metrics_endpoint_labels));
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            version,
            config,
            series,
        });
        let (tx, rx) = oneshot::channel();
        let task = task::PoolTask::new(Arc::clone(&shared), discover, connector, Box::new(policy), health, rx);
        tokio::spawn(task.run());
        Pool {
            handle: Arc::new(Handle { shared, _shutdown: tx }),
        }
    }
}

impl<C> Pool<C> {
    /// The current snapshot. Lock-free; hold it only briefly (it pins that snapshot's memory).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot<C>>> {
        self.handle.shared.snapshot.load()
    }

    /// The target name given in [`PoolConfig::target`].
    pub fn target(&self) -> &Arc<str> {
        &self.handle.shared.config.target
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.handle.shared.config
    }

    /// The target's metric series.
    pub(crate) fn series(&self) -> &TargetSeries {
        &self.handle.shared.series
    }

    /// True once discovery delivered a full set.
    pub fn is_initialized(&self) -> bool {
        self.snapshot().is_initialized()
    }

    /// A receiver that changes with every published snapshot (for waiting on membership).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.handle.shared.version.subscribe()
    }

    /// Waits until discovery delivered a full set and at least one endpoint can take requests, or
    /// until `timeout`. Returns whether the pool is ready.
    pub async fn ready_timeout(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.is_initialized() && s.healthy() > 0).await
    }

    /// Waits until discovery delivered its first full set (possibly empty), or until `timeout`.
    /// Returns whether it has.
    pub async fn initialized_timeout(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.is_initialized()).await
    }

    async fn wait_for(&self, timeout: Duration, done: impl Fn(&Snapshot<C>) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut rx = self.subscribe();
        loop {
            if done(&self.snapshot()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the task ended (it never does while a handle exists).
                _ => return false,
            }
        }
    }
}

impl<C: Clone> Pool<C> {
    /// Picks an endpoint from the current snapshot (see [`Snapshot::pick`]).
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Option<Picked<C>> {
        self.handle.shared.snapshot.load().pick(ctx)
    }
}

#[cfg(test)]
mod tests;
