//! Traffic scenarios shared by the backends' tests: real TCP/UDP clients against the VIP.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

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

    let t0 = Instant::now();
    let err = lab.tcp_who(vip(EMPTY_VIP)).expect_err("a VIP without endpoints must refuse");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(1), "refused at once, not after a timeout");

    let s = lab.udp_socket(vip(EMPTY_UDP_VIP));
    let t0 = Instant::now();
    let err = udp_who(&s).expect_err("a UDP VIP without endpoints must refuse");
    // Rejected in the sender's own OUTPUT hook, the send itself fails (EPERM); from elsewhere the
    // ICMP port-unreachable surfaces as ECONNREFUSED. Either way: an error now, not a timeout.
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionRefused | ErrorKind::PermissionDenied),
        "UDP to a VIP without endpoints must fail at once: {err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "refused at once, not after a timeout");
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
