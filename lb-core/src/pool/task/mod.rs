//! The pool's background task: discovery, connections, health, outliers, and snapshot publication.

mod outliers;
mod publish;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures_util::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Connect, Connected, EndpointPhase, HealthCheck, Shared};
use crate::backoff::Backoff;
use crate::discover::{BoxDiscover, Diff, EndpointSet};
use crate::endpoint::{Endpoint, EndpointId, EndpointState};
use crate::load::Load;
use crate::metrics::{self as m, EndpointGauges};
use crate::policy::Policy;
use crate::BoxError;

type ConnectResult<C> = (EndpointId, u64, Result<Connected<C>, BoxError>);
type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A connection that lived shorter than this before closing counts as a failed attempt, so a server
/// that accepts and immediately closes is retried with backoff rather than in a tight loop.
const MIN_HEALTHY_CONNECTION: Duration = Duration::from_secs(1);
/// Publish at least this often while a burst of events is being applied.
const MAX_EVENTS_PER_PUBLISH: usize = 256;
/// How often the per-endpoint gauges (in flight, latency estimate) are sampled between publications.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

enum Phase<C> {
    Idle,
    Connecting,
    Ready(C),
    Ejected {
        conn: Option<C>,
        until: Instant,
        outlier: bool,
    },
    Draining(Option<C>),
}

impl<C> Phase<C> {
    fn public(&self) -> EndpointPhase {
        match self {
            Phase::Idle => EndpointPhase::Idle,
            Phase::Connecting => EndpointPhase::Connecting,
            Phase::Ready(_) => EndpointPhase::Ready,
            Phase::Ejected { .. } => EndpointPhase::Ejected,
            Phase::Draining(_) => EndpointPhase::Draining,
        }
    }
}

struct Slot<C> {
    endpoint: Arc<Endpoint>,
    load: Arc<Load>,
    phase: Phase<C>,
    /// Bumped for every connection attempt; results and signals of older attempts are ignored.
    generation: u64,
    /// Connection attempts that failed (or connections that closed young) in a row: its delays
    /// space the reconnects.
    reconnect: Backoff,
    /// Why the last connection attempt failed; cleared when one succeeds.
    connect_error: Option<Arc<str>>,
    connected_at: Option<Instant>,
    /// The outlier ejection multiplier k.
    ejections: u32,
    ejected_this_interval: bool,
    health: Option<bool>,
    aborts: Vec<AbortHandle>,
    gauges: EndpointGauges,
}

impl<C> Slot<C> {
    fn abort_watchers(&mut self) {
        for a in self.aborts.drain(..) {
            a.abort();
        }
    }

    fn sample(&mut self) {
        self.gauges.set(self.phase.public(), self.load.in_flight(), self.load.rtt_estimate());
    }
}

struct Drained<C> {
    load: Arc<Load>,
    since: Instant,
    // Held only so the connection outlives the requests still using it.
    _conn: Option<C>,
}

pub(crate) struct PoolTask<K: Connect> {
    shared: Arc<Shared<K::Connection>>,
    discover: Option<BoxDiscover>,
    connector: K,
    policy: Box<dyn Policy>,
    health: Option<Arc<dyn HealthCheck<K::Connection>>>,
    shutdown: oneshot::Receiver<()>,
    set: EndpointSet,
    slots: BTreeMap<EndpointId, Slot<K::Connection>>,
    drained: Vec<Drained<K::Connection>>,
    connecting: FuturesUnordered<BoxFut<ConnectResult<K::Connection>>>,
    closing: FuturesUnordered<BoxFut<Option<(EndpointId, u64)>>>,
    health_events: SelectAll<BoxStream<'static, (EndpointId, u64, bool)>>,
    alarm: Arc<Notify>,
    version: u64,
    dirty: bool,
    /// The most recent connection error of any endpoint, for [`Unavailable`](crate::balance::error::Unavailable).
    last_connect_error: Option<Arc<str>>,
    /// The discovery error since which the source has not delivered anything, for the same.
    discovery_error: Option<Arc<str>>,
}

impl<K: Connect> PoolTask<K> {
    pub(crate) fn new(
        shared: Arc<Shared<K::Connection>>,
        discover: BoxDiscover,
        connector: K,
        policy: Box<dyn Policy>,
        health: Option<Arc<dyn HealthCheck<K::Connection>>>,
        shutdown: oneshot::Receiver<()>,
    ) -> Self {
        PoolTask {
            shared,
            discover: Some(discover),
            connector,
            policy,
            health,
            shutdown,
            set: EndpointSet::new(),
            slots: BTreeMap::new(),
            drained: Vec::new(),
            connecting: FuturesUnordered::new(),
            closing: FuturesUnordered::new(),
            health_events: SelectAll::new(),
            alarm: Arc::new(Notify::new()),
            version: 0,
            dirty: false,
            last_connect_error: None,
            discovery_error: None,
        }
    }

    fn target(&self) -> &str {
        &self.shared.config.target
    }

    pub(crate) async fn run(mut self) {
        let outlier_interval = self
            .shared
            .config
            .outlier
            .as_ref()
            .map(|o| o.interval)
            .unwrap_or(Duration::from_secs(3600));
        let mut sweep = tokio::time::interval_at(Instant::now() + outlier_interval, outlier_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Policies whose picker depends on something that moves by itself (weights from load
        // reports) are rebuilt on their own period too.
        let mut rebuild = self.policy.rebuild_every().map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut gauges = tokio::time::interval_at(Instant::now() + GAUGE_INTERVAL, GAUGE_INTERVAL);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = 0usize;
        loop {
            let deadline = self.next_deadline();
            let timer = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)));
            tokio::pin!(timer);
            let discover = &mut self.discover;
            tokio::select! {
                biased;
                _ = &mut self.shutdown => {
                    debug!(target_uri = %self.target(), "pool handles dropped; stopping");
                    for slot in self.slots.values_mut() {
                        slot.gauges.clear();
                    }
                    return;
                }
                item = next_update(discover) => self.on_discovery(item),
                Some((id, generation, result)) = self.connecting.next(), if !self.connecting.is_empty() => {
                    self.on_connect(id, generation, result);
                }
                Some(closed) = self.closing.next(), if !self.closing.is_empty() => {
                    if let Some((id, generation)) = closed {
                        self.on_closed(id, generation);
                    }
                }
                Some((id, generation, ok)) = self.health_events.next(), if !self.health_events.is_empty() => {
                    self.on_health(id, generation, ok);
                }
                _ = self.alarm.notified() => {
                    self.eject_consecutive();
                    self.apply_penalties();
                }
                _ = tick(&mut rebuild) => self.dirty = true,
                _ = sweep.tick() => self.outlier_sweep(),
                _ = gauges.tick() => self.sample_gauges(),
                _ = &mut timer, if deadline.is_some() => self.on_timers(),
                _ = std::future::ready(()), if self.dirty => {
                    self.publish();
                    events = 0;
                    continue;
                }
            }
            events += 1;
            if self.dirty && events >= MAX_EVENTS_PER_PUBLISH {
                self.publish();
                events = 0;
            }
        }
    }

    // ----- discovery -------------------------------------------------------------------------

    fn on_discovery(&mut self, item: Option<Result<crate::discover::Update, BoxError>>) {
        match item {
            Some(Ok(update)) => {
                if self.discovery_error.take().is_some() {
                    // The source delivers again: a request failing now must not blame an old error.
                    self.dirty = true;
                }
                let was_initialized = self.set.is_initialized();
                let diff = self.set.apply(update);
                m::discovery_update(self.target());
                if !was_initialized && self.set.is_initialized() {
                    info!(target_uri = %self.target(), endpoints = self.set.len(), "first full endpoint set");
                    self.dirty = true;
                }
                if !diff.is_empty() {
                    debug!(
                        target_uri = %self.target(),
                        added = diff.added.len(),
                        changed = diff.changed.len(),
                        removed = diff.removed.len(),
                        "discovery update"
                    );
                    self.apply_diff(diff);
                }
            }
            Some(Err(error)) => {
                m::discovery_error(self.target());
                warn!(target_uri = %self.target(), %error, "discovery error; keeping the last known endpoints");
                let message = error.to_string();
                if self.discovery_error.as_deref() != Some(message.as_str()) {
                    // Published, so a request that finds no endpoint can say why discovery has none.
                    self.discovery_error = Some(Arc::from(message));
                    self.dirty = true;
                }
            }
            None => {
                info!(target_uri = %self.target(), endpoints = self.set.len(), "discovery stream ended; keeping the last known endpoints");
                self.discover = None;
            }
        }
    }

    fn apply_diff(&mut self, diff: Diff) {
        self.dirty = true;
        for id in diff.removed {
            if let Some(mut slot) = self.slots.remove(&id) {
                slot.abort_watchers();
                slot.gauges.clear();
                debug!(target_uri = %self.target(), endpoint = %slot.endpoint.addr(), "endpoint removed");
                self.retire(slot.load, take_conn(slot.phase));
            }
        }
        for ep in diff.added {
            let id = ep.id().clone();
            let terminating = ep.state() == EndpointState::Terminating;
            let addr = ep.addr().to_string();
            debug!(target_uri = %self.target(), endpoint = %addr, "endpoint added");
            let load = self.new_load(&addr);
            let gauges = self.shared.series.gauges(&addr);
            self.slots.insert(
                id.clone(),
                Slot {
                    endpoint: Arc::new(ep),
                    load,
                    phase: Phase::Idle,
                    generation: 0,
                    reconnect: self.new_backoff(),
                    connect_error: None,
                    connected_at: None,
                    ejections: 0,
                    ejected_this_interval: false,
                    health: None,
                    aborts: Vec::new(),
                    gauges,
                },
            );
            if !terminating {
                self.start_connect(&id);
            }
        }
        for ep in diff.changed {
            let id = ep.id().clone();
            let Some(readdressed) = self.slots.get(&id).map(|s| s.endpoint.addr() != ep.addr()) else {
                continue;
            };
            let addr = ep.addr().to_string();
            let fresh = readdressed.then(|| (self.new_load(&addr), self.shared.series.gauges(&addr)));
            let Some(slot) = self.slots.get_mut(&id) else { continue };
            let terminating = ep.state() == EndpointState::Terminating;
            slot.endpoint = Arc::new(ep);
            if let Some((fresh_load, gauges)) = fresh {
                // A new address is a new backend: the old connection drains, load history restarts.
                slot.abort_watchers();
                slot.gauges.clear();
                slot.gauges = gauges;
                slot.generation += 1;
                slot.health = None;
                slot.reconnect.reset();
                let old_load = std::mem::replace(&mut slot.load, fresh_load);
                let old = std::mem::replace(&mut slot.phase, Phase::Idle);
                self.retire(old_load, take_conn(old));
                if !terminating {
                    self.start_connect(&id);
                }
                continue;
            }
            let phase = std::mem::replace(&mut slot.phase, Phase::Idle);
            let mut connect = false;
            slot.phase = match (terminating, phase) {
                (true, Phase::Ready(c)) => Phase::Draining(Some(c)),
                (true, Phase::Ejected { conn, .. }) => Phase::Draining(conn),
                (true, Phase::Connecting) => {
                    slot.generation += 1;
                    Phase::Idle
                }
                (true, p) => p,
                (false, Phase::Draining(Some(c))) => Phase::Ready(c),
                (false, Phase::Draining(None)) | (false, Phase::Idle) => {
                    connect = true;
                    Phase::Idle
                }
                (false, p) => p,
            };
            if connect {
                self.start_connect(&id);
            }
        }
    }

    fn new_backoff(&self) -> Backoff {
        Backoff::new(self.shared.config.reconnect_backoff, self.shared.config.max_reconnect_backoff)
    }

    fn new_load(&self, addr: &str) -> Arc<Load> {
        Arc::new(
            Load::new(self.shared.config.ewma)
                .with_alarm(self.consecutive_threshold(), Arc::clone(&self.alarm))
                .with_series(self.shared.series.endpoint(addr)),
        )
    }

    fn sample_gauges(&mut self) {
        for slot in self.slots.values_mut() {
            slot.sample();
        }
    }

    fn retire(&mut self, load: Arc<Load>, conn: Option<K::Connection>) {
        if load.in_flight() > 0 {
            self.drained.push(Drained {
                load,
                since: Instant::now(),
                _conn: conn,
            });
        }
    }

    fn consecutive_threshold(&self) -> u32 {
        match &self.shared.config.outlier {
            Some(o) if o.consecutive_failures > 0 => o.consecutive_failures,
            _ => u32::MAX,
        }
    }

    // ----- connections -----------------------------------------------------------------------

    fn start_connect(&mut self, id: &EndpointId) {
        let Some(slot) = self.slots.get_mut(id) else { return };
        slot.abort_watchers();
        slot.generation += 1;
        slot.phase = Phase::Connecting;
        slot.health = None;
        self.dirty = true;
        let generation = slot.generation;
        let fut = self.connector.connect(&slot.endpoint);
        let timeout = self.shared.config.connect_timeout;
        let id = id.clone();
        self.connecting.push(Box::pin(async move {
            let result = match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(connected)) => Ok(connected),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(format!("connect timed out after {timeout:?}").into()),
            };
            (id, generation, result)
        }));
    }

    fn on_connect(&mut self, id: EndpointId, generation: u64, result: Result<Connected<K::Connection>, BoxError>) {
        let target = Arc::clone(&self.shared.config.target);
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if slot.generation != generation || !matches!(slot.phase, Phase::Connecting) {
            return;
        }
        self.dirty = true;
        match result {
            Ok(Connected { connection, closed }) => {
                debug!(target_uri = %target, endpoint = %slot.endpoint.addr(), "connected");
                slot.connected_at = Some(Instant::now());
                slot.connect_error = None;
                let (abort, reg) = AbortHandle::new_pair();
                slot.aborts.push(abort);
                let key = (id.clone(), generation);
                self.closing.push(Box::pin(async move { Abortable::new(closed, reg).await.ok().map(|_| key) }));
                if let Some(hc) = &self.health {
                    let (abort, reg) = AbortHandle::new_pair();
                    slot.aborts.push(abort);
                    let key = id.clone();
                    let stream = hc.watch(&slot.endpoint, &connection);
                    self.health_events
                        .push(Abortable::new(stream, reg).map(move |ok| (key.clone(), generation, ok)).boxed());
                }
                slot.phase = Phase::Ready(connection);
            }
            Err(error) => {
                let message: Arc<str> = Arc::from(error.to_string());
                slot.connect_error = Some(Arc::clone(&message));
                self.last_connect_error = Some(message);
                m::connect_failure(&target);
                let delay = slot.reconnect.next();
                warn!(
                    target_uri = %target,
                    endpoint = %slot.endpoint.addr(),
                    %error,
                    attempt = slot.reconnect.attempts(),
                    retry_in = ?delay,
                    "connect failed"
                );
                slot.phase = Phase::Ejected {
                    conn: None,
                    until: Instant::now() + delay,
                    outlier: false,
                };
            }
        }
    }

    fn on_closed(&mut self, id: EndpointId, generation: u64) {
        let target = Arc::clone(&self.shared.config.target);
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if slot.generation != generation {
            return;
        }
        self.dirty = true;
        let phase = std::mem::replace(&mut slot.phase, Phase::Idle);
        slot.phase = match phase {
            Phase::Ready(_) => {
                let lived = slot.connected_at.map(|t| t.elapsed()).unwrap_or_default();
                // A connection that lived long enough was a success: reconnect at once. One that
                // closed young counts as a failed attempt, so a server that accepts and closes at
                // once is retried with backoff rather than in a tight loop (the first such close
                // still reconnects at once).
                if lived >= MIN_HEALTHY_CONNECTION {
                    slot.reconnect.reset();
                }
                let delay = slot.reconnect.next();
                let delay = if slot.reconnect.attempts() == 1 { Duration::ZERO } else { delay };
                info!(target_uri = %target, endpoint = %slot.endpoint.addr(), reconnect_in = ?delay, "connection closed");
                slot.abort_watchers();
                if delay.is_zero() {
                    self.start_connect(&id);
                    return;
                }
                Phase::Ejected {
                    conn: None,
                    until: Instant::now() + delay,
                    outlier: false,
                }
            }
            Phase::Ejected { until, outlier, .. } => Phase::Ejected { conn: None, until, outlier },
            Phase::Draining(_) => Phase::Draining(None),
            other => other,
        };
    }

    fn on_health(&mut self, id: EndpointId, generation: u64, ok: bool) {
        let target = Arc::clone(&self.shared.config.target);
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if slot.generation != generation || slot.health == Some(ok) {
            return;
        }
        if ok {
            info!(target_uri = %target, endpoint = %slot.endpoint.addr(), "health check: serving");
        } else {
            warn!(target_uri = %target, endpoint = %slot.endpoint.addr(), "health check: not serving");
        }
        slot.health = Some(ok);
        self.dirty = true;
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn next_update(discover: &mut Option<BoxDiscover>) -> Option<Result<crate::discover::Update, BoxError>> {
    match discover {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

fn take_conn<C>(phase: Phase<C>) -> Option<C> {
    match phase {
        Phase::Ready(c) => Some(c),
        Phase::Ejected { conn, .. } | Phase::Draining(conn) => conn,
        Phase::Idle | Phase::Connecting => None,
    }
}

