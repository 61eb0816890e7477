//! `lb_balancer_*`: discovery, a pool and a policy behind an opaque pointer.
//!
//! Each balancer owns a small multi-thread Tokio runtime (one worker) on which `lb-core`'s pool runs:
//! discovery is applied, endpoints are probed and ejected there, whether or not the caller is
//! picking. Picks run on the caller's thread and read the pool's current snapshot through an atomic
//! pointer, so any number of threads may pick at once without a lock; only the pending-report map
//! (sharded) takes a short lock.

use std::ffi::{c_char, c_int, CString};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lb_core::balance::Wait;
use lb_core::policy::{self, PickContext};
use lb_core::pool::{EndpointPhase, Picked};
use lb_core::{Endpoint, EndpointState, Outcome, Pool};
use lb_registry::Target;
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::error::{guard, guard_void, lb_status, Error};
use crate::options::Options;
use crate::pending::{Pending, TokenError};
use crate::pick::lb_pick;
use crate::probe::{ProbeConnect, Probed};
use crate::ptr::{bytes_arg, opt_str_arg, str_arg};

/// How a picked request ended, for `lb_balancer_report` (passed as an `int`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum lb_outcome {
    /// The backend answered and the answer was not a failure.
    LB_OUTCOME_SUCCESS = 0,
    /// The backend failed the request (connection refused or reset, an error reply, a timeout).
    /// Counts toward outlier ejection.
    LB_OUTCOME_FAILURE = 1,
    /// The caller gave up before knowing: releases the pick without judging the endpoint.
    LB_OUTCOME_CANCELLED = 2,
}

/// A client-side load balancer for one target. Opaque; create with `lb_balancer_new`, destroy with
/// `lb_balancer_free`. Every other function may be called from any number of threads at once.
#[allow(non_camel_case_types)]
pub struct lb_balancer {
    target: String,
    pool: Pool<Probed>,
    pending: Arc<Pending>,
    wait: Wait,
    gate: Option<Arc<lb_core::balance::Gate>>,
    // Dropped (shut down) explicitly in `Drop`, which joins its threads.
    runtime: Option<Runtime>,
}

impl fmt::Debug for lb_balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("lb_balancer")
            .field("target", &self.target)
            .field("pool", &self.pool)
            .finish()
    }
}

impl Drop for lb_balancer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Joins the worker so nothing of ours runs after `lb_balancer_free` returns.
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

pub(crate) fn runtime(name: &str) -> Result<Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .thread_name(name)
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| {
            Error::new(
                lb_status::LB_ERR_RUNTIME,
                format!("cannot start the balancer's runtime: {e}"),
            )
        })
}

impl lb_balancer {
    pub(crate) fn new(target: &str, options: Option<&str>) -> Result<Self, Error> {
        let parsed = Target::parse(target).map_err(Error::registry)?;
        let opts = Options::parse(options)?;
        let discover = lb_registry::resolve(&parsed).map_err(Error::registry)?;
        Self::with_discover(target, discover, &opts)
    }

    /// A balancer over any discovery stream (what `new` does after resolving the target).
    fn with_discover(target: &str, discover: lb_core::discover::BoxDiscover, opts: &Options) -> Result<Self, Error> {
        let balance = opts.balance()?;
        let connector = ProbeConnect::new(
            opts.probe,
            Duration::from_millis(opts.probe_interval_ms),
            balance.pool_config(target).connect_timeout,
        );
        let runtime = runtime("lb-balancer")?;
        let pending = Arc::new(Pending::new(opts.report_timeout()));
        let pool = {
            let _entered = runtime.enter();
            let pool = balance
                .spawn_pool(target, discover, connector, None)
                .map_err(|e| Error::options(format!("options_json: {e}")))?;
            runtime.spawn(expire_loop(Arc::clone(&pending)));
            pool
        };
        Ok(lb_balancer {
            target: target.to_string(),
            pool,
            pending,
            wait: balance.wait(),
            gate: (balance.limits() != lb_core::balance::Limits::default())
                .then(|| lb_core::balance::Gate::new(balance.limits())),
            runtime: Some(runtime),
        })
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    fn wait_ready(&self, timeout: Duration) -> bool {
        self.runtime().block_on(self.pool.ready_timeout(timeout))
    }

    /// Picks, and stores the pick's guard under a new token.
    ///
    /// A pick is a call of one attempt, for the metrics (`lb_core::metrics`): it starts at the
    /// pick (or at the start of its wait) and ends at its report, with the caller's latency.
    pub(crate) fn pick(&self, hash: Option<u64>) -> Result<(u64, Arc<Endpoint>), Error> {
        let ctx = PickContext { hash };
        let permit = match &self.gate {
            Some(gate) => Some(gate.enter().ok_or_else(|| {
                let bound = gate.limits().max_in_flight.unwrap_or(0);
                Error::new(
                    lb_status::LB_ERR_UNAVAILABLE,
                    format!(
                        "`{}` has {bound} picks awaiting their report, its bound (max_in_flight)",
                        self.target
                    ),
                )
            })?),
            None => None,
        };
        let mut picked = match &self.gate {
            // Without bounds the fast path is one lock-free read of the snapshot.
            None => match self.pool.pick(&ctx) {
                Some(mut p) => {
                    let started = p.guard.started_at();
                    p.guard.end_call(started);
                    p
                }
                None => self.pick_slow(&ctx)?,
            },
            Some(_) => self.pick_slow(&ctx)?,
        };
        picked.guard.begin_attempt();
        let Picked {
            endpoint,
            mut guard,
            ..
        } = picked;
        if let Some(permit) = permit {
            guard.hold(permit);
        }
        Ok((self.pending.insert(guard), endpoint))
    }

    /// No endpoint right now: wait for one as every face of lb does (lb-core's engine), blocking
    /// this thread on the pool's snapshot signal — no polling, so no CPU is spent while waiting, and
    /// the pick returns as soon as an endpoint is published.
    #[cold]
    fn pick_slow(&self, ctx: &PickContext) -> Result<Picked<Probed>, Error> {
        let pick = self.pool.pick_or_wait(*ctx, self.wait);
        let pick = match &self.gate {
            Some(gate) => pick.gated(Arc::clone(gate)),
            None => pick,
        };
        let waiting = Instant::now();
        let mut picked = self
            .runtime()
            .block_on(pick)
            .map_err(|e| Error::new(lb_status::LB_ERR_UNAVAILABLE, e.to_string()))?;
        // The call began with the wait.
        picked.guard.end_call(waiting);
        Ok(picked)
    }

    pub(crate) fn report(
        &self,
        token: u64,
        outcome: Outcome,
        latency: Option<Duration>,
    ) -> Result<(), Error> {
        self.report_with(token, outcome, latency, None)
    }

    pub(crate) fn report_with(
        &self,
        token: u64,
        outcome: Outcome,
        latency: Option<Duration>,
        load: Option<lb_core::LoadReport>,
    ) -> Result<(), Error> {
        let mut guard = self.pending.take(token).map_err(|e| match e {
            TokenError::Unknown => Error::new(
                lb_status::LB_ERR_UNKNOWN_TOKEN,
                format!("token {token:#x} was not issued by this balancer"),
            ),
            TokenError::Spent => Error::new(
                lb_status::LB_ERR_TOKEN_SPENT,
                format!(
                    "token {token:#x} was already reported, or expired unreported after {:?}",
                    self.pending.timeout()
                ),
            ),
        })?;
        guard.set_outcome(outcome);
        if let Some(l) = latency {
            guard.set_latency(l);
        }
        if let Some(r) = load {
            guard.set_report(r);
        }
        drop(guard);
        Ok(())
    }

    pub(crate) fn endpoints_json(&self) -> String {
        let s = self.pool.snapshot();
        let endpoints: Vec<serde_json::Value> = s
            .entries()
            .iter()
            .map(|e| {
                let ep = &e.endpoint;
                let loc = ep.locality();
                serde_json::json!({
                    "id": ep.id().as_str(),
                    "addr": ep.addr().to_string(),
                    "weight": ep.weight(),
                    "region": loc.region.as_deref(),
                    "zone": loc.zone.as_deref(),
                    "node": loc.node.as_deref(),
                    "state": match ep.state() {
                        EndpointState::Ready => "ready",
                        EndpointState::Serving => "serving",
                        EndpointState::Terminating => "terminating",
                    },
                    "phase": match e.phase {
                        EndpointPhase::Idle => "idle",
                        EndpointPhase::Connecting => "connecting",
                        EndpointPhase::Ready => "ready",
                        EndpointPhase::Ejected => "ejected",
                        EndpointPhase::Draining => "draining",
                    },
                    "healthy": e.healthy,
                    "in_flight": e.load.in_flight(),
                    "rtt_us": e.load.rtt_estimate().as_micros() as u64,
                    "metadata": ep.metadata(),
                })
            })
            .collect();
        serde_json::json!({
            "target": self.target,
            "initialized": s.is_initialized(),
            "healthy": s.healthy(),
            "pending_reports": self.pending.len(),
            "endpoints": endpoints,
        })
        .to_string()
    }
}

async fn expire_loop(pending: Arc<Pending>) {
    // Sweep a few times per timeout so a pick expires at most ~25% late; bounded to stay cheap.
    let every = (pending.timeout() / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = pending.expire(Instant::now());
        if n > 0 {
            tracing::debug!(expired = n, "unreported picks expired as cancelled");
        }
    }
}

/// Borrows a balancer argument.
///
/// # Safety
/// `b` is NULL or a pointer from `lb_balancer_new` not yet passed to `lb_balancer_free`.
unsafe fn balancer<'a>(b: *const lb_balancer) -> Result<&'a lb_balancer, Error> {
    // SAFETY: the caller guarantees `b` is NULL or a live balancer; `as_ref` handles NULL.
    unsafe { b.as_ref() }.ok_or_else(|| Error::null("balancer"))
}

/// Creates a balancer for `target` and starts discovering its endpoints in the background.
///
/// - `target`: a target URI, e.g. `static:///127.0.0.1:8080,127.0.0.1:8081` (see the README for the
///   schemes this build supports: `etcd://`, `consul://`, `kubernetes://` need the cargo features of
///   the same names).
/// - `options_json`: NULL or "" for the defaults, else a JSON object; every key is optional and an
///   unknown key is an error:
///   `policy` ("rr", "wrr", "p2c", "p2c-ewma" (default), "hash", "maglev", "wrr-orca" (weighted
///   round robin from load reports given to `lb_balancer_report_load`, gRFC A58), "p2c-util"
///   (power of two choices by reported utilization)), `seed` (u64),
///   `blackout_ms`, `weight_update_ms` (for "wrr-orca": how long an endpoint reports before its
///   weight counts, default 10000; how often weights are recomputed, default 1000),
///   `slow_start_ms` (a newly connected endpoint's share ramps up over this window; not for the
///   hashing policies),
///   `subset_size` + `subset_client_id` (connect to only that many endpoints, chosen
///   deterministically for this client's id, e.g. its pod name),
///   `locality` ({"region","zone","node"}: the caller's own, enables topology preference),
///   `topology` (levels nearest first, e.g. ["node","zone","region","any"]), `overprovisioning`,
///   `panic_threshold`, `endpoint_wait_ms` (the longest a pick waits for an endpoint, default
///   3000; `failfast_ms` is its old name), `wait_for_ready` (wait that long even while every
///   endpoint fails its probe; default false: fail at once with the probe's error),
///   `report_timeout_ms` (an unreported pick expires as cancelled after this long, default 60000),
///   `connect_timeout_ms`, `probe` (TCP-probe endpoints before use, default true),
///   `probe_interval_ms` (re-probe period, 0 = only on reconnect; default 5000),
///   `outlier` (null disables; or {"consecutive_failures","failure_rate","min_requests",
///   "interval_ms","base_ejection_ms","max_ejection_ms","max_ejected_fraction"}),
///   `max_in_flight` (picks awaiting their report at once), `max_in_flight_per_endpoint`,
///   `max_waiting` (picks waiting for an endpoint at once): circuit breaking, a pick over a bound
///   fails at once with `LB_ERR_UNAVAILABLE` naming the bound.
///   `metrics_endpoint_labels` (label the per-attempt metrics with the endpoint's address;
///   default false). Metrics go to the `metrics` recorder the Rust side of the process installed;
///   a pick is one call of one attempt, recorded when it is reported.
/// - `out`: receives the balancer on `LB_OK`; untouched otherwise.
///
/// Returns immediately; use `lb_balancer_wait_ready` to wait for the first endpoints.
/// Errors: `LB_ERR_NULL_ARGUMENT`, `LB_ERR_INVALID_UTF8`, `LB_ERR_INVALID_TARGET`,
/// `LB_ERR_UNSUPPORTED_SCHEME`, `LB_ERR_INVALID_OPTIONS`, `LB_ERR_RUNTIME`.
///
/// # Safety
/// `target` and `options_json` are NULL or NUL-terminated strings; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_new(
    target: *const c_char,
    options_json: *const c_char,
    out: *mut *mut lb_balancer,
) -> lb_status {
    guard(|| {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: the caller passes NULL or NUL-terminated strings valid for this call.
        let target = unsafe { str_arg(target, "target") }?;
        // SAFETY: as above.
        let options = unsafe { opt_str_arg(options_json, "options_json") }?;
        let b = Box::new(lb_balancer::new(target, options)?);
        // SAFETY: `out` is non-NULL and the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(b)) };
        Ok(())
    })
}

/// Waits until discovery delivered a set and at least one endpoint can take requests.
///
/// Returns `LB_OK` when ready, `LB_ERR_TIMEOUT` after `timeout_ms`. Blocks the calling thread only.
/// Thread-safe.
///
/// # Safety
/// `b` is NULL or a live balancer.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_wait_ready(
    b: *const lb_balancer,
    timeout_ms: u64,
) -> lb_status {
    guard(|| {
        // SAFETY: forwarded contract.
        let b = unsafe { balancer(b) }?;
        if b.wait_ready(Duration::from_millis(timeout_ms)) {
            Ok(())
        } else {
            Err(Error::new(
                lb_status::LB_ERR_TIMEOUT,
                format!("`{}` not ready after {timeout_ms} ms", b.target),
            ))
        }
    })
}

/// Picks an endpoint for one request and fills `*out`.
///
/// - `hash_key`, `hash_key_len`: the request's affinity key for the "hash" and "maglev" policies (a user id, a
///   session); NULL with length 0 when there is none. Other policies ignore it.
/// - `out`: caller-allocated; filled on `LB_OK`, untouched otherwise.
///
/// The pick counts as one request in flight on that endpoint until `out->token` is passed to
/// `lb_balancer_report` (or expires). When no endpoint can take requests, waits up to the
/// `endpoint_wait_ms` option for one, then returns `LB_ERR_UNAVAILABLE` (at once, naming the last
/// probe error, while every endpoint fails its probe, unless `wait_for_ready`).
/// Thread-safe and lock-free apart from one short sharded lock; any number of threads may pick at once.
///
/// # Safety
/// `b` is NULL or a live balancer; `hash_key` is NULL or points to `hash_key_len` readable bytes;
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_pick(
    b: *const lb_balancer,
    hash_key: *const u8,
    hash_key_len: usize,
    out: *mut lb_pick,
) -> lb_status {
    guard(|| {
        // SAFETY: forwarded contract.
        let b = unsafe { balancer(b) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: the caller guarantees `hash_key_len` readable bytes when non-NULL.
        let key = unsafe { bytes_arg(hash_key, hash_key_len, "hash_key") }?;
        let (token, endpoint) = b.pick(key.map(policy::hash_key))?;
        // SAFETY: `out` is non-NULL, aligned and writable for one `lb_pick` (caller's contract).
        // Zeroing first makes every byte initialised, so the `&mut` below refers to a valid value
        // (all-zero is valid for this plain-integer struct) even if the caller's memory was not.
        let out = unsafe {
            out.write_bytes(0, 1);
            &mut *out
        };
        out.fill(token, &endpoint);
        Ok(())
    })
}

/// Reports how a picked request ended; feeds in-flight counts, the PeakEWMA latency estimate and
/// outlier detection.
///
/// - `token`: from `lb_pick.token`; each token may be reported once.
/// - `outcome`: an `lb_outcome` value.
/// - `latency_us`: the request's latency as the caller measured it, in microseconds; a negative
///   value means "use the time between the pick and this call".
///
/// Errors: `LB_ERR_INVALID_ARGUMENT` (bad outcome; the token stays pending), `LB_ERR_UNKNOWN_TOKEN`
/// (not from this balancer), `LB_ERR_TOKEN_SPENT` (reported before, or expired: a pick not reported
/// within `report_timeout_ms` is released as `LB_OUTCOME_CANCELLED`). Thread-safe.
///
/// # Safety
/// `b` is NULL or a live balancer.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_report(
    b: *const lb_balancer,
    token: u64,
    outcome: c_int,
    latency_us: i64,
) -> lb_status {
    guard(|| {
        // SAFETY: forwarded contract.
        let b = unsafe { balancer(b) }?;
        let outcome = outcome_arg(outcome)?;
        let latency = u64::try_from(latency_us).ok().map(Duration::from_micros);
        b.report(token, outcome, latency)
    })
}

/// Like `lb_balancer_report`, with the server's load report: the bytes of an ORCA
/// `xds.data.orca.v3.OrcaLoadReport` protobuf, as a gRPC server sends it in the
/// `endpoint-load-metrics-bin` trailer (base64-decoded). The "wrr-orca" and "p2c-util" policies
/// balance by these reports.
///
/// - `report`, `report_len`: the serialized report; NULL with length 0 reports none.
///
/// Errors: those of `lb_balancer_report`, and `LB_ERR_INVALID_ARGUMENT` for a report that does not
/// decode (the token stays pending, so it can be reported again without one). Thread-safe.
///
/// # Safety
/// `b` is NULL or a live balancer; `report` is NULL or points to `report_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_report_load(
    b: *const lb_balancer,
    token: u64,
    outcome: c_int,
    latency_us: i64,
    report: *const u8,
    report_len: usize,
) -> lb_status {
    guard(|| {
        // SAFETY: the caller guarantees `report_len` readable bytes when non-NULL.
        let bytes = unsafe { bytes_arg(report, report_len, "report") }?;
        let load = match bytes {
            Some(bytes) => Some(lb_orca::load_report(&lb_orca::decode_bytes(bytes).map_err(|e| {
                Error::new(lb_status::LB_ERR_INVALID_ARGUMENT, format!("report: {e}"))
            })?)),
            None => None,
        };
        // SAFETY: forwarded contract.
        let b = unsafe { balancer(b) }?;
        let outcome = outcome_arg(outcome)?;
        let latency = u64::try_from(latency_us).ok().map(Duration::from_micros);
        b.report_with(token, outcome, latency, load)
    })
}

/// An `lb_outcome` passed as an `int`.
fn outcome_arg(outcome: c_int) -> Result<Outcome, Error> {
    match outcome {
        0 => Ok(Outcome::Success),
        1 => Ok(Outcome::Failure),
        2 => Ok(Outcome::Cancelled),
        other => Err(Error::new(
            lb_status::LB_ERR_INVALID_ARGUMENT,
            format!("outcome {other} is not an lb_outcome (0 success, 1 failure, 2 cancelled)"),
        )),
    }
}

/// Describes the current endpoints as a JSON object:
/// `{"target", "initialized", "healthy", "pending_reports", "endpoints": [{"id", "addr", "weight",
/// "region", "zone", "node", "state", "phase", "healthy", "in_flight", "rtt_us", "metadata"}]}`.
///
/// `*out` receives a NUL-terminated string owned by the caller: free it with `lb_string_free`.
/// Thread-safe.
///
/// # Safety
/// `b` is NULL or a live balancer; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_endpoints(
    b: *const lb_balancer,
    out: *mut *mut c_char,
) -> lb_status {
    guard(|| {
        // SAFETY: forwarded contract.
        let b = unsafe { balancer(b) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let json = CString::new(b.endpoints_json()).map_err(|_| {
            Error::new(
                lb_status::LB_ERR_PANIC,
                "endpoint JSON contained a NUL byte (serde_json escapes them)",
            )
        })?;
        // SAFETY: `out` is non-NULL and writable; ownership of the string passes to the caller.
        unsafe { out.write(json.into_raw()) };
        Ok(())
    })
}

/// Stops discovery, releases every unreported pick, joins the balancer's threads and frees it.
///
/// NULL is a no-op. No other thread may be using `b` during or after this call; tokens of `b`
/// become meaningless.
///
/// # Safety
/// `b` is NULL or a pointer from `lb_balancer_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn lb_balancer_free(b: *mut lb_balancer) {
    guard_void(|| {
        if !b.is_null() {
            // SAFETY: `b` came from `Box::into_raw` in `lb_balancer_new` and is freed only once.
            drop(unsafe { Box::from_raw(b) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::discover::{self, Update};

    /// Voluntary context switches of the calling thread so far (Linux).
    fn voluntary_switches() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn a_waiting_pick_sleeps_until_an_endpoint_is_published() {
        let (tx, rx) = discover::channel();
        let opts = Options::parse(Some(r#"{"probe":false,"endpoint_wait_ms":10000}"#)).expect("valid options");
        let b = Arc::new(lb_balancer::with_discover("manual", Box::pin(rx), &opts).expect("builds"));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let picker = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let before = voluntary_switches();
                started_tx.send(()).expect("the test waits for this");
                let picked = b.pick(None);
                let woke = std::time::Instant::now();
                (picked.map(|(_, ep)| ep.addr()), woke, before, voluntary_switches())
            })
        };
        started_rx.recv().expect("the picking thread started");
        // Let the pick block for a while: a thread that polls would wake hundreds of times meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("literal");
        let sent = std::time::Instant::now();
        assert!(tx.send(Update::Reset(vec![Endpoint::new(addr)])));
        let (picked, woke, before, after) = picker.join().expect("the picking thread does not panic");
        assert_eq!(picked.expect("picked once the endpoint arrived"), addr);
        let latency = woke.saturating_duration_since(sent);
        assert!(latency < Duration::from_millis(100), "woke {latency:?} after the endpoint was published");
        if let (Some(before), Some(after)) = (before, after) {
            // Blocking on the snapshot signal parks the thread once or twice; the old 1 ms polling
            // loop switched ~300 times in 300 ms.
            assert!(after - before < 20, "the waiting thread woke {} times", after - before);
        }
    }
}

