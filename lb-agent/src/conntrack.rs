//! Deleting UDP conntrack entries that point at endpoints which are gone.
//!
//! A NAT binding lives in conntrack until the flow ends; UDP flows never "end", they time out only
//! after the client stops sending, so a client that keeps sending (statsd, DNS from a long-lived
//! socket) would be blackholed to a removed endpoint forever — kube-proxy once lost 13 hours of a
//! statsd stream this way. After a transaction removes a UDP destination that no longer serves, the
//! agent deletes the entries whose original destination is the VIP and whose reply source is that
//! endpoint, exactly as kube-proxy does with `conntrack -D`. TCP entries are left alone: a
//! terminating backend should finish its established connections.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use crate::model::{Protocol, ServiceKey, ServiceState};

/// The `conntrack` arguments deleting `key`'s flows to `endpoint`.
pub fn delete_args(key: &ServiceKey, endpoint: SocketAddrV4) -> Vec<String> {
    vec![
        "-D".into(),
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
pub fn stale(key: &ServiceKey, old: impl IntoIterator<Item = SocketAddrV4>, new: Option<&ServiceState>) -> Vec<SocketAddrV4> {
    if key.protocol != Protocol::Udp {
        return Vec::new();
    }
    let old: BTreeSet<SocketAddrV4> = old.into_iter().collect();
    old.into_iter()
        .filter(|a| match new {
            None => true,
            Some(s) => !s.keep_flows.contains(a) && !s.destinations.iter().any(|d| d.addr == *a),
        })
        .collect()
}

/// Runs the deletions; a missing `conntrack` tool or a failure is logged and counted, never fatal
/// (the rules are already right; only old flows linger until they time out).
pub fn run(commands: &[(ServiceKey, SocketAddrV4)]) -> Vec<String> {
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
pub fn describe(commands: &[(ServiceKey, SocketAddrV4)]) -> Vec<String> {
    commands.iter().map(|(k, e)| format!("conntrack {}", delete_args(k, *e).join(" "))).collect()
}
