use std::net::SocketAddr;

use super::*;
use crate::model::{Protocol, ServiceState};

fn key(last: u8) -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, vip: SocketAddr::from(([10, 96, 0, last], 80)) }
}

fn key6(last: u16) -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, vip: SocketAddr::from(([0xfd00, 0x96, 0, 0, 0, 0, 0, last], 80)) }
}

fn ep(l: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, l], 8080))
}

fn ep6(l: u16) -> SocketAddr {
    SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, l], 8080))
}

fn state_of(addrs: Vec<SocketAddr>) -> ServiceState {
    let destinations: Vec<Destination> = addrs.into_iter().map(|addr| Destination { addr, weight: 1 }).collect();
    let keep_flows = destinations.iter().map(|d| d.addr).collect();
    ServiceState { destinations, keep_flows, affinity: None }
}

fn state(eps: &[u8]) -> ServiceState {
    state_of(eps.iter().map(|l| ep(*l)).collect())
}

fn sticky(mut s: ServiceState, timeout_secs: u32) -> ServiceState {
    s.affinity = Some(Affinity { timeout_secs });
    s
}

fn diff(nft: &Nft, cur: &Committed, desired: &Desired) -> (String, Vec<Change>, Flush) {
    let all: BTreeSet<&ServiceKey> = cur.services.keys().chain(desired.keys()).collect();
    nft.incremental(cur, desired, all)
}

fn committed(nft: &Nft, desired: &Desired) -> Committed {
    nft.cold(desired, false).1
}

#[test]
fn removing_an_endpoint_writes_only_its_slot() {
    let nft = Nft::new("t", 256);
    let mut desired = Desired::new();
    desired.insert(key(1), state(&[1, 2, 3]));
    desired.insert(key(2), state(&[4, 5]));
    let cur = committed(&nft, &desired);
    desired.insert(key(1), state(&[1, 3]));
    let (tx, _, _) = diff(&nft, &cur, &desired);
    assert_eq!(
        tx,
        "delete element inet t be_tcp4 { 10.96.0.1 . 80 . 1, 10.96.0.1 . 80 . 2 }\n\
         delete element inet t svc_tcp4 { 10.96.0.1 . 80 }\n\
         delete element inet t hairpin4 { 10.0.0.2 . 10.0.0.2 }\n\
         add element inet t be_tcp4 { 10.96.0.1 . 80 . 1 : 10.0.0.3 . 8080 }\n\
         add element inet t svc_tcp4 { 10.96.0.1 . 80 : goto slots_2 }\n",
        "slots_2 already exists (service 2 uses it): only elements change"
    );
}

#[test]
fn ipv6_services_use_their_own_maps_in_the_same_transaction() {
    let nft = Nft::new("t", 256);
    let mut desired = Desired::new();
    desired.insert(key(1), state(&[1, 2]));
    desired.insert(key6(1), state_of(vec![ep6(1), ep6(2)]));
    let (cold, cur) = nft.cold(&desired, false);
    assert!(cold.starts_with("table inet t {"), "{cold}");
    assert!(cold.contains("add rule inet t slots_2 meta l4proto tcp dnat ip6 to ip6 daddr . tcp dport . numgen random mod 2 map @be_tcp6"), "{cold}");
    assert!(cold.contains("add element inet t be_tcp6 { fd00:96::1 . 80 . 0 : fd00::1 . 8080, fd00:96::1 . 80 . 1 : fd00::2 . 8080 }"), "{cold}");
    assert!(cold.contains("add element inet t svc_tcp6 { fd00:96::1 . 80 : goto slots_2 }"), "{cold}");
    assert!(cold.contains("add element inet t hairpin6 { fd00::1 . fd00::1, fd00::2 . fd00::2 }"), "{cold}");
    assert_eq!(cold.matches("add chain inet t slots_2").count(), 1, "one slots chain serves both families");

    // A dual-stack change (both VIPs lose an endpoint) is one transaction.
    desired.insert(key(1), state(&[1]));
    desired.insert(key6(1), state_of(vec![ep6(1)]));
    let (tx, _, _) = diff(&nft, &cur, &desired);
    assert!(tx.contains("delete element inet t be_tcp4 { 10.96.0.1 . 80 . 1 }"), "{tx}");
    assert!(tx.contains("delete element inet t be_tcp6 { fd00:96::1 . 80 . 1 }"), "{tx}");
    assert!(tx.contains("delete element inet t hairpin6 { fd00::2 . fd00::2 }"), "{tx}");
}

#[test]
fn unchanged_state_writes_nothing_and_weights_alone_are_remembered() {
    let nft = Nft::new("t", 256);
    let mut desired = Desired::new();
    desired.insert(key(1), state(&[1, 2, 3]));
    let mut cur = committed(&nft, &desired);
    assert!(diff(&nft, &cur, &desired).0.is_empty());
    // As after a restart: weights unknown, reconstructed from slots.
    let slots = cur.services[&key(1)].slots.clone();
    cur.insert(key(1), slots, None);
    for d in &mut desired.get_mut(&key(1)).expect("present").destinations {
        d.weight = 100;
    }
    let (tx, changes, _) = diff(&nft, &cur, &desired);
    assert!(tx.is_empty(), "{tx}");
    assert_eq!(changes.len(), 1, "the real weights are remembered");
}

#[test]
fn no_endpoints_rejects_and_removal_cleans_everything() {
    let nft = Nft::new("t", 256);
    let mut desired = Desired::new();
    desired.insert(key(1), state(&[1]));
    let cur = committed(&nft, &desired);
    desired.insert(key(1), state(&[]));
    let (tx, _, _) = diff(&nft, &cur, &desired);
    assert!(tx.contains("add element inet t svc_tcp4 { 10.96.0.1 . 80 : goto no_endpoints }"), "{tx}");
    desired.clear();
    let (tx, _, _) = diff(&nft, &cur, &desired);
    assert!(tx.contains("delete element inet t svc_tcp4 { 10.96.0.1 . 80 }"));
    assert!(tx.contains("delete element inet t be_tcp4 { 10.96.0.1 . 80 . 0 }"));
    assert!(tx.contains("delete element inet t hairpin4 { 10.0.0.1 . 10.0.0.1 }"));
}

#[test]
fn udp_flows_to_removed_endpoints_are_flushed() {
    let nft = Nft::new("t", 256);
    let k = ServiceKey { protocol: Protocol::Udp, ..key6(1) };
    let mut desired = Desired::new();
    desired.insert(k, state_of(vec![ep6(1), ep6(2)]));
    let cur = committed(&nft, &desired);
    desired.insert(k, state_of(vec![ep6(1)]));
    let (_, _, flush) = diff(&nft, &cur, &desired);
    assert_eq!(flush, vec![(k, ep6(2))]);
}

#[test]
fn affinity_keeps_the_sets_of_endpoints_that_stay() {
    let nft = Nft::new("t", 256);
    let k = key(1);
    let mut desired = Desired::new();
    desired.insert(k, sticky(state(&[1, 2]), 60));
    let (cold, cur) = nft.cold(&desired, false);
    let set1 = script::aff_set(&k, ep(1), 60);
    let chain = script::aff_chain(&k);
    assert!(cold.contains(&format!("add set inet t {set1} {{ type ipv4_addr; flags dynamic,timeout; timeout 60s; size 262144; }}")), "{cold}");
    assert!(cold.contains(&format!("add element inet t svc_tcp4 {{ 10.96.0.1 . 80 : goto {chain} }}")), "{cold}");
    assert!(!cold.contains("add element inet t be_tcp4"), "an affinity service picks in its own chain: {cold}");
    assert!(cold.contains("add element inet t hairpin4 { 10.0.0.1 . 10.0.0.1, 10.0.0.2 . 10.0.0.2 }"), "{cold}");

    // Endpoint 2 leaves: its set and chain go (after the chain that refers to them is refilled),
    // endpoint 1's set stays, and a new endpoint 3 gets a fresh one.
    desired.insert(k, sticky(state(&[1, 3]), 60));
    let (tx, _, _) = diff(&nft, &cur, &desired);
    let set2 = script::aff_set(&k, ep(2), 60);
    let set3 = script::aff_set(&k, ep(3), 60);
    assert!(!tx.contains(&format!("set inet t {set1}")), "{tx}");
    let add3 = tx.find(&format!("add set inet t {set3}")).expect("set for the new endpoint");
    let refill = tx.find(&format!("flush chain inet t {chain}")).expect("refilled");
    let del2 = tx.find(&format!("delete set inet t {set2}")).expect("removed endpoint's set deleted");
    assert!(add3 < refill && refill < del2, "{tx}");
    assert!(!tx.contains("svc_tcp4"), "the verdict is unchanged: {tx}");

    // Affinity off: back to the shared slots chain, the affinity objects deleted at the end.
    desired.insert(k, state(&[1, 2]));
    let (tx, _, _) = diff(&nft, &cur, &desired);
    let verdict = tx.find("add element inet t svc_tcp4 { 10.96.0.1 . 80 : goto slots_2 }").expect("verdict to slots");
    let gone = tx.find(&format!("delete chain inet t {chain}")).expect("affinity chain deleted");
    assert!(verdict < gone, "{tx}");
    assert!(tx.contains("add element inet t be_tcp4 { 10.96.0.1 . 80 . 0 : 10.0.0.1 . 8080, 10.96.0.1 . 80 . 1 : 10.0.0.2 . 8080 }"), "{tx}");

    // A new timeout builds new sets.
    desired.insert(k, sticky(state(&[1, 2]), 120));
    let (tx, _, _) = diff(&nft, &cur, &desired);
    assert!(tx.contains(&format!("add set inet t {}", script::aff_set(&k, ep(1), 120))), "{tx}");
    assert!(tx.contains(&format!("delete set inet t {set1}")), "{tx}");
}

#[test]
fn a_legacy_ipv4_table_is_deleted_with_the_first_transaction() {
    let mut nft = Nft::new("t", 256);
    nft.legacy = true;
    let (tx, _) = nft.cold(&Desired::new(), false);
    assert!(tx.starts_with("delete table ip t\ntable inet t {"), "{tx}");
}
