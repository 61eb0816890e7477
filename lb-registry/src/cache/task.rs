//! The cache's background task: one method per event (an update, an error, the source ending, a
//! timer), over the state it shares with the handle and the stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{snapshot, CacheBuilder, MakeSource, Shared, EMPTY_REFUSED, STALENESS};

pub(super) struct CacheTask {
    cfg: CacheBuilder,
    make: MakeSource,
    restartable: bool,
    tx: mpsc::UnboundedSender<Result<Update, BoxError>>,
    shared: Arc<Shared>,
    /// True once the source delivered a full set: from then on, what is served is the source's.
    from_source: bool,
    /// True after a refused update, until the next applied one: the source's word and the set
    /// served differ, so its `Current` does not make the data fresh.
    diverged: bool,
    snapshot_due: Option<Instant>,
    snapshot_writing: Option<JoinHandle<()>>,
}

impl CacheTask {
    pub(super) fn new(
        cfg: CacheBuilder,
        make: MakeSource,
        restartable: bool,
        tx: mpsc::UnboundedSender<Result<Update, BoxError>>,
        shared: Arc<Shared>,
    ) -> Self {
        CacheTask {
            cfg,
            make,
            restartable,
            tx,
            shared,
            from_source: false,
            diverged: false,
            snapshot_due: None,
            snapshot_writing: None,
        }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    pub(super) async fn run(mut self) {
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
                            info!(target_uri = %self.name(), "discovery source ended; restarting it");
                            restart_at = Some(Instant::now() + self.cfg.restart_backoff);
                        } else {
                            info!(target_uri = %self.name(), endpoints = self.shared.lock().set.len(), "discovery source ended; keeping the last known endpoints");
                        }
                    }
                },
                _ = sleep_until(restart_at) => {
                    restart_at = None;
                    source = (self.make)();
                }
                _ = tick(&mut resync) => {
                    debug!(target_uri = %self.name(), "periodic resync: restarting the discovery source");
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
                let emptied = list.is_empty() && !self.shared.lock().set.is_empty();
                if emptied && !allow_empty {
                    self.refuse_empty("reset");
                    return;
                }
                self.from_source = true;
                self.shared.lock().set = list.iter().map(|e| (e.id().clone(), e.clone())).collect();
                self.forward(Update::Reset(list));
            }
            // Adds nothing and confirms nothing.
            Update::Add(list) if list.is_empty() => {}
            Update::Add(list) => {
                let mut s = self.shared.lock();
                for e in &list {
                    s.set.insert(e.id().clone(), e.clone());
                }
                drop(s);
                self.forward(Update::Add(list));
            }
            Update::Remove(ids) => {
                let mut s = self.shared.lock();
                let emptied = !s.set.is_empty() && s.set.keys().all(|k| ids.contains(k));
                if emptied && !allow_empty {
                    drop(s);
                    self.refuse_empty("remove");
                    return;
                }
                for id in &ids {
                    s.set.remove(id);
                }
                drop(s);
                self.forward(Update::Remove(ids));
            }
            Update::Current => {
                // Only a source that delivered what is served can vouch for it.
                if self.from_source && !self.diverged {
                    self.mark_fresh();
                    let _ = self.tx.send(Ok(Update::Current));
                }
            }
        }
    }

    fn forward(&mut self, update: Update) {
        self.diverged = false;
        self.mark_fresh();
        let first_from_source = {
            let mut s = self.shared.lock();
            s.has_data = true;
            s.from_snapshot = s.from_snapshot && !self.from_source;
            if self.from_source {
                s.generation += 1;
            }
            self.from_source && s.generation == 1
        };
        // Sent only once the shared state says what the consumer is about to see: a consumer that
        // drops the stream as soon as it has the update must find it counted for the last write.
        let _ = self.tx.send(Ok(update));
        if self.cfg.snapshot.is_none() || !self.from_source {
            return;
        }
        if first_from_source {
            // The first full set goes to disk at once: a client that exits a moment after it
            // started must not leave nothing (or an older set) behind.
            self.write_snapshot();
        } else if self.snapshot_due.is_none() {
            self.snapshot_due = Some(Instant::now() + self.cfg.snapshot_interval);
        }
    }

    fn refuse_empty(&mut self, kind: &'static str) {
        metrics::counter!(EMPTY_REFUSED, "target" => self.name().to_string()).increment(1);
        warn!(
            target_uri = %self.name(),
            update = kind,
            kept = self.shared.lock().set.len(),
            "refusing an update that would remove every endpoint; keeping the last known set (allow_empty=false)"
        );
        // The source is talking but no longer confirms what is served.
        self.diverged = true;
        self.mark_stale();
    }

    fn mark_fresh(&mut self) {
        let was_stale = self.shared.lock().stale_since.take().map(|(since, base)| base + since.elapsed());
        metrics::gauge!(STALENESS, "target" => self.name().to_string()).set(0.0);
        if let Some(age) = was_stale {
            info!(target_uri = %self.name(), was_stale_for_ms = age.as_millis() as u64, "discovery data is fresh again");
        }
    }

    fn mark_stale(&mut self) {
        let mut s = self.shared.lock();
        if s.stale_since.is_none() {
            s.stale_since = Some((Instant::now(), Duration::ZERO));
        }
    }

    fn report_staleness(&self) {
        let stale = {
            let s = self.shared.lock();
            s.stale_since.map(|(since, base)| (base + since.elapsed(), s.from_snapshot, s.set.len()))
        };
        if let Some((age, from_snapshot, len)) = stale {
            metrics::gauge!(STALENESS, "target" => self.name().to_string()).set(age.as_secs_f64());
            warn!(
                target_uri = %self.name(),
                staleness_s = age.as_secs(),
                from_snapshot,
                endpoints = len,
                "serving stale discovery data"
            );
        }
    }

    fn load_snapshot(&mut self, path: &std::path::Path) {
        let loaded = match snapshot::read(path, self.name()) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return,
            Err(error) => {
                warn!(target_uri = %self.name(), path = %path.display(), %error, "ignoring the discovery snapshot");
                return;
            }
        };
        warn!(
            target_uri = %self.name(),
            path = %path.display(),
            endpoints = loaded.endpoints.len(),
            skipped = loaded.skipped,
            staleness_s = loaded.age.as_secs(),
            "serving endpoints from the on-disk snapshot until the registry answers"
        );
        {
            let mut s = self.shared.lock();
            s.set = loaded.endpoints.iter().map(|e| (e.id().clone(), e.clone())).collect();
            s.has_data = true;
            s.from_snapshot = true;
            s.stale_since = Some((Instant::now(), loaded.age));
        }
        let _ = self.tx.send(Ok(Update::Reset(loaded.endpoints)));
    }

    fn write_snapshot(&mut self) {
        self.snapshot_due = None;
        if self.snapshot_writing.as_ref().is_some_and(|h| !h.is_finished()) {
            // One write at a time; try again shortly with whatever the set is then.
            self.snapshot_due = Some(Instant::now() + self.cfg.snapshot_interval);
            return;
        }
        let Some((generation, file)) = self.shared.unwritten_snapshot() else { return };
        let shared = Arc::clone(&self.shared);
        self.snapshot_writing = Some(tokio::task::spawn_blocking(move || shared.write_snapshot(generation, &file)));
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
