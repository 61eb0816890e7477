//! The agent: discovery events in, one kernel transaction out per batch of changes.
//!
//! [`Agent`] owns everything the loop changes (the configuration, the endpoint set and the desired
//! state of every service, the backend, the sync schedule) and has one method per event, as
//! lb-core's pool task does: a configuration reload ([`Agent::on_reload`]), a discovery update or a
//! Kubernetes Service's affinity ([`Agent::on_event`]), the sync timer ([`Agent::on_sync_timer`]),
//! the "still waiting for discovery" timer ([`Agent::on_wait_log`]) and shutdown. [`Agent::run`]
//! only waits for the next event and dispatches it.
//!
//! Updates land in an [`EndpointSet`] per service and only that service's desired state is
//! recomputed (one [`ServiceState`](crate::ServiceState) per VIP: a dual-stack service has two).
//! The first sync waits until every service has had its first full snapshot (syncing earlier would
//! delete the rules of services not yet known); later changes arriving within `min_sync_interval`
//! share one transaction.
//!
//! `SIGHUP` reloads the configuration file: discovery restarts for the new list of services and
//! the next sync compares everything, so services that left the file are removed and unchanged ones
//! write nothing.
//!
//! A failed transaction changed nothing (it is atomic), but the agent re-reads its own objects
//! before retrying with backoff, in case something else changed them.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use lb_core::backoff::Backoff;
use lb_core::{EndpointSet, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::config::Config;
use crate::http::Health;
use crate::model::{self, Affinity, Desired, Selection, ServiceKey};
use crate::run::{backend_for, print_report, spawn_discovery, Options};
use crate::Error;

/// What the discovery tasks tell the agent. `generation` names the configuration the task was
/// started for; events of an older one are dropped.
#[derive(Debug)]
pub enum Event {
    /// An endpoint update of service number `service`.
    Discovered {
        /// The configuration generation.
        generation: u64,
        /// Index into the configuration's services.
        service: usize,
        /// The update.
        update: Update,
    },
    /// The affinity a Kubernetes Service asks for (`sessionAffinity`), for a service whose file
    /// entry does not set `affinity`.
    ServiceAffinity {
        /// The configuration generation.
        generation: u64,
        /// Index into the configuration's services.
        service: usize,
        /// `None`: the Service has no (or `None`) session affinity.
        affinity: Option<Affinity>,
    },
}

/// Whether the loop goes on after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Wait for the next event.
    Continue,
    /// Done (`--once` synced, or shutdown).
    Stop,
}

/// The running agent. See the [module documentation](self).
pub struct Agent<'o> {
    cfg: Config,
    opts: Options,
    once: bool,
    health: Arc<Health>,
    out: &'o mut (dyn Write + Send),
    backend: Box<dyn Backend>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    tasks: Vec<JoinHandle<()>>,
    sets: Vec<EndpointSet>,
    /// A Kubernetes Service's affinity per service (used where the file does not set one).
    service_affinity: Vec<Option<Affinity>>,
    desired: Desired,
    /// Services whose desired state changed since the last successful sync; the first sync, and
    /// any after a failure, compare everything instead (`full`).
    changed: BTreeSet<ServiceKey>,
    full: bool,
    /// Something to write. The first sync always runs: it also removes services dropped from the
    /// configuration (and writes nothing when the kernel already matches).
    dirty: bool,
    backoff: Backoff,
    /// `--once` retries a failed sync once, after re-reading the kernel (someone may have raced it).
    retried: bool,
    started: Instant,
    next_sync: Option<Instant>,
    next_wait_log: Instant,
}

impl std::fmt::Debug for Agent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("services", &self.cfg.services.len())
            .field("generation", &self.generation)
            .field("dirty", &self.dirty)
            .field("next_sync", &self.next_sync)
            .finish_non_exhaustive()
    }
}

impl<'o> Agent<'o> {
    /// Learns the backend's committed state and starts discovery; returns the agent and the
    /// channel its discovery tasks feed.
    pub fn start(
        cfg: Config,
        opts: Options,
        health: Arc<Health>,
        out: &'o mut (dyn Write + Send),
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>), Error> {
        let mut backend = backend_for(&cfg);
        tokio::task::block_in_place(|| backend.load())?;
        metrics::gauge!(crate::metrics::SERVICES).set(cfg.services.len() as f64);
        let (events, rx) = mpsc::unbounded_channel();
        let tasks = spawn_discovery(&cfg, 0, &events)?;
        let started = Instant::now();
        let agent = Agent {
            once: opts.once || opts.dry_run,
            sets: cfg.services.iter().map(|_| EndpointSet::new()).collect(),
            service_affinity: vec![None; cfg.services.len()],
            cfg,
            opts,
            health,
            out,
            backend,
            events,
            generation: 0,
            tasks,
            desired: Desired::new(),
            changed: BTreeSet::new(),
            full: true,
            dirty: true,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            retried: false,
            started,
            next_sync: None,
            next_wait_log: started + Duration::from_secs(10),
        };
        Ok((agent, rx))
    }

    /// Runs until `shutdown` resolves (or after one sync with `once`/`dry_run`).
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: impl std::future::Future<Output = ()>,
        mut reload: mpsc::UnboundedReceiver<Config>,
    ) -> Result<(), Error> {
        tokio::pin!(shutdown);
        loop {
            let all_ready = self.all_ready();
            if all_ready && self.dirty && self.next_sync.is_none() {
                let wait = if self.once { Duration::ZERO } else { self.cfg.min_sync_interval };
                self.next_sync = Some(Instant::now() + wait);
            }
            let sync_at = self.next_sync.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let log_at = self.next_wait_log;
            let flow = tokio::select! {
                _ = &mut shutdown => self.on_shutdown(),
                Some(next) = reload.recv(), if !self.once => self.on_reload(next),
                // The agent holds a sender, so the channel never closes.
                Some(event) = events.recv() => self.on_event(event),
                _ = tokio::time::sleep_until(sync_at), if self.next_sync.is_some() => self.on_sync_timer()?,
                _ = tokio::time::sleep_until(log_at), if !all_ready => self.on_wait_log()?,
            };
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }

    fn all_ready(&self) -> bool {
        self.sets.iter().all(EndpointSet::is_initialized)
    }

    /// Shutdown: the kernel keeps the rules, so that balancing survives an agent restart.
    pub fn on_shutdown(&mut self) -> Flow {
        tracing::info!("shutting down; the kernel keeps the rules (run `lb-agent cleanup` to remove them)");
        for t in self.tasks.drain(..) {
            t.abort();
        }
        Flow::Stop
    }

    /// A new configuration (`SIGHUP`): restart discovery for its services; the next sync compares
    /// everything. Backend, table and slot cap change only on restart.
    pub fn on_reload(&mut self, next: Config) -> Flow {
        let cfg = &self.cfg;
        if (next.backend, &next.table, next.max_slots) != (cfg.backend, &cfg.table, cfg.max_slots) {
            tracing::warn!("backend, table and max_slots change only on restart; applying the rest");
        }
        let next = Config { backend: cfg.backend, table: cfg.table.clone(), max_slots: cfg.max_slots, ..next };
        match spawn_discovery(&next, self.generation + 1, &self.events) {
            Ok(tasks) => {
                for t in self.tasks.drain(..) {
                    t.abort();
                }
                self.tasks = tasks;
                self.generation += 1;
                self.cfg = next;
                metrics::gauge!(crate::metrics::SERVICES).set(self.cfg.services.len() as f64);
                self.sets = self.cfg.services.iter().map(|_| EndpointSet::new()).collect();
                self.service_affinity = vec![None; self.cfg.services.len()];
                // Services that left the configuration are absent from the new desired state; the
                // full comparison at the next sync removes them.
                self.desired.clear();
                self.changed.clear();
                self.full = true;
                self.dirty = true;
                self.next_sync = None;
                tracing::info!(services = self.cfg.services.len(), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "reloaded configuration rejected; keeping the current one");
                metrics::counter!(crate::metrics::ERRORS, "kind" => "config").increment(1);
            }
        }
        Flow::Continue
    }

    /// A discovery update or a Service's affinity: recompute that service's VIPs.
    pub fn on_event(&mut self, event: Event) -> Flow {
        match event {
            Event::Discovered { generation, service, update } => {
                // From a task of the previous configuration, or a confirmation that changes no set.
                if generation != self.generation || update == Update::Current {
                    return Flow::Continue;
                }
                let Some(set) = self.sets.get_mut(service) else { return Flow::Continue };
                set.apply(update);
                self.recompute(service, true);
            }
            Event::ServiceAffinity { generation, service, affinity } => {
                if generation != self.generation {
                    return Flow::Continue;
                }
                let Some(slot) = self.service_affinity.get_mut(service) else { return Flow::Continue };
                if *slot != affinity {
                    *slot = affinity;
                    self.recompute(service, false);
                }
            }
        }
        Flow::Continue
    }

    fn recompute(&mut self, i: usize, count_skipped: bool) {
        let (svc, set) = (&self.cfg.services[i], &self.sets[i]);
        if !set.is_initialized() {
            return;
        }
        let skipped = model::skipped_endpoints(set, &svc.families());
        if skipped > 0 && count_skipped {
            tracing::warn!(service = %svc.name, skipped, "endpoints of a family the service has no VIP for are skipped");
            metrics::counter!(crate::metrics::ERRORS, "kind" => "skipped_endpoint").increment(skipped as u64);
        }
        let affinity = if svc.affinity_explicit { svc.affinity } else { self.service_affinity[i].or(svc.affinity) };
        let sel = Selection { node: &self.cfg.node, levels: &svc.topology, min: svc.topology_min_endpoints, affinity };
        for key in &svc.keys {
            let state = model::service_state(set, key.family(), &sel);
            if self.desired.get(key) != Some(&state) {
                self.desired.insert(*key, state);
                self.changed.insert(*key);
                self.dirty = true;
            }
        }
    }

    /// Time to sync: one transaction for everything that changed.
    pub fn on_sync_timer(&mut self) -> Result<Flow, Error> {
        self.next_sync = None;
        let t0 = Instant::now();
        let (backend, desired, changed, dry_run) = (&mut self.backend, &self.desired, &self.changed, self.opts.dry_run);
        let result = tokio::task::block_in_place(|| {
            if self.full {
                backend.sync(desired, dry_run)
            } else {
                backend.sync_changed(desired, changed, dry_run)
            }
        });
        let elapsed = t0.elapsed();
        let labels = [("backend", self.backend.name())];
        metrics::histogram!(crate::metrics::SYNC_DURATION, &labels).record(elapsed.as_secs_f64());
        match result {
            Ok(report) => {
                self.dirty = false;
                self.full = false;
                self.changed.clear();
                self.backoff.reset();
                self.health.record(true);
                metrics::gauge!(crate::metrics::OBJECTS, &labels).set(report.objects as f64);
                if !report.is_noop() {
                    metrics::counter!(crate::metrics::SYNCS, &labels).increment(1);
                }
                tracing::info!(
                    backend = self.backend.name(),
                    services = self.desired.len(),
                    objects = report.objects,
                    changed = !report.is_noop(),
                    dry_run,
                    elapsed_ms = elapsed.as_secs_f64() * 1e3,
                    "synced"
                );
                if dry_run {
                    print_report(self.out, &report).map_err(|e| Error::io(format!("cannot print: {e}")))?;
                }
                Ok(if self.once { Flow::Stop } else { Flow::Continue })
            }
            Err(e) => {
                self.health.record(false);
                metrics::counter!(crate::metrics::ERRORS, "kind" => "sync").increment(1);
                if self.once && self.retried {
                    return Err(e);
                }
                self.retried = true;
                self.full = true;
                let retry_in = self.backoff.next();
                tracing::error!(error = %e, ?retry_in, "sync failed; re-reading the agent's own objects");
                if let Err(e) = tokio::task::block_in_place(|| self.backend.load()) {
                    tracing::error!(error = %e, "cannot read the agent's objects");
                }
                self.next_sync = Some(Instant::now() + retry_in);
                Ok(Flow::Continue)
            }
        }
    }

    /// Still waiting for some service's first endpoint list: say which (and give up with `--once`
    /// after the initial timeout).
    pub fn on_wait_log(&mut self) -> Result<Flow, Error> {
        let pending: Vec<&str> =
            self.cfg.services.iter().zip(&self.sets).filter(|(_, s)| !s.is_initialized()).map(|(c, _)| c.name.as_str()).collect();
        if self.once && self.started.elapsed() >= self.opts.initial_timeout {
            return Err(Error::config(format!(
                "no endpoint list yet for: {} (gave up after {:?})",
                pending.join(", "),
                self.opts.initial_timeout
            )));
        }
        tracing::warn!(?pending, "waiting for the first endpoint list of every service before syncing");
        self.next_wait_log = Instant::now() + if self.once { Duration::from_secs(1) } else { Duration::from_secs(10) };
        Ok(Flow::Continue)
    }
}
