//! Running the agent: options, the backend a configuration asks for, discovery tasks, cleanup.
//!
//! Each service's target is resolved with [`lb_registry::resolve`] and driven by its own task, so a
//! slow registry never delays another service; the tasks feed the [`Agent`]'s event channel.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use crate::agent::{Agent, Event};
use crate::backend::{Backend, SyncReport};
use crate::config::{BackendKind, Config};
use crate::http::Health;
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
    reload: mpsc::UnboundedReceiver<Config>,
) -> Result<(), Error> {
    let (agent, events) = Agent::start(cfg, opts, health, out)?;
    agent.run(events, shutdown, reload).await
}

/// Starts one discovery task per service; nothing is started unless every target resolves.
pub(crate) fn spawn_discovery(
    cfg: &Config,
    generation: u64,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let mut streams = Vec::with_capacity(cfg.services.len());
    for svc in &cfg.services {
        streams.push(lb_registry::resolve(&svc.target).map_err(|e| Error::config(format!("service {}: {e}", svc.name)))?);
    }
    let mut tasks = Vec::with_capacity(streams.len());
    for (service, (mut stream, svc)) in streams.into_iter().zip(&cfg.services).enumerate() {
        let (tx, name) = (tx.clone(), svc.name.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(update) => {
                        if tx.send(Event::Discovered { generation, service, update }).is_err() {
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
    tasks.extend(crate::kubernetes::spawn_affinity_watches(cfg, generation, tx));
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
