//! Discovery: a paginated prefix get at one revision, then a watch from the next revision.
//!
//! This is the list-then-watch pattern of Kubernetes' reflector, on etcd's MVCC revisions:
//! - the first list yields an [`Update::Reset`]; each watch batch yields `Add`/`Remove`;
//! - after a broken connection the watch resumes from the last revision delivered, so nothing is
//!   missed and nothing is relisted — unless that revision was compacted (the watch is cancelled
//!   with `compact_revision` set) or the store's history is not the one watched (etcd restored from
//!   a backup, or restarted with empty data: its revision or raft term went backwards, or a
//!   keys-only listing shows keys changed at or before our revision that we never saw), in which
//!   case it relists and emits a `Reset`, which the pool diffs so unchanged endpoints keep their
//!   connections. What no check can see is a refilled store whose keys coincide, key and
//!   `mod_revision`, with the old ones; the cache's periodic resync bounds that;
//! - once a watch is (re)established, and at each progress notification (everything up to the
//!   header's revision was sent), it sends [`Update::Current`], telling the [cache](crate::cache)
//!   that the data is current again.
//!
//! A value that does not decode is skipped, logged and counted (see [`super::schema`]); if it
//! replaces a valid value, the previous value stays in use.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use futures_util::Stream;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Endpoint, EndpointId, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use lb_core::backoff::Backoff;

use super::config::{Config, SharedConfig};
use super::schema;
use crate::Error;

/// Counter: registry values skipped because they did not decode, labels `registry`, `reason`.
pub const INVALID_ENTRIES: &str = "lb_registry_invalid_entries_total";

// Pages keep each response far below gRPC's 4 MiB default message cap even at the 64 KiB value cap
// times a few entries; 1,000 small values is ~150 KiB.
const PAGE: i64 = 1000;

/// Discovery from etcd: each [`resolve`](crate::Resolver::resolve) call lists and watches one
/// service. The stream is the registry's word, uncached; see the [module docs](super) for the
/// cache around it.
#[derive(Clone, Debug)]
pub struct EtcdResolver {
    pub(super) cfg: SharedConfig,
}

impl crate::Resolver for EtcdResolver {
    fn resolve(&self, service: &str) -> BoxDiscover {
        watch(Arc::clone(&self.cfg), service.to_string())
    }
}

impl EtcdResolver {
    /// Options for the etcd cluster at `endpoints`; [`build_resolver`](super::EtcdBuilder::build_resolver)
    /// ends them.
    pub fn builder(endpoints: impl IntoIterator<Item = impl AsRef<str>>) -> super::EtcdBuilder {
        super::EtcdBuilder::new(endpoints)
    }
}

/// The uncached list-and-watch stream of one service. Its task stops when the stream is dropped.
fn watch(cfg: SharedConfig, service: String) -> BoxDiscover {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(cfg, service, tx));
    Box::pin(TaskStream { rx, task })
}

struct TaskStream {
    rx: mpsc::UnboundedReceiver<Result<Update, BoxError>>,
    task: JoinHandle<()>,
}

impl Stream for TaskStream {
    type Item = Result<Update, BoxError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TaskStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Tx = mpsc::UnboundedSender<Result<Update, BoxError>>;

enum End {
    /// Relist at once (compaction, or the store went back in time).
    Relist,
    /// Reconnect after a backoff.
    Failed(String, Option<etcd_client::Error>),
}

impl From<etcd_client::Error> for End {
    fn from(e: etcd_client::Error) -> Self {
        End::Failed("etcd request failed".into(), Some(e))
    }
}

#[derive(Debug)]
struct WatchError(String);

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WatchError {}

async fn run(cfg: SharedConfig, service: String, tx: Tx) {
    let prefix = cfg.service_prefix(&service);
    let mut state = WatchState {
        last_rev: None,
        term: 0,
        known: HashMap::new(),
    };
    let mut backoff = cfg.backoff();
    loop {
        match session(&cfg, &prefix, &mut state, &tx, &mut backoff).await {
            End::Relist => state.last_rev = None,
            End::Failed(what, source) => {
                let message = match &source {
                    Some(e) => format!("etcd discovery of `{service}`: {what}: {e}"),
                    None => format!("etcd discovery of `{service}`: {what}"),
                };
                let err: BoxError = Box::new(Error::registry(message.clone(), WatchError(what)));
                if tx.send(Err(err)).is_err() {
                    return;
                }
                let delay = backoff.next();
                warn!(service = %service, retry_in_ms = delay.as_millis() as u64, error = %message, "etcd watch failed; keeping the last known endpoints");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

struct WatchState {
    /// The revision up to which everything under the prefix has been delivered.
    last_rev: Option<i64>,
    /// The highest raft term seen; within one cluster's history it never decreases.
    term: u64,
    /// Every key under the prefix (valid value or not) and its `mod_revision`, as delivered.
    known: HashMap<Vec<u8>, i64>,
}

async fn session(cfg: &Config, prefix: &str, st: &mut WatchState, tx: &Tx, backoff: &mut Backoff) -> End {
    let mut client = match cfg.connect().await {
        Ok(c) => c,
        Err(e) => return End::Failed("cannot connect".into(), Some(e)),
    };
    let t = cfg.request_timeout;
    if let Some(rev) = st.last_rev {
        match same_history(&mut client, prefix, rev, st, t).await {
            Ok(true) => {}
            Ok(false) => st.last_rev = None,
            Err(e) => return e,
        }
    }
    let rev = match st.last_rev {
        Some(rev) => rev,
        None => match list(&mut client, prefix, t).await {
            Ok((endpoints, rev, term, known)) => {
                st.term = st.term.max(term);
                st.known = known;
                debug!(prefix, endpoints = endpoints.len(), revision = rev, "listed");
                if tx.send(Ok(Update::Reset(endpoints))).is_err() {
                    return End::Failed("consumer gone".into(), None);
                }
                st.last_rev = Some(rev);
                rev
            }
            Err(e) => return e,
        },
    };
    let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1).with_progress_notify();
    let (_watcher, mut stream) = match tokio::time::timeout(t, client.watch(prefix, Some(opts))).await {
        Ok(Ok(w)) => w.split(),
        Ok(Err(e)) => return e.into(),
        Err(_) => return End::Failed("creating the watch timed out".into(), None),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return End::Failed("watch stream closed by the server".into(), None),
            Err(e) => return e.into(),
        };
        if let Some(h) = resp.header() {
            st.term = st.term.max(h.raft_term());
        }
        if resp.compact_revision() > 0 {
            info!(prefix, from = rev + 1, compacted_to = resp.compact_revision(), "watch revision compacted; relisting");
            return End::Relist;
        }
        if resp.canceled() {
            return End::Failed(format!("watch cancelled: {}", resp.cancel_reason()), None);
        }
        if resp.created() {
            backoff.reset();
            // The watch starts right after what was delivered: the set is current as of now.
            let _ = tx.send(Ok(Update::Current));
        }
        if resp.events().is_empty() {
            // A progress notification: everything up to the header's revision has been sent, so
            // the set is still current.
            if let Some(h) = resp.header() {
                if !resp.created() {
                    st.last_rev = Some(st.last_rev.unwrap_or(0).max(h.revision()));
                    let _ = tx.send(Ok(Update::Current));
                }
            }
            continue;
        }
        let mut batch = Batch::default();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            st.last_rev = Some(st.last_rev.unwrap_or(0).max(kv.mod_revision()));
            match ev.event_type() {
                EventType::Put => {
                    st.known.insert(kv.key().to_vec(), kv.mod_revision());
                    if let Some(ep) = decode_kv(prefix, kv) {
                        batch.add(ep, tx);
                    }
                }
                EventType::Delete => {
                    st.known.remove(kv.key());
                    if let Some(id) = key_id(prefix, kv.key()) {
                        batch.remove(EndpointId::new(id), tx);
                    }
                }
            }
        }
        batch.flush(tx);
    }
}

/// Whether the store still holds the history we watched up to `rev`, so the watch can resume from
/// `rev + 1`. A keys-only listing (no values) is compared with what was delivered: every key last
/// modified at or before `rev` must be known with that same `mod_revision`. A store restored from a
/// backup, or emptied and refilled, fails this even when its revision has caught up with ours
/// (then neither the revision nor the raft term went backwards); a relist follows.
async fn same_history(client: &mut Client, prefix: &str, rev: i64, st: &mut WatchState, t: Duration) -> Result<bool, End> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut at = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_keys_only().with_limit(PAGE * 10);
        if at > 0 {
            opts = opts.with_revision(at);
        }
        let resp = match tokio::time::timeout(t, client.get(from.clone(), Some(opts))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(End::Failed("history check timed out".into(), None)),
        };
        if at == 0 {
            let (now, term) = resp.header().map_or((0, 0), |h| (h.revision(), h.raft_term()));
            if now < rev || term < st.term {
                warn!(prefix, ours = rev, theirs = now, our_term = st.term, their_term = term, "etcd's history went backwards (restored or emptied); relisting");
                return Ok(false);
            }
            st.term = term;
            at = now;
        }
        for kv in resp.kvs() {
            if kv.mod_revision() <= rev && st.known.get(kv.key()) != Some(&kv.mod_revision()) {
                warn!(prefix, key = %String::from_utf8_lossy(kv.key()), ours = rev, "etcd's history differs from what was watched (restored or refilled); relisting");
                return Ok(false);
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(true),
        }
    }
}

/// Coalesces consecutive events of one kind, keeping their order.
#[derive(Default)]
struct Batch {
    adds: Vec<Endpoint>,
    removes: Vec<EndpointId>,
}

impl Batch {
    fn add(&mut self, ep: Endpoint, tx: &Tx) {
        if !self.removes.is_empty() {
            let _ = tx.send(Ok(Update::Remove(std::mem::take(&mut self.removes))));
        }
        self.adds.push(ep);
    }

    fn remove(&mut self, id: EndpointId, tx: &Tx) {
        if !self.adds.is_empty() {
            let _ = tx.send(Ok(Update::Add(std::mem::take(&mut self.adds))));
        }
        self.removes.push(id);
    }

    fn flush(self, tx: &Tx) {
        if !self.adds.is_empty() {
            let _ = tx.send(Ok(Update::Add(self.adds)));
        }
        if !self.removes.is_empty() {
            let _ = tx.send(Ok(Update::Remove(self.removes)));
        }
    }
}

/// Lists every instance at one revision, a page at a time.
async fn list(client: &mut Client, prefix: &str, t: Duration) -> Result<(Vec<Endpoint>, i64, u64, HashMap<Vec<u8>, i64>), End> {
    let end = prefix_end(prefix.as_bytes());
    let mut out = Vec::new();
    let mut known = HashMap::new();
    let mut from: Vec<u8> = prefix.as_bytes().to_vec();
    let (mut rev, mut term) = (0, 0);
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let resp = match tokio::time::timeout(t, client.get(from.clone(), Some(opts))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(End::Failed("listing timed out".into(), None)),
        };
        if rev == 0 {
            (rev, term) = resp.header().map_or((0, 0), |h| (h.revision(), h.raft_term()));
        }
        for kv in resp.kvs() {
            known.insert(kv.key().to_vec(), kv.mod_revision());
            if let Some(ep) = decode_kv(prefix, kv) {
                out.push(ep);
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, rev, term, known)),
        }
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_id<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    std::str::from_utf8(rest).ok()
}

fn decode_kv(prefix: &str, kv: &KeyValue) -> Option<Endpoint> {
    let key = String::from_utf8_lossy(kv.key());
    let result = match key_id(prefix, kv.key()) {
        Some(id) => schema::decode(id, kv.value()),
        None => Err(schema::Invalid::BadKey),
    };
    match result {
        Ok(ep) => Some(ep),
        Err(invalid) => {
            metrics::counter!(INVALID_ENTRIES, "registry" => "etcd", "reason" => invalid.reason()).increment(1);
            warn!(key = %key, reason = invalid.reason(), error = %invalid, "skipping an invalid etcd entry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"/lb/a/"), b"/lb/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(key_id("/p/s/", b"/p/s/i-1"), Some("i-1"));
        assert_eq!(key_id("/p/s/", b"/p/t/i-1"), None);
    }
}
