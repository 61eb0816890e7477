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
//! vip = "10.96.0.10:80"
//! protocol = "tcp"                # "tcp" | "udp"
//! target = "static:///10.0.0.1:8080,10.0.0.2:8080"
//! topology = ["node", "zone", "any"]   # optional; Kubernetes topology keys work too
//! ```
//!
//! Unknown keys are errors: a typo in a kernel-programming agent should stop it, not be ignored.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::str::FromStr;

use lb_core::policy::Level;
use lb_core::Locality;
use lb_registry::Target;
use serde::Deserialize;

use crate::model::{Protocol, ServiceKey};
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
    /// Name of the agent's own nftables table (family `ip`).
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
    /// A name for logs and metrics (defaults to the VIP).
    pub name: String,
    /// The VIP, port and protocol.
    pub key: ServiceKey,
    /// Where its endpoints come from.
    pub target: Target,
    /// Topology preference, nearest first; empty means anywhere.
    pub topology: Vec<Level>,
    /// A tier is used only when it has at least this many usable endpoints.
    pub topology_min_endpoints: usize,
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
    vip: String,
    #[serde(default = "default_protocol")]
    protocol: String,
    target: String,
    #[serde(default)]
    topology: Vec<String>,
    topology_min_endpoints: Option<usize>,
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
        let mut node = Locality::unknown();
        if let Some(n) = raw.node.name.or_else(hostname) {
            node = node.with_node(n);
        }
        if let Some(z) = raw.node.zone {
            node = node.with_zone(z);
        }
        if let Some(r) = raw.node.region {
            node = node.with_region(r);
        }
        let mut seen = BTreeSet::new();
        let mut services = Vec::new();
        for s in raw.service {
            let vip: SocketAddrV4 = s.vip.parse().map_err(|_| {
                Error::config(format!("vip `{}` is not an IPv4 ip:port (IPv6 VIPs are not supported yet)", s.vip))
            })?;
            let protocol = match s.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(Error::config(format!("protocol `{other}` of {vip} must be tcp or udp"))),
            };
            let key = ServiceKey { protocol, vip };
            if !seen.insert(key) {
                return Err(Error::config(format!("service {key} is listed twice")));
            }
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
            services.push(ServiceConfig {
                name: s.name.unwrap_or_else(|| key.to_string()),
                key,
                target,
                topology,
                topology_min_endpoints: s.topology_min_endpoints.unwrap_or(1).max(1),
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
        assert_eq!(cfg.services[0].key.protocol, Protocol::Udp);
        assert_eq!(cfg.services[0].topology, vec![Level::Node, Level::Zone, Level::Any]);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        for (text, needle) in [
            ("[[service]]\nvip = \"10.96.0.10\"\ntarget = \"static:///1.1.1.1:1\"", "not an IPv4 ip:port"),
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
}
