//! A last-known-good cache in front of any discovery stream, the same for every registry.
//!
//! Registries fail; the services they list usually keep running. A client that forgets its endpoints
//! whenever the registry blinks turns a registry outage into an outage of everything. [`Cache`]
//! wraps any [`Resolver`] (or any [`BoxDiscover`]) and:
//!
//! - keeps the last set across errors, source restarts and a source that ends;
//! - refuses an update that would empty a non-empty set (a registry that lost its data, a watch that
//!   relisted an empty prefix during a restart, an ACL token that lost its read permission) unless
//!   `allow_empty` is set;
//! - restarts the source every `resync` (a full relist, diffed by the pool so unchanged endpoints
//!   keep their connections), and after it ends;
//! - optionally persists the set to a JSON file and, at start, serves that file at once while the
//!   source has produced nothing — Dubbo's provider cache, so a client restarted during a registry
//!   outage still works;
//! - tracks how stale the served data is ([`CacheHandle::staleness`]), logs it while stale and
//!   exports it as the gauge `lb_registry_staleness_seconds{target}`.
//!
//! # Target options
//!
//! [`resolve`](crate::resolve) puts every registry target — `etcd`, `consul`, `kubernetes`, `dns` —
//! behind this cache, configured by the same query keys ([`KEYS`]) for all of them.
//! A `static:///` list has no registry to lose, so it has no cache and refuses these keys.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `allow_empty` | `false` | `true` applies an update that removes every endpoint; otherwise it is refused, logged, counted in `lb_registry_empty_updates_refused_total{target}`, and the set is kept until a non-empty update arrives |
//! | `snapshot` | none | a file holding the last set: written as soon as the first full set arrives, then at most once a second while the set changes, and when the stream is dropped; at start it is served, marked stale, until the registry answers |
//! | `resync` | `5m` for etcd, `off` otherwise | restart the source this often, a full relist (a duration such as `30s`, `10m`, at least `1s`; `off` disables). etcd's default bounds what no watch can see, a store emptied and refilled with keys of the same revisions |
//!
//! # In code
//!
//! A provider's resolver (`EtcdResolver`, `ConsulResolver`, [`DnsResolver`](crate::dns::DnsResolver),
//! `KubernetesResolver`, or your own) yields the registry's raw stream; the cache goes around it:
//!
//! ```no_run
//! # fn demo(resolver: lb_registry::dns::DnsResolver) {
//! use std::time::Duration;
//! use lb_registry::cache::Cache;
//!
//! let cached = Cache::builder()
//!     .name("dns:///greeter.internal:50051")
//!     .snapshot("/var/cache/lb/greeter.json")
//!     .resync_every(Duration::from_secs(300))
//!     .resolve(resolver, "greeter.internal:50051"); // called again for each resync
//! let handle = cached.handle();
//! let discover = cached.boxed(); // hand this to lb_core::Pool::spawn
//! # let _ = (handle, discover); }
//! ```
//!
//! The options are one type applied around any resolver, rather than options each provider's
//! builder re-implements, because none of them depends on the registry: what a client does when its
//! registry is unreachable is the same question for every registry, and a resolver written outside
//! this crate gets the same answers. It also leaves each provider a plain stream of what its
//! registry says, which is what its own tests assert.
//!
//! # Freshness
//!
//! Staleness is measured from the last moment the source was known to be in contact and in
//! agreement with what is served: an update applied, or an [`Update::Current`] (a provider's
//! "nothing changed": a watch re-established, a relist or a re-resolution with the same answer),
//! means fresh; an error, the end of the source or a refused update starts the clock, and a
//! `Current` after a refused update does not stop it (the source confirms a set that is not the
//! one served). Data loaded from a snapshot starts as old as the file.
//!
//! # The snapshot file
//!
//! One JSON document, `{"v":1,"target":…,"saved_at_unix_ms":…,"endpoints":[…]}`, each endpoint an
//! [`EndpointDocument`](crate::document::EndpointDocument). It is written to a temporary file and
//! renamed, so a crash never leaves half a file. A file written for another target (`target`
//! differs from the cache's name) is ignored with a warning rather than served, as is a corrupt
//! one; entries that do not decode are skipped. The last write happens when the [`Cached`] stream
//! is dropped — when a client is dropped, or its runtime shuts down as a process exits — so a
//! process that ran for a moment still leaves its current set behind.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Endpoint, EndpointId, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::options::{parse_bool, parse_duration};
use crate::{scheme, Error, Resolver, Target};

use self::snapshot::{SnapshotFile, Writer};
use self::task::CacheTask;

/// Gauge: seconds since the served data was last confirmed by its source (0 while fresh).
pub const STALENESS: &str = "lb_registry_staleness_seconds";
/// Counter: updates refused because they would have emptied a non-empty set.
pub const EMPTY_REFUSED: &str = "lb_registry_empty_updates_refused_total";
/// The query keys of a target that configure its cache (see the [module docs](self)).
pub const KEYS: [&str; 3] = ["allow_empty", "resync", "snapshot"];

// Periods are added to `Instant`s; a year keeps that far from overflowing.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);
/// The shortest `resync` a target may ask for: a relist costs the registry a full read.
const MIN_TARGET_RESYNC: Duration = Duration::from_secs(1);

/// Entry point: [`Cache::builder`].
#[derive(Debug)]
pub struct Cache(());

impl Cache {
    /// A builder with the defaults: empty updates refused, no resync, no snapshot.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            name: None,
            allow_empty: false,
            resync: None,
            snapshot: None,
            snapshot_interval: Duration::from_secs(1),
            restart_backoff: Duration::from_secs(1),
            stale_log_interval: Duration::from_secs(30),
        }
    }
}

/// Configuration of a [`Cache`]: one type, applied around any [`Resolver`] or stream, rather than
/// options repeated in each provider's builder — what to do while a registry is unreachable does
/// not depend on which registry it is (see the [module docs](self#in-code)).
#[derive(Clone, Debug)]
pub struct CacheBuilder {
    name: Option<Arc<str>>,
    allow_empty: bool,
    resync: Option<Duration>,
    snapshot: Option<PathBuf>,
    snapshot_interval: Duration,
    restart_backoff: Duration,
    stale_log_interval: Duration,
}

impl CacheBuilder {
    /// The cache a target's query asks for (see the [module docs](self)): the scheme's defaults,
    /// then `allow_empty`, `resync` and `snapshot`, named after the target without its query. Other
    /// keys are the provider's and are not looked at here.
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        let scheme = scheme::get(target.scheme()).ok_or_else(|| Error::unsupported_scheme(target.scheme()))?;
        if !scheme.cached {
            return Err(Error::invalid_target(format!("`{}` targets have no discovery cache", scheme.name)));
        }
        let mut b = Cache::builder().name(format!("{}://{}/{}", target.scheme(), target.authority(), target.path()));
        b.resync = scheme.resync;
        if let Some(v) = target.param("allow_empty") {
            b = b.allow_empty(parse_bool("allow_empty", v)?);
        }
        if let Some(v) = target.param("resync") {
            b.resync = match v {
                "off" | "none" | "0" => None,
                other => {
                    let period = parse_duration("resync", other)?;
                    if period < MIN_TARGET_RESYNC {
                        return Err(Error::invalid_target(format!("`resync={other}` is below the 1s minimum (use off to disable)")));
                    }
                    Some(period.min(MAX_PERIOD))
                }
            };
        }
        if let Some(path) = target.param("snapshot") {
            if path.is_empty() {
                return Err(Error::invalid_target("`snapshot` needs a file path, e.g. snapshot=/var/cache/lb/greeter.json"));
            }
            b = b.snapshot(path);
        }
        Ok(b)
    }

    /// A name for logs, the metric label and the snapshot file, usually the target URI (default:
    /// the service given to [`resolve`](Self::resolve), else `unnamed`).
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Some(Arc::from(name.as_ref()));
        self
    }

    /// Whether an update that empties a non-empty set is applied (default `false`: it is refused,
    /// logged and counted, and the set is kept until a non-empty update arrives).
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// Restarts the source this often (a full relist). Needs a restartable source
    /// ([`resolve`](Self::resolve), [`wrap_with`](Self::wrap_with)); ignored by
    /// [`wrap`](Self::wrap).
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = Some(period.clamp(Duration::from_millis(10), MAX_PERIOD));
        self
    }

    /// Persists the set to this file and serves it at start until the source delivers.
    pub fn snapshot(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// The most often the snapshot file is rewritten after the first write (default 1 s; changes
    /// in between coalesce).
    pub fn snapshot_interval(mut self, interval: Duration) -> Self {
        self.snapshot_interval = interval.min(MAX_PERIOD);
        self
    }

    /// Wait this long before restarting a source that ended (default 1 s).
    pub fn restart_backoff(mut self, backoff: Duration) -> Self {
        self.restart_backoff = backoff.min(MAX_PERIOD);
        self
    }

    /// Watches `service` through `resolver`, which is asked again for each restart and resync.
    pub fn resolve<R: Resolver>(mut self, resolver: R, service: impl Into<String>) -> Cached {
        let service = service.into();
        if self.name.is_none() {
            self.name = Some(Arc::from(service.as_str()));
        }
        self.wrap_with(move || resolver.resolve(&service))
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
        let name: Arc<str> = self.name.clone().unwrap_or_else(|| Arc::from("unnamed"));
        let shared = Arc::new(Shared {
            snapshot: self.snapshot.clone().map(Writer::new),
            name,
            state: Mutex::new(State::default()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = CacheTask::new(self, make, restartable, tx, Arc::clone(&shared));
        Cached {
            rx,
            handle: CacheHandle { shared },
            pending: Some(Box::new(task)),
            task: None,
        }
    }
}

type MakeSource = Box<dyn FnMut() -> Option<BoxDiscover> + Send>;

/// What the task, the handle and the stream's `Drop` share.
struct Shared {
    name: Arc<str>,
    state: Mutex<State>,
    snapshot: Option<Writer>,
}

#[derive(Debug, Default)]
struct State {
    /// The set served.
    set: BTreeMap<EndpointId, Endpoint>,
    /// How many changes from the source were applied; the snapshot on disk is compared with it.
    generation: u64,
    has_data: bool,
    from_snapshot: bool,
    // Stale when `Some`: staleness = base + since.elapsed().
    stale_since: Option<(Instant, Duration)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while updating plain fields; they are still
        // meaningful, so use them anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file for the set served, when the one on disk is older.
    fn unwritten_snapshot(&self) -> Option<(u64, SnapshotFile)> {
        let writer = self.snapshot.as_ref()?;
        let s = self.lock();
        (s.generation > writer.written()).then(|| (s.generation, SnapshotFile::new(&self.name, s.set.values())))
    }

    /// Writes `file`, the set at `generation`; blocks.
    fn write_snapshot(&self, generation: u64, file: &SnapshotFile) {
        let Some(writer) = &self.snapshot else { return };
        if let Err(error) = writer.write(generation, file) {
            warn!(target_uri = %self.name, path = %writer.path().display(), %error, "cannot write the discovery snapshot");
        }
    }

    /// Writes the set served if the file is behind it; blocks.
    fn flush_snapshot(&self) {
        if let Some((generation, file)) = self.unwritten_snapshot() {
            self.write_snapshot(generation, &file);
        }
    }
}

/// A read-only view of a cache's state, cheap to clone.
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("name", &self.shared.name)
            .field("len", &self.len())
            .field("staleness", &self.staleness())
            .finish()
    }
}

impl CacheHandle {
    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.lock())
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
        self.with(|s| s.set.len())
    }

    /// True when no endpoint is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cached discovery stream. Its background task starts on first poll and stops when the stream
/// is dropped; dropping it also writes the snapshot file, when there is one and it is behind.
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
        // The last write happens here, synchronously, rather than on a task: a stream dropped
        // because its process is exiting (the runtime shutting down drops every task) gets no
        // later chance, and a client that ran for less than the snapshot interval must still leave
        // its set behind. A write is one small file, and only when the set changed since the last.
        self.handle.shared.flush_snapshot();
    }
}

mod snapshot;
mod task;
#[cfg(test)]
mod tests;
