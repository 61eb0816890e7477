//! The `grpc.status` label: how an attempt or a call ended, in the words of the face that sent it.

use std::fmt;

use crate::load::Outcome;

/// gRPC's code names, indexed by code (A66 labels `grpc.status` with these).
const GRPC: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// What follows the gRPC codes: HTTP status classes, then the words of faces that know no status.
const OTHER: [&str; 10] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "success",
    "failure",
    "cancelled",
    "unavailable",
    "timeout",
];

/// How many distinct statuses there are: per-status series are kept in arrays this long.
pub(crate) const COUNT: usize = GRPC.len() + OTHER.len();

/// The `grpc.status` label of an attempt or a call: a gRPC code name (`LbChannel`), an HTTP status
/// class (`LbClient`), or, where the face knows no status (the C ABI, a hand-built Tower stack),
/// `success`, `failure`, `cancelled`, `unavailable` or `timeout`.
///
/// A small copyable index: series are kept per status in arrays, so choosing one costs no
/// allocation and no lookup.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u8);

impl Status {
    /// gRPC `OK`.
    pub const OK: Status = Status(0);
    /// gRPC `CANCELLED`.
    pub const CANCELLED: Status = Status(1);
    /// gRPC `UNKNOWN`.
    pub const UNKNOWN: Status = Status(2);
    /// gRPC `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: Status = Status(4);
    /// gRPC `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: Status = Status(8);
    /// gRPC `INTERNAL`.
    pub const INTERNAL: Status = Status(13);
    /// gRPC `UNAVAILABLE`.
    pub const UNAVAILABLE: Status = Status(14);
    /// The request succeeded (a face without status codes).
    pub const SUCCESS: Status = Status(GRPC.len() as u8 + 5);
    /// The request failed (a face without status codes).
    pub const FAILURE: Status = Status(GRPC.len() as u8 + 6);
    /// The caller gave up before the end (a face without status codes).
    pub const CALLER_CANCELLED: Status = Status(GRPC.len() as u8 + 7);
    /// No endpoint could take the request, or it never reached one (a face without status codes).
    pub const NO_ENDPOINT: Status = Status(GRPC.len() as u8 + 8);
    /// The face's own deadline expired (a face without status codes).
    pub const TIMEOUT: Status = Status(GRPC.len() as u8 + 9);

    /// A gRPC code; one outside 0–16 reads as `UNKNOWN`, as gRPC clients read it.
    pub const fn grpc(code: i32) -> Status {
        if code >= 0 && code < GRPC.len() as i32 {
            Status(code as u8)
        } else {
            Status::UNKNOWN
        }
    }

    /// The class of an HTTP status (`2xx`, `5xx`, …); one outside 100–599 reads as `failure`.
    pub const fn http(status: u16) -> Status {
        match status {
            100..=599 => Status(GRPC.len() as u8 + (status / 100) as u8 - 1),
            _ => Status::FAILURE,
        }
    }

    /// `success`, `failure` or `cancelled`: the balancer's own verdict, for faces without a status.
    pub const fn of_outcome(outcome: Outcome) -> Status {
        match outcome {
            Outcome::Success => Status::SUCCESS,
            Outcome::Failure => Status::FAILURE,
            Outcome::Cancelled => Status::CALLER_CANCELLED,
        }
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        let i = self.0 as usize;
        if i < GRPC.len() {
            GRPC[i]
        } else {
            OTHER[i - GRPC.len()]
        }
    }

    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which words a face uses for the ends the engine itself sees (no endpoint, a send that failed,
/// a caller that gave up, a face's timeout): gRPC's codes, or lb's plain words.
///
/// A [`TrackCompletion`](crate::balance::TrackCompletion) names its dialect; the engine labels
/// what it records with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// `unavailable`, `failure`, `cancelled`, `timeout`.
    #[default]
    Plain,
    /// `UNAVAILABLE`, `UNAVAILABLE`, `CANCELLED`, `DEADLINE_EXCEEDED`, as a gRPC client reports them.
    Grpc,
}

impl Dialect {
    /// No endpoint could take the request, or the request never reached the one it was sent to.
    pub const fn unavailable(self) -> Status {
        match self {
            Dialect::Plain => Status::NO_ENDPOINT,
            Dialect::Grpc => Status::UNAVAILABLE,
        }
    }

    /// A circuit-breaker bound refused the request (see [`Limits`](crate::balance::Limits)).
    pub const fn overloaded(self) -> Status {
        match self {
            Dialect::Plain => Status::NO_ENDPOINT,
            Dialect::Grpc => Status::RESOURCE_EXHAUSTED,
        }
    }

    /// The endpoint's service failed the request (a broken connection).
    pub const fn failed(self) -> Status {
        match self {
            Dialect::Plain => Status::FAILURE,
            Dialect::Grpc => Status::UNAVAILABLE,
        }
    }

    /// The caller dropped the request before its end.
    pub const fn cancelled(self) -> Status {
        match self {
            Dialect::Plain => Status::CALLER_CANCELLED,
            Dialect::Grpc => Status::CANCELLED,
        }
    }

    /// The face's own timeout expired.
    pub const fn timeout(self) -> Status {
        match self {
            Dialect::Plain => Status::TIMEOUT,
            Dialect::Grpc => Status::DEADLINE_EXCEEDED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Status::grpc(0).as_str(), "OK");
        assert_eq!(Status::grpc(14), Status::UNAVAILABLE);
        assert_eq!(Status::grpc(16).as_str(), "UNAUTHENTICATED");
        assert_eq!(Status::grpc(17), Status::UNKNOWN, "an unknown code reads as UNKNOWN");
        assert_eq!(Status::grpc(-1), Status::UNKNOWN);
        assert_eq!(Status::http(200).as_str(), "2xx");
        assert_eq!(Status::http(104).as_str(), "1xx");
        assert_eq!(Status::http(503).as_str(), "5xx");
        assert_eq!(Status::http(600), Status::FAILURE);
        assert_eq!(Status::of_outcome(Outcome::Cancelled).as_str(), "cancelled");
        assert_eq!(Status::NO_ENDPOINT.as_str(), "unavailable");
        assert_eq!(Status::TIMEOUT.as_str(), "timeout");
        let mut all: Vec<&str> = (0..COUNT as u8).map(|i| Status(i).as_str()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), COUNT, "every status has its own name");
    }
}
