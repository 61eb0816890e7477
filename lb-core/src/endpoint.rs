//! The endpoint model: what discovery knows about one backend instance.
//!
//! An [`Endpoint`] is plain data: a stable [`EndpointId`], the socket address to connect to, a weight,
//! a [`Locality`] (region, zone, node — Kubernetes' `topology.kubernetes.io/region`,
//! `topology.kubernetes.io/zone` and `kubernetes.io/hostname`), a metadata map, and the
//! [`EndpointState`] the registry reports. The pool keys everything by id, so an endpoint whose address
//! or weight changes is updated in place rather than torn down and rebuilt.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// The stable identity of an endpoint across discovery updates.
///
/// Registries supply it (an etcd key's last segment, a Consul service ID, a Kubernetes endpoint's
/// target reference); when none is known the address is used. Cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(Arc<str>);

impl EndpointId {
    /// Creates an id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        EndpointId(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for EndpointId {
    fn from(s: &str) -> Self {
        EndpointId::new(s)
    }
}

impl From<String> for EndpointId {
    fn from(s: String) -> Self {
        EndpointId(Arc::from(s))
    }
}

impl From<SocketAddr> for EndpointId {
    fn from(addr: SocketAddr) -> Self {
        EndpointId::from(addr.to_string())
    }
}

/// Where an endpoint (or the caller) runs: region ⊃ zone ⊃ node.
///
/// An empty field means "unknown"; unknown never matches, so an endpoint without a zone is never
/// treated as same-zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// `topology.kubernetes.io/region`, e.g. `eu-west-1`.
    pub region: Option<Arc<str>>,
    /// `topology.kubernetes.io/zone`, e.g. `eu-west-1a`.
    pub zone: Option<Arc<str>>,
    /// `kubernetes.io/hostname`: the node (machine) name.
    pub node: Option<Arc<str>>,
}

impl Locality {
    /// A locality with nothing known.
    pub fn unknown() -> Self {
        Locality::default()
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl AsRef<str>) -> Self {
        self.region = non_empty(region.as_ref());
        self
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: impl AsRef<str>) -> Self {
        self.zone = non_empty(zone.as_ref());
        self
    }

    /// Sets the node.
    pub fn with_node(mut self, node: impl AsRef<str>) -> Self {
        self.node = non_empty(node.as_ref());
        self
    }

    /// True when both sides name the same node.
    pub fn same_node(&self, other: &Locality) -> bool {
        same(&self.node, &other.node)
    }

    /// True when both sides name the same zone.
    pub fn same_zone(&self, other: &Locality) -> bool {
        same(&self.zone, &other.zone)
    }

    /// True when both sides name the same region.
    pub fn same_region(&self, other: &Locality) -> bool {
        same(&self.region, &other.region)
    }
}

fn non_empty(s: &str) -> Option<Arc<str>> {
    if s.is_empty() {
        None
    } else {
        Some(Arc::from(s))
    }
}

fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a == b)
}

/// What the registry says about an endpoint's willingness to take traffic.
///
/// The three states follow Kubernetes' EndpointSlice conditions:
/// `ready` maps to [`Ready`](EndpointState::Ready); `serving && terminating` maps to
/// [`Serving`](EndpointState::Serving), used only when no ready endpoint is left (Kubernetes' own
/// fallback for graceful termination); anything else that is still listed maps to
/// [`Terminating`](EndpointState::Terminating): no new requests, in-flight ones finish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// In rotation.
    #[default]
    Ready,
    /// Shutting down but still serving: a fallback used only while no `Ready` endpoint is usable.
    Serving,
    /// Draining: gets no new requests.
    Terminating,
}

impl EndpointState {
    /// Every state, in the order of their names in messages.
    pub const ALL: [EndpointState; 3] = [EndpointState::Ready, EndpointState::Serving, EndpointState::Terminating];

    /// The state's name as registries, target URIs and documents spell it: `ready`, `serving` or
    /// `terminating`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Serving => "serving",
            EndpointState::Terminating => "terminating",
        }
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EndpointState {
    type Err = ParseStateError;

    /// Parses `ready`, `serving` or `terminating` (exactly: registries write them lower-case).
    fn from_str(s: &str) -> Result<Self, ParseStateError> {
        EndpointState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError { value: s.to_string() })
    }
}

/// A string that is not an [`EndpointState`]; its message names the value and the valid ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseStateError {
    value: String,
}

impl ParseStateError {
    /// The value that did not parse.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for ParseStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value may come from a registry anyone can write to: keep the message short.
        let shown: String = self.value.chars().take(64).collect();
        let more = if shown.len() < self.value.len() { "…" } else { "" };
        write!(f, "state `{shown}{more}` is not ready, serving or terminating")
    }
}

impl std::error::Error for ParseStateError {}

/// One backend instance as discovery reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    id: EndpointId,
    addr: SocketAddr,
    weight: u32,
    locality: Locality,
    metadata: BTreeMap<String, String>,
    state: EndpointState,
}

impl Endpoint {
    /// The default weight of an endpoint.
    pub const DEFAULT_WEIGHT: u32 = 100;

    /// An endpoint identified by its address, with the default weight, unknown locality and state
    /// `Ready`.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            id: EndpointId::from(addr),
            addr,
            weight: Self::DEFAULT_WEIGHT,
            locality: Locality::default(),
            metadata: BTreeMap::new(),
            state: EndpointState::Ready,
        }
    }

    /// Sets the stable id (by default the address).
    pub fn with_id(mut self, id: impl Into<EndpointId>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the weight. A weight of zero means "send nothing here" and is kept as zero; policies
    /// skip zero-weight endpoints unless every endpoint has weight zero.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the locality.
    pub fn with_locality(mut self, locality: Locality) -> Self {
        self.locality = locality;
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the state.
    pub fn with_state(mut self, state: EndpointState) -> Self {
        self.state = state;
        self
    }

    /// The stable id.
    pub fn id(&self) -> &EndpointId {
        &self.id
    }

    /// The address connections are opened to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relative weight (default [`Endpoint::DEFAULT_WEIGHT`]).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Where the endpoint runs.
    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    /// Free-form metadata from the registry.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The state the registry reports.
    pub fn state(&self) -> EndpointState {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_locality_never_matches() {
        let a = Locality::unknown();
        let b = Locality::unknown();
        assert!(!a.same_zone(&b));
        let z = Locality::unknown().with_zone("z1");
        assert!(z.same_zone(&Locality::unknown().with_zone("z1")));
        assert!(!z.same_zone(&a));
        assert_eq!(Locality::unknown().with_zone(""), Locality::unknown());
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in EndpointState::ALL {
            assert_eq!(state.to_string().parse::<EndpointState>(), Ok(state));
        }
        assert_eq!("serving".parse::<EndpointState>(), Ok(EndpointState::Serving));
        let err = "Ready".parse::<EndpointState>().expect_err("names are lower-case");
        assert_eq!(err.value(), "Ready");
        assert_eq!(err.to_string(), "state `Ready` is not ready, serving or terminating");
        let long = "x".repeat(1000);
        assert!(long.parse::<EndpointState>().expect_err("garbage").to_string().len() < 120, "bounded message");
    }

    #[test]
    fn id_defaults_to_address() {
        let addr: SocketAddr = "127.0.0.1:80".parse().expect("valid address");
        assert_eq!(Endpoint::new(addr).id().as_str(), "127.0.0.1:80");
    }
}
