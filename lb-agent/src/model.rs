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
//!
//! Dual stack: a service has at most one VIP per address family, and each VIP is a [`ServiceKey`]
//! of its own whose destinations are the endpoints of *that* family only (the kernel cannot DNAT an
//! IPv4 flow to an IPv6 address). Endpoints of a family the service has no VIP for are skipped and
//! counted, as Kubernetes' dual-stack Services do with their `ipFamilies`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

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

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `4` or `6`, as in `iptables`/`ip6tables` and the agent's object names.
    pub fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }

    /// The family's name in nft syntax (`ip`, `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// A balanced service: protocol, VIP and port. A dual-stack service is two keys, one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The protocol.
    pub protocol: Protocol,
    /// The virtual IP and port.
    pub vip: SocketAddr,
}

impl ServiceKey {
    /// The VIP's address family.
    pub fn family(&self) -> Family {
        Family::of(self.vip.ip())
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vip, self.protocol.as_str())
    }
}

/// One endpoint that receives new flows, with its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// Where flows go (of the service's family).
    pub addr: SocketAddr,
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
    pub keep_flows: BTreeSet<SocketAddr>,
    /// Client-IP session affinity: new connections from one client address keep going to the
    /// endpoint they went to last, while it stays a destination and the timeout has not passed.
    pub affinity: Option<Affinity>,
}

/// Client-IP session affinity (Kubernetes' `sessionAffinity: ClientIP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Affinity {
    /// Seconds a client's affinity lasts after its last new connection (Kubernetes' default 10800).
    pub timeout_secs: u32,
}

impl Affinity {
    /// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub const DEFAULT_TIMEOUT_SECS: u32 = 10_800;
    /// Kubernetes' maximum (one day).
    pub const MAX_TIMEOUT_SECS: u32 = 86_400;
}

/// The desired state of every service.
pub type Desired = BTreeMap<ServiceKey, ServiceState>;

/// Counts endpoints of a family none of the service's VIPs has (logged and counted once per
/// computation by the caller).
pub fn skipped_endpoints(endpoints: &EndpointSet, families: &[Family]) -> usize {
    endpoints.iter().filter(|ep| !families.contains(&Family::of(ep.addr().ip()))).count()
}

/// How a service's endpoints are chosen, from its configuration.
#[derive(Clone, Copy, Debug)]
pub struct Selection<'a> {
    /// Where this agent runs.
    pub node: &'a Locality,
    /// Topology preference, nearest first; empty means anywhere.
    pub levels: &'a [Level],
    /// A tier is used only with at least this many usable endpoints.
    pub min: usize,
    /// Client-IP affinity, if any.
    pub affinity: Option<Affinity>,
}

/// Computes the state of one service VIP (`family`'s) from its discovered endpoints: only the
/// endpoints of that family are considered.
pub fn service_state(endpoints: &EndpointSet, family: Family, sel: &Selection<'_>) -> ServiceState {
    let (node, levels, min) = (sel.node, sel.levels, sel.min);
    let same: Vec<(&Endpoint, SocketAddr)> =
        endpoints.iter().filter(|ep| Family::of(ep.addr().ip()) == family).map(|ep| (ep, ep.addr())).collect();
    let keep_flows = same
        .iter()
        .filter(|(ep, _)| matches!(ep.state(), EndpointState::Ready | EndpointState::Serving))
        .map(|(_, a)| *a)
        .collect();
    let usable_in = |state: EndpointState| -> Vec<(&Endpoint, SocketAddr)> {
        same.iter().filter(|(ep, _)| ep.state() == state && ep.weight() > 0).copied().collect()
    };
    let mut usable = usable_in(EndpointState::Ready);
    if usable.is_empty() {
        usable = usable_in(EndpointState::Serving);
    }
    let chosen: Vec<(&Endpoint, SocketAddr)> = if levels.is_empty() {
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
    ServiceState { destinations, keep_flows, affinity: sel.affinity }
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

    fn last(a: &SocketAddr) -> u8 {
        match a.ip() {
            IpAddr::V4(ip) => ip.octets()[3],
            IpAddr::V6(ip) => ip.octets()[15],
        }
    }

    fn addrs(s: &ServiceState) -> Vec<u8> {
        s.destinations.iter().map(|d| last(&d.addr)).collect()
    }

    fn state(eps: &EndpointSet, node: &Locality, levels: &[Level], min: usize) -> ServiceState {
        service_state(eps, Family::V4, &Selection { node, levels, min, affinity: None })
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
        let st = state(&s, &Locality::unknown(), &[], 1);
        assert_eq!(addrs(&st), vec![1]);
        let kept: Vec<u8> = st.keep_flows.iter().map(last).collect();
        assert_eq!(kept, vec![1, 3, 4], "terminating endpoints' flows are not kept");

        // No ready endpoint left: serving-while-terminating ones take over (Kubernetes' fallback).
        let s = set(vec![ep(2, "a", "z").with_state(EndpointState::Terminating), ep(3, "a", "z").with_state(EndpointState::Serving)]);
        assert_eq!(addrs(&state(&s, &Locality::unknown(), &[], 1)), vec![3]);
    }

    #[test]
    fn topology_prefers_node_then_zone_then_falls_back() {
        let here = Locality::unknown().with_node("n1").with_zone("z1");
        let levels = [Level::Node, Level::Zone, Level::Any];
        let all = vec![ep(1, "n1", "z1"), ep(2, "n2", "z1"), ep(3, "n3", "z2")];
        let st = |eps: Vec<Endpoint>, min| addrs(&state(&set(eps), &here, &levels, min));
        assert_eq!(st(all.clone(), 1), vec![1]);
        assert_eq!(st(all.clone(), 2), vec![1, 2], "node tier too small: zone tier");
        assert_eq!(st(all[1..].to_vec(), 1), vec![2]);
        assert_eq!(st(all[2..].to_vec(), 1), vec![3], "falls back to anywhere");
        let strict = addrs(&state(&set(all[1..].to_vec()), &here, &[Level::Node], 1));
        assert!(strict.is_empty(), "a list without `any` never leaves its levels");
    }

    #[test]
    fn each_family_gets_its_own_endpoints_and_the_rest_is_counted() {
        let v6 = |last: u16| Endpoint::new(SocketAddr::new(IpAddr::V6([0xfd00, 0, 0, 0, 0, 0, 0, last].into()), 80));
        let s = set(vec![v6(7), ep(1, "a", "z"), v6(8).with_state(EndpointState::Terminating)]);
        let affinity = Some(Affinity { timeout_secs: 60 });
        let sel = Selection { node: &Locality::unknown(), levels: &[], min: 1, affinity };
        let four = service_state(&s, Family::V4, &sel);
        let six = service_state(&s, Family::V6, &sel);
        assert_eq!((addrs(&four), addrs(&six)), (vec![1], vec![7]));
        assert_eq!(six.affinity, affinity);
        assert_eq!(six.keep_flows.len(), 1, "the terminating IPv6 endpoint's flows are not kept");
        assert_eq!(skipped_endpoints(&s, &[Family::V4]), 2, "an IPv4-only service skips IPv6 endpoints");
        assert_eq!(skipped_endpoints(&s, &[Family::V4, Family::V6]), 0);
    }
}
