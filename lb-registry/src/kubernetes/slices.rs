//! EndpointSlices → [`Endpoint`]s: port resolution, conditions, locality, zone hints, merging.
//!
//! This is the pure half of the provider (no I/O), so every rule is unit-tested here:
//!
//! - **Port.** Each slice lists its own ports, so the service port is resolved per slice (a slice
//!   whose ports lack the name contributes nothing; an empty name selects the unnamed port of a
//!   single-port service; a number selects by port number, TCP first).
//! - **Conditions** (`discovery.k8s.io/v1` `EndpointConditions`): `ready` — where an unset value
//!   means ready, as the API documents — maps to [`EndpointState::Ready`]; `serving && terminating`
//!   to [`EndpointState::Serving`], which the pool uses only while no ready endpoint is left
//!   (Kubernetes' own fallback, KEP-1669); anything else is left out.
//! - **Locality.** `zone` and `nodeName` come from the endpoint; slices carry no region, so it comes
//!   from an optional zone → region map, else from the endpoint's `deprecatedTopology`, else none.
//! - **Merging.** A service has several slices (≤ 100 endpoints each, one per address family). The
//!   same pod may briefly appear in two slices while the EndpointSlice controller moves it, and a
//!   dual-stack pod appears once per family: endpoints are merged by pod (`targetRef`, else
//!   address), keeping the best condition, then IPv4 before IPv6, so a pod is never counted twice.
//!   Only the first address of an endpoint is used: the API says they are fungible, and kube-proxy
//!   does the same. The resolver applies these rules incrementally, touching only the pods of the
//!   slice an event changed (tested equal to merging every slice from scratch).
//! - **Zone hints** (topology-aware routing, KEP-2433). kube-proxy uses hints only when every ready
//!   endpoint carries some and at least one is hinted for its own zone; then it keeps only the
//!   endpoints hinted for its zone. Here the equivalent is expressed as locality so the
//!   [`Topology`](lb_core::policy::Topology) policy can honour it and still spill over when the
//!   hinted endpoints are unhealthy: an endpoint hinted for the caller's zone gets the caller's zone
//!   as its effective zone (it is same-zone), and an endpoint in the caller's zone that is *not*
//!   hinted for it gets the first zone it is hinted for (the controller moved it to relieve another
//!   zone). The zone the slice reports stays in metadata under `k8s.zone`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use lb_core::{Endpoint, EndpointState, Locality};

/// Metadata key: the zone the EndpointSlice reports (the effective zone may differ under hints).
pub const META_ZONE: &str = "k8s.zone";
/// Metadata key: the zones the endpoint is hinted for, comma-separated.
pub const META_HINT_ZONES: &str = "k8s.hints.zones";
/// Metadata key: the pod name from `targetRef`.
pub const META_POD: &str = "k8s.pod";
/// Metadata key: the EndpointSlice `hostname` (set for StatefulSet pods behind headless services).
pub const META_HOSTNAME: &str = "k8s.hostname";

const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Which port of the service to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortSpec {
    /// A named service port (`:grpc`).
    Named(String),
    /// The unnamed port of a single-port service (no `:port` in the target).
    Unnamed,
    /// A port number (`:8080`); port names must contain a letter, so a number is unambiguous.
    Number(u16),
}

/// Options of the conversion that come from the resolver's configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// The caller's zone, for hints.
    pub(crate) caller_zone: Option<Arc<str>>,
    /// Whether zone hints are honoured.
    pub(crate) hints: bool,
    /// Zone → region.
    pub(crate) zone_regions: BTreeMap<String, String>,
}

/// One endpoint of one slice, converted but not yet merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Raw {
    /// The pod identity (`targetRef`), else the address: what merging deduplicates on.
    pub(crate) key: String,
    pub(crate) addr: SocketAddr,
    pub(crate) state: EndpointState,
    zone: Option<String>,
    node: Option<String>,
    region: Option<String>,
    pub(crate) hint_zones: Option<Vec<String>>,
    pod: Option<String>,
    hostname: Option<String>,
}

/// What a conversion skipped, for logs and the skipped-entries counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// Endpoints with an address that is not an IP (FQDN slices, garbage).
    pub(crate) bad_address: usize,
    /// Slices whose ports do not include the requested one.
    pub(crate) no_port: usize,
}

/// Resolves the service port in one slice.
pub(crate) fn slice_port(slice: &EndpointSlice, port: &PortSpec) -> Option<u16> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let valid = |p: Option<i32>| p.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0);
    match port {
        PortSpec::Named(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| valid(p.port)),
        PortSpec::Unnamed => {
            let mut unnamed = ports.iter().filter(|p| p.name.as_deref().unwrap_or("").is_empty());
            let first = unnamed.next()?;
            // Several unnamed ports cannot happen in a valid Service; refuse to guess.
            if unnamed.next().is_some() {
                return None;
            }
            valid(first.port)
        }
        PortSpec::Number(n) => {
            let mut matching = ports.iter().filter(|p| valid(p.port) == Some(*n));
            let tcp = matching.clone().find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP");
            tcp.or_else(|| matching.next()).and_then(|p| valid(p.port))
        }
    }
}

fn state_of(ep: &SliceEndpoint) -> Option<EndpointState> {
    let c = ep.conditions.as_ref();
    // The API documents a nil `ready` or `serving` as true and a nil `terminating` as false.
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(EndpointState::Ready)
    } else if serving && terminating {
        Some(EndpointState::Serving)
    } else if ready {
        // `ready` is specified to be false while terminating; a server saying both is trusted on
        // `terminating`, which is the safer reading.
        Some(EndpointState::Serving)
    } else {
        None
    }
}

/// Converts one slice's endpoints for `port`, reporting what it had to skip.
pub(crate) fn convert(slice: &EndpointSlice, port: &PortSpec, opts: &Options) -> (Vec<Raw>, Skipped) {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    let Some(p) = slice_port(slice, port) else {
        if !slice.endpoints.as_deref().unwrap_or_default().is_empty() {
            skipped.no_port += 1;
        }
        return (out, skipped);
    };
    for ep in slice.endpoints.as_deref().unwrap_or_default() {
        let Some(state) = state_of(ep) else { continue };
        let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
            skipped.bad_address += 1;
            continue;
        };
        let addr = SocketAddr::new(ip, p);
        let zone = ep.zone.clone().filter(|z| !z.is_empty());
        let region = zone
            .as_ref()
            .and_then(|z| opts.zone_regions.get(z).cloned())
            .or_else(|| ep.deprecated_topology.as_ref().and_then(|t| t.get(REGION_LABEL).cloned()))
            .filter(|r| !r.is_empty());
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref().unwrap_or("Pod") == "Pod")
            .and_then(|r| r.name.clone());
        let key = match ep.target_ref.as_ref() {
            Some(r) => format!(
                "{}/{}/{}",
                r.kind.as_deref().unwrap_or(""),
                r.namespace.as_deref().unwrap_or(""),
                r.uid.as_deref().or(r.name.as_deref()).unwrap_or("")
            ),
            None => addr.to_string(),
        };
        let hint_zones = ep
            .hints
            .as_ref()
            .and_then(|h| h.for_zones.as_ref())
            .map(|z| z.iter().map(|z| z.name.clone()).filter(|z| !z.is_empty()).collect::<Vec<_>>())
            .filter(|z| !z.is_empty());
        out.push(Raw {
            key,
            addr,
            state,
            zone,
            node: ep.node_name.clone(),
            region,
            hint_zones,
            pod,
            hostname: ep.hostname.clone(),
        });
    }
    (out, skipped)
}

fn rank(state: EndpointState) -> u8 {
    match state {
        EndpointState::Ready => 0,
        EndpointState::Serving => 1,
        EndpointState::Terminating => 2,
    }
}

/// The order in which duplicates are resolved: the better condition first, then IPv4.
pub(crate) fn preference(r: &Raw) -> (u8, bool) {
    (rank(r.state), r.addr.is_ipv6())
}

/// Merges every slice of one service into its endpoint list for `port`, from scratch, in the
/// simplest way: the reference the incremental [`View`](super::view::View) is tested against.
#[cfg(test)]
pub(crate) fn merge<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: &PortSpec,
    opts: &Options,
) -> Vec<Endpoint> {
    let raws: Vec<Raw> = slices.into_iter().flat_map(|s| convert(s, port, opts).0).collect();
    let mut by_key: BTreeMap<String, Raw> = BTreeMap::new();
    for r in raws {
        match by_key.get(&r.key) {
            Some(old) if preference(old) <= preference(&r) => {}
            _ => {
                by_key.insert(r.key.clone(), r);
            }
        }
    }
    let mut by_addr: BTreeMap<SocketAddr, Raw> = BTreeMap::new();
    for r in by_key.into_values() {
        match by_addr.get(&r.addr) {
            Some(old) if preference(old).0 <= preference(&r).0 => {}
            _ => {
                by_addr.insert(r.addr, r);
            }
        }
    }
    let zone = opts.caller_zone.as_deref();
    let ready: Vec<&Raw> = by_addr.values().filter(|r| r.state == EndpointState::Ready).collect();
    let use_hints = opts.hints
        && zone.is_some()
        && !ready.is_empty()
        && ready.iter().all(|r| r.hint_zones.is_some())
        && ready.iter().any(|r| r.hint_zones.as_deref().unwrap_or_default().iter().any(|z| Some(z.as_str()) == zone));
    by_addr.values().map(|r| to_endpoint(r, use_hints, zone)).collect()
}

/// What `slice` contributes nothing for, and why.
#[cfg(test)]
pub(crate) fn skipped(slice: &EndpointSlice, port: &PortSpec) -> Skipped {
    convert(slice, port, &Options::default()).1
}

/// The endpoint a merged raw becomes, with the effective zone under hints (see the module docs).
pub(crate) fn to_endpoint(r: &Raw, use_hints: bool, caller_zone: Option<&str>) -> Endpoint {
    let mut effective_zone = r.zone.clone();
    if let (true, Some(caller), Some(hints)) = (use_hints, caller_zone, r.hint_zones.as_ref()) {
        if hints.iter().any(|z| z == caller) {
            effective_zone = Some(caller.to_string());
        } else if r.zone.as_deref() == Some(caller) {
            effective_zone = hints.first().cloned();
        }
    }
    let mut locality = Locality::unknown();
    if let Some(z) = &effective_zone {
        locality = locality.with_zone(z);
    }
    if let Some(n) = &r.node {
        locality = locality.with_node(n);
    }
    if let Some(reg) = &r.region {
        locality = locality.with_region(reg);
    }
    let mut ep = Endpoint::new(r.addr).with_locality(locality).with_state(r.state);
    if let Some(z) = &r.zone {
        ep = ep.with_metadata(META_ZONE, z);
    }
    if let Some(h) = &r.hint_zones {
        ep = ep.with_metadata(META_HINT_ZONES, h.join(","));
    }
    if let Some(p) = &r.pod {
        ep = ep.with_metadata(META_POD, p);
    }
    if let Some(h) = r.hostname.as_ref().filter(|h| !h.is_empty()) {
        ep = ep.with_metadata(META_HOSTNAME, h);
    }
    ep
}

#[cfg(test)]
mod tests;
