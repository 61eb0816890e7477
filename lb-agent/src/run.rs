//! The agent's loop: discovery streams in, one kernel transaction out per batch of changes.
//!
//! Each service's target is resolved with [`lb_registry::resolve`] and driven by its own task, so a
//! slow registry never delays another service. Updates land in an [`EndpointSet`] per service and
//! only that service's desired state is recomputed. The sync loop waits until every service has
//! had its first full snapshot (syncing earlier would delete the rules of services not yet known),
//! then batches changes arriving within `min_sync_interval` into one transaction.
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

use futures_util::StreamExt as _;
use lb_core::backoff::Backoff;
use lb_core::{EndpointSet, Update};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Backend, SyncReport};
use crate::config::{BackendKind, Config};
use crate::http::Health;
use crate::model::{self, Desired, ServiceKey, Skipped};
use crate::{iptables, ipvs, nft, Error};

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sync once and return.
    pub once: bool,
    /// Print the transaction instead of applying it (implies `once`).
    pub dry_run: bool,
    /// With `once`, how long to wait for every service's first snapshot.
    pub initial_timeout: Duration,
}

/// The backend a configuration asks for.
pub fn backend_for(cfg: &Config) -> Box<dyn Backend> {
    match cfg.backend {
        BackendKind::Nftables => Box::new(nft::Nft::new(cfg.table.clone(), cfg.max_slots)),
        BackendKind::Iptables => Box::new(iptables::Iptables::new()),
        BackendKind::Ipvs => Box::new(ipvs::Ipvs::new()),
    }
}

/// Writes a report as a dry run shows it: the transaction, then follow-up commands as comments
/// (so the output is still valid input for the tool).
pub fn print_report(out: &mut dyn Write, report: &SyncReport) -> std::io::Result<()> {
    out.write_all(report.transaction.as_bytes())?;
    for c in &report.commands {
        writeln!(out, "# then: {c}")?;
    }
    out.flush()
}

/// Runs the agent until `shutdown` resolves (or after one sync with `once`/`dry_run`).
pub async fn run(
    cfg: Config,
    opts: Options,
    health: Arc<Health>,
    out: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()>,
    mut reload: mpsc::UnboundedReceiver<Config>,
) -> Result<(), Error> {
    let once = opts.once || opts.dry_run;
    let mut backend = backend_for(&cfg);
    tokio::task::block_in_place(|| backend.load())?;
    metrics::gauge!(crate::metrics::SERVICES).set(cfg.services.len() as f64);

    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, usize, Update)>();
    let mut generation = 0;
    let mut cfg = cfg;
    let mut tasks = spawn_discovery(&cfg, generation, &tx)?;

    let mut sets: Vec<EndpointSet> = cfg.services.iter().map(|_| EndpointSet::new()).collect();
    let mut desired = Desired::new();
    // Services whose desired state changed since the last successful sync; the first sync, and
    // any after a failure, compare everything instead.
    let mut changed: BTreeSet<ServiceKey> = BTreeSet::new();
    let mut full = true;
    // The first sync always runs: it also removes services dropped from the configuration
    // (and writes nothing when the kernel already matches).
    let mut dirty = true;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // `--once` retries a failed sync once, after re-reading the kernel (someone may have raced it).
    let mut retried = false;
    let started = Instant::now();
    let mut next_sync: Option<Instant> = None;
    let mut next_wait_log = started + Duration::from_secs(10);
    tokio::pin!(shutdown);

    loop {
        let all_ready = sets.iter().all(EndpointSet::is_initialized);
        if all_ready && dirty && next_sync.is_none() {
            next_sync = Some(Instant::now() + if once { Duration::ZERO } else { cfg.min_sync_interval });
        }
        let deadline = next_sync.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let wait_log = next_wait_log;
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down; the kernel keeps the rules (run `lb-agent cleanup` to remove them)");
                return Ok(());
            }
            Some(next) = reload.recv(), if !once => {
                if (next.backend, &next.table, next.max_slots) != (cfg.backend, &cfg.table, cfg.max_slots) {
                    tracing::warn!("backend, table and max_slots change only on restart; applying the rest");
                }
                let next = Config { backend: cfg.backend, table: cfg.table.clone(), max_slots: cfg.max_slots, ..next };
                match spawn_discovery(&next, generation + 1, &tx) {
                    Ok(new_tasks) => {
                        for t in tasks.drain(..) {
                            t.abort();
                        }
                        tasks = new_tasks;
                        generation += 1;
                        cfg = next;
                        metrics::gauge!(crate::metrics::SERVICES).set(cfg.services.len() as f64);
                        sets = cfg.services.iter().map(|_| EndpointSet::new()).collect();
                        // Services that left the configuration are absent from the new desired
                        // state; the full comparison at the next sync removes them.
                        desired.clear();
                        changed.clear();
                        full = true;
                        dirty = true;
                        next_sync = None;
                        tracing::info!(services = cfg.services.len(), "configuration reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reloaded configuration rejected; keeping the current one");
                        metrics::counter!(crate::metrics::ERRORS, "kind" => "config").increment(1);
                    }
                }
            }
            msg = rx.recv() => {
                let Some((gen, i, update)) = msg else { continue };
                if gen != generation {
                    continue; // from a discovery task of the previous configuration
                }
                if update == Update::Current {
                    continue; // a confirmation changes no set: nothing to recompute
                }
                sets[i].apply(update);
                if sets[i].is_initialized() {
                    let svc = &cfg.services[i];
                    let mut skipped = Skipped::default();
                    let state = model::service_state(&sets[i], &cfg.node, &svc.topology, svc.topology_min_endpoints, &mut skipped);
                    if skipped.ipv6 > 0 {
                        tracing::warn!(service = %svc.name, skipped = skipped.ipv6, "IPv6 endpoints skipped (IPv4 only)");
                        metrics::counter!(crate::metrics::ERRORS, "kind" => "skipped_endpoint").increment(skipped.ipv6 as u64);
                    }
                    if desired.get(&svc.key) != Some(&state) {
                        desired.insert(svc.key, state);
                        changed.insert(svc.key);
                        dirty = true;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if next_sync.is_some() => {
                next_sync = None;
                let t0 = Instant::now();
                let result = tokio::task::block_in_place(|| {
                    if full {
                        backend.sync(&desired, opts.dry_run)
                    } else {
                        backend.sync_changed(&desired, &changed, opts.dry_run)
                    }
                });
                let elapsed = t0.elapsed();
                let labels = [("backend", backend.name())];
                metrics::histogram!(crate::metrics::SYNC_DURATION, &labels).record(elapsed.as_secs_f64());
                match result {
                    Ok(report) => {
                        dirty = false;
                        full = false;
                        changed.clear();
                        backoff.reset();
                        health.record(true);
                        metrics::gauge!(crate::metrics::OBJECTS, &labels).set(report.objects as f64);
                        if !report.is_noop() {
                            metrics::counter!(crate::metrics::SYNCS, &labels).increment(1);
                        }
                        tracing::info!(
                            backend = backend.name(),
                            services = desired.len(),
                            objects = report.objects,
                            changed = !report.is_noop(),
                            dry_run = opts.dry_run,
                            elapsed_ms = elapsed.as_secs_f64() * 1e3,
                            "synced"
                        );
                        if opts.dry_run {
                            print_report(out, &report).map_err(|e| Error::io(format!("cannot print: {e}")))?;
                        }
                        if once {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        health.record(false);
                        metrics::counter!(crate::metrics::ERRORS, "kind" => "sync").increment(1);
                        if once && retried {
                            return Err(e);
                        }
                        retried = true;
                        full = true;
                        let retry_in = backoff.next();
                        tracing::error!(error = %e, ?retry_in, "sync failed; re-reading the agent's own objects");
                        if let Err(e) = tokio::task::block_in_place(|| backend.load()) {
                            tracing::error!(error = %e, "cannot read the agent's objects");
                        }
                        next_sync = Some(Instant::now() + retry_in);
                    }
                }
            }
            _ = tokio::time::sleep_until(wait_log), if !all_ready => {
                let pending: Vec<&str> = cfg.services.iter().zip(&sets).filter(|(_, s)| !s.is_initialized()).map(|(c, _)| c.name.as_str()).collect();
                if once && started.elapsed() >= opts.initial_timeout {
                    return Err(Error::config(format!("no endpoint list yet for: {} (gave up after {:?})", pending.join(", "), opts.initial_timeout)));
                }
                tracing::warn!(?pending, "waiting for the first endpoint list of every service before syncing");
                next_wait_log = Instant::now() + if once { Duration::from_secs(1) } else { Duration::from_secs(10) };
            }
        }
    }
}

/// Starts one discovery task per service; nothing is started unless every target resolves.
fn spawn_discovery(
    cfg: &Config,
    generation: u64,
    tx: &mpsc::UnboundedSender<(u64, usize, Update)>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let mut streams = Vec::with_capacity(cfg.services.len());
    for svc in &cfg.services {
        streams.push(lb_registry::resolve(&svc.target).map_err(|e| Error::config(format!("service {}: {e}", svc.name)))?);
    }
    let mut tasks = Vec::with_capacity(streams.len());
    for (i, (mut stream, svc)) in streams.into_iter().zip(&cfg.services).enumerate() {
        let (tx, name) = (tx.clone(), svc.name.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(update) => {
                        if tx.send((generation, i, update)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Transient by the Resolver contract: keep the last-known-good set.
                        tracing::warn!(service = %name, error = %e, "discovery error; keeping the last known endpoints");
                        metrics::counter!(crate::metrics::ERRORS, "kind" => "discovery").increment(1);
                    }
                }
            }
            tracing::warn!(service = %name, "discovery stream ended; keeping the last known endpoints");
        }));
    }
    Ok(tasks)
}

/// Removes everything the agent created for `cfg`'s backend.
pub fn cleanup(cfg: &Config, dry_run: bool, out: &mut dyn Write) -> Result<(), Error> {
    let mut backend = backend_for(cfg);
    if cfg.backend != BackendKind::Nftables {
        backend.load()?;
    }
    let report = backend.cleanup(dry_run)?;
    if dry_run {
        print_report(out, &report).map_err(|e| Error::io(format!("cannot print: {e}")))?;
    }
    Ok(())
}
