//! The double's storage: objects, the resourceVersion counter, the event history, open watches.
//!
//! As in the API server (over etcd), every write takes the next resourceVersion, and a watch from
//! version `N` replays the history after `N` and then follows live writes. History before the
//! compaction point is gone: a watch from there is answered `410 Gone` ("too old resource
//! version"), which is what makes clients relist.

use std::collections::BTreeMap;

use bytes::Bytes;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::selector::Selector;

/// A watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) namespace: String,
    pub(crate) slice: EndpointSlice,
}

impl Stored {
    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        self.slice.metadata.labels.clone().unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct HistoryEntry {
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    pub(crate) object: Stored,
    /// For a modification, the object before it: a watcher's selector may match one and not the
    /// other.
    pub(crate) previous: Option<Stored>,
}

impl HistoryEntry {
    /// The event a watch selecting with `wants` sees, as the API server's watch cache filters
    /// (`cacheWatcher.convertToWatchEvent`): a modification into the selection is `ADDED`; out of
    /// it, `DELETED` carrying the previous content at the new resourceVersion; outside it, nothing.
    pub(crate) fn as_seen_by(&self, wants: impl Fn(&Stored) -> bool) -> Option<Bytes> {
        match (self.kind, &self.previous) {
            (EventType::Modified, Some(prev)) => match (wants(prev), wants(&self.object)) {
                (true, true) => Some(event_line(EventType::Modified, &self.object.slice)),
                (false, true) => Some(event_line(EventType::Added, &self.object.slice)),
                (true, false) => {
                    let mut old = prev.slice.clone();
                    old.metadata.resource_version = Some(self.rv.to_string());
                    Some(event_line(EventType::Deleted, &old))
                }
                (false, false) => None,
            },
            (kind, _) => wants(&self.object).then(|| event_line(kind, &self.object.slice)),
        }
    }
}

/// One open watch stream.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub(crate) namespace: Option<String>,
    pub(crate) selector: Selector,
    pub(crate) bookmarks: bool,
    /// The last resourceVersion this watcher was told (by an event or a bookmark).
    pub(crate) seen: u64,
    pub(crate) tx: mpsc::UnboundedSender<Bytes>,
}

impl Watcher {
    pub(crate) fn wants(&self, object: &Stored) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == object.namespace) && self.selector.matches(&object.labels())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) rv: u64,
    /// By (namespace, name).
    pub(crate) objects: BTreeMap<(String, String), Stored>,
    pub(crate) history: Vec<HistoryEntry>,
    /// Versions up to this one are compacted away.
    pub(crate) compacted: u64,
    pub(crate) watchers: Vec<Watcher>,
    pub(crate) uid: u64,
    pub(crate) list_requests: u64,
    pub(crate) watch_requests: u64,
    /// Watch and continue requests answered `410 Expired` (too old a version).
    pub(crate) expired_requests: u64,
    /// Requests refused with 401 or 403.
    pub(crate) auth_failures: u64,
    /// Requests answered 503 while unavailable.
    pub(crate) unavailable_answers: u64,
    pub(crate) unavailable: bool,
}

impl Store {
    /// Creates or replaces a slice, returning its new resourceVersion.
    pub(crate) fn apply(&mut self, mut slice: EndpointSlice) -> u64 {
        let namespace = slice.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.rv += 1;
        let key = (namespace.clone(), name);
        let previous = self.objects.get(&key).cloned();
        let kind = match &previous {
            Some(old) => {
                slice.metadata.uid = old.slice.metadata.uid.clone();
                slice.metadata.generation = Some(old.slice.metadata.generation.unwrap_or(1) + 1);
                EventType::Modified
            }
            None => {
                self.uid += 1;
                slice.metadata.uid = Some(format!("00000000-0000-4000-8000-{:012}", self.uid));
                slice.metadata.generation = Some(1);
                EventType::Added
            }
        };
        slice.metadata.namespace = Some(namespace.clone());
        slice.metadata.resource_version = Some(self.rv.to_string());
        let stored = Stored { namespace, slice };
        self.objects.insert(key, stored.clone());
        self.record(HistoryEntry {
            rv: self.rv,
            kind,
            object: stored,
            previous,
        });
        self.rv
    }

    /// Deletes a slice; the DELETED event carries its last state at the new resourceVersion.
    pub(crate) fn delete(&mut self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        let mut stored = self.objects.remove(&(namespace.to_string(), name.to_string()))?;
        self.rv += 1;
        stored.slice.metadata.resource_version = Some(self.rv.to_string());
        let slice = stored.slice.clone();
        self.record(HistoryEntry {
            rv: self.rv,
            kind: EventType::Deleted,
            object: stored,
            previous: None,
        });
        Some(slice)
    }

    fn record(&mut self, entry: HistoryEntry) {
        self.watchers.retain_mut(|w| {
            let Some(line) = entry.as_seen_by(|o| w.wants(o)) else {
                return !w.tx.is_closed();
            };
            w.seen = entry.rv;
            w.tx.send(line).is_ok()
        });
        self.history.push(entry);
    }

    /// Forgets the history up to the current version.
    pub(crate) fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Sends every bookmark-enabled watcher that has not seen the current version a BOOKMARK.
    pub(crate) fn bookmarks(&mut self) {
        let rv = self.rv;
        self.watchers.retain_mut(|w| {
            if !w.bookmarks || w.seen >= rv {
                return !w.tx.is_closed();
            }
            w.seen = rv;
            w.tx.send(bookmark_line(rv, false)).is_ok()
        });
    }

    /// The current objects a watch or list selects, in (namespace, name) order.
    pub(crate) fn select<'a>(&'a self, namespace: Option<&'a str>, selector: &'a Selector) -> impl Iterator<Item = &'a Stored> + 'a {
        self.objects
            .values()
            .filter(move |o| namespace.is_none_or(|ns| ns == o.namespace) && selector.matches(&o.labels()))
    }
}

pub(crate) fn event_line(kind: EventType, slice: &EndpointSlice) -> Bytes {
    line(&json!({ "type": kind.as_str(), "object": slice }))
}

pub(crate) fn bookmark_line(rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": { "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": metadata },
    }))
}

/// A `Status` object, as the API server sends for errors (in bodies and in watch ERROR events).
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(crate) fn error_line(code: u16, reason: &str, message: &str) -> Bytes {
    line(&json!({ "type": "ERROR", "object": status(code, reason, message) }))
}

fn line(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}
