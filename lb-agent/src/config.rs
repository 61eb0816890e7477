//! The agent's TOML configuration.
//!
//! ```toml
//! backend = "nftables"            # "nftables" (default) | "iptables" | "ipvs"
//! metrics_addr = "127.0.0.1:9464" # /healthz and /metrics; omit to serve nothing
//!
//! [node]                          # where this agent runs, for topology preference
//! name = "node-a"
//! zone = "eu-west-1a"
//!
//! [[service]]
//! vips = ["10.96.0.10:80", "[fd00:96::10]:80"]   # one per family; `vip = "…"` for one
//! protocol = "tcp"                # "tcp" | "udp"
//! target = "static:///10.0.0.1:8080,[fd00::1]:8080"
//! topology = ["node", "zone", "any"]   # optional; Kubernetes topology keys work too
//! affinity = "client-ip"          # optional: "none" (default) | "client-ip"
//! affinity_timeout_secs = 10800   # optional, with client-ip (Kubernetes' default)
//! ```
//!
//! Unknown keys are errors: a typo in a kernel-programming agent should stop it, not be ignored.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use lb_core::policy::Level;
use lb_core::Locality;
use lb_registry::Target;
use serde::Deserialize;

use crate::model::{Affinity, Family, Protocol, ServiceKey};
use crate::Error;

/// Which kernel facility the agent programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// One private nftables table with verdict and backend maps (the default).
    #[default]
    Nftables,
    /// kube-proxy's iptables layout through `iptables-restore --noflush`.
    Iptables,
    /// IPVS virtual servers through `ipvsadm-restore`.
    Ipvs,
}

/// The parsed, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The kernel backend.
    pub backend: BackendKind,
    /// Name of the agent's own nftables table (family `inet`).
    pub table: String,
    /// Address of the `/healthz` + `/metrics` server.
    pub metrics_addr: Option<SocketAddr>,
    /// The most slots one service may use (weights are scaled down to fit).
    pub max_slots: usize,
    /// Changes arriving closer together than this are batched into one transaction.
    pub min_sync_interval: std::time::Duration,
    /// Where this agent runs.
    pub node: Locality,
    /// The services to balance.
    pub services: Vec<ServiceConfig>,
}

/// One balanced service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// A name for logs and metrics (defaults to the first VIP).
    pub name: String,
    /// One key per VIP (at most one per address family), all of one protocol.
    pub keys: Vec<ServiceKey>,
    /// Where its endpoints come from.
    pub target: Target,
    /// Topology preference, nearest first; empty means anywhere.
    pub topology: Vec<Level>,
    /// A tier is used only when it has at least this many usable endpoints.
    pub topology_min_endpoints: usize,
    /// Client-IP session affinity as configured (`None`: off).
    pub affinity: Option<Affinity>,
    /// True when the file sets `affinity`; otherwise a Kubernetes target's Service decides.
    pub affinity_explicit: bool,
}

impl ServiceConfig {
    /// The address families of the service's VIPs.
    pub fn families(&self) -> Vec<Family> {
        self.keys.iter().map(ServiceKey::family).collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    backend: BackendKind,
    table: Option<String>,
    metrics_addr: Option<String>,
    max_slots: Option<usize>,
    min_sync_interval_ms: Option<u64>,
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    zone: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    vip: Option<String>,
    vips: Option<Vec<String>>,
    #[serde(default = "default_protocol")]
    protocol: String,
    target: String,
    #[serde(default)]
    topology: Vec<String>,
    topology_min_endpoints: Option<usize>,
    affinity: Option<String>,
    affinity_timeout_secs: Option<u32>,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// The default table name.
pub const DEFAULT_TABLE: &str = "lb_agent";
/// The default cap on slots per service.
pub const DEFAULT_MAX_SLOTS: usize = 256;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read config {}: {e}", path.display())))?;
        Config::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))
    }
}

impl FromStr for Config {
    type Err = Error;

    fn from_str(text: &str) -> Result<Config, Error> {
        let raw: Raw = toml::from_str(text).map_err(|e| Error::config(format!("invalid config: {e}")))?;
        let table = raw.table.unwrap_or_else(|| DEFAULT_TABLE.to_string());
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::config(format!("table `{table}` must be non-empty ASCII letters, digits or `_`")));
        }
        let metrics_addr = raw
            .metrics_addr
            .map(|a| a.parse().map_err(|_| Error::config(format!("metrics_addr `{a}` is not ip:port"))))
            .transpose()?;
        let max_slots = raw.max_slots.unwrap_or(DEFAULT_MAX_SLOTS);
        if !(1..=65_536).contains(&max_slots) {
            return Err(Error::config("max_slots must be between 1 and 65536"));
        }
        // The file wins; then the variables a DaemonSet fills from the downward API (the same
        // names lb-registry's Kubernetes resolver reads); the node name falls back to the hostname.
        let mut node = Locality::unknown();
        if let Some(n) = raw.node.name.or_else(|| env(NODE_ENV)).or_else(hostname) {
            node = node.with_node(n);
        }
        if let Some(z) = raw.node.zone.or_else(|| env(ZONE_ENV)) {
            node = node.with_zone(z);
        }
        if let Some(r) = raw.node.region.or_else(|| env(REGION_ENV)) {
            node = node.with_region(r);
        }
        let mut seen = BTreeSet::new();
        let mut services = Vec::new();
        for s in raw.service {
            let vips = match (s.vip, s.vips) {
                (Some(v), None) => vec![v],
                (None, Some(v)) if !v.is_empty() => v,
                (None, Some(_)) => return Err(Error::config("`vips` of a service is empty")),
                (None, None) => return Err(Error::config(format!("service with target `{}` has no `vip` or `vips`", s.target))),
                (Some(_), Some(_)) => return Err(Error::config("a service sets both `vip` and `vips`; use one")),
            };
            let mut addrs: Vec<SocketAddr> = Vec::with_capacity(vips.len());
            for v in &vips {
                let vip: SocketAddr = v.parse().map_err(|_| {
                    Error::config(format!("vip `{v}` is not ip:port (IPv4 `10.96.0.10:80` or IPv6 `[fd00::10]:80`)"))
                })?;
                if vip.ip().is_unspecified() || vip.ip().is_multicast() || vip.port() == 0 {
                    return Err(Error::config(format!("vip `{v}` must be a unicast address with a non-zero port")));
                }
                if addrs.iter().any(|a| Family::of(a.ip()) == Family::of(vip.ip())) {
                    return Err(Error::config(format!("vips {vips:?} list two addresses of one family; a service has one VIP per family")));
                }
                addrs.push(vip);
            }
            let first = addrs[0];
            let protocol = match s.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(Error::config(format!("protocol `{other}` of {first} must be tcp or udp"))),
            };
            let keys: Vec<ServiceKey> = addrs.iter().map(|vip| ServiceKey { protocol, vip: *vip }).collect();
            for key in &keys {
                if !seen.insert(*key) {
                    return Err(Error::config(format!("service {key} is listed twice")));
                }
            }
            let key = keys[0];
            let target = Target::parse(&s.target)
                .map_err(|e| Error::config(format!("target of service {key}: {e}")))?;
            let topology = s
                .topology
                .iter()
                .map(|k| {
                    Level::from_topology_key(k)
                        .ok_or_else(|| Error::config(format!("topology key `{k}` of {key} is not node, zone, region or any")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let affinity = match (s.affinity.as_deref(), s.affinity_timeout_secs) {
                (None | Some("none"), None) => None,
                (Some("client-ip"), t) => {
                    let timeout_secs = t.unwrap_or(Affinity::DEFAULT_TIMEOUT_SECS);
                    if !(1..=Affinity::MAX_TIMEOUT_SECS).contains(&timeout_secs) {
                        return Err(Error::config(format!(
                            "affinity_timeout_secs of {key} must be between 1 and {} (Kubernetes' range)",
                            Affinity::MAX_TIMEOUT_SECS
                        )));
                    }
                    Some(Affinity { timeout_secs })
                }
                (None | Some("none"), Some(_)) => {
                    return Err(Error::config(format!("affinity_timeout_secs of {key} needs affinity = \"client-ip\"")))
                }
                (Some(other), _) => {
                    return Err(Error::config(format!("affinity `{other}` of {key} must be \"none\" or \"client-ip\"")))
                }
            };
            services.push(ServiceConfig {
                name: s.name.unwrap_or_else(|| key.to_string()),
                keys,
                target,
                topology,
                topology_min_endpoints: s.topology_min_endpoints.unwrap_or(1).max(1),
                affinity,
                affinity_explicit: s.affinity.is_some(),
            });
        }
        Ok(Config {
            backend: raw.backend,
            table,
            metrics_addr,
            max_slots,
            min_sync_interval: std::time::Duration::from_millis(raw.min_sync_interval_ms.unwrap_or(100)),
            node,
            services,
        })
    }
}

/// Environment variables read for this node's name when `[node] name` is not set, first set wins.
pub const NODE_ENV: [&str; 2] = ["LB_NODE", "NODE_NAME"];
/// Likewise for its zone.
pub const ZONE_ENV: [&str; 2] = ["LB_ZONE", "POD_ZONE"];
/// Likewise for its region.
pub const REGION_ENV: [&str; 2] = ["LB_REGION", "POD_REGION"];

fn env(names: [&str; 2]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let cfg: Config = r#"
            backend = "iptables"
            metrics_addr = "127.0.0.1:9464"
            [node]
            name = "n1"
            zone = "z1"
            [[service]]
            vip = "10.96.0.10:80"
            protocol = "udp"
            target = "static:///10.0.0.1:53"
            topology = ["kubernetes.io/hostname", "zone", "*"]
        "#
        .parse()
        .expect("valid config");
        assert_eq!(cfg.backend, BackendKind::Iptables);
        assert_eq!(cfg.table, DEFAULT_TABLE);
        assert_eq!(cfg.node.node.as_deref(), Some("n1"));
        assert_eq!(cfg.services[0].keys[0].protocol, Protocol::Udp);
        assert_eq!(cfg.services[0].affinity, None);
        assert_eq!(cfg.services[0].topology, vec![Level::Node, Level::Zone, Level::Any]);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        for (text, needle) in [
            ("[[service]]\nvip = \"10.96.0.10\"\ntarget = \"static:///1.1.1.1:1\"", "is not ip:port"),
            ("[[service]]\nvips = [\"10.96.0.10:1\", \"10.96.0.11:1\"]\ntarget = \"static:///1.1.1.1:1\"", "one VIP per family"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\nvips = [\"[fd00::1]:1\"]\ntarget = \"static:///1.1.1.1:1\"", "both `vip` and `vips`"),
            ("[[service]]\ntarget = \"static:///1.1.1.1:1\"", "no `vip` or `vips`"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"static:///1.1.1.1:1\"\naffinity = \"cookie\"", "\"none\" or \"client-ip\""),
            ("[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"static:///1.1.1.1:1\"\naffinity_timeout_secs = 5", "needs affinity"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"static:///1.1.1.1:1\"\naffinity = \"client-ip\"\naffinity_timeout_secs = 0", "between 1 and 86400"),
            ("[[service]]\nvips = [\"10.96.0.10:1\"]\ntarget = \"static:///1.1.1.1:1\"\n[[service]]\nvips = [\"[fd00::1]:2\", \"10.96.0.10:1\"]\ntarget = \"static:///1.1.1.1:1\"", "twice"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\nprotocol = \"sctp\"\ntarget = \"static:///1.1.1.1:1\"", "must be tcp or udp"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"nope\"", "no scheme"),
            ("bakend = \"ipvs\"", "unknown field"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"static:///1.1.1.1:1\"\n[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"static:///1.1.1.1:1\"", "twice"),
            ("[[service]]\nvip = \"10.96.0.10:1\"\ntarget = \"static:///1.1.1.1:1\"\ntopology = [\"rack\"]", "topology key"),
        ] {
            let err = text.parse::<Config>().expect_err(text);
            assert!(err.is_config());
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn dual_stack_vips_and_affinity() {
        let cfg: Config = r#"
            [[service]]
            vips = ["10.96.0.10:80", "[fd00:96::10]:80"]
            target = "static:///10.0.0.1:80,[fd00::1]:80"
            affinity = "client-ip"
            [[service]]
            vip = "[fd00:96::11]:53"
            protocol = "udp"
            target = "static:///[fd00::1]:53"
            affinity = "client-ip"
            affinity_timeout_secs = 60
        "#
        .parse()
        .expect("valid config");
        let s = &cfg.services[0];
        assert_eq!(s.families(), vec![Family::V4, Family::V6]);
        assert_eq!(s.keys[1].vip, "[fd00:96::10]:80".parse::<SocketAddr>().expect("addr"));
        assert_eq!(s.affinity, Some(Affinity { timeout_secs: 10_800 }));
        assert!(s.affinity_explicit);
        assert_eq!(cfg.services[1].affinity, Some(Affinity { timeout_secs: 60 }));
        assert_eq!(cfg.services[1].name, "[fd00:96::11]:53/udp");
    }
}
