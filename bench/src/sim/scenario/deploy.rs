//! Scenario 3: every backend restarted in waves of 10 %, with each client running a real
//! `lb_core::Pool`. How many connections move, how many requests fail or are re-sent, how uneven
//! the load gets — with lb-core's deterministic subsetting, with a client that re-picks a random
//! subset on every change, and with restarts that give backends a new identity (as a Kubernetes
//! Deployment's new pods have).

use std::time::Duration;

use super::{fleet, md_table, parallel, Section, Settings};
use crate::chart::{line_chart, Series};
use crate::engine::{Mode, Sim};
use crate::fleet::{Fleet, PolicyKind, Subsetting, MS, SEC};
use crate::stats::{mean, Spread};
use crate::svg::Bar;

const WAVES: usize = 10;

/// The timing of one wave, from its start: deregistered at 0, stopped (gracefully) at `stop`,
/// started again and re-registered at `restart`, the next wave at `period`.
#[derive(Clone, Copy, Debug)]
struct Timing {
    warmup: u64,
    period: u64,
    stop: u64,
    restart: u64,
    /// The longest a membership change takes to reach a client.
    propagation: Duration,
    /// How long after a backend stops its clients notice the closed connections.
    notice: Duration,
}

#[derive(Clone, Debug)]
struct Variant {
    label: &'static str,
    subsetting: Subsetting,
    /// Backends come back under a new identity (a new pod name), not their old one.
    new_identity: bool,
}

#[derive(Debug)]
struct Outcome {
    label: &'static str,
    /// Connections each client opened during the deploy.
    opened: Vec<u32>,
    /// Connection attempts refused, per client, during the deploy.
    refused: Vec<u32>,
    requests: u64,
    failed: u64,
    resent: u64,
    /// max/mean utilization of the backends up throughout, in the window before the deploy and
    /// in each wave's window.
    before: f64,
    waves: Vec<f64>,
    /// (client, wave) pairs where none of the client's backends was in the wave.
    untouched: u64,
    /// ... of which the client opened a connection anyway.
    moved: u64,
    /// Connections those clients opened.
    moved_connections: u64,
    wall: f64,
}

pub(crate) fn run(s: &Settings) -> anyhow::Result<Section> {
    let (base, timing) = if s.quick {
        (
            fleet(200, 40, 8, Subsetting::Rendezvous, 0.7),
            Timing { warmup: 2 * SEC, period: 2 * SEC, stop: SEC / 2, restart: SEC, propagation: Duration::from_millis(800), notice: Duration::from_millis(1) },
        )
    } else {
        (
            fleet(1_000, 200, 20, Subsetting::Rendezvous, 0.7),
            Timing { warmup: 6 * SEC, period: 4 * SEC, stop: SEC, restart: 2 * SEC, propagation: Duration::from_secs(2), notice: Duration::from_millis(1) },
        )
    };
    let base = s.sized(base);
    let policy = s.policy.unwrap_or(PolicyKind::P2cPeakEwma);
    let mut variants = vec![
        Variant { label: "lb-core deterministic subsets, restart in place", subsetting: Subsetting::Rendezvous, new_identity: false },
        Variant { label: "random subset re-picked on every change", subsetting: Subsetting::Random, new_identity: false },
        Variant { label: "lb-core deterministic subsets, new identity per restart", subsetting: Subsetting::Rendezvous, new_identity: true },
    ];
    if base.subsetting == Subsetting::None {
        variants.retain(|v| v.subsetting != Subsetting::Random);
        for v in &mut variants {
            v.subsetting = Subsetting::None;
        }
    }
    let seed = s.seed;
    let outcomes = parallel(variants, |v| {
        let fleet = Fleet { subsetting: v.subsetting, ..base.clone() };
        async move { deploy(v, fleet, policy, seed, timing).await }
    })?;

    let mut sec = Section::new("3. Rolling deploy in waves of 10 %");
    sec.para(&format!(
        "{} clients × {} backends, subset {}, {} ({:.0} % load, {:.0} requests/s). **Every client runs a real \
         `lb_core::Pool`.** The {} backends are restarted in {WAVES} waves of 10 % (every tenth backend by index), one \
         wave every {:.0} s: a wave's backends are deregistered; {:.1} s later they shut down gracefully (they finish \
         what they hold, refuse anything new, and their connections close, noticed {} ms later); {:.1} s after the \
         deregistration they are running again and re-registered. Each client receives each membership change \
         after its own delay, uniform in 0–{:.1} s, so some clients still hold a backend when it stops: their pools \
         see the connection close, retry it with backoff, and drop it when the update arrives. A request sent over \
         a closing connection is refused unsent and re-sent by the engine. Connections are counted where the pools \
         open them, after the initial ones.",
        base.clients,
        base.backends,
        base.per_client(),
        policy.label(),
        base.load * 100.0,
        base.rate(),
        base.backends,
        timing.period as f64 / SEC as f64,
        timing.stop as f64 / SEC as f64,
        timing.notice.as_millis(),
        timing.restart as f64 / SEC as f64,
        timing.propagation.as_secs_f64(),
    ));
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    let mut series = Vec::new();
    for o in &outcomes {
        let opened: Vec<f64> = o.opened.iter().map(|&v| f64::from(v)).collect();
        let sp = Spread::of(&opened);
        let refused: Vec<f64> = o.refused.iter().map(|&v| f64::from(v)).collect();
        let mut waves = o.waves.clone();
        let median = crate::stats::quantile(&mut waves, 0.5);
        let worst = waves.iter().copied().fold(f64::NAN, f64::max);
        rows.push(vec![
            o.label.to_string(),
            format!("{:.1} / {:.0}", sp.mean, sp.max),
            format!("{:.1}", mean(&refused)),
            format!("{} of {}", super::fmt_n(o.moved), super::fmt_n(o.untouched)),
            super::fmt_n(o.moved_connections),
            format!("{} / {}", super::fmt_n(o.failed), super::fmt_n(o.resent)),
            format!("{:.4} %", (o.failed + o.resent) as f64 / o.requests.max(1) as f64 * 100.0),
            format!("{:.3}", o.before),
            format!("{median:.3} / {worst:.3}"),
        ]);
        bars.push(Bar { label: o.label.to_string(), value: sp.mean, text: format!("{:.1} per client", sp.mean) });
        let mut points = vec![(0.0, o.before)];
        points.extend(o.waves.iter().enumerate().map(|(w, &v)| ((w + 1) as f64, v)));
        series.push(Series { name: short(o.label).to_string(), points });
    }
    sec.table(md_table(
        &[
            "clients",
            "connections opened per client, mean / max",
            "connection attempts refused per client",
            "clients untouched by a wave that still moved a connection (client-waves)",
            "connections they opened",
            "requests failed / re-sent",
            "failed or re-sent",
            "max/mean util before",
            "max/mean util during, median / worst wave",
        ],
        1,
        &rows,
    ));
    sec.para(&format!(
        "*Untouched*: a (client, wave) pair where none of the client's backends was in the wave; the goal is that \
         such a client moves no connection. Imbalance is max/mean utilization over one wave's {:.0} s among the \
         backends that were up throughout it (before: the {:.0} s before the deploy); over so short a window about \
         {:.0} requests per backend make even a perfect split read ≈ {:.2}.",
        timing.period as f64 / SEC as f64,
        timing.period as f64 / SEC as f64,
        base.rate() * timing.period as f64 / SEC as f64 / base.backends as f64,
        super::noise_floor(base.backends * 9 / 10, base.rate() * timing.period as f64 / SEC as f64 / base.backends as f64, seed),
    ));
    sec.bar_chart("sim3-connections.svg", "Scenario 3: connections opened per client during the deploy", &bars);
    sec.svg(
        "sim3-imbalance.svg",
        "Scenario 3: max/mean utilization per wave (0 = before the deploy)",
        line_chart("Scenario 3: max/mean utilization per wave", "wave (0 = before the deploy)", "max/mean utilization", &series, &[], 1.0),
    );
    if let Some(det) = outcomes.first() {
        let verdict = if det.moved == 0 { "met" } else { "missed" };
        sec.headline(format!(
            "rolling deploy (restart in place): lb-core's subsets moved connections for {} of {} untouched client-waves (goal 0: {verdict}); \
             {:.1} connections opened per client over {WAVES} waves; {} requests failed, {} re-sent of {}",
            det.moved,
            det.untouched,
            mean(&det.opened.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()),
            super::fmt_n(det.failed),
            super::fmt_n(det.resent),
            super::fmt_n(det.requests)
        ));
    }
    if let Some(r) = outcomes.iter().find(|o| o.label.starts_with("random")) {
        sec.headline(format!(
            "rolling deploy: a client re-picking a random subset on every change opened {:.1} connections per client and moved connections in {} of {} untouched client-waves",
            mean(&r.opened.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()),
            r.moved,
            r.untouched
        ));
    }
    if let Some(det) = outcomes.first() {
        let per_client = mean(&det.opened.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        sec.para(&format!(
            "Why a client whose members all restart opens about two connections per member ({per_client:.1} for {} \
             members): while a member is deregistered, lb-core's subsetting keeps the subset at {} by taking the \
             next-ranked backend (one connection), and when the member is listed again it ranks first again and \
             displaces that stand-in (a second connection). *Refused* attempts are the reconnects of pools that \
             still listed a backend after it stopped (their update was still on its way); they carry no request. \
             The random re-pick draws a new subset from every new list, so every wave moves most of every client's \
             connections.",
            base.per_client(),
            base.per_client(),
        ));
    }
    if let Some(n) = outcomes.iter().find(|o| o.label.contains("new identity")) {
        sec.para(&format!(
            "With a new identity per restart (new pod names), lb-core's rendezvous subsets cannot keep every untouched \
             client still: each new id outranks some client's member somewhere, so {} untouched client-waves moved a \
             connection ({} connections) — each such move is one connection, as the subsetting module promises \
             (an added endpoint displaces at most one).",
            n.moved, n.moved_connections
        ));
    }
    sec.para(&format!("Wall time: {}.", outcomes.iter().map(|o| format!("{} {:.1} s", short(o.label), o.wall)).collect::<Vec<_>>().join(", ")));
    Ok(sec)
}

fn short(label: &str) -> &str {
    if label.starts_with("random") {
        "random re-pick"
    } else if label.contains("new identity") {
        "deterministic, new ids"
    } else {
        "deterministic, in place"
    }
}

async fn deploy(v: Variant, fleet: Fleet, policy: PolicyKind, seed: u64, t: Timing) -> anyhow::Result<Outcome> {
    let wall = std::time::Instant::now();
    let m = fleet.backends;
    let mut sim = Sim::new(fleet.clone(), policy, seed, &[], Mode::Pooled { propagation: t.propagation }).await?;
    sim.run_until(t.warmup.saturating_sub(t.period)).await?;
    let served = |sim: &Sim| -> Vec<u64> { sim.backends.iter().map(|b| b.served).collect() };
    let s0 = served(&sim);
    sim.run_until(t.warmup).await?;
    let before = imbalance(&sim, &s0, &served(&sim), &vec![false; m]);
    let (open0, refused0) = sim.connections().unwrap_or_default();
    let c0 = sim.counters.clone();
    let mut present = vec![true; m];
    let mut generations = vec![0u32; m];
    let (mut untouched, mut moved, mut moved_connections) = (0u64, 0u64, 0u64);
    let mut waves = Vec::with_capacity(WAVES);
    for w in 0..WAVES {
        let start = t.warmup + w as u64 * t.period;
        let in_wave: Vec<bool> = (0..m).map(|b| b % WAVES == w).collect();
        let touched: Vec<bool> = sim.subsets.iter().map(|s| s.iter().any(|&b| in_wave[b as usize])).collect();
        let (open_w, _) = sim.connections().unwrap_or_default();
        let served_w = served(&sim);
        for (b, &x) in in_wave.iter().enumerate() {
            if x {
                present[b] = false;
            }
        }
        sim.publish(&present, &generations);
        sim.run_until(start + t.stop).await?;
        for (b, &x) in in_wave.iter().enumerate() {
            if x {
                sim.stop_backend(b, true, t.notice);
            }
        }
        sim.run_until(start + t.restart).await?;
        for (b, &x) in in_wave.iter().enumerate() {
            if x {
                sim.start_backend(b);
                present[b] = true;
                if v.new_identity {
                    generations[b] += 1;
                }
            }
        }
        sim.publish(&present, &generations);
        sim.run_until(start + t.period).await?;
        let (open_after, _) = sim.connections().unwrap_or_default();
        for (c, &hit) in touched.iter().enumerate() {
            if !hit {
                untouched += 1;
                let n = open_after[c] - open_w[c];
                if n > 0 {
                    moved += 1;
                    moved_connections += u64::from(n);
                }
            }
        }
        waves.push(imbalance(&sim, &served_w, &served(&sim), &in_wave));
    }
    // Let the last wave's re-registration reach every client.
    let end = t.warmup + WAVES as u64 * t.period + t.propagation.as_nanos() as u64 + 500 * MS;
    sim.run_until(end).await?;
    let (open1, refused1) = sim.connections().unwrap_or_default();
    let c = sim.counters.since(&c0);
    Ok(Outcome {
        label: v.label,
        opened: open1.iter().zip(&open0).map(|(a, b)| a - b).collect(),
        refused: refused1.iter().zip(&refused0).map(|(a, b)| a - b).collect(),
        requests: c.requests,
        failed: c.failed(),
        resent: c.resent,
        before,
        waves,
        untouched,
        moved,
        moved_connections,
        wall: wall.elapsed().as_secs_f64(),
    })
}

/// max/mean of the work served between two snapshots by the backends not `excluded`.
fn imbalance(sim: &Sim, before: &[u64], after: &[u64], excluded: &[bool]) -> f64 {
    let v: Vec<f64> = before
        .iter()
        .zip(after)
        .zip(excluded)
        .filter(|(_, &x)| !x)
        .map(|((a, b), _)| (b - a) as f64)
        .collect();
    let _ = sim;
    Spread::of(&v).max_over_mean()
}
