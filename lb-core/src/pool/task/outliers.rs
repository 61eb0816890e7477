//! Outlier ejection and the timers that end ejections and forget drained endpoints.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Phase, PoolTask};
use crate::endpoint::{EndpointId, EndpointState};
use crate::metrics as m;
use crate::pool::Connect;

impl<K: Connect> PoolTask<K> {
    pub(super) fn eject_consecutive(&mut self) {
        let Some(cfg) = self.shared.config.outlier.clone() else { return };
        if cfg.consecutive_failures == 0 {
            return;
        }
        let ids: Vec<EndpointId> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Ready(_)) && s.load.consecutive_failures() >= cfg.consecutive_failures)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.eject(&id, "consecutive failures");
        }
    }

    /// Keeps endpoints that answered "overloaded" out of picks for the time they asked (capped),
    /// within the same bound on the ejected share as outlier detection.
    pub(super) fn apply_penalties(&mut self) {
        let penalized: Vec<(EndpointId, Duration)> = self
            .slots
            .iter()
            .filter_map(|(id, s)| s.load.take_penalty().map(|d| (id.clone(), d)))
            .collect();
        let Some(cap) = self.shared.config.overload_penalty_cap else { return };
        for (id, hint) in penalized {
            self.penalize(&id, hint.min(cap));
        }
    }

    /// Endpoints in rotation (not terminating), and those out as outliers or for overload: what
    /// the ejection cap is judged on.
    fn ejection_counts(&self) -> (usize, usize) {
        let in_rotation = self
            .slots
            .values()
            .filter(|s| s.endpoint.state() != EndpointState::Terminating)
            .count();
        let ejected = self
            .slots
            .values()
            .filter(|s| matches!(s.phase, Phase::Ejected { outlier: true, .. }))
            .count();
        (in_rotation, ejected)
    }

    fn penalize(&mut self, id: &EndpointId, duration: Duration) {
        let cfg = self.shared.config.outlier.clone().unwrap_or_default();
        let target = Arc::clone(&self.shared.config.target);
        let (in_rotation, ejected) = self.ejection_counts();
        let Some(slot) = self.slots.get_mut(id) else { return };
        let until = Instant::now() + duration;
        match &mut slot.phase {
            Phase::Ejected { until: u, outlier: true, .. } => {
                // Already out: the longer of the two.
                *u = (*u).max(until);
                return;
            }
            Phase::Ready(_) => {}
            _ => return,
        }
        if ejected >= cfg.max_ejected(in_rotation) {
            warn!(target_uri = %target, endpoint = %slot.endpoint.addr(), ejected, "not penalizing an overloaded endpoint: ejection cap reached");
            return;
        }
        let Phase::Ready(conn) = std::mem::replace(&mut slot.phase, Phase::Idle) else {
            return;
        };
        m::overload_penalty(&target);
        info!(target_uri = %target, endpoint = %slot.endpoint.addr(), duration = ?duration, "endpoint overloaded: out of picks");
        slot.phase = Phase::Ejected {
            conn: Some(conn),
            until,
            outlier: true,
        };
        self.dirty = true;
    }

    pub(super) fn outlier_sweep(&mut self) {
        let Some(cfg) = self.shared.config.outlier.clone() else { return };
        let mut eject = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            let (s, f) = slot.load.take_outcomes();
            if matches!(slot.phase, Phase::Ready(_)) {
                if cfg.rate_exceeded(s, f) {
                    eject.push(id.clone());
                } else if !slot.ejected_this_interval {
                    slot.ejections = slot.ejections.saturating_sub(1);
                }
            }
            slot.ejected_this_interval = false;
        }
        for id in eject {
            self.eject(&id, "failure rate");
        }
    }

    pub(super) fn eject(&mut self, id: &EndpointId, reason: &'static str) {
        let Some(cfg) = self.shared.config.outlier.clone() else { return };
        let target = Arc::clone(&self.shared.config.target);
        let (in_rotation, ejected) = self.ejection_counts();
        let Some(slot) = self.slots.get_mut(id) else { return };
        if ejected >= cfg.max_ejected(in_rotation) {
            slot.load.reset_failures();
            warn!(target_uri = %target, endpoint = %slot.endpoint.addr(), reason, ejected, "not ejecting: ejection cap reached");
            return;
        }
        let Phase::Ready(conn) = std::mem::replace(&mut slot.phase, Phase::Idle) else {
            return;
        };
        slot.ejections += 1;
        slot.ejected_this_interval = true;
        let duration = cfg.ejection_time(slot.ejections);
        slot.load.reset_failures();
        m::ejection(&target);
        warn!(
            target_uri = %target,
            endpoint = %slot.endpoint.addr(),
            reason,
            ejections = slot.ejections,
            duration = ?duration,
            "endpoint ejected"
        );
        slot.phase = Phase::Ejected {
            conn: Some(conn),
            until: Instant::now() + duration,
            outlier: true,
        };
        self.dirty = true;
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let ejected = self
            .slots
            .values()
            .filter_map(|s| match s.phase {
                Phase::Ejected { until, .. } => Some(until),
                _ => None,
            })
            .min();
        let drain = (!self.drained.is_empty()).then(|| Instant::now() + Duration::from_secs(1));
        match (ejected, drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn on_timers(&mut self) {
        let now = Instant::now();
        let target = Arc::clone(&self.shared.config.target);
        let mut reconnect = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            let Phase::Ejected { until, .. } = slot.phase else { continue };
            if until > now {
                continue;
            }
            let Phase::Ejected { conn, .. } = std::mem::replace(&mut slot.phase, Phase::Idle) else {
                continue;
            };
            self.dirty = true;
            match conn {
                Some(c) => {
                    info!(target_uri = %target, endpoint = %slot.endpoint.addr(), "ejection ended");
                    slot.load.reset_failures();
                    slot.phase = Phase::Ready(c);
                }
                None => reconnect.push(id.clone()),
            }
        }
        for id in reconnect {
            self.start_connect(&id);
        }
        let timeout = self.shared.config.drain_timeout;
        self.drained
            .retain(|d| d.load.in_flight() > 0 && now.saturating_duration_since(d.since) < timeout);
    }
}
