//! Building and publishing the immutable snapshot request paths pick from.

use std::sync::Arc;

use tracing::debug;

use super::{Phase, PoolTask, Slot};
use crate::endpoint::EndpointState;
use crate::metrics as m;
use crate::policy::Candidate;
use crate::pool::{Connect, Entry, Snapshot};

impl<K: Connect> PoolTask<K> {
    pub(super) fn publish(&mut self) {
        self.dirty = false;
        let has_checker = self.health.is_some();
        let healthy_slot = |s: &Slot<K::Connection>| {
            matches!(s.phase, Phase::Ready(_)) && (if has_checker { s.health == Some(true) } else { s.health != Some(false) })
        };
        // Kubernetes' fallback: serving-but-terminating endpoints only while no ready one is usable.
        let ready_usable = self
            .slots
            .values()
            .any(|s| s.endpoint.state() == EndpointState::Ready && healthy_slot(s));
        let serving_usable = self
            .slots
            .values()
            .any(|s| s.endpoint.state() == EndpointState::Serving && healthy_slot(s));
        let group = if !ready_usable && serving_usable {
            EndpointState::Serving
        } else {
            EndpointState::Ready
        };
        let mut entries = Vec::with_capacity(self.slots.len());
        let mut candidates = Vec::with_capacity(self.slots.len());
        let mut healthy = 0;
        // gRPC's TRANSIENT_FAILURE: every endpoint's last connection attempt failed.
        let mut connect_failing = true;
        let mut phases = [0usize; 5];
        for slot in self.slots.values_mut() {
            slot.sample();
        }
        for slot in self.slots.values() {
            phases[slot.phase.public() as usize] += 1;
            if slot.endpoint.state() != group {
                continue;
            }
            let ok = healthy_slot(slot);
            healthy += usize::from(ok);
            connect_failing &= slot.connect_error.is_some();
            let connection = match &slot.phase {
                Phase::Ready(c) => Some(c.clone()),
                Phase::Ejected { conn, .. } => conn.clone(),
                _ => None,
            };
            candidates.push(Candidate {
                endpoint: Arc::clone(&slot.endpoint),
                load: Arc::clone(&slot.load),
                healthy: ok,
                ready_since: slot.connected_at,
            });
            entries.push(Entry {
                endpoint: Arc::clone(&slot.endpoint),
                load: Arc::clone(&slot.load),
                connection,
                phase: slot.phase.public(),
                healthy: ok,
            });
        }
        let entries_empty = entries.is_empty();
        let picker = self.policy.build(&candidates);
        if let Some(w) = picker.weights() {
            let by_addr: Vec<(std::net::SocketAddr, f64)> = w
                .indices
                .iter()
                .zip(w.weights)
                .filter_map(|(&i, &weight)| candidates.get(i as usize).map(|c| (c.endpoint.addr(), weight)))
                .collect();
            m::weights(self.target(), &by_addr, w.fallback);
        }
        self.version += 1;
        let snapshot = Snapshot {
            entries,
            picker,
            version: self.version,
            initialized: self.set.is_initialized(),
            healthy,
            connect_failing: connect_failing && healthy == 0 && !entries_empty,
            last_connect_error: self.last_connect_error.clone(),
            discovery_error: self.discovery_error.clone(),
        };
        debug!(target_uri = %self.target(), version = self.version, healthy, total = self.slots.len(), "published snapshot");
        m::endpoints(self.target(), &phases, self.drained.len());
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.version.send_replace(self.version);
    }
}
