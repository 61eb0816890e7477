//! Deciding from a response whether the endpoint failed, for outlier detection and PeakEWMA.
//!
//! The outcome must describe the *endpoint*, not the request: a gRPC `NOT_FOUND` or an HTTP 404 is a
//! healthy backend giving a correct answer, and counting it as a failure would eject backends for
//! their callers' mistakes. So only server-side faults count:
//!
//! - plain HTTP: status 5xx (what Envoy's outlier detection counts as `5xx`);
//! - gRPC: `grpc-status` (in trailers, or in headers for a trailers-only response) `UNKNOWN` (2),
//!   `INTERNAL` (13), `UNAVAILABLE` (14) or `DATA_LOSS` (15) — the codes a gRPC server library emits
//!   for its own crashes, overload or broken transport. `DEADLINE_EXCEEDED` is not counted: it
//!   measures the caller's budget, and slowness is already priced in by PeakEWMA; counting it would
//!   eject every backend at once under a tight client deadline. A gRPC stream that ends without any
//!   `grpc-status`, or a body that fails mid-stream, is a failure.
//!
//! A response the caller drops before its end counts neither way (gRPC) or by its status (HTTP).
//!
//! Separately, an answer can say the server is **overloaded** and for how long to leave it alone:
//! gRPC `RESOURCE_EXHAUSTED` (the hint in `grpc-retry-pushback-ms`, else `Retry-After`, else
//! [`DEFAULT_OVERLOAD_PENALTY`]), HTTP 429 or 503 with a `Retry-After` (delta-seconds or an HTTP
//! date). [`Classify::penalty`] reads it; the pool keeps the endpoint out of picks that long
//! (linkerd's load biaser; capped by the pool's `overload_penalty_cap`).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use lb_core::metrics::{Dialect, Status};
use lb_core::Outcome;

/// How long an endpoint sits out after `RESOURCE_EXHAUSTED` without a hint.
pub const DEFAULT_OVERLOAD_PENALTY: Duration = Duration::from_secs(1);

/// Classifies responses; see the [module docs](self).
#[derive(Clone, Debug)]
pub enum Classify {
    /// Plain HTTP: 5xx is a failure.
    Http,
    /// gRPC: these `grpc-status` codes are failures.
    Grpc {
        /// The failing codes.
        failure_codes: &'static [i32],
    },
}

/// What a response's head says of its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The outcome known so far.
    pub outcome: Outcome,
    /// Whether it is final (a gRPC response with a body decides in its trailers).
    pub is_final: bool,
}

impl Verdict {
    const fn done(outcome: Outcome) -> Self {
        Verdict { outcome, is_final: true }
    }
}

/// The gRPC codes [`Classify::grpc`] counts as endpoint failures.
pub const GRPC_FAILURE_CODES: &[i32] = &[2, 13, 14, 15];

impl Classify {
    /// The plain-HTTP classifier.
    pub fn http() -> Self {
        Classify::Http
    }

    /// The gRPC classifier with [`GRPC_FAILURE_CODES`].
    pub fn grpc() -> Self {
        Classify::Grpc {
            failure_codes: GRPC_FAILURE_CODES,
        }
    }

    /// The outcome known from the response head.
    pub fn head(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        match self {
            Classify::Http => Verdict::done(if status.is_server_error() { Outcome::Failure } else { Outcome::Success }),
            Classify::Grpc { .. } => {
                if !status.is_success() {
                    // Not a gRPC answer at all (a proxy's 502, a 503 from a draining server).
                    return Verdict::done(if status.is_server_error() || status == StatusCode::BAD_GATEWAY {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    });
                }
                match grpc_status(headers) {
                    // Trailers-only response: the status is in the headers.
                    Some(code) => Verdict::done(self.code(code)),
                    None => Verdict {
                        outcome: Outcome::Cancelled,
                        is_final: false,
                    },
                }
            }
        }
    }

    /// The outcome from trailers (gRPC), or `None` when the trailers say nothing.
    pub(crate) fn trailers(&self, trailers: &HeaderMap) -> Option<Outcome> {
        match self {
            Classify::Http => None,
            Classify::Grpc { .. } => grpc_status(trailers).map(|c| self.code(c)),
        }
    }

    /// How long the server asked to be left alone, when the response head (`status`, `headers`)
    /// or, for gRPC, the trailers (`status` `None`) say it is overloaded; see the
    /// [module docs](self).
    pub fn penalty(&self, status: Option<StatusCode>, headers: &HeaderMap) -> Option<Duration> {
        if let Some(status) = status {
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                return retry_after(headers);
            }
        }
        match self {
            Classify::Grpc { .. } if grpc_status(headers) == Some(RESOURCE_EXHAUSTED) => Some(
                pushback(headers)
                    .or_else(|| retry_after(headers))
                    .unwrap_or(DEFAULT_OVERLOAD_PENALTY),
            ),
            _ => None,
        }
    }

    /// The outcome of a stream that ended with no outcome from head or trailers.
    pub(crate) fn end_without_status(&self) -> Outcome {
        match self {
            Classify::Http => Outcome::Success,
            Classify::Grpc { .. } => Outcome::Failure,
        }
    }

    /// The `grpc.status` a response's head gives its request ([`lb_core::metrics::Status`]): the
    /// HTTP status class, or for gRPC a trailers-only answer's code, or a non-200 answer's status
    /// mapped as gRPC clients map it; `None` while a gRPC answer's trailers are awaited.
    pub(crate) fn head_status(&self, status: StatusCode, headers: &HeaderMap) -> Option<Status> {
        match self {
            Classify::Http => Some(Status::http(status.as_u16())),
            Classify::Grpc { .. } if !status.is_success() => Some(Status::grpc(match status.as_u16() {
                // gRPC's "HTTP to gRPC status code mapping".
                400 => 13,
                401 => 16,
                403 => 7,
                404 => 12,
                429 | 502 | 503 | 504 => 14,
                _ => 2,
            })),
            Classify::Grpc { .. } => grpc_status(headers).map(Status::grpc),
        }
    }

    /// The `grpc.status` in trailers (gRPC).
    pub(crate) fn trailers_status(&self, trailers: &HeaderMap) -> Option<Status> {
        match self {
            Classify::Http => None,
            Classify::Grpc { .. } => grpc_status(trailers).map(Status::grpc),
        }
    }

    /// The `grpc.status` of a response whose body failed.
    pub(crate) fn broken_status(&self) -> Status {
        self.dialect().failed()
    }

    /// The `grpc.status` of a gRPC stream that ended without one (gRPC clients say `INTERNAL`).
    pub(crate) fn missing_status(&self) -> Option<Status> {
        match self {
            Classify::Http => None,
            Classify::Grpc { .. } => Some(Status::INTERNAL),
        }
    }

    /// The words the engine uses for this face's failures.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Classify::Http => Dialect::Plain,
            Classify::Grpc { .. } => Dialect::Grpc,
        }
    }

    fn code(&self, code: i32) -> Outcome {
        match self {
            Classify::Grpc { failure_codes } if failure_codes.contains(&code) => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}

const RESOURCE_EXHAUSTED: i32 = 8;

/// `grpc-retry-pushback-ms` (gRFC A6): milliseconds; a negative or unreadable value is no hint.
fn pushback(headers: &HeaderMap) -> Option<Duration> {
    let ms: i64 = headers.get("grpc-retry-pushback-ms")?.to_str().ok()?.trim().parse().ok()?;
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The `grpc-status` code in `headers`; an unparsable value reads as `UNKNOWN`.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    let v = headers.get("grpc-status")?;
    Some(v.to_str().ok().and_then(|s| s.trim().parse().ok()).unwrap_or(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(code: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", code.parse().expect("valid header value"));
        h
    }

    #[test]
    fn grpc_codes() {
        let c = Classify::grpc();
        assert_eq!(c.trailers(&trailers("0")), Some(Outcome::Success));
        assert_eq!(c.trailers(&trailers("5")), Some(Outcome::Success), "NOT_FOUND is the caller's problem");
        assert_eq!(c.trailers(&trailers("3")), Some(Outcome::Success), "INVALID_ARGUMENT too");
        assert_eq!(c.trailers(&trailers("4")), Some(Outcome::Success), "DEADLINE_EXCEEDED is the caller's budget");
        for code in ["2", "13", "14", "15", "garbage"] {
            assert_eq!(c.trailers(&trailers(code)), Some(Outcome::Failure), "code {code}");
        }
        assert_eq!(c.trailers(&HeaderMap::new()), None);
        assert_eq!(c.head(StatusCode::OK, &trailers("14")), Verdict::done(Outcome::Failure), "trailers-only");
        assert!(!c.head(StatusCode::OK, &HeaderMap::new()).is_final, "gRPC waits for trailers");
        assert_eq!(c.end_without_status(), Outcome::Failure);
    }

    #[test]
    fn statuses() {
        let g = Classify::grpc();
        assert_eq!(g.head_status(StatusCode::OK, &HeaderMap::new()), None, "awaits the trailers");
        assert_eq!(g.head_status(StatusCode::OK, &trailers("5")), Some(Status::grpc(5)));
        assert_eq!(g.head_status(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()), Some(Status::UNAVAILABLE));
        assert_eq!(g.head_status(StatusCode::NOT_FOUND, &HeaderMap::new()), Some(Status::grpc(12)));
        assert_eq!(g.trailers_status(&trailers("0")), Some(Status::OK));
        assert_eq!(g.broken_status(), Status::UNAVAILABLE);
        let h = Classify::http();
        assert_eq!(h.head_status(StatusCode::NOT_FOUND, &HeaderMap::new()).map(|s| s.as_str()), Some("4xx"));
        assert_eq!(h.broken_status().as_str(), "failure");
        assert_eq!(h.missing_status(), None);
    }

    #[test]
    fn http_codes() {
        let c = Classify::http();
        assert_eq!(c.head(StatusCode::NOT_FOUND, &HeaderMap::new()), Verdict::done(Outcome::Success));
        assert_eq!(c.head(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()), Verdict::done(Outcome::Failure));
    }

    #[test]
    fn overload_answers_carry_a_penalty() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().expect("valid"));
            }
            m
        };
        let http = Classify::http();
        assert_eq!(http.penalty(Some(StatusCode::TOO_MANY_REQUESTS), &h(&[("retry-after", "7")])), Some(Duration::from_secs(7)));
        assert_eq!(http.penalty(Some(StatusCode::SERVICE_UNAVAILABLE), &h(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(http.penalty(Some(StatusCode::SERVICE_UNAVAILABLE), &HeaderMap::new()), None, "no hint, no penalty");
        assert_eq!(http.penalty(Some(StatusCode::OK), &h(&[("retry-after", "2")])), None);
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let mut dated = HeaderMap::new();
        dated.insert("retry-after", later.parse().expect("valid"));
        let p = http.penalty(Some(StatusCode::TOO_MANY_REQUESTS), &dated).expect("a date hint");
        assert!(p > Duration::from_secs(100) && p <= Duration::from_secs(120), "{p:?}");

        let grpc = Classify::grpc();
        assert_eq!(grpc.penalty(None, &h(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "1500")])), Some(Duration::from_millis(1500)));
        assert_eq!(grpc.penalty(None, &h(&[("grpc-status", "8")])), Some(DEFAULT_OVERLOAD_PENALTY));
        assert_eq!(grpc.penalty(None, &h(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "-1")])), Some(DEFAULT_OVERLOAD_PENALTY));
        assert_eq!(grpc.penalty(None, &h(&[("grpc-status", "14")])), None);
    }
}

