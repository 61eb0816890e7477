//! The JSON document of one endpoint: the one shape lb writes and reads wherever an endpoint is
//! stored as JSON.
//!
//! ```json
//! {"id":"i-7","addr":"10.0.7.1:50051","weight":100,"zone":"eu-west-1a","region":"eu-west-1",
//!  "node":"node-7","metadata":{"version":"1.4.2"},"state":"ready"}
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `addr` | yes | `ip:port` (IPv6 as `[::1]:50051`); no host names: resolving them is not discovery's job |
//! | `id` | no (the address) | the endpoint's stable id |
//! | `weight` | no (100) | relative weight, `0` = send nothing |
//! | `zone`, `region`, `node` | no | locality for topology-aware balancing |
//! | `metadata` | no | string → string map |
//! | `state` | no (`ready`) | `ready`, `serving` (only used when nothing is ready) or `terminating` (drain) |
//!
//! Unknown fields are ignored, so the document can grow optional fields; a caller that must refuse
//! them (a strict configuration parser) can check the keys against [`EndpointDocument::FIELDS`].
//! Where it is used:
//!
//! - the value of an etcd instance key, with a version field `v` beside these (the `etcd`
//!   feature's `etcd::schema`; there the key, not an `id` field, names the instance);
//! - each entry of the [cache](crate::cache)'s on-disk snapshot;
//! - the attributes of a `static:///` entry, which are this document's fields written
//!   `addr;key=value` (see [`fixed`](crate::fixed)).
//!
//! Decoding has two steps so that bad input is reported field by field: serde checks the shape
//! (types, required fields), then [`EndpointDocument::into_endpoint`] checks the values (the
//! address, the state) and says which one is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use lb_core::endpoint::ParseStateError;
use lb_core::{Endpoint, EndpointState, Locality};
use serde::{Deserialize, Serialize};

/// One endpoint as JSON; see the [module docs](self) for the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDocument {
    /// The stable id; without one the address is the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `ip:port`.
    pub addr: String,
    /// Relative weight (default [`Endpoint::DEFAULT_WEIGHT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `topology.kubernetes.io/zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `topology.kubernetes.io/region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `kubernetes.io/hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `ready` (the default), `serving` or `terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl EndpointDocument {
    /// The field names, for callers that refuse unknown ones.
    pub const FIELDS: [&'static str; 8] = ["id", "addr", "weight", "zone", "region", "node", "metadata", "state"];

    /// The document of an endpoint. Every field is written except a `ready` state, which is the
    /// default.
    pub fn from_endpoint(endpoint: &Endpoint) -> Self {
        let l = endpoint.locality();
        let owned = |s: &Option<std::sync::Arc<str>>| s.as_deref().map(str::to_string);
        EndpointDocument {
            id: Some(endpoint.id().to_string()),
            addr: endpoint.addr().to_string(),
            weight: Some(endpoint.weight()),
            zone: owned(&l.zone),
            region: owned(&l.region),
            node: owned(&l.node),
            metadata: endpoint.metadata().clone(),
            state: match endpoint.state() {
                EndpointState::Ready => None,
                other => Some(other.to_string()),
            },
        }
    }

    /// The endpoint this document describes, or an error naming the field whose value is wrong.
    pub fn into_endpoint(self) -> Result<Endpoint, DocumentError> {
        let addr: SocketAddr = self.addr.parse().map_err(|_| DocumentError::address(&self.addr))?;
        let state = match self.state.as_deref() {
            None => EndpointState::Ready,
            Some(s) => s.parse().map_err(DocumentError::state)?,
        };
        // An absent field and an empty one both mean "unknown".
        let locality = Locality::unknown()
            .with_zone(self.zone.as_deref().unwrap_or_default())
            .with_region(self.region.as_deref().unwrap_or_default())
            .with_node(self.node.as_deref().unwrap_or_default());
        let mut ep = Endpoint::new(addr)
            .with_weight(self.weight.unwrap_or(Endpoint::DEFAULT_WEIGHT))
            .with_locality(locality)
            .with_state(state);
        if let Some(id) = self.id {
            ep = ep.with_id(id);
        }
        for (k, v) in self.metadata {
            ep = ep.with_metadata(k, v);
        }
        Ok(ep)
    }
}

impl From<&Endpoint> for EndpointDocument {
    fn from(endpoint: &Endpoint) -> Self {
        EndpointDocument::from_endpoint(endpoint)
    }
}

impl TryFrom<EndpointDocument> for Endpoint {
    type Error = DocumentError;

    fn try_from(doc: EndpointDocument) -> Result<Self, DocumentError> {
        doc.into_endpoint()
    }
}

/// A field of an [`EndpointDocument`] whose value is not valid: `addr` that is not `ip:port`, or
/// `state` that is not `ready`, `serving` or `terminating`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Address(String),
    State(ParseStateError),
}

impl DocumentError {
    fn address(addr: &str) -> Self {
        DocumentError {
            kind: Kind::Address(truncate(addr)),
        }
    }

    fn state(e: ParseStateError) -> Self {
        DocumentError { kind: Kind::State(e) }
    }

    /// The name of the field at fault: `addr` or `state`.
    pub fn field(&self) -> &'static str {
        match self.kind {
            Kind::Address(_) => "addr",
            Kind::State(_) => "state",
        }
    }

    /// The value at fault (an address cut to 64 characters: values end up in logs).
    pub fn value(&self) -> &str {
        match &self.kind {
            Kind::Address(a) => a,
            Kind::State(e) => e.value(),
        }
    }

    /// True when `addr` is at fault.
    pub fn is_address(&self) -> bool {
        matches!(self.kind, Kind::Address(_))
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Address(a) => write!(f, "address `{a}` is not ip:port"),
            Kind::State(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DocumentError {}

/// Values end up in logs and metrics; an attacker-sized string must not.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Endpoint {
        Endpoint::new("10.0.0.1:80".parse().expect("literal"))
            .with_id("i-1")
            .with_weight(0)
            .with_locality(Locality::unknown().with_zone("z").with_region("r").with_node("n"))
            .with_metadata("version", "2")
            .with_state(EndpointState::Serving)
    }

    #[test]
    fn round_trips_every_field() {
        let json = serde_json::to_string(&EndpointDocument::from_endpoint(&full())).expect("serializes");
        let back: EndpointDocument = serde_json::from_str(&json).expect("own output parses");
        assert_eq!(Endpoint::try_from(back).expect("valid"), full());
        let ready = Endpoint::new("[::1]:9".parse().expect("literal"));
        let json = serde_json::to_string(&EndpointDocument::from(&ready)).expect("serializes");
        assert!(!json.contains("state"), "ready is the default and is left out: {json}");
    }

    #[test]
    fn a_minimal_document_gets_the_defaults() {
        let doc: EndpointDocument = serde_json::from_str(r#"{"addr":"127.0.0.1:9","future":[1]}"#).expect("valid");
        let ep = doc.into_endpoint().expect("valid");
        assert_eq!(ep, Endpoint::new("127.0.0.1:9".parse().expect("literal")));
    }

    #[test]
    fn reads_what_the_c_abi_and_older_snapshots_wrote() {
        // The C ABI's `instance_json` and a snapshot entry written before this type existed
        // (state always spelled out, weight always present).
        let c_abi = r#"{"addr":"127.0.0.1:9","id":"a","weight":7,"region":"r","zone":"z","node":"n","state":"terminating","metadata":{"v":"1"}}"#;
        let ep = serde_json::from_str::<EndpointDocument>(c_abi).expect("shape").into_endpoint().expect("values");
        assert_eq!((ep.id().as_str(), ep.weight(), ep.state()), ("a", 7, EndpointState::Terminating));
        assert_eq!(ep.locality(), &Locality::unknown().with_region("r").with_zone("z").with_node("n"));
        let old_snapshot = r#"{"id":"127.0.0.1:2","addr":"127.0.0.1:2","weight":100,"state":"ready"}"#;
        let ep = serde_json::from_str::<EndpointDocument>(old_snapshot).expect("shape").into_endpoint().expect("values");
        assert_eq!(ep, Endpoint::new("127.0.0.1:2".parse().expect("literal")));
    }

    #[test]
    fn bad_values_name_their_field() {
        let doc = |json: &str| serde_json::from_str::<EndpointDocument>(json).expect("the shape is valid");
        let err = doc(r#"{"addr":"localhost:80"}"#).into_endpoint().expect_err("a host name");
        assert_eq!((err.field(), err.value()), ("addr", "localhost:80"));
        assert_eq!(err.to_string(), "address `localhost:80` is not ip:port");
        let err = doc(r#"{"addr":"1.2.3.4:5","state":"draining"}"#).into_endpoint().expect_err("a bad state");
        assert_eq!((err.field(), err.value(), err.is_address()), ("state", "draining", false));
        assert!(err.to_string().contains("`draining`") && err.to_string().contains("terminating"), "{err}");
        let long = format!(r#"{{"addr":"{}"}}"#, "x".repeat(10_000));
        assert!(doc(&long).into_endpoint().expect_err("garbage").to_string().len() < 120);
        for bad_shape in [r#"{"zone":"a"}"#, r#"{"addr":"1.2.3.4:5","weight":-1}"#, r#"{"addr":"1.2.3.4:5","metadata":{"k":1}}"#] {
            assert!(serde_json::from_str::<EndpointDocument>(bad_shape).is_err(), "{bad_shape}");
        }
    }
}
