//! A bounded closed-loop load generator and the JSON report `greeter-client` prints.
//!
//! `concurrency` callers each send one request, wait for its reply, and send the next, until the
//! budget (a number of requests or a duration) is spent — a closed loop, like most RPC clients, so
//! a slow backend slows its callers down instead of piling up an unbounded queue. Every loop stops
//! by itself.
//!
//! Shares are counted by the backend address each reply names (see [`crate::server::backend_of`]),
//! and latencies are exact (every sample kept and sorted; nearest-rank percentiles), which is
//! cheap at example sizes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::{Response, Status};

use crate::pb::HelloReply;
use crate::server::backend_of;

/// The key under which replies that name no address are counted.
pub const UNKNOWN_BACKEND: &str = "unknown";

/// How much load to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Exactly this many requests in total.
    Requests(u64),
    /// As many requests as fit in this time.
    Duration(Duration),
}

/// The result of one run: the exact JSON line `greeter-client` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Requests sent.
    pub requests: u64,
    /// Requests the balancer sent to backends, retries and hedges included (`greeter-client`
    /// reports it; absent where the sender does not count attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
    /// Requests answered with OK.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Successful replies by the backend address each one named.
    pub per_backend: BTreeMap<String, u64>,
    /// Median latency in milliseconds (every request, failed ones included).
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
}

impl Report {
    /// The share of successful replies that `backend` answered, in `0.0..=1.0`.
    pub fn share(&self, backend: &str) -> f64 {
        if self.ok == 0 {
            return 0.0;
        }
        self.per_backend.get(backend).copied().unwrap_or(0) as f64 / self.ok as f64
    }
}

/// Runs `call` with `concurrency` concurrent callers until `budget` is spent.
///
/// `call(i)` sends the `i`-th request. Errors are counted, and the first few are logged with
/// `tracing` (they are the interesting part of a failing run, but a dead target would otherwise
/// flood the log).
pub async fn run<F, Fut>(budget: Budget, concurrency: usize, call: F) -> Report
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<HelloReply>, Status>> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let logged_errors = Arc::new(AtomicU64::new(0));
    let deadline = match budget {
        Budget::Duration(d) => Some(Instant::now() + d),
        Budget::Requests(_) => None,
    };
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let call = call.clone();
        let next = next.clone();
        let logged_errors = logged_errors.clone();
        workers.push(tokio::spawn(async move {
            let mut part = Partial::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if let Budget::Requests(n) = budget {
                    if i >= n {
                        break;
                    }
                }
                let started = Instant::now();
                let result = call(i).await;
                part.latencies.push(started.elapsed());
                match result {
                    Ok(reply) => {
                        let message = reply.into_inner().message;
                        let backend = backend_of(&message).unwrap_or(UNKNOWN_BACKEND);
                        *part.per_backend.entry(backend.to_string()).or_default() += 1;
                        part.ok += 1;
                    }
                    Err(status) => {
                        part.errors += 1;
                        if logged_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            tracing::warn!(code = ?status.code(), message = status.message(), "request failed");
                        }
                    }
                }
            }
            part
        }));
    }
    let mut total = Partial::default();
    for worker in workers {
        match worker.await {
            Ok(part) => total.merge(part),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => {}
        }
    }
    total.into_report()
}

#[derive(Default)]
struct Partial {
    ok: u64,
    errors: u64,
    per_backend: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

impl Partial {
    fn merge(&mut self, other: Partial) {
        self.ok += other.ok;
        self.errors += other.errors;
        for (k, v) in other.per_backend {
            *self.per_backend.entry(k).or_default() += v;
        }
        self.latencies.extend(other.latencies);
    }

    fn into_report(mut self) -> Report {
        self.latencies.sort_unstable();
        Report {
            requests: self.ok + self.errors,
            attempts: None,
            ok: self.ok,
            errors: self.errors,
            per_backend: self.per_backend,
            p50_ms: millis(percentile(&self.latencies, 0.50)),
            p99_ms: millis(percentile(&self.latencies, 0.99)),
        }
    }
}

/// Nearest-rank percentile of sorted samples; zero when there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds rounded to microseconds, so the JSON stays short.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// How a load-generating binary ends: its report as one JSON line on stdout, exit 0 when at least
/// one call succeeded and 1 when none did (or stdout is gone); a usage error is printed as
/// `<program>: <error>` on stderr with exit 2.
pub fn finish(program: &str, result: anyhow::Result<Report>) -> std::process::ExitCode {
    use std::io::Write as _;
    use std::process::ExitCode;
    match result {
        Ok(report) => {
            let line = serde_json::to_string(&report).expect("a report always serializes");
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() || report.ok == 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("{program}: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn report_serializes_to_the_documented_shape() {
        let mut per_backend = BTreeMap::new();
        per_backend.insert("127.0.0.1:1".to_string(), 2);
        let r = Report { requests: 3, attempts: None, ok: 2, errors: 1, per_backend, p50_ms: 0.5, p99_ms: 1.25 };
        assert_eq!(
            serde_json::to_string(&r).expect("serializable"),
            r#"{"requests":3,"ok":2,"errors":1,"per_backend":{"127.0.0.1:1":2},"p50_ms":0.5,"p99_ms":1.25}"#
        );
    }
}
