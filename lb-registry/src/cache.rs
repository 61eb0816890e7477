//! A last-known-good cache in front of any discovery stream.
//!
//! Registries fail; the services they list usually keep running. A client that forgets its endpoints
//! whenever the registry blinks turns a registry outage into an outage of everything. [`Cache`]
//! wraps any [`BoxDiscover`] and:
//!
//! - keeps the last set across errors, source restarts and a source that ends;
//! - refuses an update that would empty a non-empty set (a registry that lost its data, a watch that
//!   relisted an empty prefix during a restart) unless [`CacheBuilder::allow_empty`] is set;
//! - restarts a restartable source every [`CacheBuilder::resync_every`] (a full relist, diffed by the
//!   pool so unchanged endpoints keep their connections), and after it ends;
//! - optionally persists the set to a JSON file (write to a temporary file, then rename, so a crash
//!   never leaves half a file) and, at start, serves that file at once while the source has produced
//!   nothing — Dubbo's provider cache, so a client restarted during a registry outage still works;
//! - tracks how stale the served data is ([`CacheHandle::staleness`]), logs it while stale and
//!   exports it as the gauge `lb_registry_staleness_seconds{target}`.
//!
//! Staleness is measured from the last moment the source was known to be in contact: any update
//! (even an empty `Add`, which providers send once a watch is re-established) means fresh; an error
//! or the end of the source starts the clock; data loaded from a snapshot starts as old as the file.
//!
//! ```no_run
//! # fn source() -> lb_core::discover::BoxDiscover { unimplemented!() }
//! use std::time::Duration;
//! use lb_registry::cache::Cache;
//!
//! let cached = Cache::builder()
//!     .name("etcd://127.0.0.1:2379/greeter")
//!     .snapshot("/var/cache/lb/greeter.json")
//!     .resync_every(Duration::from_secs(300))
//!     .wrap_with(source); // restartable: called again for each resync
//! let handle = cached.handle();
//! let discover = cached.boxed(); // hand this to lb_core::Pool::spawn
//! # let _ = (handle, discover);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Endpoint, EndpointId, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Gauge: seconds since the served data was last confirmed by its source (0 while fresh).
pub const STALENESS: &str = "lb_registry_staleness_seconds";
/// Counter: updates refused because they would have emptied a non-empty set.
pub const EMPTY_REFUSED: &str = "lb_registry_empty_updates_refused_total";

// Periods are added to `Instant`s; a year keeps that far from overflowing.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);

/// Entry point: [`Cache::builder`].
#[derive(Debug)]
pub struct Cache(());

impl Cache {
    /// A builder with the defaults: empty updates refused, no resync, no snapshot.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            name: Arc::from("unnamed"),
            allow_empty: false,
            resync: None,
            snapshot: None,
            snapshot_interval: Duration::from_secs(1),
            restart_backoff: Duration::from_secs(1),
            stale_log_interval: Duration::from_secs(30),
        }
    }
}

/// Configuration of a [`Cache`].
#[derive(Clone, Debug)]
pub struct CacheBuilder {
    name: Arc<str>,
    allow_empty: bool,
    resync: Option<Duration>,
    snapshot: Option<PathBuf>,
    snapshot_interval: Duration,
    restart_backoff: Duration,
    stale_log_interval: Duration,
}

impl CacheBuilder {
    /// A name for logs and the metric label, usually the target URI.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Arc::from(name.as_ref());
        self
    }

    /// Whether an update that empties a non-empty set is applied (default `false`: it is refused,
    /// logged and counted, and the set is kept until a non-empty update arrives).
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// Restarts the source this often (a full relist). Needs a restartable source
    /// ([`CacheBuilder::wrap_with`]); ignored by [`CacheBuilder::wrap`].
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = Some(period.clamp(Duration::from_millis(10), MAX_PERIOD));
        self
    }

    /// Persists the set to this file and serves it at start until the source delivers.
    pub fn snapshot(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// The most often the snapshot file is rewritten (default 1 s; changes in between coalesce).
    pub fn snapshot_interval(mut self, interval: Duration) -> Self {
        self.snapshot_interval = interval.min(MAX_PERIOD);
        self
    }

    /// Wait this long before restarting a source that ended (default 1 s).
    pub fn restart_backoff(mut self, backoff: Duration) -> Self {
        self.restart_backoff = backoff.min(MAX_PERIOD);
        self
    }

    /// Wraps a source that cannot be restarted: no resync, and once it ends the last set stays.
    pub fn wrap(self, source: BoxDiscover) -> Cached {
        let mut once = Some(source);
        self.build(Box::new(move || once.take()), false)
    }

    /// Wraps a restartable source: `make` is called at start, for every resync and after the
    /// source ends.
    pub fn wrap_with(self, mut make: impl FnMut() -> BoxDiscover + Send + 'static) -> Cached {
        self.build(Box::new(move || Some(make())), true)
    }

    fn build(self, make: MakeSource, restartable: bool) -> Cached {
        let handle = CacheHandle {
            status: Arc::new(Mutex::new(Status::default())),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = CacheTask {
            cfg: self,
            make,
            restartable,
            tx,
            set: BTreeMap::new(),
            from_source: false,
            status: Arc::clone(&handle.status),
            snapshot_due: None,
            snapshot_writing: None,
        };
        Cached {
            rx,
            handle,
            pending: Some(Box::new(task)),
            task: None,
        }
    }
}

type MakeSource = Box<dyn FnMut() -> Option<BoxDiscover> + Send>;

#[derive(Debug, Default)]
struct Status {
    len: usize,
    has_data: bool,
    from_snapshot: bool,
    // Stale when `Some`: staleness = base + since.elapsed().
    stale_since: Option<(Instant, Duration)>,
}

/// A read-only view of a cache's state, cheap to clone.
#[derive(Clone)]
pub struct CacheHandle {
    status: Arc<Mutex<Status>>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("len", &self.len())
            .field("staleness", &self.staleness())
            .finish()
    }
}

impl CacheHandle {
    fn with<T>(&self, f: impl FnOnce(&Status) -> T) -> T {
        // A poisoned lock only means a panic elsewhere while updating plain fields; they are still
        // meaningful, so read them anyway.
        let guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// How old the served data is: `None` before any data, zero while the source is in contact,
    /// otherwise the time since the source last confirmed it (for data from a snapshot, the file's
    /// age plus the time since it was loaded).
    pub fn staleness(&self) -> Option<Duration> {
        self.with(|s| {
            if !s.has_data {
                None
            } else {
                Some(s.stale_since.map_or(Duration::ZERO, |(since, base)| base + since.elapsed()))
            }
        })
    }

    /// True when the source is in contact and the set is its latest word.
    pub fn is_fresh(&self) -> bool {
        self.staleness() == Some(Duration::ZERO)
    }

    /// True while the set served is the one loaded from the snapshot file.
    pub fn is_from_snapshot(&self) -> bool {
        self.with(|s| s.from_snapshot)
    }

    /// The number of endpoints served.
    pub fn len(&self) -> usize {
        self.with(|s| s.len)
    }

    /// True when no endpoint is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cached discovery stream. Its background task starts on first poll and stops when the stream
/// is dropped.
pub struct Cached {
    rx: mpsc::UnboundedReceiver<Result<Update, BoxError>>,
    handle: CacheHandle,
    pending: Option<Box<CacheTask>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Cached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached").field("handle", &self.handle).finish()
    }
}

impl Cached {
    /// A handle to observe the cache.
    pub fn handle(&self) -> CacheHandle {
        self.handle.clone()
    }

    /// Boxes the stream.
    pub fn boxed(self) -> BoxDiscover {
        Box::pin(self)
    }
}

impl Stream for Cached {
    type Item = Result<Update, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Spawning at first poll rather than at construction lets a resolver be built outside a
        // runtime (configuration code, the C ABI) and only run where it is polled.
        if let Some(task) = self.pending.take() {
            self.task = Some(tokio::spawn(task.run()));
        }
        self.rx.poll_recv(cx)
    }
}

impl Drop for Cached {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct CacheTask {
    cfg: CacheBuilder,
    make: MakeSource,
    restartable: bool,
    tx: mpsc::UnboundedSender<Result<Update, BoxError>>,
    set: BTreeMap<EndpointId, Endpoint>,
    from_source: bool,
    status: Arc<Mutex<Status>>,
    snapshot_due: Option<Instant>,
    snapshot_writing: Option<JoinHandle<()>>,
}

impl CacheTask {
    async fn run(mut self) {
        if let Some(path) = self.cfg.snapshot.clone() {
            self.load_snapshot(&path);
        }
        let mut source = (self.make)();
        let mut resync = self.cfg.resync.filter(|_| self.restartable).map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut stale_log = tokio::time::interval(self.cfg.stale_log_interval);
        let mut restart_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.tx.closed() => return,
                item = next(&mut source) => match item {
                    Some(Ok(update)) => self.on_update(update),
                    Some(Err(error)) => {
                        self.mark_stale();
                        let _ = self.tx.send(Err(error));
                    }
                    None => {
                        self.mark_stale();
                        source = None;
                        if self.restartable {
                            info!(target_uri = %self.cfg.name, "discovery source ended; restarting it");
                            restart_at = Some(Instant::now() + self.cfg.restart_backoff);
                        } else {
                            info!(target_uri = %self.cfg.name, endpoints = self.set.len(), "discovery source ended; keeping the last known endpoints");
                        }
                    }
                },
                _ = sleep_until(restart_at) => {
                    restart_at = None;
                    source = (self.make)();
                }
                _ = tick(&mut resync) => {
                    debug!(target_uri = %self.cfg.name, "periodic resync: restarting the discovery source");
                    source = (self.make)();
                    restart_at = None;
                }
                _ = stale_log.tick() => self.report_staleness(),
                _ = sleep_until(self.snapshot_due) => self.write_snapshot(),
            }
        }
    }

    fn on_update(&mut self, update: Update) {
        let allow_empty = self.cfg.allow_empty;
        match update {
            Update::Reset(list) => {
                if list.is_empty() && !allow_empty && !self.set.is_empty() {
                    self.refuse_empty("reset");
                    return;
                }
                self.set = list.iter().map(|e| (e.id().clone(), e.clone())).collect();
                self.from_source = true;
                self.forward(Update::Reset(list));
            }
            Update::Add(list) => {
                if list.is_empty() {
                    // A liveness signal from the source: nothing to apply, but the data is current.
                    self.mark_fresh();
                    return;
                }
                for e in &list {
                    self.set.insert(e.id().clone(), e.clone());
                }
                self.forward(Update::Add(list));
            }
            Update::Current => self.mark_fresh(),
            Update::Remove(ids) => {
                let remaining = self.set.keys().filter(|k| !ids.contains(k)).count();
                if remaining == 0 && !allow_empty && !self.set.is_empty() {
                    self.refuse_empty("remove");
                    return;
                }
                for id in &ids {
                    self.set.remove(id);
                }
                self.forward(Update::Remove(ids));
            }
        }
    }

    fn forward(&mut self, update: Update) {
        let _ = self.tx.send(Ok(update));
        self.mark_fresh();
        {
            let mut s = self.lock();
            s.len = self.set.len();
            s.has_data = true;
            s.from_snapshot = s.from_snapshot && !self.from_source;
        }
        if self.cfg.snapshot.is_some() && self.from_source && self.snapshot_due.is_none() {
            self.snapshot_due = Some(Instant::now() + self.cfg.snapshot_interval);
        }
    }

    fn refuse_empty(&mut self, kind: &'static str) {
        metrics::counter!(EMPTY_REFUSED, "target" => self.cfg.name.to_string()).increment(1);
        warn!(
            target_uri = %self.cfg.name,
            update = kind,
            kept = self.set.len(),
            "refusing an update that would remove every endpoint; keeping the last known set (allow_empty=false)"
        );
        // The source is talking but no longer confirms what is served.
        self.mark_stale();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_fresh(&mut self) {
        let was_stale = {
            let mut s = self.lock();
            s.stale_since.take().map(|(since, base)| base + since.elapsed())
        };
        metrics::gauge!(STALENESS, "target" => self.cfg.name.to_string()).set(0.0);
        if let Some(age) = was_stale {
            info!(target_uri = %self.cfg.name, was_stale_for_ms = age.as_millis() as u64, "discovery data is fresh again");
        }
    }

    fn mark_stale(&mut self) {
        let mut s = self.lock();
        if s.stale_since.is_none() {
            s.stale_since = Some((Instant::now(), Duration::ZERO));
        }
    }

    fn report_staleness(&self) {
        let stale = {
            let s = self.lock();
            s.stale_since.map(|(since, base)| (base + since.elapsed(), s.from_snapshot, s.len))
        };
        if let Some((age, from_snapshot, len)) = stale {
            metrics::gauge!(STALENESS, "target" => self.cfg.name.to_string()).set(age.as_secs_f64());
            warn!(
                target_uri = %self.cfg.name,
                staleness_s = age.as_secs(),
                from_snapshot,
                endpoints = len,
                "serving stale discovery data"
            );
        }
    }

    fn load_snapshot(&mut self, path: &Path) {
        let (endpoints, age) = match snapshot::read(path) {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(error) => {
                warn!(target_uri = %self.cfg.name, path = %path.display(), %error, "ignoring the discovery snapshot");
                return;
            }
        };
        warn!(
            target_uri = %self.cfg.name,
            path = %path.display(),
            endpoints = endpoints.len(),
            staleness_s = age.as_secs(),
            "serving endpoints from the on-disk snapshot until the registry answers"
        );
        self.set = endpoints.iter().map(|e| (e.id().clone(), e.clone())).collect();
        let _ = self.tx.send(Ok(Update::Reset(endpoints)));
        let mut s = self.lock();
        s.len = self.set.len();
        s.has_data = true;
        s.from_snapshot = true;
        s.stale_since = Some((Instant::now(), age));
    }

    fn write_snapshot(&mut self) {
        self.snapshot_due = None;
        let Some(path) = self.cfg.snapshot.clone() else { return };
        if self.snapshot_writing.as_ref().is_some_and(|h| !h.is_finished()) {
            // One write at a time; try again shortly with whatever the set is then.
            self.snapshot_due = Some(Instant::now() + self.cfg.snapshot_interval);
            return;
        }
        let snap = SnapshotFile {
            v: SNAPSHOT_VERSION,
            target: self.cfg.name.to_string(),
            saved_at_unix_ms: snapshot::unix_ms(),
            endpoints: self.set.values().map(SnapEndpoint::from_endpoint).collect(),
        };
        let name = Arc::clone(&self.cfg.name);
        self.snapshot_writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = write_atomically(&path, &snap) {
                warn!(target_uri = %name, path = %path.display(), %error, "cannot write the discovery snapshot");
            }
        }));
    }
}

async fn next(source: &mut Option<BoxDiscover>) -> Option<Result<Update, BoxError>> {
    match source {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

mod snapshot;
#[cfg(test)]
mod tests;

use self::snapshot::{write_atomically, SnapEndpoint, SnapshotFile, SNAPSHOT_VERSION};
