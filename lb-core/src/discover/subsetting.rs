//! Deterministic subsetting: each client connects to `size` of a large fleet's endpoints.
//!
//! With one connection per endpoint, N clients of M endpoints hold N·M connections — at thousands of
//! each, more than either side wants (memory, health checks, TLS handshakes after a restart). Finagle's
//! aperture and Google's deterministic subsetting (SRE book, ch. 20) give every client a small subset
//! instead. [`subset`] picks it by rendezvous (highest-random-weight) hashing: each endpoint scores
//! `hash(client id, endpoint id)` and the client keeps the `size` highest scores. That makes the
//! subset
//!
//! - deterministic: the same client id sees the same subset in every process and restart;
//! - stable: removing an endpoint outside a client's subset changes nothing for it, removing one
//!   inside replaces exactly that one, and an added endpoint displaces at most one;
//! - even in expectation: every endpoint is in a client's subset with probability `size / M`, so
//!   with many clients each endpoint gets about `clients · size / M` of them (binomially spread; a
//!   test checks 1,000 clients over 100 endpoints stay within ±50 % of the mean).
//!
//! Weights and locality do not influence the choice; the policy balances inside the subset as
//! usual. Give each client instance its own stable id (a pod name, a host name plus process): clients
//! sharing an id share a subset. Changes that arrive before the inner stream's first full set are held
//! until it arrives; after it, the subset is re-emitted as one [`Update::Reset`] whenever it changes,
//! and the source's [`Update::Current`] passes through once a subset has been emitted.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Stream, StreamExt as _};

use super::{BoxDiscover, EndpointSet, Update};
use crate::endpoint::Endpoint;
use crate::policy::hash_key;
use crate::BoxError;

/// Wraps `inner` so that it yields only this client's subset of at most `size` endpoints; see the
/// [module docs](self). `size == 0` passes every endpoint through.
pub fn subset(inner: BoxDiscover, size: usize, client_id: impl AsRef<[u8]>) -> BoxDiscover {
    Box::pin(Subset {
        inner,
        size,
        client: client_id.as_ref().to_vec(),
        set: EndpointSet::new(),
        last: None,
    })
}

/// The endpoints of `all` a client with id `client` keeps: the `size` highest rendezvous scores
/// (every endpoint when `size` is 0 or at least `all.len()`), in id order.
pub fn choose<'a>(all: impl IntoIterator<Item = &'a Endpoint>, size: usize, client: &[u8]) -> Vec<Endpoint> {
    let mut scored: Vec<(u64, &Endpoint)> = all.into_iter().map(|e| (score(client, e), e)).collect();
    if size > 0 && scored.len() > size {
        // Highest score first; ties (astronomically rare) broken by id for determinism.
        scored.select_nth_unstable_by(size - 1, |a, b| b.0.cmp(&a.0).then_with(|| a.1.id().cmp(b.1.id())));
        scored.truncate(size);
    }
    let mut chosen: Vec<Endpoint> = scored.into_iter().map(|(_, e)| e.clone()).collect();
    chosen.sort_by(|a, b| a.id().cmp(b.id()));
    chosen
}

fn score(client: &[u8], endpoint: &Endpoint) -> u64 {
    let id = endpoint.id().as_str().as_bytes();
    let mut key = Vec::with_capacity(client.len() + 1 + id.len());
    key.extend_from_slice(client);
    key.push(0);
    key.extend_from_slice(id);
    hash_key(&key)
}

struct Subset {
    inner: BoxDiscover,
    size: usize,
    client: Vec<u8>,
    set: EndpointSet,
    /// The subset last emitted.
    last: Option<Vec<Endpoint>>,
}

impl Stream for Subset {
    type Item = Result<Update, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let update = match ready!(self.inner.poll_next_unpin(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(update)) => update,
            };
            let this = &mut *self;
            if update == Update::Current {
                // The source vouches for the set it sent, so for the subset emitted from it; before
                // a subset went out there is nothing to vouch for.
                if this.last.is_some() {
                    return Poll::Ready(Some(Ok(Update::Current)));
                }
                continue;
            }
            this.set.apply(update);
            if !this.set.is_initialized() {
                continue;
            }
            let chosen = choose(this.set.iter(), this.size, &this.client);
            if this.last.as_ref() == Some(&chosen) {
                continue;
            }
            this.last = Some(chosen.clone());
            return Poll::Ready(Some(Ok(Update::Reset(chosen))));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::discover;
    use crate::endpoint::EndpointId;

    fn ep(i: u32) -> Endpoint {
        Endpoint::new(([10, (i >> 8) as u8, i as u8, 1], 80).into())
    }

    fn fleet(n: u32) -> Vec<Endpoint> {
        (0..n).map(ep).collect()
    }

    fn ids(v: &[Endpoint]) -> BTreeSet<EndpointId> {
        v.iter().map(|e| e.id().clone()).collect()
    }

    #[test]
    fn a_client_keeps_size_endpoints_and_always_the_same_ones() {
        let all = fleet(50);
        let a = choose(&all, 5, b"client-a");
        assert_eq!(a.len(), 5);
        let mut shuffled = all.clone();
        shuffled.reverse();
        assert_eq!(choose(&shuffled, 5, b"client-a"), a, "order of discovery does not matter");
        assert_ne!(ids(&choose(&all, 5, b"client-b")), ids(&a), "another client, another subset");
        assert_eq!(choose(&all, 0, b"x").len(), 50, "size 0 keeps everything");
        assert_eq!(choose(&all[..3], 5, b"x").len(), 3, "a small fleet is kept whole");
    }

    #[test]
    fn membership_changes_move_at_most_one_endpoint() {
        let all = fleet(40);
        for c in 0..50 {
            let client = format!("client-{c}");
            let before = ids(&choose(&all, 6, client.as_bytes()));
            for gone in 0..40u32 {
                let rest: Vec<Endpoint> = all.iter().filter(|e| **e != ep(gone)).cloned().collect();
                let after = ids(&choose(&rest, 6, client.as_bytes()));
                let lost: BTreeSet<_> = before.difference(&after).cloned().collect();
                if before.contains(ep(gone).id()) {
                    assert_eq!(lost, BTreeSet::from([ep(gone).id().clone()]), "only the removed one leaves");
                    assert_eq!(after.len(), 6, "and one other takes its place");
                } else {
                    assert_eq!(after, before, "removing an endpoint outside the subset changes nothing");
                }
            }
            let grown = ids(&choose(&fleet(41), 6, client.as_bytes()));
            assert!(before.difference(&grown).count() <= 1, "an addition displaces at most one");
        }
    }

    #[test]
    fn many_clients_spread_evenly_over_the_fleet() {
        let all = fleet(100);
        let mut per: HashMap<EndpointId, usize> = HashMap::new();
        for c in 0..1000 {
            for e in choose(&all, 10, format!("pod-{c}").as_bytes()) {
                *per.entry(e.id().clone()).or_default() += 1;
            }
        }
        // Mean 100 clients per endpoint; binomial(1000, 0.1) has σ ≈ 9.5, so ±50 % is > 5σ.
        assert_eq!(per.len(), 100, "every endpoint serves some clients");
        let (min, max) = (per.values().min().copied(), per.values().max().copied());
        assert!(min >= Some(50) && max <= Some(150), "connections per endpoint from {min:?} to {max:?}");
    }

    #[tokio::test]
    async fn the_stream_emits_the_subset_only_when_it_changes() {
        let (tx, rx) = discover::channel();
        let mut s = subset(Box::pin(rx), 3, "client-a");
        let all = fleet(10);
        let expected = choose(&all, 3, b"client-a");

        tx.send(Update::Current);
        tx.send(Update::Add(vec![ep(0)]));
        tx.send(Update::Reset(all.clone()));
        let first = s.next().await.expect("open").expect("an update");
        assert_eq!(first, Update::Reset(expected.clone()), "held until the full set, then the subset");

        // Removing an endpoint outside the subset emits nothing; one inside emits the new subset.
        let outside = all.iter().find(|e| !expected.contains(e)).expect("10 > 3").id().clone();
        let inside = expected[0].id().clone();
        tx.send(Update::Remove(vec![outside]));
        tx.send(Update::Remove(vec![inside.clone()]));
        match s.next().await.expect("open").expect("an update") {
            Update::Reset(v) => {
                assert_eq!(v.len(), 3);
                assert!(!v.iter().any(|e| e.id() == &inside));
                assert!(expected[1..].iter().all(|e| v.contains(e)), "the rest of the subset stays");
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        tx.send_error("registry down");
        assert!(s.next().await.expect("open").is_err(), "errors pass through");
        tx.send(Update::Current);
        assert_eq!(s.next().await.expect("open").expect("an update"), Update::Current, "confirmations pass through");
    }
}
