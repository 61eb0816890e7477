//! The JSON documents the C ABI accepts: balancer options and registration instances.
//!
//! JSON keeps the ABI stable while options grow (a new key needs no new function), and every
//! language can produce it. Unknown keys are rejected rather than ignored, so a typo
//! (`"failfast": 10`) is an error, not a silently different balancer.

use std::time::Duration;

use lb_core::policy::{Level, Maglev, P2c, RingHash, RoundRobin, SlowStart, Topology, WeightedRoundRobin};
use lb_core::pool::OutlierConfig;
use lb_core::{Endpoint, Locality, Policy};
use lb_registry::document::EndpointDocument;
use serde::Deserialize;

use crate::error::Error;

/// Balancer options (`options_json` of `lb_balancer_new`). Every key is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Options {
    policy: PolicyName,
    /// Seeds the random choices of `p2c`/`p2c-ewma`/`hash` (reproducible runs).
    seed: Option<u64>,
    /// "wrr-orca": how long an endpoint must have reported load before its weight counts.
    blackout_ms: Option<u64>,
    /// "wrr-orca": how often weights are recomputed from the reports.
    weight_update_ms: Option<u64>,
    /// Slow start: a newly connected endpoint's share ramps up over this many milliseconds.
    slow_start_ms: Option<u64>,
    /// Deterministic subsetting: connect to only this many endpoints, chosen for `subset_client_id`.
    subset_size: Option<usize>,
    /// This client instance's stable id (a pod name) for subsetting.
    subset_client_id: Option<String>,
    /// The caller's own locality; when given, the policy is wrapped in topology preference.
    locality: Option<LocalityOpt>,
    /// Preference levels, nearest first (`node`, `zone`, `region`, `any` or the Kubernetes keys).
    topology: Option<Vec<String>>,
    overprovisioning: Option<f64>,
    panic_threshold: Option<f64>,
    /// The longest a pick waits for an endpoint (`endpoint_wait_ms`; `failfast_ms`, its old name,
    /// is still read).
    #[serde(alias = "endpoint_wait_ms")]
    failfast_ms: u64,
    /// Wait out the whole endpoint wait even while every endpoint is failing its probes.
    wait_for_ready: bool,
    pub(crate) report_timeout_ms: u64,
    connect_timeout_ms: Option<u64>,
    pub(crate) probe: bool,
    pub(crate) probe_interval_ms: u64,
    #[serde(default = "default_outlier")]
    outlier: Option<OutlierOpt>,
    max_in_flight: Option<usize>,
    max_in_flight_per_endpoint: Option<u32>,
    max_waiting: Option<usize>,
    /// Label the per-attempt metrics with the endpoint's address.
    metrics_endpoint_labels: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: PolicyName::P2cEwma,
            seed: None,
            blackout_ms: None,
            weight_update_ms: None,
            slow_start_ms: None,
            subset_size: None,
            subset_client_id: None,
            locality: None,
            topology: None,
            overprovisioning: None,
            panic_threshold: None,
            failfast_ms: 3000,
            wait_for_ready: false,
            report_timeout_ms: 60_000,
            connect_timeout_ms: None,
            probe: true,
            probe_interval_ms: 5000,
            outlier: default_outlier(),
            max_in_flight: None,
            max_in_flight_per_endpoint: None,
            max_waiting: None,
            metrics_endpoint_labels: false,
        }
    }
}

fn default_outlier() -> Option<OutlierOpt> {
    Some(OutlierOpt::default())
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum PolicyName {
    #[serde(rename = "rr", alias = "round_robin")]
    RoundRobin,
    #[serde(rename = "wrr", alias = "weighted_round_robin")]
    Weighted,
    #[serde(rename = "p2c", alias = "least_request")]
    P2c,
    #[serde(rename = "p2c-ewma", alias = "peak_ewma")]
    P2cEwma,
    #[serde(rename = "hash", alias = "ring_hash")]
    Hash,
    #[serde(rename = "maglev")]
    Maglev,
    #[serde(rename = "wrr-orca")]
    WrrOrca,
    #[serde(rename = "p2c-util")]
    P2cUtilization,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LocalityOpt {
    region: Option<String>,
    zone: Option<String>,
    node: Option<String>,
}

impl LocalityOpt {
    fn to_locality(&self) -> Locality {
        let mut l = Locality::unknown();
        if let Some(r) = &self.region {
            l = l.with_region(r);
        }
        if let Some(z) = &self.zone {
            l = l.with_zone(z);
        }
        if let Some(n) = &self.node {
            l = l.with_node(n);
        }
        l
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OutlierOpt {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    min_requests: Option<u64>,
    interval_ms: Option<u64>,
    base_ejection_ms: Option<u64>,
    max_ejection_ms: Option<u64>,
    max_ejected_fraction: Option<f64>,
}

impl OutlierOpt {
    fn to_config(&self) -> OutlierConfig {
        let d = OutlierConfig::default();
        OutlierConfig {
            consecutive_failures: self.consecutive_failures.unwrap_or(d.consecutive_failures),
            failure_rate: self.failure_rate.unwrap_or(d.failure_rate),
            min_requests: self.min_requests.unwrap_or(d.min_requests),
            interval: self.interval_ms.map(ms).unwrap_or(d.interval),
            base_ejection: self.base_ejection_ms.map(ms).unwrap_or(d.base_ejection),
            max_ejection: self.max_ejection_ms.map(ms).unwrap_or(d.max_ejection),
            max_ejected_fraction: self.max_ejected_fraction.unwrap_or(d.max_ejected_fraction),
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Options {
    /// Parses `options_json`; `None` gives the defaults.
    pub(crate) fn parse(json: Option<&str>) -> Result<Options, Error> {
        let Some(json) = json else {
            return Ok(Options::default());
        };
        let opts: Options = from_object(json, "options_json")?;
        if opts.interval_is_zero() {
            return Err(Error::options(
                "options_json: outlier.interval_ms must be greater than 0",
            ));
        }
        Ok(opts)
    }

    /// The balancing options these map onto (`lb_core::Options`, which `LbChannel` and `LbClient`
    /// are built from too).
    pub(crate) fn balance(&self) -> Result<lb_core::Options, Error> {
        let mut o = lb_core::Options::new()
            .policy(self.policy()?)
            .endpoint_wait_timeout(ms(self.failfast_ms))
            .wait_for_ready(self.wait_for_ready)
            .outlier_detection(self.outlier.as_ref().map(OutlierOpt::to_config))
            .metrics_endpoint_labels(self.metrics_endpoint_labels);
        if let Some(t) = self.connect_timeout_ms {
            o = o.connect_timeout(ms(t.max(1)));
        }
        if let Some(n) = self.max_in_flight {
            o = o.max_in_flight(n);
        }
        if let Some(n) = self.max_in_flight_per_endpoint {
            o = o.max_in_flight_per_endpoint(n);
        }
        if let Some(n) = self.max_waiting {
            o = o.max_waiting(n);
        }
        match (self.subset_size, self.subset_client_id.as_deref()) {
            (None | Some(0), _) => {}
            (Some(size), Some(id)) if !id.is_empty() => o = o.subset(size, id),
            _ => {
                return Err(Error::options(
                    "options_json: subset_size and subset_client_id go together (a non-empty id, e.g. the pod name)",
                ))
            }
        }
        if self.subset_client_id.is_some() && self.subset_size.is_none() {
            return Err(Error::options(
                "options_json: subset_client_id needs subset_size (how many endpoints to connect to)",
            ));
        }
        o.validate().map_err(|e| Error::options(format!("options_json: {e}")))?;
        Ok(o)
    }

    fn interval_is_zero(&self) -> bool {
        matches!(&self.outlier, Some(o) if o.interval_ms == Some(0))
    }

    /// Never zero: a zero timeout would expire picks before the caller could report them.
    pub(crate) fn report_timeout(&self) -> Duration {
        ms(self.report_timeout_ms.max(1))
    }

    /// Builds the configured policy, wrapped in topology preference when a locality or levels are given.
    fn policy(&self) -> Result<Box<dyn Policy>, Error> {
        let inner: Box<dyn Policy> = match (self.policy, self.seed) {
            (PolicyName::RoundRobin, _) => Box::new(RoundRobin::new()),
            (PolicyName::Weighted, _) => Box::new(WeightedRoundRobin::new()),
            (PolicyName::P2c, None) => Box::new(P2c::least_request()),
            (PolicyName::P2c, Some(s)) => Box::new(P2c::least_request().with_seed(s)),
            (PolicyName::P2cEwma, None) => Box::new(P2c::peak_ewma()),
            (PolicyName::P2cEwma, Some(s)) => Box::new(P2c::peak_ewma().with_seed(s)),
            (PolicyName::Hash, _) => Box::new(RingHash::new()),
            (PolicyName::Maglev, _) => Box::new(Maglev::new()),
            (PolicyName::WrrOrca, _) => {
                let mut p = WeightedRoundRobin::from_load_reports();
                if let Some(b) = self.blackout_ms {
                    p = p.blackout_period(ms(b));
                }
                if let Some(u) = self.weight_update_ms {
                    p = p.weight_update_period(ms(u));
                }
                Box::new(p)
            }
            (PolicyName::P2cUtilization, None) => Box::new(P2c::utilization()),
            (PolicyName::P2cUtilization, Some(s)) => Box::new(P2c::utilization().with_seed(s)),
        };
        if !matches!(self.policy, PolicyName::WrrOrca) && (self.blackout_ms.is_some() || self.weight_update_ms.is_some()) {
            return Err(Error::options(
                "options_json: blackout_ms and weight_update_ms apply to the \"wrr-orca\" policy only",
            ));
        }
        let inner: Box<dyn Policy> = match self.slow_start_ms {
            None | Some(0) => inner,
            // lb-core refuses it (`SlowStart::new` on a hashing policy), as the Rust API does.
            Some(ms_) => Box::new(SlowStart::new(inner, ms(ms_)).map_err(|e| {
                Error::options(format!("options_json: slow_start_ms does not apply to the hashing policies ({e})"))
            })?),
        };
        if self.locality.is_none() && self.topology.is_none() {
            return Ok(inner);
        }
        let caller = self
            .locality
            .as_ref()
            .map(LocalityOpt::to_locality)
            .unwrap_or_default();
        let mut topo = Topology::new(inner, caller);
        if let Some(keys) = &self.topology {
            let mut levels = Vec::with_capacity(keys.len());
            for k in keys {
                let level = Level::from_topology_key(k).ok_or_else(|| {
                    Error::options(format!(
                        "options_json: topology level `{k}` is not node, zone, region, any or a Kubernetes topology key"
                    ))
                })?;
                levels.push(level);
            }
            topo = topo.with_levels(levels);
        }
        if let Some(f) = self.overprovisioning {
            topo = topo.with_overprovisioning(f);
        }
        if let Some(t) = self.panic_threshold {
            topo = topo.with_panic_threshold(t);
        }
        Ok(Box::new(topo))
    }
}

/// Parses a JSON object. serde would also accept an array for a struct (fields by position), which
/// no caller means; only an object is accepted.
fn from_object<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T, Error> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::options(format!("{what}: {e}")))?;
    if !value.is_object() {
        return Err(Error::options(format!(
            "{what}: expected a JSON object, got `{value}`"
        )));
    }
    serde_json::from_value(value).map_err(|e| Error::options(format!("{what}: {e}")))
}

/// One instance to register (`instance_json` of `lb_registration_new`): lb's endpoint document
/// (`lb_registry::document`, the same JSON the etcd schema and the snapshot file use), with
/// unknown keys refused as everywhere in this ABI.
pub(crate) struct Instance;

impl Instance {
    pub(crate) fn parse(json: &str) -> Result<Endpoint, Error> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::options(format!("instance_json: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(Error::options(format!(
                "instance_json: expected a JSON object, got `{value}`"
            )));
        };
        if let Some(key) = object
            .keys()
            .find(|k| !EndpointDocument::FIELDS.contains(&k.as_str()))
        {
            return Err(Error::options(format!(
                "instance_json: unknown field `{key}`, expected one of {}",
                EndpointDocument::FIELDS.join(", ")
            )));
        }
        let doc: EndpointDocument = serde_json::from_value(value)
            .map_err(|e| Error::options(format!("instance_json: {e}")))?;
        doc.into_endpoint()
            .map_err(|e| Error::options(format!("instance_json: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let o = Options::parse(None).expect("defaults").balance().expect("valid");
        assert_eq!(o.wait().timeout, Duration::from_secs(3));
        assert!(!o.wait().wait_for_ready);
        assert!(o.pool_config("t").outlier.is_some());
        let o = Options::parse(Some(r#"{"policy":"rr","failfast_ms":5,"outlier":null}"#))
            .expect("valid")
            .balance()
            .expect("valid");
        assert_eq!(o.wait().timeout, Duration::from_millis(5));
        assert!(
            o.pool_config("t").outlier.is_none(),
            "null disables outlier detection"
        );
        let o = Options::parse(Some(r#"{"endpoint_wait_ms":7,"wait_for_ready":true}"#))
            .expect("the new names")
            .balance()
            .expect("valid");
        assert_eq!(o.wait().timeout, Duration::from_millis(7));
        assert!(o.wait().wait_for_ready);
        let o = Options::parse(Some(r#"{"outlier":{"consecutive_failures":2}}"#))
            .expect("valid")
            .balance()
            .expect("valid");
        let c = o.pool_config("t").outlier.expect("enabled");
        assert_eq!(c.consecutive_failures, 2);
        assert_eq!(c.base_ejection, OutlierConfig::default().base_ejection);
    }

    #[test]
    fn bad_options_are_named() {
        for (json, needle) in [
            ("{", "EOF"),
            (r#"{"failfast":1}"#, "unknown field `failfast`"),
            (r#"{"policy":"fastest"}"#, "unknown variant `fastest`"),
            (r#"{"failfast_ms":-1}"#, "invalid value"),
            (r#"{"outlier":{"interval_ms":0}}"#, "interval_ms"),
        ] {
            let err = Options::parse(Some(json)).expect_err(json);
            assert!(format!("{err:?}").contains(needle), "{json}: {err:?}");
        }
        let o = Options::parse(Some(r#"{"topology":["zone","planet"]}"#)).expect("syntax is fine");
        assert!(
            o.balance().is_err(),
            "unknown level is rejected when the policy is built"
        );
    }

    #[test]
    fn instance() {
        let ep =
            Instance::parse(r#"{"addr":"127.0.0.1:9","zone":"a","weight":7,"metadata":{"v":"1"}}"#)
                .expect("valid");
        assert_eq!(ep.weight(), 7);
        assert_eq!(ep.locality().zone.as_deref(), Some("a"));
        assert!(Instance::parse(r#"{"addr":"nowhere"}"#).is_err());
        assert!(
            Instance::parse(r#"{"zone":"a"}"#).is_err(),
            "addr is required"
        );
        let err = Instance::parse(r#"{"addr":"127.0.0.1:9","zoen":"a"}"#).expect_err("typo");
        assert!(format!("{err:?}").contains("unknown field `zoen`"), "{err:?}");
        let err = Instance::parse(r#"{"addr":"127.0.0.1:9","state":"asleep"}"#).expect_err("bad state");
        assert!(format!("{err:?}").contains("asleep"), "{err:?}");
        let ep = Instance::parse(r#"{"addr":"127.0.0.1:9","state":"terminating","id":"x"}"#).expect("valid");
        assert_eq!(ep.state(), lb_core::EndpointState::Terminating);
        assert_eq!(ep.id().as_str(), "x");
    }
}
