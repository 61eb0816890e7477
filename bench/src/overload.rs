//! Scenarios 7–9, overload safety: a retry storm against a degraded service with and without a
//! retry budget; hedging against a latency tail; a stalled backend with and without circuit
//! breaking. The backends are separate processes (see [`crate::procs`]); the servers' own counts
//! of the calls they received are what "load" means here, not the client's bookkeeping.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lb_core::policy::{P2c, RoundRobin};
use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use lb_tonic::{HedgeDelay, HedgePolicy, LbChannel, RetryBudget, RetryPolicy};
use tokio::time::Instant;

use crate::drive::{closed_loop, Run};
use crate::procs::{BackendProc, Shape};
use crate::scenarios::{Section, Settings};
use crate::svg::Bar;

const BACKENDS: usize = 4;
/// Closed-loop callers in scenarios 7 and 8.
const CALLERS: usize = 8;

async fn start(shape: Shape, delay: Duration) -> anyhow::Result<Vec<BackendProc>> {
    let mut v = Vec::with_capacity(BACKENDS);
    for _ in 0..BACKENDS {
        v.push(BackendProc::start_shaped(None, SocketAddr::from(([127, 0, 0, 1], 0)), delay, shape).await?);
    }
    Ok(v)
}

fn target(backends: &[BackendProc]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// The calls every backend has received so far, summed.
async fn received(backends: &mut [BackendProc]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for b in backends.iter_mut() {
        sum += b.calls().await?;
    }
    Ok(sum)
}

/// Median, min and max.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(f64::total_cmp);
    let mid = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    (mid, s[0], s[s.len() - 1])
}

fn fmt_spread(v: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = spread(v);
    if v.len() < 2 {
        return format!("{m:.decimals$}");
    }
    format!("{m:.decimals$} [{lo:.decimals$}–{hi:.decimals$}]")
}

/// A warm-up, then one measured closed-loop run; returns the run and the calls the backends
/// received during it.
async fn measured(channel: &LbChannel, backends: &mut [BackendProc], s: Settings) -> anyhow::Result<(Run, u64)> {
    anyhow::ensure!(channel.ready(Duration::from_secs(10)).await, "no backend ready");
    closed_loop(GreeterClient::new(channel.clone()), CALLERS, Duration::ZERO, s.warmup).await;
    let before = received(backends).await?;
    let run = closed_loop(GreeterClient::new(channel.clone()), CALLERS, Duration::ZERO, s.dur()).await;
    let after = received(backends).await?;
    Ok((run, after.saturating_sub(before)))
}

/// Scenario 7: every backend fails half its calls; five attempts per call with no budget, with
/// the default budget, and no retries.
pub(crate) async fn retry_storm(s: Settings) -> anyhow::Result<Section> {
    let shape = Shape { fail_fraction: 0.5, ..Shape::default() };
    let delay = Duration::from_millis(1);
    let mut backends = start(shape, delay).await?;
    let target = target(&backends);
    let contenders: [(&str, Option<u32>, RetryBudget); 4] = [
        ("no retries", None, RetryBudget::ratio(0.2)),
        ("5 attempts, no budget", Some(5), RetryBudget::unlimited()),
        ("5 attempts, default budget", Some(5), RetryBudget::ratio(0.2)),
        ("5 attempts, A6 throttling (10 tokens, 0.1)", Some(5), RetryBudget::throttle(10, 0.1)),
    ];
    // Per contender, per round: (server calls per client call, success rate, refused retries).
    let mut results: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); contenders.len()];
    for _ in 0..s.rounds {
        for (i, (_, attempts, budget)) in contenders.iter().enumerate() {
            let mut builder = LbChannel::builder().retry_budget(*budget);
            if let Some(n) = attempts {
                builder = builder.retry(RetryPolicy::new(*n));
            }
            let channel = builder.build_from_target(&target)?;
            let (run, calls) = measured(&channel, &mut backends, s).await?;
            let n = run.events.len().max(1) as f64;
            let refused = channel.client().retry_budget().map(|b| b.exhausted()).unwrap_or(0);
            results[i].push((calls as f64 / n, run.ok() as f64 / n, refused));
        }
    }

    let mut sec = Section { title: "7. Retry storm: a degraded service, with and without a retry budget".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "{BACKENDS} backends as separate processes, each answering `UNAVAILABLE` to a random half of its calls (every \
         call {} ms otherwise); {CALLERS} closed-loop callers through one `LbChannel` (P2C PeakEWMA, outlier detection \
         on as by default), {:.1} s per contender and round after {:.1} s of warm-up, {} round(s) interleaved, a new \
         channel (and budget) per run. Retries follow gRPC's retry design (A6): `UNAVAILABLE` is retried after a \
         jittered backoff (10 ms doubling), each time to a backend the call has not tried. \"Server calls per client \
         call\" is what the backends counted themselves over the measured part, divided by the calls the callers \
         made: the load the service sees. The default budget lets retries add 20 % of the recent calls plus 10 per \
         second over 10 s (linkerd's and Finagle's defaults); A6 throttling stops retrying while its token bucket \
         (10 tokens, each failure costs 1, each success returns 0.1) is at or below half. Figures are medians with \
         [min–max] over rounds.\n",
        delay.as_millis(),
        s.secs,
        s.warmup.as_secs_f64(),
        s.rounds,
    );
    let _ = writeln!(sec.body, "| client | server calls per client call | calls that succeeded | retries refused by the budget per run |");
    let _ = writeln!(sec.body, "|---|---:|---:|---:|");
    let mut bars = Vec::new();
    let mut medians = Vec::new();
    for ((name, _, _), rs) in contenders.iter().zip(&results) {
        let amp: Vec<f64> = rs.iter().map(|r| r.0).collect();
        let ok: Vec<f64> = rs.iter().map(|r| r.1 * 100.0).collect();
        let refused: Vec<f64> = rs.iter().map(|r| r.2 as f64).collect();
        let _ = writeln!(
            sec.body,
            "| {name} | {}× | {} % | {} |",
            fmt_spread(&amp, 2),
            fmt_spread(&ok, 1),
            fmt_spread(&refused, 0)
        );
        let (m, _, _) = spread(&amp);
        let (okm, _, _) = spread(&ok);
        medians.push((m, okm));
        bars.push(Bar { label: name.to_string(), value: m, text: format!("{m:.2}× server calls, {okm:.0} % ok") });
    }
    sec.push_chart("s7-server-calls.svg", "Scenario 7: server calls per client call (50 % of calls fail)", &bars);
    let (none, none_ok) = medians[1];
    let (budget, budget_ok) = medians[2];
    let met = if budget <= 1.25 { "met" } else { "missed" };
    sec.headlines.push(format!(
        "retry storm (every backend fails 50 %): 5 attempts without a budget send {none:.2}× the calls to the servers \
         ({none_ok:.0} % succeed); with the default retry budget {budget:.2}× ({budget_ok:.0} % succeed); goal ≤ 1.25×: {met}"
    ));
    let _ = writeln!(
        sec.body,
        "With half the attempts failing, five attempts would cost 1 + ½ + ¼ + ⅛ + 1/16 ≈ 1.94 attempts per call; the \
         budget caps the extra at its ratio (plus the per-second floor, which weighs more in short runs), so a \
         service that is already failing is not sent almost twice its load. The price is the success rate: calls \
         whose retry the budget refused end with their first `UNAVAILABLE`.\n"
    );
    Ok(sec)
}

/// Scenario 8: 5 % of calls wait 200 ms more, on every backend; no hedging, hedging after a
/// fixed 10 ms, hedging after the target's p95.
pub(crate) async fn hedging(s: Settings) -> anyhow::Result<Section> {
    let tail = Duration::from_millis(200);
    let shape = Shape { tail_fraction: 0.05, tail_delay: tail, ..Shape::default() };
    let delay = Duration::from_millis(2);
    let mut backends = start(shape, delay).await?;
    let target = target(&backends);
    let contenders: [(&str, Option<HedgeDelay>); 3] = [
        ("no hedging", None),
        ("hedge after 10 ms", Some(HedgeDelay::Fixed(Duration::from_millis(10)))),
        ("hedge after the p95 (adaptive)", Some(HedgeDelay::percentile(0.95))),
    ];
    // Per contender: per-round (p50, p99, extra attempts), and every latency for p99.9.
    let mut rounds: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); contenders.len()];
    let mut pooled: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    for _ in 0..s.rounds {
        for (i, (_, hedge)) in contenders.iter().enumerate() {
            let mut builder = LbChannel::builder();
            if let Some(d) = hedge {
                // SayHello is idempotent: every call may be hedged.
                builder = builder.hedge(HedgePolicy::new(2, *d).every_call());
            }
            let channel = builder.build_from_target(&target)?;
            let (run, calls) = measured(&channel, &mut backends, s).await?;
            let n = run.events.len().max(1) as f64;
            rounds[i].push((run.percentile_ms(0.50), run.percentile_ms(0.99), (calls as f64 / n - 1.0) * 100.0));
            pooled[i].extend(run.events.iter().map(|e| e.latency));
        }
    }

    let mut sec = Section { title: "8. Hedging against a latency tail".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "{BACKENDS} backends as separate processes, every call {} ms, and a random 5 % of calls on every backend {} ms \
         more; {CALLERS} closed-loop callers through one `LbChannel` (P2C PeakEWMA), {:.1} s per contender and round \
         after {:.1} s of warm-up, {} round(s) interleaved. Hedging (gRPC A6's hedging policy, 2 attempts) sends a \
         second attempt of a call still unanswered after the delay, to a backend the call has not used; the first \
         answer wins and the other attempt is cancelled. The adaptive delay is the target's recent p95 latency of \
         first attempts. Extra attempts are the backends' own count over the calls made, minus one. p50 and p99 are \
         medians [min–max] over rounds; p99.9 is over every call of every round.\n",
        delay.as_millis(),
        tail.as_millis(),
        s.secs,
        s.warmup.as_secs_f64(),
        s.rounds,
    );
    let _ = writeln!(sec.body, "| client | p50 ms | p99 ms | p99.9 ms | extra attempts |");
    let _ = writeln!(sec.body, "|---|---:|---:|---:|---:|");
    let mut bars = Vec::new();
    let mut p99s = Vec::new();
    for (i, (name, _)) in contenders.iter().enumerate() {
        let p50: Vec<f64> = rounds[i].iter().map(|r| r.0).collect();
        let p99: Vec<f64> = rounds[i].iter().map(|r| r.1).collect();
        let extra: Vec<f64> = rounds[i].iter().map(|r| r.2).collect();
        pooled[i].sort_unstable();
        let p999 = lb_examples::load::percentile(&pooled[i], 0.999).as_secs_f64() * 1e3;
        let _ = writeln!(
            sec.body,
            "| {name} | {} | {} | {p999:.1} | {} % |",
            fmt_spread(&p50, 1),
            fmt_spread(&p99, 1),
            fmt_spread(&extra, 1)
        );
        let (p99m, _, _) = spread(&p99);
        let (extram, _, _) = spread(&extra);
        p99s.push((p99m, p999, extram));
        bars.push(Bar { label: name.to_string(), value: p99m, text: format!("p99 {p99m:.1} ms, +{extram:.1} % attempts") });
    }
    sec.push_chart("s8-p99.svg", "Scenario 8: p99 latency (ms) with 5 % of calls 200 ms slow", &bars);
    let (base, base999, _) = p99s[0];
    for (i, label) in [(1, "a fixed 10 ms delay"), (2, "the adaptive p95 delay")] {
        let (p99, p999, extra) = p99s[i];
        let ratio = p99 / base;
        let met = if ratio <= 0.2 && extra <= 10.0 { "met" } else { "missed" };
        sec.headlines.push(format!(
            "hedging with {label}: p99 {p99:.1} ms vs {base:.1} ms unhedged ({ratio:.2}×), p99.9 {p999:.1} ms vs \
             {base999:.1} ms, at {extra:.1} % extra attempts; goal p99 ≤ 0.2× at ≤ 10 % extra: {met}"
        ));
    }
    let _ = writeln!(
        sec.body,
        "A hedge is sent only for a call still unanswered at the delay, so its cost is the share of calls slower \
         than the delay: with a fixed 10 ms that is the 5 % tail plus whatever the shared machine delays; the p95 \
         delay costs about 5 % by construction. p99.9 stays high where both attempts of a call land in the tail \
         (0.25 % of calls) or a hedge was not allowed yet (the adaptive delay needs 50 first attempts before it \
         hedges). Here the tail is as large as 1 − 0.95, so the measured p95 sits at the tail's edge and now and \
         then inside it: those hedges go out after about 200 ms, and a hedge that lands in the tail too ends near \
         400 ms — the adaptive delay's p99.9 can be worse than no hedging. Choose a quantile whose tail is smaller \
         than the slow share you want to cut (p90 here), or a fixed delay.\n"
    );
    Ok(sec)
}

/// What one open-loop call ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `RESOURCE_EXHAUSTED`: refused by the circuit breaker.
    Overloaded,
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Call {
    started: Duration,
    ended: Duration,
    outcome: Outcome,
    backend: Option<SocketAddr>,
}

/// The resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The figures of one stalled-backend run.
#[derive(Debug, Default)]
struct StallRun {
    /// Calls waiting for an answer just before the backend resumed.
    blocked_at_resume: u64,
    /// The largest number of calls waiting at once during the stall.
    blocked_max: u64,
    /// RSS growth from just before the stall to its peak during the stall, KiB.
    rss_growth_kib: u64,
    /// Calls started during the stall, and how they ended.
    stall_calls: u64,
    stall_ok: u64,
    stall_overloaded: u64,
    stall_failed: u64,
    /// Calls started during the stall that had not ended when the backend resumed.
    stall_unanswered: u64,
    /// From the resume to the stalled backend's first answer to a call started after the resume.
    recovery: Option<Duration>,
}

/// One open-loop run: `rate` calls per second for `healthy`, then the first backend stalls for
/// `stall`, then it resumes for `after`; waits (bounded) for the calls still open.
async fn stall_run(
    channel: LbChannel,
    backends: &mut [BackendProc],
    rate: f64,
    (healthy, stall, after): (Duration, Duration, Duration),
) -> anyhow::Result<StallRun> {
    let stalled = backends[0].addr();
    let start = Instant::now();
    let open = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let client = GreeterClient::new(channel);
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall_at = healthy;
    let resume_at = healthy + stall;
    let stop_at = resume_at + after;
    let mut sampled = start;
    let mut rss_before = 0;
    let mut run = StallRun::default();
    let (mut stalling, mut resumed) = (false, false);
    loop {
        tick.tick().await;
        let now = start.elapsed();
        if now >= stop_at {
            break;
        }
        if !stalling && now >= stall_at {
            rss_before = rss_kib();
            backends[0].set_stalled(true).await?;
            stalling = true;
        }
        if stalling && !resumed {
            if sampled.elapsed() >= Duration::from_millis(50) {
                sampled = Instant::now();
                run.blocked_max = run.blocked_max.max(open.load(Ordering::Relaxed));
                run.rss_growth_kib = run.rss_growth_kib.max(rss_kib().saturating_sub(rss_before));
            }
            if now >= resume_at {
                run.blocked_at_resume = open.load(Ordering::Relaxed);
                run.blocked_max = run.blocked_max.max(run.blocked_at_resume);
                backends[0].set_stalled(false).await?;
                resumed = true;
            }
        }
        let mut c = client.clone();
        let open = Arc::clone(&open);
        let calls = Arc::clone(&calls);
        open.fetch_add(1, Ordering::Relaxed);
        let started = start.elapsed();
        tasks.spawn(async move {
            let result = c.say_hello(HelloRequest { name: "stall".into() }).await;
            let (outcome, backend) = match result {
                Ok(r) => (Outcome::Ok, lb_examples::server::backend_of(&r.into_inner().message).and_then(|a| a.parse().ok())),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => (Outcome::Overloaded, None),
                Err(_) => (Outcome::Failed, None),
            };
            lock(&calls).push(Call { started, ended: start.elapsed(), outcome, backend });
            open.fetch_sub(1, Ordering::Relaxed);
        });
        // Reap finished tasks as we go: the set holds only the calls still open.
        while tasks.try_join_next().is_some() {}
    }
    // The calls still open finish once the backend has resumed; bounded all the same.
    let drained = tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
    anyhow::ensure!(drained.is_ok(), "{} calls still open 30 s after the backend resumed", open.load(Ordering::Relaxed));

    let calls = lock(&calls).clone();
    let in_stall: Vec<&Call> = calls.iter().filter(|c| c.started >= stall_at && c.started < resume_at).collect();
    run.stall_calls = in_stall.len() as u64;
    run.stall_ok = in_stall.iter().filter(|c| c.outcome == Outcome::Ok && c.ended < resume_at).count() as u64;
    run.stall_overloaded = in_stall.iter().filter(|c| c.outcome == Outcome::Overloaded).count() as u64;
    run.stall_failed = in_stall.iter().filter(|c| c.outcome == Outcome::Failed).count() as u64;
    run.stall_unanswered = in_stall.iter().filter(|c| c.ended >= resume_at).count() as u64;
    run.recovery = calls
        .iter()
        .filter(|c| c.started >= resume_at && c.backend == Some(stalled))
        .map(|c| c.ended.saturating_sub(resume_at))
        .min();
    Ok(run)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Scenario 9: one backend stops answering but keeps its connections open, callers keep
/// sending; round robin without and with circuit breaking, and P2C PeakEWMA.
pub(crate) async fn stalled(s: Settings) -> anyhow::Result<Section> {
    let delay = Duration::from_millis(2);
    let mut backends = start(Shape::default(), delay).await?;
    let target = target(&backends);
    const RATE: f64 = 300.0;
    const PER_ENDPOINT: u32 = 16;
    const IN_ALL: usize = 64;
    let phases = (
        Duration::from_secs_f64((s.secs * 0.2).max(0.3)),
        Duration::from_secs_f64(s.secs),
        Duration::from_secs_f64((s.secs * 0.4).max(0.5)),
    );
    let contenders: [(&str, bool, bool); 3] = [
        ("round robin", false, false),
        ("round robin + circuit breaking", false, true),
        ("P2C PeakEWMA", true, false),
    ];
    let mut runs = Vec::new();
    for (_, p2c, breaker) in contenders {
        let mut builder = LbChannel::builder();
        builder = if p2c { builder.policy(P2c::peak_ewma()) } else { builder.policy(RoundRobin::new()) };
        if breaker {
            builder = builder.max_in_flight_per_endpoint(PER_ENDPOINT).max_in_flight(IN_ALL);
        }
        let channel = builder.build_from_target(&target)?;
        anyhow::ensure!(channel.ready(Duration::from_secs(10)).await, "no backend ready");
        // Every backend connected before the run, so round robin starts from the full set.
        for _ in 0..200 {
            if channel.endpoints().iter().filter(|e| e.healthy).count() == BACKENDS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runs.push(stall_run(channel, &mut backends, RATE, phases).await.context("a stalled-backend run")?);
    }

    let mut sec = Section { title: "9. A stalled backend, with and without circuit breaking".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "{BACKENDS} backends as separate processes (every call {} ms). Callers send {RATE:.0} calls per second open-loop \
         (each call its own task, no deadline: callers that do not give up, the worst case) through one `LbChannel`; \
         after {:.1} s one backend stops answering — its process and connections stay up, calls sent to it wait — \
         for {:.1} s, then answers again for {:.1} s. Circuit breaking: at most {PER_ENDPOINT} calls in flight per \
         backend and {IN_ALL} in all (a backend at its bound is not picked; a call that finds every backend full \
         fails at once with `RESOURCE_EXHAUSTED`). Client memory is this process's resident set growth from the \
         start of the stall to its peak. Recovery is the time from the resume to the stalled backend's first \
         answer to a call sent after it (\"not seen\": not within the {:.1} s after the resume). \"Calls open\" counts every call \
         not yet answered, those in flight to the healthy backends included.\n",
        delay.as_millis(),
        phases.0.as_secs_f64(),
        phases.1.as_secs_f64(),
        phases.2.as_secs_f64(),
        phases.2.as_secs_f64(),
    );
    let _ = writeln!(
        sec.body,
        "| client | calls open at the end of the stall (peak) | client memory growth | calls during the stall: answered / refused (RESOURCE_EXHAUSTED) / other errors / unanswered until the resume | recovery |"
    );
    let _ = writeln!(sec.body, "|---|---:|---:|---:|---:|");
    let mut bars = Vec::new();
    for ((name, _, _), r) in contenders.iter().zip(&runs) {
        let recovery = r.recovery.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "not seen".into());
        let _ = writeln!(
            sec.body,
            "| {name} | {} ({}) | {:.1} MiB | {} / {} / {} / {} of {} | {recovery} |",
            r.blocked_at_resume,
            r.blocked_max,
            r.rss_growth_kib as f64 / 1024.0,
            r.stall_ok,
            r.stall_overloaded,
            r.stall_failed,
            r.stall_unanswered,
            r.stall_calls,
        );
        bars.push(Bar {
            label: name.to_string(),
            value: r.blocked_at_resume as f64,
            text: format!("{} blocked", r.blocked_at_resume),
        });
    }
    sec.push_chart("s9-open-calls.svg", "Scenario 9: calls open at the end of the stall", &bars);
    let (rr, cb) = (&runs[0], &runs[1]);
    sec.headlines.push(format!(
        "stalled backend: round robin leaves {} callers blocked after {:.1} s (growing with the stall); with circuit \
         breaking {} (the per-backend bound), {} calls refused, {} answered meanwhile",
        rr.blocked_at_resume,
        phases.1.as_secs_f64(),
        cb.blocked_at_resume,
        cb.stall_overloaded,
        cb.stall_ok,
    ));
    let _ = writeln!(
        sec.body,
        "Round robin keeps sending the stalled backend its share, so blocked callers (and the memory their calls \
         hold) grow with the stall for as long as it lasts. The breaker bounds them at the per-backend limit and \
         sends the rest elsewhere; nothing is refused while other backends have room. P2C PeakEWMA needs no bound \
         here: a backend whose calls do not return grows its in-flight count, and with it its cost, so P2C stops \
         picking it after a few calls — but round robin, weighted round robin and the hashing policies have no such \
         feedback, and a breaker also bounds what P2C sends while every backend slows. P2C pays for it after the \
         resume: the stalled calls finally answer with latencies of the whole stall, PeakEWMA takes the peak as \
         the backend's cost and lets it decay over its 10 s window, so the backend gets little traffic for a while \
         after it has recovered.\n"
    );
    Ok(sec)
}
