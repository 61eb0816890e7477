//! The iptables backend: kube-proxy's classic layout, for hosts without nftables.
//!
//! ```text
//! nat PREROUTING, OUTPUT → LBA-SERVICES:  -d VIP -p tcp --dport 80 -j LBA-SVC-<hash>
//! LBA-SVC-<hash>:  -m statistic --mode random --probability 1/3 -j LBA-SEP-<a>
//!                  -m statistic --mode random --probability 1/2 -j LBA-SEP-<b>
//!                  -j LBA-SEP-<c>
//! LBA-SEP-<a>:     -s a -j MARK (hairpin)   -p tcp -j DNAT --to-destination a:port
//! nat POSTROUTING → LBA-POSTROUTING:  marked → MASQUERADE
//! filter INPUT, FORWARD, OUTPUT → LBA-NOEP:  VIP without endpoints → REJECT
//! ```
//!
//! IPv6 VIPs get the same layout in ip6tables (`ip6tables-restore`, `/128`, `[addr]:port`,
//! `icmp6-port-unreachable`); a family without VIPs and without chains of ours is never touched,
//! so an IPv4-only configuration runs no ip6tables tool at all.
//!
//! Session affinity is kube-proxy's: the service chain first sends a client that an endpoint's
//! `recent` list remembers (`--rcheck --seconds T --reap`) to that endpoint, and an endpoint's chain
//! records its client (`--set`). The `recent` module keeps 200 addresses per list by default
//! (`ip_list_tot`), as for kube-proxy.
//!
//! The i-th of n rules matches with probability w_i / (w_i + … + w_n) (kube-proxy's `1/(n-i)` for
//! equal weights), which gives each endpoint its weighted share. Every change rewrites the agent's
//! chains in one `iptables-restore --noflush` call (atomic per table, other chains untouched), as
//! kube-proxy does; the cost is O(rules), which is why nftables is the default. A comment rule
//! carries a hash of the ruleset, so a restart with unchanged state writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::backend::{Backend, SyncReport};
use crate::model::{Desired, Family, Protocol, ServiceKey};
use crate::{conntrack, exec, Error};

const SERVICES: &str = "LBA-SERVICES";
const POSTROUTING: &str = "LBA-POSTROUTING";
const NOEP: &str = "LBA-NOEP";
/// Hairpin mark bit; kube-proxy uses 0x4000, so this one does not collide with it.
const MARK: &str = "0x40000/0x40000";
const STATE: &str = "lb-agent-state";

/// Hooks from built-in chains: (table, built-in chain, our chain).
const HOOKS: [(&str, &str, &str); 6] = [
    ("nat", "PREROUTING", SERVICES),
    ("nat", "OUTPUT", SERVICES),
    ("nat", "POSTROUTING", POSTROUTING),
    ("filter", "INPUT", NOEP),
    ("filter", "FORWARD", NOEP),
    ("filter", "OUTPUT", NOEP),
];

/// The iptables backend: one [`Side`] per address family.
#[derive(Debug)]
pub struct Iptables {
    v4: Side,
    v6: Side,
}

/// One family's tools and what this agent committed there.
#[derive(Debug)]
struct Side {
    family: Family,
    /// `iptables-restore` and `iptables-save` (or their `ip6tables` / `-legacy` / `-nft` variants).
    tools: (String, String),
    /// Chains of ours that exist, per table.
    chains: BTreeMap<&'static str, BTreeSet<String>>,
    /// Hooks that exist (index into [`HOOKS`]).
    hooks: BTreeSet<usize>,
    /// Hash of the committed ruleset.
    state: Option<u64>,
    /// Destinations per service as last committed by this process (for UDP conntrack cleanup).
    committed: BTreeMap<ServiceKey, Vec<SocketAddr>>,
}

impl Default for Iptables {
    fn default() -> Self {
        Self::new()
    }
}

impl Iptables {
    /// A backend using the system's `iptables-restore` / `iptables-save` (and `ip6tables-…`).
    pub fn new() -> Self {
        Self::with_tools("iptables-restore", "iptables-save")
    }

    /// A backend using other tools, e.g. `iptables-legacy-restore` / `iptables-legacy-save`; the
    /// IPv6 tools are the same names with `ip6tables`.
    pub fn with_tools(restore: &str, save: &str) -> Self {
        let six = |t: &str| t.replacen("iptables", "ip6tables", 1);
        Iptables {
            v4: Side::new(Family::V4, (restore.to_string(), save.to_string())),
            v6: Side::new(Family::V6, (six(restore), six(save))),
        }
    }

    fn sides(&mut self) -> [&mut Side; 2] {
        [&mut self.v4, &mut self.v6]
    }
}

impl Side {
    fn new(family: Family, tools: (String, String)) -> Self {
        Side { family, tools, chains: BTreeMap::new(), hooks: BTreeSet::new(), state: None, committed: BTreeMap::new() }
    }

    fn reset(&mut self) {
        *self = Side::new(self.family, self.tools.clone());
    }

    /// True when this family holds nothing of ours (so a sync without its VIPs need not run).
    fn is_empty(&self) -> bool {
        self.state.is_none() && self.hooks.is_empty() && self.chains.values().all(BTreeSet::is_empty)
    }

    fn host_prefix(&self) -> &'static str {
        match self.family {
            Family::V4 => "32",
            Family::V6 => "128",
        }
    }

    /// The `iptables-restore` input for `desired`, and the chains it defines per table.
    fn render(&self, desired: &Desired) -> (String, BTreeMap<&'static str, BTreeSet<String>>) {
        let host = self.host_prefix();
        let mut nat = String::new();
        let mut filter = String::new();
        let mut nat_chains: BTreeSet<String> = [SERVICES.to_string(), POSTROUTING.to_string()].into();
        let filter_chains: BTreeSet<String> = [NOEP.to_string()].into();
        let _ = writeln!(nat, "-A {POSTROUTING} -m mark --mark {MARK} -j MASQUERADE");
        for (key, state) in desired.iter().filter(|(k, _)| k.family() == self.family) {
            let p = key.protocol.as_str();
            let (vip, port) = (key.vip.ip(), key.vip.port());
            if state.destinations.is_empty() {
                let how = match (key.protocol, self.family) {
                    (Protocol::Tcp, _) => "tcp-reset",
                    (Protocol::Udp, Family::V4) => "icmp-port-unreachable",
                    (Protocol::Udp, Family::V6) => "icmp6-port-unreachable",
                };
                let _ = writeln!(filter, "-A {NOEP} -d {vip}/{host} -p {p} -m {p} --dport {port} -j REJECT --reject-with {how}");
                continue;
            }
            let svc = chain("SVC", &key.to_string());
            let _ = writeln!(nat, "-A {SERVICES} -d {vip}/{host} -p {p} -m {p} --dport {port} -j {svc}");
            if let Some(a) = state.affinity {
                for d in &state.destinations {
                    let sep = chain("SEP", &format!("{key}>{}", d.addr));
                    let _ = writeln!(nat, "-A {svc} -m recent --name {sep} --rcheck --seconds {} --reap -j {sep}", a.timeout_secs);
                }
            }
            let mut rest: u64 = state.destinations.iter().map(|d| u64::from(d.weight)).sum();
            let n = state.destinations.len();
            for (i, d) in state.destinations.iter().enumerate() {
                let sep = chain("SEP", &format!("{key}>{}", d.addr));
                if i + 1 < n {
                    let prob = f64::from(d.weight) / rest as f64;
                    let _ = writeln!(nat, "-A {svc} -m statistic --mode random --probability {prob:.10} -j {sep}");
                } else {
                    let _ = writeln!(nat, "-A {svc} -j {sep}");
                }
                rest -= u64::from(d.weight);
                let _ = writeln!(nat, "-A {sep} -s {}/{host} -j MARK --set-xmark {MARK}", d.addr.ip());
                if state.affinity.is_some() {
                    let _ = writeln!(nat, "-A {sep} -m recent --name {sep} --set");
                }
                // The comment lets a restarted agent learn which flows it may have to clean up.
                let _ = writeln!(nat, "-A {sep} -p {p} -m comment --comment \"{key}\" -m {p} -j DNAT --to-destination {}", d.addr);
                nat_chains.insert(sep);
            }
            nat_chains.insert(svc);
        }
        let hash = fnv(&format!("{nat}\n{filter}"));
        let mut out = String::new();
        let mut chains = BTreeMap::new();
        for (table, body, ours) in [("nat", nat, nat_chains), ("filter", filter, filter_chains)] {
            let _ = writeln!(out, "*{table}");
            // Declaring a chain creates or flushes it; it is then refilled below.
            for c in &ours {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            if table == "nat" {
                let _ = writeln!(out, "-A {SERVICES} -m comment --comment \"{STATE} {hash:016x}\"");
            }
            out.push_str(&body);
            let stale: Vec<&String> =
                self.chains.get(table).into_iter().flatten().filter(|c| !ours.contains(*c)).collect();
            for c in &stale {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for c in stale {
                let _ = writeln!(out, "-X {c}");
            }
            for (i, (t, builtin, ours)) in HOOKS.iter().enumerate() {
                if *t == table && !self.hooks.contains(&i) {
                    let _ = writeln!(out, "-I {builtin} 1 -j {ours}");
                }
            }
            let _ = writeln!(out, "COMMIT");
            chains.insert(table, ours);
        }
        (out, chains)
    }
}

fn chain(kind: &str, id: &str) -> String {
    format!("LBA-{kind}-{:016X}", fnv(id))
}

/// FNV-1a: stable across builds and Rust versions, unlike `DefaultHasher`.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn state_hash(rendered: &str) -> Option<u64> {
    let i = rendered.find(STATE)? + STATE.len() + 1;
    u64::from_str_radix(rendered.get(i..i + 16)?, 16).ok()
}

/// `-A LBA-SEP-… -p udp -m comment --comment "VIP:PORT/udp" -m udp -j DNAT --to-destination EP`.
fn parse_dnat(line: &str) -> Option<(ServiceKey, SocketAddr)> {
    if !line.starts_with("-A LBA-SEP-") {
        return None;
    }
    let comment = line.split("--comment \"").nth(1)?.split('"').next()?;
    let (vip, proto) = comment.rsplit_once('/')?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let dest = line.split("--to-destination ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some((ServiceKey { protocol, vip: vip.parse().ok()? }, dest))
}

/// What one family's sync wrote (or would write).
#[derive(Debug, Default)]
struct Planned {
    /// The restore input, headed by a comment naming the tool; empty when nothing changes.
    shown: String,
    /// UDP flows to delete from conntrack.
    flush: Vec<(ServiceKey, SocketAddr)>,
    /// Rules owned afterwards.
    objects: usize,
}

impl Side {
    fn load(&mut self) -> Result<(), Error> {
        self.reset();
        for table in ["nat", "filter"] {
            let saved = exec::run(&self.tools.1, &["-t", table], None)?;
            let mut ours = BTreeSet::new();
            for line in saved.lines() {
                if let Some(c) = line.strip_prefix(":LBA-") {
                    ours.insert(format!("LBA-{}", c.split_whitespace().next().unwrap_or_default()));
                } else if line.starts_with(&format!("-A {SERVICES} ")) && line.contains(STATE) {
                    self.state = state_hash(line);
                }
                if let Some((key, dest)) = parse_dnat(line) {
                    self.committed.entry(key).or_default().push(dest);
                }
                for (i, (t, builtin, c)) in HOOKS.iter().enumerate() {
                    if *t == table && line.trim_end() == format!("-A {builtin} -j {c}") {
                        self.hooks.insert(i);
                    }
                }
            }
            self.chains.insert(table, ours);
        }
        Ok(())
    }

    /// The transaction bringing this family to `desired` (empty when it already matches), its
    /// conntrack deletions and the rules it owns afterwards; commits unless `dry_run`.
    fn sync(&mut self, desired: &Desired, dry_run: bool) -> Result<Planned, Error> {
        let wanted = desired.keys().any(|k| k.family() == self.family);
        if !wanted && self.is_empty() {
            return Ok(Planned::default());
        }
        let (transaction, chains) = self.render(desired);
        let objects = transaction.lines().filter(|l| l.starts_with("-A ")).count();
        let complete = self.hooks.len() == HOOKS.len();
        if complete && state_hash(&transaction) == self.state {
            return Ok(Planned { objects, ..Planned::default() });
        }
        let mut flush = Vec::new();
        for (key, old) in &self.committed {
            flush.extend(conntrack::stale(key, old.iter().copied(), desired.get(key)).into_iter().map(|e| (*key, e)));
        }
        let shown = format!("# {} --noflush\n{transaction}", self.tools.0);
        if dry_run {
            return Ok(Planned { shown, flush, objects });
        }
        exec::run(&self.tools.0, &["--noflush"], Some(&transaction))?;
        self.state = state_hash(&transaction);
        self.chains = chains;
        self.hooks = (0..HOOKS.len()).collect();
        self.committed = desired
            .iter()
            .filter(|(k, _)| k.family() == self.family)
            .map(|(k, s)| (*k, s.destinations.iter().map(|d| d.addr).collect()))
            .collect();
        Ok(Planned { shown, flush, objects })
    }

    fn cleanup(&mut self, dry_run: bool) -> Result<String, Error> {
        let mut out = String::new();
        for table in ["nat", "filter"] {
            let ours = self.chains.get(table).cloned().unwrap_or_default();
            let hooks: Vec<_> = HOOKS.iter().enumerate().filter(|(i, h)| h.0 == table && self.hooks.contains(i)).collect();
            if ours.is_empty() && hooks.is_empty() {
                continue;
            }
            let _ = writeln!(out, "*{table}");
            for c in &ours {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for (_, (_, builtin, c)) in hooks {
                let _ = writeln!(out, "-D {builtin} -j {c}");
            }
            for c in &ours {
                let _ = writeln!(out, "-X {c}");
            }
            let _ = writeln!(out, "COMMIT");
        }
        if out.is_empty() {
            return Ok(out);
        }
        if !dry_run {
            exec::run(&self.tools.0, &["--noflush"], Some(&out))?;
            self.reset();
        }
        Ok(format!("# {} --noflush\n{out}", self.tools.0))
    }
}

impl Backend for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn load(&mut self) -> Result<(), Error> {
        self.v4.load()?;
        // A host without ip6tables (or without IPv6) has no IPv6 state of ours; a sync that needs
        // one fails there with the tool's own error.
        if let Err(e) = self.v6.load() {
            tracing::debug!(error = %e, "cannot read ip6tables; assuming no IPv6 rules of ours");
            self.v6.reset();
        }
        Ok(())
    }

    fn sync(&mut self, desired: &Desired, dry_run: bool) -> Result<SyncReport, Error> {
        let mut report = SyncReport::default();
        let mut flush = Vec::new();
        for side in self.sides() {
            let planned = side.sync(desired, dry_run)?;
            report.transaction.push_str(&planned.shown);
            report.objects += planned.objects;
            flush.extend(planned.flush);
        }
        report.commands = if dry_run { conntrack::describe(&flush) } else { conntrack::run(&flush) };
        Ok(report)
    }

    fn cleanup(&mut self, dry_run: bool) -> Result<SyncReport, Error> {
        let mut transaction = String::new();
        for side in self.sides() {
            transaction.push_str(&side.cleanup(dry_run)?);
        }
        Ok(SyncReport { transaction, ..SyncReport::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, ServiceState};

    #[test]
    fn probabilities_follow_weights_and_hash_is_stable() {
        let key = ServiceKey { protocol: Protocol::Tcp, vip: "10.96.0.10:80".parse().expect("addr") };
        let d = |l: u8, weight| Destination { addr: SocketAddr::from(([10, 0, 0, l], 80)), weight };
        let mut desired = Desired::new();
        desired.insert(key, ServiceState { destinations: vec![d(1, 1), d(2, 1), d(3, 2)], ..Default::default() });
        let ipt = Iptables::new().v4;
        let (a, _) = ipt.render(&desired);
        let probs: Vec<&str> = a.lines().filter_map(|l| l.split("--probability ").nth(1)).map(|p| &p[..12]).collect();
        assert_eq!(probs, vec!["0.2500000000", "0.3333333333"]);
        assert!(a.contains("-I PREROUTING 1 -j LBA-SERVICES"));
        let (b, _) = ipt.render(&desired);
        assert_eq!(state_hash(&a), state_hash(&b));
        desired.insert(key, ServiceState::default());
        let (c, _) = ipt.render(&desired);
        assert_ne!(state_hash(&a), state_hash(&c));
        assert!(c.contains("-A LBA-NOEP -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"));
    }

    #[test]
    fn ipv6_and_affinity_rules() {
        let key = ServiceKey { protocol: Protocol::Udp, vip: "[fd00:96::10]:53".parse().expect("addr") };
        let addr: SocketAddr = "[fd00::1]:5353".parse().expect("addr");
        let mut desired = Desired::new();
        desired.insert(
            key,
            ServiceState {
                destinations: vec![Destination { addr, weight: 1 }],
                affinity: Some(crate::model::Affinity { timeout_secs: 60 }),
                ..Default::default()
            },
        );
        let ipt = Iptables::new();
        assert_eq!(ipt.v6.tools.0, "ip6tables-restore");
        let (four, _) = ipt.v4.render(&desired);
        assert!(!four.contains("fd00"), "the IPv4 side holds no IPv6 service: {four}");
        let (six, _) = ipt.v6.render(&desired);
        let sep = chain("SEP", &format!("{key}>{addr}"));
        for line in [
            "-d fd00:96::10/128 -p udp -m udp --dport 53".to_string(),
            format!("-m recent --name {sep} --rcheck --seconds 60 --reap -j {sep}"),
            format!("-A {sep} -s fd00::1/128 -j MARK"),
            format!("-A {sep} -m recent --name {sep} --set"),
            "-j DNAT --to-destination [fd00::1]:5353".to_string(),
        ] {
            assert!(six.contains(&line), "missing {line} in\n{six}");
        }
        let dnat = six.lines().find(|l| l.contains("DNAT")).expect("dnat rule");
        assert_eq!(parse_dnat(dnat), Some((key, addr)), "a restarted agent learns IPv6 flows too");
        desired.insert(key, ServiceState::default());
        let (six, _) = ipt.v6.render(&desired);
        assert!(six.contains("--reject-with icmp6-port-unreachable"), "{six}");
    }
}
