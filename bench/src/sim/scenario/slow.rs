//! Scenario 2: a tenth of the backends run at half speed. What happens to latency, per policy,
//! and how busy are the slow ones?

use super::imbalance::Healthy;
use super::{md_table, run_jobs, Job, Section, Settings, Steady};
use crate::fleet::{PolicyKind, SEC};
use crate::stats::mean;
use crate::svg::Bar;

/// The goal: p99 with the slow tenth at most this many times the all-healthy p99, under PeakEWMA.
const GOAL: f64 = 1.5;

/// Backend `b` is slow when this holds: every tenth backend.
fn is_slow(b: usize) -> bool {
    b % 10 == 0
}

pub(crate) fn run(s: &Settings, healthy: Option<&Healthy>) -> anyhow::Result<Section> {
    let (fleet, warmup, measure) = match healthy {
        Some(h) => (h.fleet.clone(), h.warmup, h.measure),
        None => super::imbalance::sizes(s),
    };
    // Percentiles settle sooner than per-backend counts: a shorter window than scenario 1's
    // (unless the command line set one) still holds hundreds of thousands of requests.
    let measure = if s.seconds.is_none() { (measure * 3 / 5).max(SEC) } else { measure };
    let policies = s.policies();
    let slowness: Vec<f64> = (0..fleet.backends).map(|b| if is_slow(b) { 2.0 } else { 1.0 }).collect();
    let mut jobs: Vec<Job> = policies
        .iter()
        .map(|&p| Job {
            label: p.label().to_string(),
            fleet: fleet.clone(),
            policy: p,
            seed: s.seed,
            slowness: slowness.clone(),
            warmup,
            measure,
        })
        .collect();
    // Without scenario 1's runs, measure the healthy fleet here.
    let own_healthy = healthy.is_none();
    if own_healthy {
        for &p in &policies {
            jobs.push(Job { label: format!("{} (all healthy)", p.label()), slowness: Vec::new(), policy: p, ..jobs[0].clone() });
        }
    }
    let mut all = run_jobs(jobs)?;
    let base: Vec<Steady> = if own_healthy { all.split_off(policies.len()) } else { Vec::new() };
    let base: &[Steady] = match healthy {
        Some(h) => &h.runs,
        None => &base,
    };
    let runs = all;
    let healthy_of = |p: PolicyKind| base.iter().find(|r| r.policy == p && !r.label.contains("baseline"));

    let slow_count = (0..fleet.backends).filter(|&b| is_slow(b)).count();
    let mut sec = Section::new("2. A tenth of the backends at half speed");
    sec.para(&format!(
        "The fleet of scenario 1 ({} clients × {} backends, subset {}, lb-core's subsetting), with every tenth backend \
         ({slow_count}) taking twice as long per request: half the capacity. The clients offer the same {:.0} requests/s, \
         now {:.1} % of the smaller fleet's capacity. An even split would load the slow backends to {:.0} %: more than they \
         can serve, so their queues fill and they refuse what does not fit. Latency is measured from the request's \
         first pick to its response, over {:.0} virtual seconds after {:.0} s of warm-up; \"vs all healthy\" divides by the \
         same policy's p99 with every backend healthy (scenario 1's run, over its {:.0} s).",
        fleet.clients,
        fleet.backends,
        fleet.per_client(),
        fleet.rate(),
        fleet.load / (1.0 - 0.5 * slow_count as f64 / fleet.backends as f64) * 100.0,
        fleet.load * 200.0,
        measure as f64 / SEC as f64,
        warmup as f64 / SEC as f64,
        healthy.map_or(measure, |h| h.measure) as f64 / SEC as f64,
    ));
    let mut rows = Vec::new();
    let mut p99_bars = Vec::new();
    let mut util_bars = Vec::new();
    for r in &runs {
        let slow_util: Vec<f64> = r.util.iter().enumerate().filter(|(b, _)| is_slow(*b)).map(|(_, u)| *u).collect();
        let fast_util: Vec<f64> = r.util.iter().enumerate().filter(|(b, _)| !is_slow(*b)).map(|(_, u)| *u).collect();
        // Served requests are proportional to utilization × capacity: a slow backend's is half.
        let slow_work: f64 = slow_util.iter().map(|u| u * 0.5).sum();
        let fast_work: f64 = fast_util.iter().sum();
        let share = slow_work / (slow_work + fast_work).max(1e-12);
        let h = healthy_of(r.policy);
        let vs = h.map_or("–".to_string(), |h| format!("{:.2}x", r.p99 / h.p99));
        rows.push(vec![
            r.label.clone(),
            format!("{:.1}", r.p50),
            format!("{:.1}", r.p99),
            format!("{:.1}", r.p999),
            h.map_or("–".to_string(), |h| format!("{:.1}", h.p99)),
            vs,
            format!("{:.0} %", mean(&slow_util) * 100.0),
            format!("{:.1} %", share * 100.0),
            format!("{:.0} %", mean(&fast_util) * 100.0),
            format!("{:.3} %", r.counters.failed() as f64 / r.counters.requests.max(1) as f64 * 100.0),
        ]);
        p99_bars.push(Bar { label: format!("{}, slow tenth", r.label), value: r.p99, text: format!("{:.1} ms", r.p99) });
        if let Some(h) = h {
            p99_bars.push(Bar { label: format!("{}, all healthy", r.label), value: h.p99, text: format!("{:.1} ms", h.p99) });
        }
        util_bars.push(Bar { label: r.label.clone(), value: mean(&slow_util) * 100.0, text: format!("{:.0} %", mean(&slow_util) * 100.0) });
    }
    sec.table(md_table(
        &[
            "policy",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "all-healthy p99 ms",
            "p99 vs all healthy",
            "slow backends' utilization",
            "slow backends' share of requests",
            "other backends' utilization",
            "failed",
        ],
        1,
        &rows,
    ));
    let even = slow_count as f64 / fleet.backends as f64;
    sec.para(&format!(
        "An even split would send the slow backends {:.1} % of the requests; a split by capacity {:.1} %.",
        even * 100.0,
        even * 0.5 / (1.0 - even * 0.5) * 100.0
    ));
    sec.bar_chart("sim2-p99.svg", "Scenario 2: p99 latency, slow tenth vs all healthy (ms)", &p99_bars);
    sec.bar_chart("sim2-slow-util.svg", "Scenario 2: utilization of the half-speed backends (%)", &util_bars);
    if let (Some(r), Some(h)) = (runs.iter().find(|r| r.policy == PolicyKind::P2cPeakEwma), healthy_of(PolicyKind::P2cPeakEwma)) {
        let ratio = r.p99 / h.p99;
        sec.headline(format!(
            "half-speed tenth: P2C PeakEWMA p99 {:.1} ms vs {:.1} ms all healthy = {ratio:.2}x; goal ≤ {GOAL:.1}x: {}",
            r.p99,
            h.p99,
            if ratio <= GOAL { "met" } else { "missed" }
        ));
    }
    let slow_util_of = |p: PolicyKind| {
        runs.iter().find(|r| r.policy == p).map(|r| {
            let v: Vec<f64> = r.util.iter().enumerate().filter(|(b, _)| is_slow(*b)).map(|(_, u)| *u).collect();
            mean(&v)
        })
    };
    let per_member = fleet.rate() / fleet.clients as f64 / fleet.per_client() as f64;
    let mut why = String::from(
        "**Why the policies differ.** Only a signal that reflects the slow backends' queues moves load off them. \
         PeakEWMA's cost is latency × requests in flight, and a queued request's latency shows in every client's \
         samples of that backend.",
    );
    if let Some(u) = slow_util_of(PolicyKind::P2cLeastRequest) {
        why.push_str(&format!(
            " Least-request compares the client's own requests in flight, and a client sends a member only \
             {per_member:.2} requests/s, so it rarely has one outstanding to compare: the slow backends stay at \
             {:.0} %.",
            u * 100.0
        ));
    }
    if let Some(u) = slow_util_of(PolicyKind::WrrOrca) {
        why.push_str(&format!(
            " WRR from load reports has the right target — A58's weight, queries/s ÷ utilization, is about half \
             for a half-speed backend — but each client weighs each member from that member's reports to that \
             client, which arrive about every {:.1} s, and uses a weight only after A58's blackout ({} s here); \
             until then the slow backends' queues fill, and over this window they still run at {:.0} %.",
            1.0 / per_member,
            PolicyKind::ORCA_BLACKOUT.as_secs(),
            u * 100.0
        ));
    }
    sec.para(&why);
    if let Some(rr) = runs.iter().find(|r| r.policy == PolicyKind::RoundRobin) {
        sec.headline(format!(
            "half-speed tenth: round robin p99 {:.1} ms, {:.2} % of requests failed (the slow backends' queues overflow)",
            rr.p99,
            rr.counters.failed() as f64 / rr.counters.requests.max(1) as f64 * 100.0
        ));
    }
    Ok(sec)
}
