//! The desired kernel state, computed from discovery.
//!
//! For each service the agent programs only *ready* endpoints; Kubernetes' graceful-termination
//! fallback applies (endpoints that are `serving` while terminating are used only when no ready one
//! is left), and `terminating` endpoints get no new flows. Established flows never depend on the
//! rules: conntrack remembers each flow's NAT binding, so a rule change affects only new flows.
//!
//! Topology preference reuses lb-core's [`Level`]s: the first level in the service's list whose
//! tier (endpoints sharing that level with this node) has at least `min` usable endpoints gets all
//! new flows; when none qualifies the VIP has no endpoints, as lb-core's `Topology` never uses a
//! candidate outside the listed levels (list `any` last to fall back everywhere). The kernel cannot
//! share a flow between tiers by health as the SDK does, so spill-over is all-or-nothing per tier.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};

use lb_core::policy::Level;
use lb_core::{Endpoint, EndpointSet, EndpointState, Locality};

/// An L4 protocol the agent balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The protocol's name in nft and iptables syntax.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A balanced service: protocol, VIP and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The protocol.
    pub protocol: Protocol,
    /// The virtual IP and port.
    pub vip: SocketAddrV4,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vip, self.protocol.as_str())
    }
}

/// One endpoint that receives new flows, with its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// Where flows go.
    pub addr: SocketAddrV4,
    /// Relative share of new flows (> 0).
    pub weight: u32,
}

/// What the kernel should do for one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Endpoints that get new flows, sorted by address; empty means "reject new connections".
    pub destinations: Vec<Destination>,
    /// Endpoints that still exist and serve (ready or serving-while-terminating): flows to them are
    /// kept even when they get no new ones. Flows to any other former destination of a UDP service
    /// are deleted from conntrack, since UDP has no close that would end them.
    pub keep_flows: BTreeSet<SocketAddrV4>,
}

/// The desired state of every service.
pub type Desired = BTreeMap<ServiceKey, ServiceState>;

/// What one computation skipped, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Endpoints with an IPv6 address (the agent programs IPv4 only).
    pub ipv6: usize,
}

/// Computes the state of one service from its discovered endpoints.
pub fn service_state(
    endpoints: &EndpointSet,
    node: &Locality,
    levels: &[Level],
    min: usize,
    skipped: &mut Skipped,
) -> ServiceState {
    let mut v4: Vec<(&Endpoint, SocketAddrV4)> = Vec::new();
    for ep in endpoints.iter() {
        match ep.addr() {
            SocketAddr::V4(a) => v4.push((ep, a)),
            SocketAddr::V6(_) => skipped.ipv6 += 1,
        }
    }
    let keep_flows = v4
        .iter()
        .filter(|(ep, _)| matches!(ep.state(), EndpointState::Ready | EndpointState::Serving))
        .map(|(_, a)| *a)
        .collect();
    let usable_in = |state: EndpointState| -> Vec<(&Endpoint, SocketAddrV4)> {
        v4.iter().filter(|(ep, _)| ep.state() == state && ep.weight() > 0).copied().collect()
    };
    let mut usable = usable_in(EndpointState::Ready);
    if usable.is_empty() {
        usable = usable_in(EndpointState::Serving);
    }
    let chosen: Vec<(&Endpoint, SocketAddrV4)> = if levels.is_empty() {
        usable
    } else {
        levels
            .iter()
            .map(|level| usable.iter().filter(|(ep, _)| matches(*level, node, ep.locality())).copied().collect::<Vec<_>>())
            .find(|tier| tier.len() >= min)
            .unwrap_or_default()
    };
    let mut destinations: Vec<Destination> =
        chosen.into_iter().map(|(ep, addr)| Destination { addr, weight: ep.weight() }).collect();
    destinations.sort();
    // Two registry entries for one address (e.g. two ids) would otherwise get twice the slots.
    destinations.dedup_by(|a, b| {
        if a.addr == b.addr {
            b.weight = b.weight.max(a.weight);
            true
        } else {
            false
        }
    });
    ServiceState { destinations, keep_flows }
}

fn matches(level: Level, node: &Locality, other: &Locality) -> bool {
    match level {
        Level::Node => node.same_node(other),
        Level::Zone => node.same_zone(other),
        Level::Region => node.same_region(other),
        Level::Any => true,
    }
}

#[cfg(test)]
mod tests {
    use lb_core::Update;

    use super::*;

    fn ep(last: u8, node: &str, zone: &str) -> Endpoint {
        Endpoint::new(([10, 0, 0, last], 80).into())
            .with_locality(Locality::unknown().with_node(node).with_zone(zone))
    }

    fn addrs(s: &ServiceState) -> Vec<u8> {
        s.destinations.iter().map(|d| d.addr.ip().octets()[3]).collect()
    }

    fn set(eps: Vec<Endpoint>) -> EndpointSet {
        let mut s = EndpointSet::new();
        s.apply(Update::Reset(eps));
        s
    }

    #[test]
    fn only_ready_endpoints_get_new_flows() {
        let s = set(vec![
            ep(1, "a", "z"),
            ep(2, "a", "z").with_state(EndpointState::Terminating),
            ep(3, "a", "z").with_state(EndpointState::Serving),
            ep(4, "a", "z").with_weight(0),
        ]);
        let st = service_state(&s, &Locality::unknown(), &[], 1, &mut Skipped::default());
        assert_eq!(addrs(&st), vec![1]);
        let kept: Vec<u8> = st.keep_flows.iter().map(|a| a.ip().octets()[3]).collect();
        assert_eq!(kept, vec![1, 3, 4], "terminating endpoints' flows are not kept");

        // No ready endpoint left: serving-while-terminating ones take over (Kubernetes' fallback).
        let s = set(vec![ep(2, "a", "z").with_state(EndpointState::Terminating), ep(3, "a", "z").with_state(EndpointState::Serving)]);
        assert_eq!(addrs(&service_state(&s, &Locality::unknown(), &[], 1, &mut Skipped::default())), vec![3]);
    }

    #[test]
    fn topology_prefers_node_then_zone_then_falls_back() {
        let here = Locality::unknown().with_node("n1").with_zone("z1");
        let levels = [Level::Node, Level::Zone, Level::Any];
        let all = vec![ep(1, "n1", "z1"), ep(2, "n2", "z1"), ep(3, "n3", "z2")];
        let st = |eps: Vec<Endpoint>, min| addrs(&service_state(&set(eps), &here, &levels, min, &mut Skipped::default()));
        assert_eq!(st(all.clone(), 1), vec![1]);
        assert_eq!(st(all.clone(), 2), vec![1, 2], "node tier too small: zone tier");
        assert_eq!(st(all[1..].to_vec(), 1), vec![2]);
        assert_eq!(st(all[2..].to_vec(), 1), vec![3], "falls back to anywhere");
        let strict = addrs(&service_state(&set(all[1..].to_vec()), &here, &[Level::Node], 1, &mut Skipped::default()));
        assert!(strict.is_empty(), "a list without `any` never leaves its levels");
    }

    #[test]
    fn ipv6_endpoints_are_skipped_and_counted() {
        let s = set(vec![Endpoint::new("[::1]:80".parse().expect("v6")), ep(1, "a", "z")]);
        let mut skipped = Skipped::default();
        assert_eq!(addrs(&service_state(&s, &Locality::unknown(), &[], 1, &mut skipped)), vec![1]);
        assert_eq!(skipped.ipv6, 1);
    }
}
