//! Scenario 4: three zones; one loses 60 % of its backends. How lb-core's `Topology` policy
//! spills traffic out of the zone (Envoy's overprovisioning factor 1.4), and the load on the
//! surviving backends over time — while the dead backends are still listed, and after discovery
//! drops them.

use std::time::Duration;

use super::{fleet, md_table, parallel, Section, Settings};
use crate::chart::{line_chart, Marker, Series};
use crate::engine::{Counters, Mode, Sim};
use crate::fleet::{zone_name, Fleet, PolicyKind, Subsetting, SEC};
use crate::stats::{mean, Latencies};

/// The share of a zone's backends that fail.
const LOST: f64 = 0.6;

#[derive(Clone, Copy, Debug)]
struct Timing {
    /// The zone fails.
    fail: u64,
    /// Discovery stops listing the failed backends (Kubernetes marks a dead node's pods not
    /// ready after its node-monitor grace period, 40 s by default; shorter here, as the phase
    /// is steady within seconds).
    removed: u64,
    end: u64,
    /// Sampling interval.
    bucket: u64,
    propagation: Duration,
}

/// One sample: per-group utilization, zone a's clients' local share, failures, p99.
#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    survivors: f64,
    others: Vec<f64>,
    local: f64,
    failed: f64,
}

#[derive(Debug)]
struct Outcome {
    label: String,
    samples: Vec<Sample>,
    /// (phase name, utilization of zone a's survivors, of each other zone, local share, failed, p99) per phase.
    phases: Vec<(String, f64, Vec<f64>, f64, f64, f64)>,
}

pub(crate) fn run(s: &Settings) -> anyhow::Result<Section> {
    let (mut base, timing) = if s.quick {
        (
            fleet(120, 18, 0, Subsetting::None, 0.6),
            Timing { fail: 2 * SEC, removed: 5 * SEC, end: 8 * SEC, bucket: SEC, propagation: Duration::from_millis(500) },
        )
    } else {
        (
            fleet(900, 90, 0, Subsetting::None, 0.6),
            Timing { fail: 8 * SEC, removed: 28 * SEC, end: 48 * SEC, bucket: 2 * SEC, propagation: Duration::from_secs(2) },
        )
    };
    base.zones = 3;
    let base = s.sized(base);
    anyhow::ensure!(base.backends >= 3, "the zone scenario needs at least 3 backends");
    let policy = s.policy.unwrap_or(PolicyKind::P2cPeakEwma);
    let variants = vec![
        (format!("Topology({})", policy.label()), true),
        (format!("{} without topology", policy.label()), false),
    ];
    let seed = s.seed;
    let outcomes = parallel(variants, |(label, topology)| {
        let fleet = Fleet { topology, ..base.clone() };
        async move { zone_failure(label, fleet, policy, seed, timing).await }
    })?;

    let zone_a: Vec<usize> = (0..base.backends).filter(|&b| crate::fleet::zone_of(b, 3) == 0).collect();
    let lost = (zone_a.len() as f64 * LOST).round() as usize;
    let kept = zone_a.len() - lost;
    let health = (1.4 * kept as f64 / zone_a.len() as f64).min(1.0);
    let mut sec = Section::new("4. Zone failure");
    sec.para(&format!(
        "{} clients and {} backends spread evenly over 3 zones ({} backends each), no subsetting, {:.0} % load; every \
         client runs a real `lb_core::Pool` whose policy is lb-core's `Topology` over {} (node → zone → region \
         tiers; the clients share no node with a backend). At {:.0} s, {lost} of {}'s {} backends ({:.0} %) die: \
         what they hold fails, their connections break (noticed at once), reconnecting is refused. Discovery \
         still lists them until {:.0} s (Kubernetes marks a dead node's pods not ready after its 40 s grace \
         period; {:.0} s here, as the phase is steady within seconds), when an update drops them (each client receives it within {:.1} s). Envoy's arithmetic, which \
         `Topology` follows: the zone's health is min(1, 1.4 × {kept}/{}) = {health:.2}, so {:.0} % of zone a's \
         traffic stays in zone a on {kept} backends — {:.2}× their earlier share — and {:.0} % spills to the \
         region's other zones. For contrast, the same policy without `Topology`.",
        base.clients,
        base.backends,
        zone_a.len(),
        base.load * 100.0,
        policy.label(),
        timing.fail as f64 / SEC as f64,
        zone_name(0),
        zone_a.len(),
        LOST * 100.0,
        timing.removed as f64 / SEC as f64,
        (timing.removed - timing.fail) as f64 / SEC as f64,
        timing.propagation.as_secs_f64(),
        zone_a.len(),
        health * 100.0,
        health * zone_a.len() as f64 / kept as f64,
        (1.0 - health) * 100.0,
    ));
    for o in &outcomes {
        let rows: Vec<Vec<String>> = o
            .phases
            .iter()
            .map(|(name, surv, others, local, failed, p99)| {
                let mut r = vec![name.clone(), format!("{:.0} %", surv * 100.0)];
                r.extend(others.iter().map(|u| format!("{:.0} %", u * 100.0)));
                r.push(format!("{:.1} %", local * 100.0));
                r.push(format!("{:.3} %", failed * 100.0));
                r.push(format!("{p99:.1}"));
                r
            })
            .collect();
        let mut header = vec!["phase".to_string(), format!("{} survivors' utilization", zone_name(0))];
        header.extend((1..3).map(|z| format!("{}'s utilization", zone_name(z))));
        header.push(format!("{}'s clients' requests served in {}", zone_name(0), zone_name(0)));
        header.push("failed".to_string());
        header.push("p99 ms".to_string());
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        sec.para(&format!("**{}**", o.label));
        sec.table(md_table(&header, 1, &rows));
    }
    let markers = vec![
        Marker { x: timing.fail as f64 / SEC as f64, label: format!("{} loses {:.0} %", zone_name(0), LOST * 100.0) },
        Marker { x: timing.removed as f64 / SEC as f64, label: "discovery drops them".to_string() },
    ];
    for (i, o) in outcomes.iter().enumerate() {
        let mut series = vec![Series {
            name: format!("{} survivors", zone_name(0)),
            points: o.samples.iter().map(|p| (p.t, p.survivors * 100.0)).collect(),
        }];
        for z in 1..3 {
            series.push(Series { name: zone_name(z), points: o.samples.iter().map(|p| (p.t, p.others[z - 1] * 100.0)).collect() });
        }
        series.push(Series {
            name: format!("{} served locally", zone_name(0)),
            points: o.samples.iter().map(|p| (p.t, p.local * 100.0)).collect(),
        });
        series.push(Series { name: "requests failed".to_string(), points: o.samples.iter().map(|p| (p.t, p.failed * 100.0)).collect() });
        let file = format!("sim4-zone-{}.svg", if i == 0 { "topology" } else { "plain" });
        let title = format!("Scenario 4: utilization over time, {}", o.label);
        sec.svg(&file, &title, line_chart(&title, "virtual time (s)", "% (utilization; local share; failed)", &series, &markers, 0.0));
    }
    if let Some(o) = outcomes.first() {
        if let (Some(listed), Some(dropped)) = (o.phases.get(1), o.phases.get(2)) {
            sec.headline(format!(
                "zone failure with Topology: while the dead backends are listed, {} keeps {:.0} % of its traffic (Envoy's arithmetic: {:.0} %) and its survivors run at {:.0} %; once discovery drops them it keeps {:.0} % and the survivors run at {:.0} % ({:.2} % of requests fail, p99 {:.0} ms)",
                zone_name(0),
                listed.3 * 100.0,
                health * 100.0,
                listed.1 * 100.0,
                dropped.3 * 100.0,
                dropped.1 * 100.0,
                dropped.4 * 100.0,
                dropped.5,
            ));
        }
    }
    if let Some(dropped) = outcomes.first().and_then(|o| o.phases.get(2)) {
        let offered = base.load * zone_a.len() as f64 / kept as f64;
        sec.para(&format!(
            "**Why the survivors saturate once the dead backends are dropped.** `Topology` measures a tier's health \
             against the endpoints discovery lists: healthy ÷ listed. While the dead are listed, {} reads {health:.2} \
             healthy and spills {:.0} %. Once they are dropped it lists {kept} endpoints, all healthy: health 1.0, so \
             {}'s clients send it all their traffic again — {:.0} % of the capacity of the {kept} backends that are \
             left. Their queues fill and they refuse the excess ({:.2} % of all requests fail). Envoy's priority \
             levels behave the same way; its zone-aware routing avoids it by comparing each zone's share of the \
             backends with its share of the callers, which lb-core's `Topology` is not told. No goal of this \
             simulation covers it; it is a gap in lb-core: a tier's health would have to count the capacity the \
             tier had (or the callers it serves), not only what is listed now.",
            zone_name(0),
            (1.0 - health) * 100.0,
            zone_name(0),
            offered * 100.0,
            dropped.4 * 100.0,
        ));
    }
    if let Some(o) = outcomes.get(1) {
        if let Some(dropped) = o.phases.get(2) {
            sec.para(&format!(
                "Without `Topology` the survivors of {} run at {:.0} %, like everyone else, and {}'s clients keep {:.0} % of their requests local.",
                zone_name(0),
                dropped.1 * 100.0,
                zone_name(0),
                dropped.3 * 100.0
            ));
        }
    }
    Ok(sec)
}

async fn zone_failure(label: String, fleet: Fleet, policy: PolicyKind, seed: u64, t: Timing) -> anyhow::Result<Outcome> {
    let m = fleet.backends;
    let zone_of = |b: usize| crate::fleet::zone_of(b, 3);
    let zone_a: Vec<usize> = (0..m).filter(|&b| zone_of(b) == 0).collect();
    let lost = (zone_a.len() as f64 * LOST).round() as usize;
    let mut is_dead = vec![false; m];
    for &b in &zone_a[..lost] {
        is_dead[b] = true;
    }
    let mut sim = Sim::new(fleet.clone(), policy, seed, &[], Mode::Pooled { propagation: t.propagation }).await?;
    // Phases, on bucket edges: before the failure (after a warm-up), while the dead backends are
    // listed (from one bucket after the failure), after every client has received their removal.
    let edge = |ns: u64| ns.div_ceil(t.bucket) * t.bucket;
    let phase_defs = [
        ("before the failure", edge(t.fail / 4), t.fail),
        ("dead backends still listed", t.fail + t.bucket, t.removed),
        ("after discovery drops them", edge(t.removed + t.propagation.as_nanos() as u64), t.end),
    ];
    let mut starts: Vec<Option<(Vec<u64>, Counters)>> = vec![None; phase_defs.len()];
    let mut phase_lat: Vec<Latencies> = vec![Latencies::default(); phase_defs.len()];
    let mut phases = Vec::new();
    let mut samples = Vec::new();
    let mut served = served_of(&sim);
    let mut counters = sim.counters.clone();
    for k in 0..t.end / t.bucket {
        let (now, next) = (k * t.bucket, (k + 1) * t.bucket);
        for (i, p) in phase_defs.iter().enumerate() {
            if p.1 == now {
                starts[i] = Some((served.clone(), counters.clone()));
            }
        }
        if now == t.fail {
            for b in (0..m).filter(|&b| is_dead[b]) {
                sim.stop_backend(b, false, Duration::from_millis(1));
            }
        }
        if now == t.removed {
            let present: Vec<bool> = is_dead.iter().map(|d| !d).collect();
            sim.publish(&present, &[]);
        }
        sim.run_until(next).await?;
        let s1 = served_of(&sim);
        let c1 = sim.counters.clone();
        let lat = sim.take_latencies();
        let window = t.bucket as f64;
        let d = c1.since(&counters);
        samples.push(Sample {
            t: next as f64 / SEC as f64,
            survivors: group_util(&sim, &served, &s1, window, &|b| zone_of(b) == 0 && !is_dead[b]),
            others: (1..3).map(|z| group_util(&sim, &served, &s1, window, &|b| zone_of(b) == z)).collect(),
            local: local_share(&d),
            failed: d.failed() as f64 / d.requests.max(1) as f64,
        });
        for (i, p) in phase_defs.iter().enumerate() {
            if now >= p.1 && next <= p.2 {
                phase_lat[i].extend(&lat);
            }
            if next == p.2 {
                if let Some((s0, c0)) = &starts[i] {
                    let secs = (p.2 - p.1) as f64;
                    let d = c1.since(c0);
                    phases.push((
                        p.0.to_string(),
                        group_util(&sim, s0, &s1, secs, &|b| zone_of(b) == 0 && !is_dead[b]),
                        (1..3).map(|z| group_util(&sim, s0, &s1, secs, &|b| zone_of(b) == z)).collect(),
                        local_share(&d),
                        d.failed() as f64 / d.requests.max(1) as f64,
                        phase_lat[i].ms(0.99),
                    ));
                }
            }
        }
        served = s1;
        counters = c1;
    }
    Ok(Outcome { label, samples, phases })
}

/// The share of zone a's clients' requests that went to zone a.
fn local_share(d: &Counters) -> f64 {
    let row = d.by_zone[0];
    row[0] as f64 / row.iter().sum::<u64>().max(1) as f64
}

fn served_of(sim: &Sim) -> Vec<u64> {
    sim.backends.iter().map(|b| b.served).collect()
}

/// Mean utilization over `window` ns of the backends in `group`, from served requests.
fn group_util(sim: &Sim, s0: &[u64], s1: &[u64], window: f64, group: &dyn Fn(usize) -> bool) -> f64 {
    let v: Vec<f64> = sim
        .backends
        .iter()
        .enumerate()
        .filter(|(b, _)| group(*b))
        .map(|(b, be)| (s1[b] - s0[b]) as f64 * be.mean_service / (f64::from(be.workers()) * window))
        .collect();
    mean(&v)
}
