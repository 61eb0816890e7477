//! The endpoints the attempts of one call went to, so that its next attempt goes elsewhere.
//!
//! A call that lb re-sends — a retry after a retryable answer, a hedge racing a slow attempt —
//! does better on an endpoint it has not tried: a retry on the replica that just failed often
//! fails again, and a hedge on the replica that is being slow waits behind the same queue. The
//! face driving the attempts gives each one an [`Avoid`] (an extension of the request, found by
//! [`Balance::with_avoid`](super::Balance::with_avoid)); the engine skips the endpoints it lists
//! and adds the endpoint it sends to. A retry *prefers* an untried endpoint and falls back to a
//! tried one when the policy offers nothing else; a hedge *requires* one, and fails at once when
//! every endpoint is tried (gRFC A6's hedges go to distinct backends).

use std::sync::{Arc, Mutex};

use crate::endpoint::EndpointId;

/// The endpoints a call's attempts were sent to, shared by those attempts.
#[derive(Clone, Debug, Default)]
pub struct Attempted(Arc<Mutex<Vec<EndpointId>>>);

impl Attempted {
    /// None yet.
    pub fn new() -> Self {
        Attempted::default()
    }

    /// The list; a panic elsewhere while it was held leaves it as it was, still usable.
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<EndpointId>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The endpoints tried so far, in the order the attempts were sent.
    pub fn endpoints(&self) -> Vec<EndpointId> {
        self.list().clone()
    }

    /// How many attempts were sent.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether no attempt was sent yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn contains(&self, id: &EndpointId) -> bool {
        self.list().contains(id)
    }

    pub(crate) fn push(&self, id: &EndpointId) {
        self.list().push(id.clone());
    }
}

/// What one attempt avoids: the endpoints of the call's earlier attempts.
#[derive(Clone, Debug, Default)]
pub struct Avoid {
    /// The call's attempts so far; the engine adds this attempt's endpoint when it sends.
    pub attempted: Attempted,
    /// `true`: only an untried endpoint will do (a hedge); `false`: an untried one is preferred
    /// (a retry).
    pub strict: bool,
}

impl Avoid {
    /// Prefers endpoints `attempted` does not list.
    pub fn prefer(attempted: Attempted) -> Self {
        Avoid { attempted, strict: false }
    }

    /// Requires an endpoint `attempted` does not list.
    pub fn require(attempted: Attempted) -> Self {
        Avoid { attempted, strict: true }
    }
}
