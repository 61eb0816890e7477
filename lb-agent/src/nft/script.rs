//! Text of the nft transactions: the table definition, affinity chains and element changes.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::model::{Family, Protocol, ServiceKey};

/// Chain that rejects new connections to a VIP without endpoints (TCP reset, ICMP/ICMPv6 otherwise).
pub(super) const NO_ENDPOINTS: &str = "no_endpoints";
/// Chains every table of this layout holds (besides `slots_N` and affinity chains).
pub(super) const CHAINS: [&str; 5] = [NO_ENDPOINTS, "services", "prerouting", "output", "postrouting"];
/// Maps of the layout.
pub(super) const MAPS: [&str; 8] = ["svc_tcp4", "svc_udp4", "svc_tcp6", "svc_udp6", "be_tcp4", "be_udp4", "be_tcp6", "be_udp6"];
/// Rules in a `slots_N` chain: one per protocol and family.
pub(super) const SLOT_RULES: usize = 4;
/// Both families, both protocols: the order of rules in `services` and `slots_N`.
pub(super) const KINDS: [(Family, Protocol); 4] =
    [(Family::V4, Protocol::Tcp), (Family::V4, Protocol::Udp), (Family::V6, Protocol::Tcp), (Family::V6, Protocol::Udp)];

/// Set of `endpoint . endpoint` pairs of a family: a flow DNAT'ed back to its own source is
/// masqueraded.
pub(super) fn hairpin(f: Family) -> &'static str {
    match f {
        Family::V4 => "hairpin4",
        Family::V6 => "hairpin6",
    }
}

/// The verdict map of a protocol and family: `vip . port → goto slots_M | goto no_endpoints | goto aff_…`.
pub(super) fn svc_map(f: Family, p: Protocol) -> &'static str {
    match (f, p) {
        (Family::V4, Protocol::Tcp) => "svc_tcp4",
        (Family::V4, Protocol::Udp) => "svc_udp4",
        (Family::V6, Protocol::Tcp) => "svc_tcp6",
        (Family::V6, Protocol::Udp) => "svc_udp6",
    }
}

/// The backend map of a protocol and family: `vip . port . slot → endpoint . port`.
pub(super) fn be_map(f: Family, p: Protocol) -> &'static str {
    match (f, p) {
        (Family::V4, Protocol::Tcp) => "be_tcp4",
        (Family::V4, Protocol::Udp) => "be_udp4",
        (Family::V6, Protocol::Tcp) => "be_tcp6",
        (Family::V6, Protocol::Udp) => "be_udp6",
    }
}

/// Name of the chain picking one of `m` slots.
pub(super) fn slots_chain(m: usize) -> String {
    format!("slots_{m}")
}

/// An address in hex (8 digits for IPv4, 32 for IPv6): object names may not hold `:`.
fn ip_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn addr_id(a: SocketAddr) -> String {
    format!("{}_{:04x}", ip_hex(a.ip()), a.port())
}

/// `t4_0a60000a_0050` for 10.96.0.10:80/tcp: a service's part of its affinity objects' names.
pub(super) fn service_id(key: &ServiceKey) -> String {
    let p = match key.protocol {
        Protocol::Tcp => 't',
        Protocol::Udp => 'u',
    };
    format!("{p}{}_{}", key.family().digit(), addr_id(key.vip))
}

/// The chain an affinity service's verdict goes to.
pub(super) fn aff_chain(key: &ServiceKey) -> String {
    format!("aff_{}", service_id(key))
}

/// The per-endpoint chain of an affinity service (the timeout is part of the name, so that a new
/// timeout makes new sets instead of editing live ones).
pub(super) fn aff_endpoint_chain(key: &ServiceKey, ep: SocketAddr, timeout: u32) -> String {
    format!("ae_{}_{}_{timeout}", service_id(key), addr_id(ep))
}

/// The per-endpoint set of client addresses of an affinity service.
pub(super) fn aff_set(key: &ServiceKey, ep: SocketAddr, timeout: u32) -> String {
    format!("as_{}_{}_{timeout}", service_id(key), addr_id(ep))
}

/// Parses `<ip hex>_<port hex>` back (for the listing read at startup).
pub(super) fn parse_addr_id(family: Family, ip: &str, port: &str) -> Option<SocketAddr> {
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes: Vec<u8> =
        (0..ip.len()).step_by(2).map(|i| ip.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect::<Option<_>>()?;
    let ip = match family {
        Family::V4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        Family::V6 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
    };
    Some(SocketAddr::new(ip, port))
}

/// An address as nft writes it in a `dnat to` statement (`[fd00::1]:80` for IPv6).
fn dnat_target(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// The whole table, without elements and without `slots_N` or affinity chains.
pub(super) fn table_definition(table: &str) -> String {
    // nft 1.0.6: the output hook takes numeric priorities only, and a map key cannot combine
    // `meta l4proto` with `th dport`, hence one verdict map and one rule per L4 protocol and family.
    // In an `inet` table, `ip daddr` carries an implicit `meta nfproto ipv4`, so an IPv6 packet
    // skips the IPv4 rules with one compare and meets one hash lookup of its own.
    format!(
        r#"table inet {table} {{
	comment "managed by lb-agent; edits are overwritten"
	map svc_tcp4 {{ type ipv4_addr . inet_service : verdict; }}
	map svc_udp4 {{ type ipv4_addr . inet_service : verdict; }}
	map svc_tcp6 {{ type ipv6_addr . inet_service : verdict; }}
	map svc_udp6 {{ type ipv6_addr . inet_service : verdict; }}
	map be_tcp4 {{ typeof ip daddr . tcp dport . numgen random mod 1 : ip daddr . tcp dport; }}
	map be_udp4 {{ typeof ip daddr . udp dport . numgen random mod 1 : ip daddr . udp dport; }}
	map be_tcp6 {{ typeof ip6 daddr . tcp dport . numgen random mod 1 : ip6 daddr . tcp dport; }}
	map be_udp6 {{ typeof ip6 daddr . udp dport . numgen random mod 1 : ip6 daddr . udp dport; }}
	set hairpin4 {{ type ipv4_addr . ipv4_addr; }}
	set hairpin6 {{ type ipv6_addr . ipv6_addr; }}
	chain {NO_ENDPOINTS} {{
		meta l4proto tcp reject with tcp reset
		reject
	}}
	chain services {{
		ip daddr . tcp dport vmap @svc_tcp4
		ip daddr . udp dport vmap @svc_udp4
		ip6 daddr . tcp dport vmap @svc_tcp6
		ip6 daddr . udp dport vmap @svc_udp6
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
		ct status dnat ip saddr . ip daddr @hairpin4 masquerade
		ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade
	}}
}}
"#
    )
}

/// Statements creating the chain for `m` slots.
pub(super) fn add_slots_chain(out: &mut String, table: &str, m: usize) {
    let c = slots_chain(m);
    let _ = writeln!(out, "add chain inet {table} {c}");
    for (f, p) in KINDS {
        let (fam, proto, map) = (f.nft(), p.as_str(), be_map(f, p));
        let _ = writeln!(
            out,
            "add rule inet {table} {c} meta l4proto {proto} dnat {fam} to {fam} daddr . {proto} dport . numgen random mod {m} map @{map}"
        );
    }
}

/// Statements creating an endpoint's set and chain of an affinity service: the chain remembers
/// the client (refreshing its timeout) and DNATs to the endpoint. Two rules, so that a full set
/// costs the affinity of new clients, never the connection.
pub(super) fn add_affinity_endpoint(out: &mut String, table: &str, key: &ServiceKey, ep: SocketAddr, timeout: u32) {
    let (set, chain) = (aff_set(key, ep, timeout), aff_endpoint_chain(key, ep, timeout));
    let fam = key.family();
    let ty = match fam {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let _ = writeln!(out, "add set inet {table} {set} {{ type {ty}; flags dynamic,timeout; timeout {timeout}s; size 262144; }}");
    let _ = writeln!(out, "add chain inet {table} {chain}");
    let _ = writeln!(out, "add rule inet {table} {chain} update @{set} {{ {} saddr }}", fam.nft());
    let _ = writeln!(out, "add rule inet {table} {chain} meta l4proto {} dnat {} to {}", key.protocol.as_str(), fam.nft(), dnat_target(ep));
}

/// Statements (re)filling an affinity service's chain: a client remembered by one endpoint's set
/// goes to that endpoint, any other picks a slot, as a service without affinity does.
pub(super) fn fill_affinity_chain(out: &mut String, table: &str, key: &ServiceKey, slots: &[SocketAddr], timeout: u32, fresh: bool) {
    let chain = aff_chain(key);
    let fam = key.family().nft();
    if fresh {
        let _ = writeln!(out, "add chain inet {table} {chain}");
    } else {
        let _ = writeln!(out, "flush chain inet {table} {chain}");
    }
    let mut seen: Vec<SocketAddr> = slots.to_vec();
    seen.sort();
    seen.dedup();
    for ep in &seen {
        let _ = writeln!(
            out,
            "add rule inet {table} {chain} {fam} saddr @{} goto {}",
            aff_set(key, *ep, timeout),
            aff_endpoint_chain(key, *ep, timeout)
        );
    }
    let vmap: Vec<String> =
        slots.iter().enumerate().map(|(i, ep)| format!("{i} : goto {}", aff_endpoint_chain(key, *ep, timeout))).collect();
    let _ = writeln!(out, "add rule inet {table} {chain} numgen random mod {} vmap {{ {} }}", slots.len(), vmap.join(", "));
}

/// Statements removing an endpoint's affinity chain and set (after nothing refers to them).
pub(super) fn del_affinity_endpoint(out: &mut String, table: &str, key: &ServiceKey, ep: SocketAddr, timeout: u32) {
    let chain = aff_endpoint_chain(key, ep, timeout);
    let _ = writeln!(out, "flush chain inet {table} {chain}");
    let _ = writeln!(out, "delete chain inet {table} {chain}");
    let _ = writeln!(out, "delete set inet {table} {}", aff_set(key, ep, timeout));
}

/// Accumulates element changes per map, so that a transaction has one statement per map and kind.
#[derive(Debug, Default)]
pub(super) struct Elements {
    del: Vec<(&'static str, Vec<String>)>,
    add: Vec<(&'static str, Vec<String>)>,
}

fn vip(key: &ServiceKey) -> String {
    format!("{} . {}", key.vip.ip(), key.vip.port())
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
        Self::slot(&mut self.del, svc_map(key.family(), key.protocol)).push(vip(key));
    }

    /// The verdict element: `target` is a chain name.
    pub(super) fn add_service(&mut self, key: &ServiceKey, target: &str) {
        Self::slot(&mut self.add, svc_map(key.family(), key.protocol)).push(format!("{} : goto {target}", vip(key)));
    }

    pub(super) fn del_slot(&mut self, key: &ServiceKey, slot: usize) {
        Self::slot(&mut self.del, be_map(key.family(), key.protocol)).push(format!("{} . {slot}", vip(key)));
    }

    pub(super) fn add_slot(&mut self, key: &ServiceKey, slot: usize, ep: SocketAddr) {
        Self::slot(&mut self.add, be_map(key.family(), key.protocol))
            .push(format!("{} . {slot} : {} . {}", vip(key), ep.ip(), ep.port()));
    }

    pub(super) fn del_hairpin(&mut self, ip: IpAddr) {
        Self::slot(&mut self.del, hairpin(Family::of(ip))).push(format!("{ip} . {ip}"));
    }

    pub(super) fn add_hairpin(&mut self, ip: IpAddr) {
        Self::slot(&mut self.add, hairpin(Family::of(ip))).push(format!("{ip} . {ip}"));
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
                    let _ = writeln!(out, "{verb} element inet {table} {map} {{ {} }}", chunk.join(", "));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_names_round_trip_without_colons() {
        let key = ServiceKey { protocol: Protocol::Udp, vip: "[fd00:96::10]:53".parse().expect("vip") };
        let ep: SocketAddr = "[fd00::1]:5353".parse().expect("ep");
        assert_eq!(service_id(&key), "u6_fd000096000000000000000000000010_0035");
        let chain = aff_endpoint_chain(&key, ep, 60);
        assert!(!chain.contains(':') && chain.ends_with("_60"), "{chain}");
        let parts: Vec<&str> = chain.split('_').collect();
        assert_eq!(parse_addr_id(Family::V6, parts[4], parts[5]), Some(ep));
        let v4: SocketAddr = "10.0.0.1:8080".parse().expect("ep");
        assert_eq!(parse_addr_id(Family::V4, "0a000001", "1f90"), Some(v4));
        assert_eq!(parse_addr_id(Family::V4, "0a0001", "1f90"), None);
    }
}
