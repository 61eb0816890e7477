//! Discovery updates with snapshot semantics.
//!
//! A resolver is a [`Stream`] of [`Update`]s. The first update a consumer acts on must be a full set
//! ([`Update::Reset`]); after it come changes ([`Update::Add`], [`Update::Remove`]). A later `Reset` —
//! after a relist, a compaction, a reconnect — is *diffed* against the current set by
//! [`EndpointSet::apply`], so endpoints that did not change keep their connections and load history.
//! This is `kube-runtime`'s watcher/reflector contract and linkerd's `reset_pool`.
//!
//! A source that re-established contact without news says so with [`Update::Current`], which
//! changes nothing but tells a cache that what it serves is current again.
//!
//! Errors on the stream are not fatal: consumers keep the last-known-good set and carry on.

use std::collections::btree_map::{BTreeMap, Entry};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::endpoint::{Endpoint, EndpointId};
use crate::BoxError;

pub mod subsetting;
pub use self::subsetting::subset;

/// One discovery event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The complete set: anything not listed is gone.
    Reset(Vec<Endpoint>),
    /// Endpoints added, or replaced when their id is already known.
    Add(Vec<Endpoint>),
    /// Endpoints removed by id.
    Remove(Vec<EndpointId>),
    /// The source confirms that the set it delivered so far is still its latest word, without
    /// changing it: a watch was re-established after an error, a relist or a re-resolution found
    /// nothing new. It changes no set; a cache in front of the pool (`lb-registry`'s) takes it as
    /// "the data is fresh again" and stops its staleness clock. Sources send it only after having
    /// delivered a full set.
    Current,
}

/// A boxed stream of discovery updates, the type every resolver in `lb-registry` returns.
pub type BoxDiscover = Pin<Box<dyn Stream<Item = Result<Update, BoxError>> + Send + 'static>>;

/// What applying one [`Update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Endpoints that were not known before.
    pub added: Vec<Endpoint>,
    /// Known endpoints whose address, weight, locality, metadata or state changed (new value).
    pub changed: Vec<Endpoint>,
    /// Endpoints that are gone.
    pub removed: Vec<EndpointId>,
}

impl Diff {
    /// True when the update changed nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The current endpoint set of one target, keyed by id.
///
/// It tracks whether a full set has been seen: changes that arrive before the first `Reset` are
/// applied too (a resolver may legitimately start with `Add`s), but [`EndpointSet::is_initialized`]
/// only turns true with the first `Reset`.
#[derive(Clone, Debug, Default)]
pub struct EndpointSet {
    endpoints: BTreeMap<EndpointId, Endpoint>,
    initialized: bool,
}

impl EndpointSet {
    /// An empty, uninitialized set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once a full set (`Reset`) has been applied.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Looks an endpoint up by id.
    pub fn get(&self, id: &EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(id)
    }

    /// Iterates over the endpoints in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.endpoints.values()
    }

    /// Applies an update and reports what changed. A `Reset` is diffed: identical endpoints are
    /// neither removed nor re-added; `Current` changes nothing.
    pub fn apply(&mut self, update: Update) -> Diff {
        let mut diff = Diff::default();
        match update {
            Update::Reset(list) => {
                self.initialized = true;
                let mut next: BTreeMap<EndpointId, Endpoint> = BTreeMap::new();
                for ep in list {
                    // A duplicated id within one reset: the last one wins, as with repeated `Add`s.
                    next.insert(ep.id().clone(), ep);
                }
                for id in self.endpoints.keys() {
                    if !next.contains_key(id) {
                        diff.removed.push(id.clone());
                    }
                }
                for (id, ep) in &next {
                    match self.endpoints.get(id) {
                        None => diff.added.push(ep.clone()),
                        Some(old) if old != ep => diff.changed.push(ep.clone()),
                        Some(_) => {}
                    }
                }
                self.endpoints = next;
            }
            Update::Add(list) => {
                for ep in list {
                    match self.endpoints.entry(ep.id().clone()) {
                        Entry::Vacant(v) => {
                            diff.added.push(ep.clone());
                            v.insert(ep);
                        }
                        Entry::Occupied(mut o) => {
                            if o.get() != &ep {
                                diff.changed.push(ep.clone());
                                o.insert(ep);
                            }
                        }
                    }
                }
            }
            Update::Remove(ids) => {
                for id in ids {
                    if self.endpoints.remove(&id).is_some() {
                        diff.removed.push(id);
                    }
                }
            }
            // A confirmation, not a change: nothing to apply, and it does not make a set full.
            Update::Current => {}
        }
        diff
    }

    /// The whole set as a `Reset` update.
    pub fn to_reset(&self) -> Update {
        Update::Reset(self.endpoints.values().cloned().collect())
    }
}

/// A discovery stream that yields one full set and then stays open without further changes.
pub fn fixed(endpoints: Vec<Endpoint>) -> BoxDiscover {
    Box::pin(futures_util::stream::iter([Ok(Update::Reset(endpoints))]).chain(futures_util::stream::pending()))
}

/// A discovery source driven by hand: every [`Updater::send`] reaches the stream.
///
/// Useful for tests, for the C ABI, and for registries that push rather than pull. The stream ends
/// when every `Updater` is dropped; the pool then keeps serving the last set.
pub fn channel() -> (Updater, UpdateStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Updater { tx }, UpdateStream { rx })
}

/// The sending half of [`channel`].
#[derive(Clone, Debug)]
pub struct Updater {
    tx: mpsc::UnboundedSender<Result<Update, BoxError>>,
}

impl Updater {
    /// Sends an update. Returns `false` when the stream has been dropped.
    pub fn send(&self, update: Update) -> bool {
        self.tx.send(Ok(update)).is_ok()
    }

    /// Sends a discovery error (the consumer keeps its last-known-good set).
    pub fn send_error(&self, error: impl Into<BoxError>) -> bool {
        self.tx.send(Err(error.into())).is_ok()
    }
}

/// The receiving half of [`channel`].
#[derive(Debug)]
pub struct UpdateStream {
    rx: mpsc::UnboundedReceiver<Result<Update, BoxError>>,
}

impl Stream for UpdateStream {
    type Item = Result<Update, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

use futures_util::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointState;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(([127, 0, 0, 1], port).into())
    }

    #[test]
    fn reset_is_diffed() {
        let mut set = EndpointSet::new();
        assert!(!set.is_initialized());
        let d = set.apply(Update::Reset(vec![ep(1), ep(2), ep(3)]));
        assert_eq!(d.added.len(), 3);
        assert!(set.is_initialized());

        let d = set.apply(Update::Reset(vec![ep(2), ep(3).with_weight(7), ep(4)]));
        assert_eq!(d.added, vec![ep(4)]);
        assert_eq!(d.changed, vec![ep(3).with_weight(7)]);
        assert_eq!(d.removed, vec![ep(1).id().clone()]);

        let d = set.apply(Update::Reset(vec![ep(2), ep(3).with_weight(7), ep(4)]));
        assert!(d.is_empty(), "an identical reset changes nothing");
    }

    #[test]
    fn add_and_remove() {
        let mut set = EndpointSet::new();
        let d = set.apply(Update::Add(vec![ep(1)]));
        assert_eq!(d.added.len(), 1);
        assert!(!set.is_initialized(), "only a reset is a full set");
        let d = set.apply(Update::Add(vec![ep(1).with_state(EndpointState::Terminating)]));
        assert_eq!(d.changed.len(), 1);
        let d = set.apply(Update::Remove(vec![ep(9).id().clone(), ep(1).id().clone()]));
        assert_eq!(d.removed, vec![ep(1).id().clone()]);
        assert!(set.is_empty());
    }

    #[test]
    fn current_changes_nothing() {
        let mut set = EndpointSet::new();
        assert!(set.apply(Update::Current).is_empty());
        assert!(!set.is_initialized(), "a confirmation is not a full set");
        set.apply(Update::Reset(vec![ep(1)]));
        assert!(set.apply(Update::Current).is_empty());
        assert_eq!(set.iter().cloned().collect::<Vec<_>>(), vec![ep(1)]);
    }
}
