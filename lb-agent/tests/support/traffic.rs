//! Traffic scenarios shared by the backends' tests: real TCP/UDP clients against the VIP.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::IpAddr;

use super::*;

pub const TCP_VIP: &str = "10.96.0.10:80";
pub const UDP_VIP: &str = "10.96.0.10:53";
pub const EMPTY_VIP: &str = "10.96.0.20:80";
pub const EMPTY_UDP_VIP: &str = "10.96.0.20:53";

/// A config with a TCP and a UDP service over backends `tcp`/`udp` (indices), plus two services
/// whose only endpoint is terminating (so they have no endpoint for new flows).
pub fn config(kind: &str, tcp: &[u8], udp: &[u8]) -> String {
    let t: Vec<_> = tcp.iter().map(|i| backend(*i, 8080)).collect();
    let u: Vec<_> = udp.iter().map(|i| backend(*i, 5353)).collect();
    format!(
        r#"backend = "{kind}"
[[service]]
vip = "{TCP_VIP}"
protocol = "tcp"
target = "{}"
[[service]]
vip = "{UDP_VIP}"
protocol = "udp"
target = "{}"
[[service]]
vip = "{EMPTY_VIP}"
protocol = "tcp"
target = "static:///{};state=terminating"
[[service]]
vip = "{EMPTY_UDP_VIP}"
protocol = "udp"
target = "static:///{};state=terminating"
"#,
        target(&t),
        target(&u),
        backend(0, 8080),
        backend(0, 5353),
    )
}

/// Every backend is reached over TCP and UDP, in roughly equal shares, and VIPs without endpoints
/// refuse new connections at once instead of swallowing them.
pub fn reaches_every_backend_and_rejects_empty(lab: &Lab, n: u8) {
    let tcp = lab.tcp_spread(vip(TCP_VIP), 90);
    let udp = lab.udp_spread(vip(UDP_VIP), 90);
    for i in 0..n {
        // Uniform over n: P(fewer than 8 of 90) is far below 1e-6 for n = 3.
        assert!(tcp.get(&name(i)).copied().unwrap_or(0) >= 8, "TCP spread {tcp:?}");
        assert!(udp.get(&name(i)).copied().unwrap_or(0) >= 8, "UDP spread {udp:?}");
    }
    assert_eq!(tcp.len(), n as usize, "only configured backends answer: {tcp:?}");

    // The error kind is the proof: a refusal, not a timeout (which would be `TimedOut`).
    let err = lab.tcp_who(vip(EMPTY_VIP)).expect_err("a VIP without endpoints must refuse");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    let s = lab.udp_socket(vip(EMPTY_UDP_VIP));
    let err = udp_who(&s).expect_err("a UDP VIP without endpoints must refuse");
    // Rejected in the sender's own OUTPUT hook, the send itself fails (EPERM); from elsewhere the
    // ICMP port-unreachable surfaces as ECONNREFUSED. Either way: an error now, not a timeout.
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionRefused | ErrorKind::PermissionDenied),
        "UDP to a VIP without endpoints must fail at once: {err}"
    );
}

/// Removing a backend: its established TCP connection keeps working, new flows avoid it, and a
/// UDP flow pinned to a removed backend moves to a live one.
pub fn removal_keeps_established_and_moves_new_flows(lab: &Lab, kind: &str) {
    lab.write_config(&config(kind, &[0, 1, 2], &[0, 1, 2]));
    lab.agent_ok(&["--once"]);
    let mut conn = lab.connect(vip(TCP_VIP)).expect("connect");
    let gone = who(&mut conn).expect("ask");
    let udp = lab.udp_socket(vip(UDP_VIP));
    let udp_gone = udp_who(&udp).expect("udp answer");
    let idx = |n: &str| n.trim_start_matches('b').parse::<u8>().expect("backend name");

    let keep_tcp: Vec<u8> = (0..3).filter(|i| *i != idx(&gone)).collect();
    let keep_udp: Vec<u8> = (0..3).filter(|i| *i != idx(&udp_gone)).collect();
    lab.write_config(&config(kind, &keep_tcp, &keep_udp));
    lab.agent_ok(&["--once"]);

    for _ in 0..3 {
        assert_eq!(who(&mut conn).expect("established connection survives"), gone);
    }
    let spread = lab.tcp_spread(vip(TCP_VIP), 40);
    assert!(!spread.contains_key(&gone), "removed backend {gone} got new flows: {spread:?}");
    assert_eq!(spread.len(), 2, "{spread:?}");
    // Same socket, same 5-tuple: without the conntrack cleanup this would still reach the removed one.
    let now = udp_who(&udp).expect("udp flow still answered");
    assert_ne!(now, udp_gone, "UDP flow still pinned to removed backend");
    assert_eq!(who(&mut conn).expect("still up"), gone);
}

pub const DUAL_VIP4: &str = "10.96.0.50:80";
pub const DUAL_VIP6: &str = "[fd00:96::50]:80";
pub const UDP_VIP6: &str = "[fd00:96::53]:53";
pub const EMPTY_VIP6: &str = "[fd00:96::20]:80";

/// A dual-stack TCP service over backends `tcp` (both families' addresses in one target), an
/// IPv6-only UDP service over `udp`, and an IPv6 VIP whose only endpoint is terminating.
/// `extra` is appended to the dual-stack service (e.g. affinity keys).
pub fn dual_config(kind: &str, tcp: &[u8], udp: &[u8], extra: &str) -> String {
    let mut t: Vec<String> = tcp.iter().map(|i| backend(*i, 8080).to_string()).collect();
    t.extend(tcp.iter().map(|i| backend6(*i, 8080).to_string()));
    let u: Vec<String> = udp.iter().map(|i| backend6(*i, 5353).to_string()).collect();
    format!(
        r#"backend = "{kind}"
[[service]]
vips = ["{DUAL_VIP4}", "{DUAL_VIP6}"]
protocol = "tcp"
target = "{}"
{extra}
[[service]]
vip = "{UDP_VIP6}"
protocol = "udp"
target = "{}"
[[service]]
vip = "{EMPTY_VIP6}"
target = "static:///{};state=terminating"
"#,
        target(&t),
        target(&u),
        backend6(0, 8080),
    )
}

/// IPv6 TCP and UDP through VIPs, a dual-stack service answering on both VIPs with each family's
/// own endpoints, and an IPv6 VIP without endpoints refusing at once.
pub fn ipv6_and_dual_stack_reach_their_family(lab: &Lab, kind: &str, n: u8) {
    lab.write_config(&dual_config(kind, &(0..n).collect::<Vec<_>>(), &(0..n).collect::<Vec<_>>(), ""));
    lab.agent_ok(&["--once"]);
    let four = lab.tcp_spread(vip(DUAL_VIP4), 60);
    let six = lab.tcp_spread(vip(DUAL_VIP6), 60);
    let udp6 = lab.udp_spread(vip(UDP_VIP6), 60);
    for i in 0..n {
        assert!(four.get(&name(i)).copied().unwrap_or(0) >= 5, "IPv4 VIP spread {four:?}");
        assert!(six.get(&name6(i)).copied().unwrap_or(0) >= 5, "IPv6 VIP spread {six:?}");
        assert!(udp6.get(&name6(i)).copied().unwrap_or(0) >= 5, "IPv6 UDP spread {udp6:?}");
    }
    assert!(four.keys().all(|k| !k.starts_with("v6-")), "the IPv4 VIP reached an IPv6 endpoint: {four:?}");
    assert!(six.keys().all(|k| k.starts_with("v6-")), "the IPv6 VIP reached an IPv4 endpoint: {six:?}");
    // The error kind is the proof: a refusal, not a timeout (which would be `TimedOut`).
    let err = lab.tcp_who(vip(EMPTY_VIP6)).expect_err("an IPv6 VIP without endpoints must refuse");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

/// Removing an IPv6 endpoint: its established connection keeps working, new flows avoid it, and
/// an IPv6 UDP flow pinned to it moves (its conntrack entry is deleted with `-f ipv6`).
pub fn ipv6_removal_keeps_established(lab: &Lab, kind: &str) {
    lab.write_config(&dual_config(kind, &[0, 1, 2], &[0, 1, 2], ""));
    lab.agent_ok(&["--once"]);
    let mut conn = lab.connect(vip(DUAL_VIP6)).expect("connect");
    let gone = who(&mut conn).expect("ask");
    let udp = lab.udp_socket(vip(UDP_VIP6));
    let udp_gone = udp_who(&udp).expect("udp answer");
    let idx = |n: &str| n.trim_start_matches("v6-b").parse::<u8>().expect("backend name");
    let keep_tcp: Vec<u8> = (0..3).filter(|i| *i != idx(&gone)).collect();
    let keep_udp: Vec<u8> = (0..3).filter(|i| *i != idx(&udp_gone)).collect();
    lab.write_config(&dual_config(kind, &keep_tcp, &keep_udp, ""));
    lab.agent_ok(&["--once"]);
    for _ in 0..3 {
        assert_eq!(who(&mut conn).expect("established IPv6 connection survives"), gone);
    }
    let spread = lab.tcp_spread(vip(DUAL_VIP6), 40);
    assert!(!spread.contains_key(&gone), "removed IPv6 backend {gone} got new flows: {spread:?}");
    assert_eq!(spread.len(), 2, "{spread:?}");
    assert_ne!(udp_who(&udp).expect("udp flow still answered"), udp_gone, "IPv6 UDP flow still pinned to the removed backend");
}

/// Client-IP affinity on a dual-stack service: 200 connections from one source land on one
/// endpoint (per family); connections from many sources reach every endpoint; when an endpoint
/// goes, its clients move (and stick to their new one) while other clients stay where they were.
pub fn affinity_sticks_per_client(lab: &Lab, kind: &str) {
    const STICKY: &str = "affinity = \"client-ip\"\naffinity_timeout_secs = 600";
    lab.write_config(&dual_config(kind, &[0, 1, 2], &[0], STICKY));
    lab.agent_ok(&["--once"]);
    for (to, what) in [(DUAL_VIP4, "IPv4"), (DUAL_VIP6, "IPv6")] {
        let one = lab.tcp_spread(vip(to), 200);
        assert_eq!(one.len(), 1, "{what}: 200 connections from one source reached {one:?}");
    }

    let sources = lab.add_client_ips(30);
    let ask = |from: IpAddr, to: &str| -> String {
        let mut s = lab.connect_from(from, vip(to)).expect("connect from an added source");
        who(&mut s).expect("ask")
    };
    let mut first: Vec<(String, String)> = Vec::new();
    for (v4, v6) in &sources {
        let pair = (ask(*v4, DUAL_VIP4), ask(*v6, DUAL_VIP6));
        for _ in 0..3 {
            assert_eq!((ask(*v4, DUAL_VIP4), ask(*v6, DUAL_VIP6)), pair, "a source stays on its endpoint");
        }
        first.push(pair);
    }
    // 30 sources over 3 endpoints: P(one endpoint gets none) = 3 × (2/3)^30 ≈ 1.6e-5 per family.
    for (family, names) in [("IPv4", first.iter().map(|p| p.0.clone()).collect::<BTreeSet<_>>()), ("IPv6", first.iter().map(|p| p.1.clone()).collect())] {
        assert_eq!(names.len(), 3, "{family}: many sources reach every endpoint: {names:?}");
    }

    // Endpoint 0 goes (both families).
    lab.write_config(&dual_config(kind, &[1, 2], &[0], STICKY));
    lab.agent_ok(&["--once"]);
    for ((v4, v6), (was4, was6)) in sources.iter().zip(&first) {
        let now = (ask(*v4, DUAL_VIP4), ask(*v6, DUAL_VIP6));
        if was4 == "b0" {
            assert_ne!(now.0, "b0", "a removed endpoint's IPv4 client moved");
        } else {
            assert_eq!(&now.0, was4, "other IPv4 clients stay");
        }
        if was6 == "v6-b0" {
            assert_ne!(now.1, "v6-b0", "a removed endpoint's IPv6 client moved");
        } else {
            assert_eq!(&now.1, was6, "other IPv6 clients stay");
        }
        for _ in 0..3 {
            assert_eq!((ask(*v4, DUAL_VIP4), ask(*v6, DUAL_VIP6)), now, "and sticks to where it moved");
        }
    }
}
