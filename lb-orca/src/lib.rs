//! ORCA load reports for lb: servers say how loaded they are, clients balance by it.
//!
//! ORCA (Open Request Cost Aggregation, gRFC A51) is how gRPC servers report their own load: an
//! [`OrcaLoadReport`](pb::OrcaLoadReport) — CPU, memory and application utilization, queries and
//! errors per second, named costs and metrics — serialized as protobuf and base64-encoded into the
//! `endpoint-load-metrics-bin` trailer of every response ([`HEADER`]). Clients that weigh endpoints
//! by it (gRFC A58's weighted round robin, Envoy's `client_side_weighted_round_robin`) send less to
//! a server that says it is busy, whatever any one client sees of it.
//!
//! This crate has both halves, wire-compatible with every gRPC implementation:
//!
//! - **servers**: [`OrcaLayer`] is a tower `Layer` for tonic servers (`Server::builder().layer(..)`)
//!   and hyper services; it attaches a report to every response — in the trailers over HTTP/2 (in
//!   the headers of a trailers-only gRPC answer), as a header over HTTP/1.1. The values come from a
//!   [`Recorder`] the application sets (per server) and a [`CallRecorder`] in each request's
//!   extensions (per call), with this process's CPU utilization and its queries and errors per
//!   second measured automatically when the application does not set them;
//! - **clients**: [`decode`] reads the header back; lb-hyper calls it at the end of every response
//!   and hands the result to the request's load guard ([`load_report`] converts it), so lb-core's
//!   `WeightedRoundRobin::from_load_reports()` and `P2c::utilization()` can use it.
//!
//! ```
//! use lb_orca::{OrcaLayer, Recorder};
//!
//! let recorder = Recorder::new().with_cpu_sampling();
//! recorder.set_application_utilization(0.25); // e.g. the share of worker slots busy
//! let layer = OrcaLayer::new(recorder.clone());
//! // tonic::transport::Server::builder().layer(layer).add_service(..)
//! # let _ = layer;
//! ```

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

mod layer;
mod recorder;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use http::HeaderValue;
use prost::Message as _;

pub use self::layer::{Orca, OrcaBody, OrcaLayer, ResponseFuture};
pub use self::recorder::{CallRecorder, Recorder};

/// The generated protobuf message (package `xds.data.orca.v3`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/xds.data.orca.v3.rs"));
}

pub use self::pb::OrcaLoadReport;

/// The trailer (or header) that carries a report: gRPC binary metadata, base64 in the header
/// value.
pub const HEADER: &str = "endpoint-load-metrics-bin";

/// Counter: load reports a client could not read (label `reason`: `base64`, `protobuf`).
pub const REPORT_ERRORS: &str = "lb_orca_report_errors_total";

/// gRPC binary metadata: base64 written without padding, read with or without it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes a report as the value of the [`HEADER`] trailer.
pub fn encode(report: &OrcaLoadReport) -> HeaderValue {
    let text = BASE64.encode(report.encode_to_vec());
    HeaderValue::from_str(&text).expect("base64 is a valid header value")
}

/// Why a report could not be read.
#[derive(Debug)]
pub struct ReportError {
    reason: &'static str,
    detail: String,
}

impl ReportError {
    /// `base64` or `protobuf`: the layer that did not parse.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable load report ({}): {}", self.reason, self.detail)
    }
}

impl std::error::Error for ReportError {}

/// Decodes the value of a [`HEADER`] trailer. Unknown fields are ignored (the protobuf rule), so
/// reports from newer servers still read.
pub fn decode(value: &HeaderValue) -> Result<OrcaLoadReport, ReportError> {
    let bytes = BASE64.decode(value.as_bytes().trim_ascii()).map_err(|e| ReportError {
        reason: "base64",
        detail: e.to_string(),
    })?;
    decode_bytes(&bytes)
}

/// Decodes a serialized report (protobuf bytes, as the C ABI takes them).
pub fn decode_bytes(bytes: &[u8]) -> Result<OrcaLoadReport, ReportError> {
    OrcaLoadReport::decode(bytes).map_err(|e| ReportError {
        reason: "protobuf",
        detail: e.to_string(),
    })
}

/// Reads the report in `headers`, if any; an unreadable one is logged, counted in
/// [`REPORT_ERRORS`] and ignored — a bad report never fails the call it came with.
pub fn from_headers(headers: &http::HeaderMap) -> Option<lb_core::LoadReport> {
    let value = headers.get(HEADER)?;
    match decode(value) {
        Ok(report) => Some(load_report(&report)),
        Err(e) => {
            metrics::counter!(REPORT_ERRORS, "reason" => e.reason()).increment(1);
            tracing::debug!(error = %e, "ignoring a load report");
            None
        }
    }
}

/// The scalar fields lb-core's policies use. A server that only fills the deprecated whole-number
/// `rps` is read through it.
pub fn load_report(r: &OrcaLoadReport) -> lb_core::LoadReport {
    #[allow(deprecated)]
    let rps = if r.rps_fractional > 0.0 { r.rps_fractional } else { r.rps as f64 };
    lb_core::LoadReport {
        cpu_utilization: r.cpu_utilization,
        mem_utilization: r.mem_utilization,
        application_utilization: r.application_utilization,
        rps_fractional: rps,
        eps: r.eps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OrcaLoadReport {
        let mut r = OrcaLoadReport {
            cpu_utilization: 0.5,
            mem_utilization: 0.25,
            application_utilization: 0.75,
            rps_fractional: 123.5,
            eps: 2.0,
            ..Default::default()
        };
        r.request_cost.insert("db_queries".into(), 3.0);
        r.utilization.insert("gpu".into(), 0.9);
        r.named_metrics.insert("queue".into(), 7.0);
        r
    }

    #[test]
    fn round_trip_through_the_trailer() {
        let value = encode(&sample());
        assert!(!value.as_bytes().ends_with(b"="), "written without padding");
        assert_eq!(decode(&value).expect("decodes"), sample());
        // Padded base64 (as some implementations write it) reads too.
        let padded = base64::engine::general_purpose::STANDARD.encode(sample().encode_to_vec());
        assert_eq!(decode(&HeaderValue::from_str(&padded).expect("ascii")).expect("decodes"), sample());
    }

    #[test]
    fn known_wire_bytes() {
        // Field 1 (double, wire type 1) = 0.5; field 6 (double) = 10.0: the published numbering.
        let mut bytes = vec![0x09];
        bytes.extend_from_slice(&0.5f64.to_le_bytes());
        bytes.push(0x31);
        bytes.extend_from_slice(&10.0f64.to_le_bytes());
        let r = decode_bytes(&bytes).expect("decodes");
        assert_eq!((r.cpu_utilization, r.rps_fractional), (0.5, 10.0));
        assert_eq!(r.encode_to_vec(), bytes, "and encodes to the same bytes");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut bytes = sample().encode_to_vec();
        // Field 99, varint 5: from some newer version of the message.
        bytes.extend_from_slice(&[0x98, 0x06, 0x05]);
        assert_eq!(decode_bytes(&bytes).expect("decodes"), sample());
    }

    #[test]
    fn garbage_is_an_error_and_from_headers_ignores_it() {
        assert_eq!(decode(&HeaderValue::from_static("!!not base64!!")).expect_err("bad").reason(), "base64");
        let truncated = BASE64.encode(&sample().encode_to_vec()[..5]);
        assert_eq!(decode(&HeaderValue::from_str(&truncated).expect("ascii")).expect_err("bad").reason(), "protobuf");
        let mut headers = http::HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("%%%"));
        assert_eq!(from_headers(&headers), None);
        headers.insert(HEADER, encode(&sample()));
        let r = from_headers(&headers).expect("read");
        assert_eq!((r.utilization(), r.rps_fractional, r.eps), (0.75, 123.5, 2.0));
    }

    #[test]
    fn deprecated_rps_is_read_when_alone() {
        #[allow(deprecated)]
        let r = OrcaLoadReport { rps: 40, ..Default::default() };
        assert_eq!(load_report(&r).rps_fractional, 40.0);
    }
}
