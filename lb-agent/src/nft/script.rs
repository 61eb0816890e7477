//! Text of the nft transactions: the table definition and incremental element changes.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{Protocol, ServiceKey};

/// Chain that rejects new connections to a VIP without endpoints (TCP reset, ICMP otherwise).
pub(super) const NO_ENDPOINTS: &str = "no_endpoints";
/// Set of `endpoint . endpoint` pairs: a flow DNAT'ed back to its own source is masqueraded.
pub(super) const HAIRPIN: &str = "hairpin";
/// Chains, maps and sets every table of this layout holds (besides `slots_N` chains).
pub(super) const CHAINS: [&str; 5] = [NO_ENDPOINTS, "services", "prerouting", "output", "postrouting"];
/// Maps of the layout.
pub(super) const MAPS: [&str; 4] = ["svc_tcp", "svc_udp", "be_tcp", "be_udp"];

/// The verdict map of a protocol: `vip . port → goto slots_M | goto no_endpoints`.
pub(super) fn svc_map(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "svc_tcp",
        Protocol::Udp => "svc_udp",
    }
}

/// The backend map of a protocol: `vip . port . slot → endpoint . port`.
pub(super) fn be_map(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "be_tcp",
        Protocol::Udp => "be_udp",
    }
}

/// Name of the chain picking one of `m` slots.
pub(super) fn slots_chain(m: usize) -> String {
    format!("slots_{m}")
}

/// The whole table, without elements and without `slots_N` chains.
pub(super) fn table_definition(table: &str) -> String {
    // nft 1.0.6: the output hook takes numeric priorities only, and a map key cannot combine
    // `meta l4proto` with `th dport`, hence one verdict map and one rule per L4 protocol.
    format!(
        r#"table ip {table} {{
	comment "managed by lb-agent; edits are overwritten"
	map svc_tcp {{ type ipv4_addr . inet_service : verdict; }}
	map svc_udp {{ type ipv4_addr . inet_service : verdict; }}
	map be_tcp {{ typeof ip daddr . tcp dport . numgen random mod 1 : ip daddr . tcp dport; }}
	map be_udp {{ typeof ip daddr . udp dport . numgen random mod 1 : ip daddr . udp dport; }}
	set {HAIRPIN} {{ type ipv4_addr . ipv4_addr; }}
	chain {NO_ENDPOINTS} {{
		meta l4proto tcp reject with tcp reset
		reject
	}}
	chain services {{
		ip daddr . tcp dport vmap @svc_tcp
		ip daddr . udp dport vmap @svc_udp
	}}
	chain prerouting {{
		type nat hook prerouting priority -100; policy accept;
		jump services
	}}
	chain output {{
		type nat hook output priority -100; policy accept;
		jump services
	}}
	chain postrouting {{
		type nat hook postrouting priority 100; policy accept;
		ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade
	}}
}}
"#
    )
}

/// Statements creating the chain for `m` slots.
pub(super) fn add_slots_chain(out: &mut String, table: &str, m: usize) {
    let c = slots_chain(m);
    let _ = writeln!(out, "add chain ip {table} {c}");
    for p in [Protocol::Tcp, Protocol::Udp] {
        let (proto, map) = (p.as_str(), be_map(p));
        let _ = writeln!(
            out,
            "add rule ip {table} {c} meta l4proto {proto} dnat ip to ip daddr . {proto} dport . numgen random mod {m} map @{map}"
        );
    }
}

/// Accumulates element changes per map, so that a transaction has one statement per map and kind.
#[derive(Debug, Default)]
pub(super) struct Elements {
    del: Vec<(&'static str, Vec<String>)>,
    add: Vec<(&'static str, Vec<String>)>,
}

impl Elements {
    fn slot<'a>(list: &'a mut Vec<(&'static str, Vec<String>)>, map: &'static str) -> &'a mut Vec<String> {
        if let Some(i) = list.iter().position(|(m, _)| *m == map) {
            &mut list[i].1
        } else {
            list.push((map, Vec::new()));
            &mut list.last_mut().expect("just pushed").1
        }
    }

    pub(super) fn del_service(&mut self, key: &ServiceKey) {
        Self::slot(&mut self.del, svc_map(key.protocol)).push(format!("{} . {}", key.vip.ip(), key.vip.port()));
    }

    pub(super) fn add_service(&mut self, key: &ServiceKey, slots: usize) {
        let target = if slots == 0 { NO_ENDPOINTS.to_string() } else { slots_chain(slots) };
        Self::slot(&mut self.add, svc_map(key.protocol))
            .push(format!("{} . {} : goto {target}", key.vip.ip(), key.vip.port()));
    }

    pub(super) fn del_slot(&mut self, key: &ServiceKey, slot: usize) {
        Self::slot(&mut self.del, be_map(key.protocol)).push(format!("{} . {} . {slot}", key.vip.ip(), key.vip.port()));
    }

    pub(super) fn add_slot(&mut self, key: &ServiceKey, slot: usize, ep: SocketAddrV4) {
        Self::slot(&mut self.add, be_map(key.protocol))
            .push(format!("{} . {} . {slot} : {} . {}", key.vip.ip(), key.vip.port(), ep.ip(), ep.port()));
    }

    pub(super) fn del_hairpin(&mut self, ip: Ipv4Addr) {
        Self::slot(&mut self.del, HAIRPIN).push(format!("{ip} . {ip}"));
    }

    pub(super) fn add_hairpin(&mut self, ip: Ipv4Addr) {
        Self::slot(&mut self.add, HAIRPIN).push(format!("{ip} . {ip}"));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.del.is_empty() && self.add.is_empty()
    }

    /// Deletions first: a key rewritten in this transaction is deleted, then added again.
    pub(super) fn write(&self, out: &mut String, table: &str) {
        // Bounded statements keep nft's parser and error messages manageable at 100k elements.
        const CHUNK: usize = 2048;
        for (verb, list) in [("delete", &self.del), ("add", &self.add)] {
            for (map, elems) in list {
                for chunk in elems.chunks(CHUNK) {
                    let _ = writeln!(out, "{verb} element ip {table} {map} {{ {} }}", chunk.join(", "));
                }
            }
        }
    }
}
