//! The value stored under each instance key: the crate's
//! [endpoint document](crate::document) with a version field `v`.
//!
//! Decoding is defensive because anyone with write access to the prefix can put anything there:
//! a value that is too large, not JSON, of an unknown version or with an unparseable address is
//! rejected with an [`Invalid`] reason that the resolver logs and counts, and the rest of the set
//! is untouched.

use std::fmt;

use lb_core::Endpoint;
use serde::{Deserialize, Serialize};

use crate::document::{truncate, EndpointDocument};

/// Values larger than this are rejected unread: an instance description is a few hundred bytes,
/// so anything near this size is a mistake or an attack, and parsing it would cost every client.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The schema version this crate writes and reads.
pub const VERSION: u64 = 1;

/// A version-1 value: the version beside the fields of the crate's one endpoint document.
#[derive(Debug, Serialize, Deserialize)]
struct Value {
    v: u64,
    #[serde(flatten)]
    doc: EndpointDocument,
}

/// Why a stored value was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Larger than [`MAX_VALUE_BYTES`].
    TooLarge(usize),
    /// Not JSON, JSON of the wrong shape, or a field with a value that is not valid.
    Malformed(String),
    /// A `v` other than [`VERSION`].
    UnknownVersion(String),
    /// `addr` is not `ip:port`.
    BadAddress(String),
    /// The key has no instance id after the service prefix.
    BadKey,
}

impl Invalid {
    /// A short label for the metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::TooLarge(_) => "too_large",
            Invalid::Malformed(_) => "malformed",
            Invalid::UnknownVersion(_) => "unknown_version",
            Invalid::BadAddress(_) => "bad_address",
            Invalid::BadKey => "bad_key",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::TooLarge(n) => write!(f, "value of {n} bytes exceeds the {MAX_VALUE_BYTES}-byte cap"),
            Invalid::Malformed(e) => write!(f, "value is not a valid instance document: {e}"),
            Invalid::UnknownVersion(v) => write!(f, "unknown schema version {v} (this client reads {VERSION})"),
            Invalid::BadAddress(a) => write!(f, "address `{a}` is not ip:port"),
            Invalid::BadKey => f.write_str("key has no instance id after the service prefix"),
        }
    }
}

/// Decodes one value; `id` is the key's last segment, and names the endpoint whatever the value
/// says.
pub fn decode(id: &str, value: &[u8]) -> Result<Endpoint, Invalid> {
    if id.is_empty() {
        return Err(Invalid::BadKey);
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Invalid::TooLarge(value.len()));
    }
    // The common case in one pass; only a failure pays for a second parse that tells an unknown
    // version (reported as such, so a rollout of a newer writer is easy to spot) from garbage.
    let mut doc = match serde_json::from_slice::<Value>(value) {
        Ok(value) if value.v == VERSION => value.doc,
        Ok(value) => return Err(Invalid::UnknownVersion(value.v.to_string())),
        Err(e) => {
            return Err(match serde_json::from_slice::<serde_json::Value>(value).ok().as_ref().and_then(|v| v.get("v")) {
                Some(v) if v.as_u64() != Some(VERSION) => Invalid::UnknownVersion(truncate(&v.to_string())),
                _ => Invalid::Malformed(e.to_string()),
            })
        }
    };
    doc.id = Some(id.to_string());
    doc.into_endpoint().map_err(|e| {
        if e.is_address() {
            Invalid::BadAddress(e.value().to_string())
        } else {
            Invalid::Malformed(e.to_string())
        }
    })
}

/// Encodes an endpoint as a version-1 document. The id is left out: the key carries it.
pub fn encode(ep: &Endpoint) -> Vec<u8> {
    let mut doc = EndpointDocument::from_endpoint(ep);
    doc.id = None;
    serde_json::to_vec(&Value { v: VERSION, doc }).expect("a struct of strings and integers always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        use lb_core::{EndpointState, Locality};
        let ep = Endpoint::new("10.0.0.1:80".parse().expect("literal"))
            .with_id("i-1")
            .with_weight(7)
            .with_locality(Locality::unknown().with_zone("z").with_region("r").with_node("n"))
            .with_metadata("version", "2")
            .with_state(EndpointState::Terminating);
        let back = decode("i-1", &encode(&ep)).expect("own encoding decodes");
        assert_eq!(back, ep);
    }

    #[test]
    fn minimal_document_gets_defaults() {
        let ep = decode("x", br#"{"v":1,"addr":"[::1]:9000","future_field":true}"#).expect("valid");
        assert_eq!(ep.weight(), Endpoint::DEFAULT_WEIGHT);
        assert_eq!(ep.id().as_str(), "x");
        assert_eq!(ep.addr().port(), 9000);
        let ep = decode("from-key", br#"{"v":1,"addr":"1.2.3.4:5","id":"from-value"}"#).expect("valid");
        assert_eq!(ep.id().as_str(), "from-key", "the key names the instance");
        assert!(!String::from_utf8_lossy(&encode(&ep)).contains("from-key"), "and the value does not repeat it");
    }

    #[test]
    fn rejects_bad_values_with_a_reason() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "malformed"),
            (br#"{"addr":"1.2.3.4:5"}"#, "malformed"),
            (br#"{"v":2,"addr":"1.2.3.4:5"}"#, "unknown_version"),
            (br#"{"v":"1","addr":"1.2.3.4:5"}"#, "unknown_version"),
            (br#"{"v":1,"addr":"localhost:80"}"#, "bad_address"),
            (br#"{"v":1,"addr":"1.2.3.4:5","weight":-1}"#, "malformed"),
            (br#"{"v":1,"addr":"1.2.3.4:5","metadata":{"k":1}}"#, "malformed"),
            (br#"[1,2]"#, "malformed"),
            (br#"{"v":1,"addr":"1.2.3.4:5","state":"draining"}"#, "malformed"),
        ];
        for (value, reason) in cases {
            let err = decode("id", value).expect_err(std::str::from_utf8(value).unwrap_or("?"));
            assert_eq!(err.reason(), reason, "{err}");
        }
        let huge = vec![b' '; MAX_VALUE_BYTES + 1];
        assert_eq!(decode("id", &huge).expect_err("too large").reason(), "too_large");
        assert_eq!(decode("", br#"{"v":1,"addr":"1.2.3.4:5"}"#).expect_err("no id").reason(), "bad_key");
    }
}
