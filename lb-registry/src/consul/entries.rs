//! Health entries → endpoints, one entry at a time: a malformed entry is skipped (or keeps its last
//! good value), logged and counted; it never fails the whole answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use lb_core::{BoxError, Endpoint, EndpointId, Locality};
use serde_json::Value;
use tracing::warn;

use super::INVALID_ENTRIES;

/// Meta keys lb reads and writes.
pub(crate) const META_WEIGHT: &str = "lb-weight";
pub(crate) const META_ZONE: &str = "lb-zone";
pub(crate) const META_REGION: &str = "lb-region";
pub(crate) const META_NODE: &str = "lb-node";

/// Parses a `/v1/health/service/<name>` body. Only a body that is not a JSON array is an error.
pub(crate) fn parse(service: &str, body: &[u8], previous: &BTreeMap<EndpointId, Endpoint>) -> Result<Vec<Endpoint>, BoxError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("consul health answer is not JSON: {e}"))?;
    let Value::Array(entries) = value else {
        return Err("consul health answer is not a JSON array".into());
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in &entries {
        match parse_entry(entry) {
            Ok(ep) => out.push(ep),
            Err((id, reason)) => {
                metrics::counter!(INVALID_ENTRIES, "registry" => "consul").increment(1);
                let kept = id.as_ref().and_then(|id| previous.get(id));
                warn!(
                    service,
                    entry = id.as_ref().map_or("?", EndpointId::as_str),
                    reason,
                    kept_last_good = kept.is_some(),
                    "skipping a malformed consul entry"
                );
                if let Some(ep) = kept {
                    out.push(ep.clone());
                }
            }
        }
    }
    Ok(out)
}

type EntryError = (Option<EndpointId>, String);

fn parse_entry(entry: &Value) -> Result<Endpoint, EntryError> {
    let svc = entry
        .get("Service")
        .and_then(Value::as_object)
        .ok_or((None, "no `Service` object".to_string()))?;
    let node = entry.get("Node");
    let node_name = node.and_then(|n| n.get("Node")).and_then(Value::as_str).filter(|s| !s.is_empty());
    let service_id = svc
        .get("ID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or((None, "no service `ID`".to_string()))?;
    // Service IDs are unique per agent only; the node name makes them unique in the catalog.
    let id = EndpointId::new(match node_name {
        Some(n) => format!("{n}/{service_id}"),
        None => service_id.to_string(),
    });
    let fail = |reason: String| (Some(id.clone()), reason);

    let port = match svc.get("Port") {
        Some(Value::Number(n)) => n.as_u64().filter(|p| (1..=65535).contains(p)),
        _ => None,
    }
    .ok_or_else(|| fail(format!("`Port` {:?} is not a port number", svc.get("Port"))))?;
    let address = svc
        .get("Address")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| node.and_then(|n| n.get("Address")).and_then(Value::as_str))
        .ok_or_else(|| fail("neither `Service.Address` nor `Node.Address`".into()))?;
    let ip: IpAddr = address
        .parse()
        .map_err(|_| fail(format!("address `{address}` is not an IP address (hostnames are not resolved)")))?;

    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    if let Some(m) = svc.get("Meta").and_then(Value::as_object) {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                meta.insert(k.clone(), v.to_string());
            }
        }
    }
    let weight = match meta.remove(META_WEIGHT) {
        Some(w) => w.trim().parse::<u32>().map_err(|_| fail(format!("`{META_WEIGHT}` {w:?} is not a weight")))?,
        None => match svc.get("Weights").and_then(|w| w.get("Passing")) {
            None | Some(Value::Null) => Endpoint::DEFAULT_WEIGHT,
            Some(p) => p
                .as_u64()
                .map(|p| u32::try_from(p).unwrap_or(u32::MAX))
                .ok_or_else(|| fail(format!("`Weights.Passing` {p} is not a weight")))?,
        },
    };
    let mut locality = Locality::unknown();
    if let Some(z) = meta.remove(META_ZONE) {
        locality = locality.with_zone(z);
    }
    if let Some(r) = meta.remove(META_REGION) {
        locality = locality.with_region(r);
    }
    match (meta.remove(META_NODE), node_name) {
        (Some(n), _) => locality = locality.with_node(n),
        (None, Some(n)) => locality = locality.with_node(n),
        (None, None) => {}
    }
    let mut ep = Endpoint::new(SocketAddr::new(ip, port as u16))
        .with_id(id)
        .with_weight(weight)
        .with_locality(locality);
    for (k, v) in meta {
        ep = ep.with_metadata(k, v);
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, addr: &str, port: Value, meta: Value) -> Value {
        serde_json::json!({
            "Node": {"Node": "n1", "Address": "10.0.0.9"},
            "Service": {"ID": id, "Address": addr, "Port": port, "Meta": meta, "Weights": {"Passing": 7, "Warning": 1}},
            "Checks": [],
        })
    }

    #[test]
    fn maps_weight_locality_and_metadata() {
        let body = serde_json::json!([
            entry("a", "10.0.0.1", 80.into(), serde_json::json!({"lb-weight": "0", "lb-zone": "z1", "lb-region": "r1", "color": "blue"})),
            entry("b", "", 81.into(), serde_json::json!({})),
        ]);
        let eps = parse("svc", body.to_string().as_bytes(), &BTreeMap::new()).expect("valid");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].id().as_str(), "n1/a");
        assert_eq!(eps[0].weight(), 0, "lb-weight wins over Weights.Passing, zero included");
        assert_eq!(eps[0].locality().zone.as_deref(), Some("z1"));
        assert_eq!(eps[0].locality().node.as_deref(), Some("n1"), "node falls back to the consul node");
        assert_eq!(eps[0].metadata().get("color").map(String::as_str), Some("blue"));
        assert!(!eps[0].metadata().contains_key("lb-zone"));
        assert_eq!(eps[1].addr(), "10.0.0.9:81".parse().expect("addr"), "falls back to the node address");
        assert_eq!(eps[1].weight(), 7);
    }

    #[test]
    fn malformed_entries_are_skipped_or_keep_their_last_good_value() {
        let good = entry("a", "10.0.0.1", 80.into(), serde_json::json!({}));
        let body = serde_json::json!([good, entry("b", "10.0.0.2", "x".into(), serde_json::json!({}))]);
        let eps = parse("svc", body.to_string().as_bytes(), &BTreeMap::new()).expect("valid");
        assert_eq!(eps.len(), 1, "the bad port is skipped");

        let known = Endpoint::new("10.0.0.2:82".parse().expect("addr")).with_id("n1/b");
        let previous = BTreeMap::from([(known.id().clone(), known.clone())]);
        let body = serde_json::json!([
            entry("a", "10.0.0.1", 80.into(), serde_json::json!({})),
            entry("b", "not-an-ip", 82.into(), serde_json::json!({})),
            entry("c", "10.0.0.3", 83.into(), serde_json::json!({"lb-weight": "heavy"})),
            {"Service": 3},
            "nonsense",
        ]);
        let eps = parse("svc", body.to_string().as_bytes(), &previous).expect("valid");
        let ids: Vec<_> = eps.iter().map(|e| e.id().as_str().to_string()).collect();
        assert_eq!(ids, vec!["n1/a", "n1/b"]);
        assert_eq!(eps[1], known, "a known instance keeps its last good value");

        assert_eq!(counted_invalid(&body), 4, "every skipped entry is counted");

        assert!(parse("svc", b"<html>", &previous).is_err());
        assert!(parse("svc", b"{\"a\":1}", &previous).is_err());
    }

    /// Parses `body` under a recorder and returns `lb_registry_invalid_entries_total{registry="consul"}`.
    fn counted_invalid(body: &Value) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;

        use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

        #[derive(Default)]
        struct Rec(Arc<AtomicU64>);
        impl Recorder for Rec {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
                let consul = key.labels().any(|l| l.key() == "registry" && l.value() == "consul");
                if key.name() == INVALID_ENTRIES && consul {
                    Counter::from_arc(Arc::clone(&self.0))
                } else {
                    Counter::noop()
                }
            }
            fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
                Gauge::noop()
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }
        let rec = Rec::default();
        metrics::with_local_recorder(&rec, || parse("svc", body.to_string().as_bytes(), &BTreeMap::new()).expect("valid"));
        rec.0.load(Ordering::Relaxed)
    }
}
