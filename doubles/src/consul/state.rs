//! The double's catalog: services, TTL checks and the Raft-like index, with Consul's semantics.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{CheckStatus, Fault};

/// One registered service instance, as `/v1/agent/service/register` received it.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) weights: (u64, u64),
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// A TTL check attached to a service.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) service_id: String,
    pub(crate) ttl: Duration,
    pub(crate) deregister_after: Option<Duration>,
    pub(crate) status: CheckStatus,
    pub(crate) output: String,
    /// When the TTL runs out unless passed again.
    pub(crate) expires: Instant,
    /// Since when the check has been critical (for `DeregisterCriticalServiceAfter`).
    pub(crate) critical_since: Option<Instant>,
    pub(crate) passes: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) node: String,
    pub(crate) datacenter: String,
    /// The Raft index stand-in: bumped by every write.
    pub(crate) index: u64,
    pub(crate) services: BTreeMap<String, Service>,
    pub(crate) checks: BTreeMap<String, Check>,
    /// Per service name, the index of the last write that changed its health result.
    pub(crate) service_index: BTreeMap<String, u64>,
    pub(crate) fault: Fault,
    pub(crate) agent_down: bool,
    pub(crate) unknown_check_status: u16,
    pub(crate) health_queries: u64,
    pub(crate) registrations: u64,
    pub(crate) deregistrations: u64,
    /// Checks turned critical because their TTL ran out without a pass.
    pub(crate) ttl_expirations: u64,
    pub(crate) last_token: Option<String>,
    /// Reader tokens whose policy the test detached: they hold none.
    pub(crate) detached: std::collections::BTreeSet<String>,
}

impl State {
    pub(crate) fn new(node: String, datacenter: String) -> Self {
        State {
            node,
            datacenter,
            // Real Consul's index is well above zero once a cluster has bootstrapped.
            index: 10,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            service_index: BTreeMap::new(),
            fault: Fault::None,
            agent_down: false,
            unknown_check_status: 404,
            health_queries: 0,
            registrations: 0,
            deregistrations: 0,
            ttl_expirations: 0,
            last_token: None,
            detached: Default::default(),
        }
    }

    fn bump(&mut self, service_name: &str) -> u64 {
        self.index += 1;
        self.service_index.insert(service_name.to_string(), self.index);
        self.index
    }

    /// Forgets everything, as an agent restarted without its data dir (or a rebuilt cluster) would.
    pub(crate) fn reset(&mut self) {
        self.services.clear();
        self.checks.clear();
        self.service_index.clear();
        self.index = 1;
    }

    /// Registers (or replaces, as Consul does for an existing ID) a service and its checks.
    pub(crate) fn register(&mut self, svc: Service, checks: Vec<Check>) {
        self.registrations += 1;
        let id = svc.id.clone();
        self.checks.retain(|_, c| c.service_id != id);
        let index = self.bump(&svc.name);
        let create_index = self.services.get(&id).map_or(index, |old| old.create_index);
        self.services.insert(
            id,
            Service {
                create_index,
                modify_index: index,
                ..svc
            },
        );
        for c in checks {
            self.checks.insert(c.id.clone(), c);
        }
    }

    /// Removes a service and its checks. Returns false when it was not registered.
    pub(crate) fn deregister(&mut self, id: &str) -> bool {
        let Some(svc) = self.services.remove(id) else {
            return false;
        };
        self.deregistrations += 1;
        self.checks.retain(|_, c| c.service_id != id);
        self.bump(&svc.name);
        true
    }

    /// Sets a check's status (a TTL update, or the double's own expiry). Returns false for an
    /// unknown check.
    pub(crate) fn set_status(&mut self, check_id: &str, status: CheckStatus, output: &str, now: Instant) -> bool {
        let Some(check) = self.checks.get_mut(check_id) else {
            return false;
        };
        if status == CheckStatus::Passing {
            check.passes += 1;
        }
        if matches!(status, CheckStatus::Passing | CheckStatus::Warning) {
            check.expires = now + check.ttl;
        }
        let changed = check.status != status || check.output != output;
        check.critical_since = match (status, check.critical_since) {
            (CheckStatus::Critical, Some(since)) => Some(since),
            (CheckStatus::Critical, None) => Some(now),
            _ => None,
        };
        check.status = status;
        check.output = output.to_string();
        // Consul bumps the index only when the status or output really changed: a TTL pass with
        // the same output is not a write that wakes blocking queries.
        if changed {
            let name = self.services.get(&check.service_id).map(|s| s.name.clone()).unwrap_or_default();
            self.bump(&name);
        }
        true
    }

    /// Expires TTLs and reaps services critical for longer than `DeregisterCriticalServiceAfter`.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let expired: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.status != CheckStatus::Critical && now >= c.expires)
            .map(|c| c.id.clone())
            .collect();
        for id in expired {
            self.ttl_expirations += 1;
            changed |= self.set_status(&id, CheckStatus::Critical, "TTL expired", now);
        }
        let reap: Vec<String> = self
            .checks
            .values()
            .filter(|c| matches!((c.critical_since, c.deregister_after), (Some(since), Some(after)) if now >= since + after))
            .map(|c| c.service_id.clone())
            .collect();
        for id in reap {
            changed |= self.deregister(&id);
        }
        changed
    }

    /// The index a blocking query on `name` waits on.
    pub(crate) fn index_of(&self, name: &str) -> u64 {
        self.service_index.get(name).copied().unwrap_or(self.index).max(1)
    }

    /// `/v1/health/service/<name>` entries.
    pub(crate) fn health(&self, name: &str, namespace: &str, passing: bool, tags: &[String]) -> Vec<Value> {
        let mut out = Vec::new();
        for svc in self.services.values() {
            if svc.name != name || svc.namespace != namespace || !tags.iter().all(|t| svc.tags.contains(t)) {
                continue;
            }
            let checks: Vec<&Check> = self.checks.values().filter(|c| c.service_id == svc.id).collect();
            if passing && checks.iter().any(|c| c.status != CheckStatus::Passing) {
                continue;
            }
            let mut check_json = vec![json!({
                "Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "",
                "Type": "", "Namespace": "default",
            })];
            check_json.extend(checks.iter().map(|c| {
                json!({
                    "Node": self.node, "CheckID": c.id, "Name": c.name, "Status": c.status.as_str(),
                    "Output": c.output, "ServiceID": svc.id, "ServiceName": svc.name, "Type": "ttl",
                    "Namespace": svc.namespace,
                })
            }));
            let meta: Map<String, Value> = svc.meta.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
            out.push(json!({
                "Node": {
                    "ID": "3f2b4a3c-0000-4000-8000-00000000d0b1", "Node": self.node, "Address": "127.0.0.1",
                    "Datacenter": self.datacenter, "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                    "Meta": {"consul-network-segment": ""}, "CreateIndex": 5, "ModifyIndex": 5,
                },
                "Service": {
                    "ID": svc.id, "Service": svc.name, "Tags": svc.tags, "Address": svc.address,
                    "Meta": meta, "Port": svc.port,
                    "Weights": {"Passing": svc.weights.0, "Warning": svc.weights.1},
                    "EnableTagOverride": false, "Namespace": svc.namespace,
                    "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index,
                },
                "Checks": check_json,
            }));
        }
        out
    }
}

/// Parses a Go duration string (`"10s"`, `"1m30s"`, `"250ms"`, `"1.5h"`), as Consul's API takes.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// Consul's rule for service meta keys (`agent/structs.ValidateServiceMetadata`).
pub(crate) fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".to_string());
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > 128 || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("Key contains invalid characters: {k}"));
        }
        if k.starts_with("consul-") {
            return Err(format!("Key prefix 'consul-' is reserved for internal use: {k}"));
        }
        if v.len() > 512 {
            return Err(format!("Value is too long (limit: 512 characters): {k}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "10x", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
