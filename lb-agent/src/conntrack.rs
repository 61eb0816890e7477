//! Deleting UDP conntrack entries that point at endpoints which are gone.
//!
//! A NAT binding lives in conntrack until the flow ends; UDP flows never "end", they time out only
//! after the client stops sending, so a client that keeps sending (statsd, DNS from a long-lived
//! socket) would be blackholed to a removed endpoint forever — kube-proxy once lost 13 hours of a
//! statsd stream this way. After a transaction removes a UDP destination that no longer serves, the
//! agent deletes the entries whose original destination is the VIP and whose reply source is that
//! endpoint, exactly as kube-proxy does with `conntrack -D`. TCP entries are left alone: a
//! terminating backend should finish its established connections. IPv6 flows are the same with
//! `-f ipv6` (conntrack's default family is IPv4, which would not even parse an IPv6 address).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::model::{Family, Protocol, ServiceKey, ServiceState};

/// The `conntrack` arguments deleting `key`'s flows to `endpoint`.
pub fn delete_args(key: &ServiceKey, endpoint: SocketAddr) -> Vec<String> {
    let family = match key.family() {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    vec![
        "-D".into(),
        "-f".into(),
        family.into(),
        "-p".into(),
        key.protocol.as_str().into(),
        "--orig-dst".into(),
        key.vip.ip().to_string(),
        "--orig-port-dst".into(),
        key.vip.port().to_string(),
        "--reply-src".into(),
        endpoint.ip().to_string(),
        "--reply-port-src".into(),
        endpoint.port().to_string(),
    ]
}

/// Former destinations of a UDP service whose flows must go: not a destination any more and not
/// serving (`new` is `None` when the service itself is gone).
pub fn stale(key: &ServiceKey, old: impl IntoIterator<Item = SocketAddr>, new: Option<&ServiceState>) -> Vec<SocketAddr> {
    if key.protocol != Protocol::Udp {
        return Vec::new();
    }
    let old: BTreeSet<SocketAddr> = old.into_iter().collect();
    old.into_iter()
        .filter(|a| match new {
            None => true,
            Some(s) => !s.keep_flows.contains(a) && !s.destinations.iter().any(|d| d.addr == *a),
        })
        .collect()
}

/// Runs the deletions; a missing `conntrack` tool or a failure is logged and counted, never fatal
/// (the rules are already right; only old flows linger until they time out).
pub fn run(commands: &[(ServiceKey, SocketAddr)]) -> Vec<String> {
    let mut shown = Vec::new();
    for (key, ep) in commands {
        let args = delete_args(key, *ep);
        shown.push(format!("conntrack {}", args.join(" ")));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match crate::exec::run("conntrack", &refs, None) {
            Ok(_) => {}
            // conntrack exits 1 with "0 flow entries have been deleted" when nothing matched.
            Err(e) if e.to_string().contains("0 flow entries") => {}
            Err(e) => {
                tracing::warn!(service = %key, endpoint = %ep, error = %e, "cannot delete stale UDP conntrack entries");
                metrics::counter!(crate::metrics::ERRORS, "kind" => "conntrack").increment(1);
            }
        }
    }
    shown
}

/// The commands [`run`] would run, for dry runs.
pub fn describe(commands: &[(ServiceKey, SocketAddr)]) -> Vec<String> {
    commands.iter().map(|(k, e)| format!("conntrack {}", delete_args(k, *e).join(" "))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_name_the_family() {
        let key = ServiceKey { protocol: Protocol::Udp, vip: "[fd00:96::10]:53".parse().expect("vip") };
        let shown = describe(&[(key, "[fd00::1]:5353".parse().expect("endpoint"))]);
        assert_eq!(
            shown,
            ["conntrack -D -f ipv6 -p udp --orig-dst fd00:96::10 --orig-port-dst 53 --reply-src fd00::1 --reply-port-src 5353"]
        );
    }
}
