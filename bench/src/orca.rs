//! Scenario 6: backends of unequal capacity that report their load (ORCA), several client
//! processes, each policy side by side; then one backend's capacity halves mid-run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lb_core::policy::WeightedRoundRobin;
use lb_core::Policy;
use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::policy::PolicyName;
use lb_tonic::LbChannel;
use tokio::process::Command;

use crate::drive::closed_loop;
use crate::procs::{BackendProc, Shape};
use crate::scenarios::{Section, Settings};
use crate::svg::Bar;

/// The capacities of the four backends (calls served at once).
const CAPACITIES: [usize; 4] = [1, 1, 2, 4];
/// Each call's service time.
const SERVICE: Duration = Duration::from_millis(20);
/// Client processes, and callers in each: 6 calls in flight against 8 slots, 75 % of capacity.
const CLIENTS: usize = 3;
const CALLERS: usize = 2;
/// How often the load-report policy recomputes weights, and its blackout, in this scenario.
const WEIGHT_UPDATE: Duration = Duration::from_millis(500);

/// What one client process is asked to do.
#[derive(Debug)]
pub(crate) struct LoadRun {
    pub(crate) target: String,
    pub(crate) policy: String,
    pub(crate) concurrency: usize,
    pub(crate) secs: f64,
    pub(crate) warmup_ms: u64,
    pub(crate) blackout_secs: f64,
}

fn policy(name: &str, blackout: Duration) -> anyhow::Result<Arc<dyn Policy>> {
    let parsed: PolicyName = name.parse()?;
    Ok(match parsed {
        PolicyName::WrrOrca => Arc::new(
            WeightedRoundRobin::from_load_reports()
                .blackout_period(blackout)
                .weight_update_period(WEIGHT_UPDATE),
        ),
        other => other.build(),
    })
}

/// The body of `lb-report load-client`: closed-loop calls, then one JSON line with every call's
/// backend and latency.
pub(crate) async fn load_client(r: LoadRun) -> anyhow::Result<()> {
    let blackout = Duration::try_from_secs_f64(r.blackout_secs).context("--blackout-secs")?;
    let channel = LbChannel::builder().policy(policy(&r.policy, blackout)?).build_from_target(&r.target)?;
    anyhow::ensure!(channel.ready(Duration::from_secs(10)).await, "no backend ready");
    let run = closed_loop(
        GreeterClient::new(channel),
        r.concurrency,
        Duration::from_millis(r.warmup_ms),
        Duration::from_secs_f64(r.secs),
    )
    .await;
    let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
    for b in run.events.iter().filter_map(|e| e.backend) {
        *per_backend.entry(b.to_string()).or_default() += 1;
    }
    let latencies: Vec<u64> = run.events.iter().map(|e| e.latency.as_micros() as u64).collect();
    let line = serde_json::json!({
        "per_backend": per_backend,
        "latencies_us": latencies,
        "errors": run.errors(),
        "elapsed_s": run.elapsed.as_secs_f64(),
    });
    println!("{line}");
    Ok(())
}

/// The merged result of the client processes of one policy.
#[derive(Debug, Default)]
struct Merged {
    per_backend: BTreeMap<SocketAddr, u64>,
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed_s: f64,
}

impl Merged {
    fn ok(&self) -> u64 {
        self.per_backend.values().sum()
    }

    fn share(&self, a: SocketAddr) -> f64 {
        self.per_backend.get(&a).copied().unwrap_or(0) as f64 / self.ok().max(1) as f64
    }

    fn percentile_ms(&mut self, q: f64) -> f64 {
        self.latencies_us.sort_unstable();
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * q).ceil() as usize).clamp(1, self.latencies_us.len()) - 1;
        self.latencies_us[i] as f64 / 1e3
    }

    /// Each backend's busy share of its capacity: calls × service time / (capacity × time).
    fn utilizations(&self, backends: &[(SocketAddr, usize)]) -> Vec<f64> {
        backends
            .iter()
            .map(|(a, cap)| {
                let served = self.per_backend.get(a).copied().unwrap_or(0) as f64;
                served * SERVICE.as_secs_f64() / (*cap as f64 * self.elapsed_s.max(1e-9))
            })
            .collect()
    }
}

async fn run_clients(target: &str, name: &str, s: Settings) -> anyhow::Result<Merged> {
    let exe = std::env::current_exe().context("locate the lb-report binary")?;
    let mut children = Vec::new();
    for _ in 0..CLIENTS {
        let child = Command::new(&exe)
            .arg("load-client")
            .args(["--target", target, "--policy", name])
            .args(["--concurrency", &CALLERS.to_string(), "--secs", &s.secs.to_string()])
            .args(["--warmup-ms", &s.warmup.as_millis().to_string()])
            .args(["--blackout-secs", &WEIGHT_UPDATE.as_secs_f64().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn a client process")?;
        children.push(child);
    }
    let mut merged = Merged::default();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs_f64(s.secs * 3.0 + 30.0), child.wait_with_output())
            .await
            .context("a client process did not finish")??;
        anyhow::ensure!(out.status.success(), "a client process failed ({})", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().context("a client printed nothing")?;
        let v: serde_json::Value = serde_json::from_str(line).context("a client's JSON line")?;
        if let Some(m) = v["per_backend"].as_object() {
            for (addr, n) in m {
                let addr: SocketAddr = addr.parse().context("a backend address")?;
                *merged.per_backend.entry(addr).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        if let Some(l) = v["latencies_us"].as_array() {
            merged.latencies_us.extend(l.iter().filter_map(|x| x.as_u64()));
        }
        merged.errors += v["errors"].as_u64().unwrap_or(0);
        merged.elapsed_s = merged.elapsed_s.max(v["elapsed_s"].as_f64().unwrap_or(0.0));
    }
    Ok(merged)
}

/// Scenario 6.
pub(crate) async fn capacities(s: Settings) -> anyhow::Result<Section> {
    let mut backends = Vec::new();
    for cap in CAPACITIES {
        let shape = Shape { capacity: Some(cap), orca: true, ..Shape::default() };
        backends.push(BackendProc::start_shaped(None, SocketAddr::from(([127, 0, 0, 1], 0)), SERVICE, shape).await?);
    }
    let pairs: Vec<(SocketAddr, usize)> = backends.iter().map(|b| b.addr()).zip(CAPACITIES).collect();
    let target = format!("static:///{}", pairs.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join(","));
    let total: usize = CAPACITIES.iter().sum();
    let policies = [
        ("round robin", "rr"),
        ("P2C least-request", "p2c"),
        ("P2C PeakEWMA", "p2c-ewma"),
        ("WRR from load reports", "wrr-orca"),
        ("P2C by reported utilization", "p2c-util"),
    ];
    let mut sec = Section { title: "6. Unequal capacities, load reported by the servers (ORCA)".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "4 backends as separate processes serving at most {CAPACITIES:?} calls at once ({total} slots), each call {} ms, \
         each reporting its busy share of its capacity and its calls per second in every response (ORCA, \
         `endpoint-load-metrics-bin`). {CLIENTS} client processes × {CALLERS} closed-loop callers = {} calls in flight, \
         {:.0} % of the slots, {:.1} s per policy after {:.1} s of warm-up. Capacity shares are {}. Utilization is each \
         backend's calls × service time / (capacity × time); max/mean across backends is the imbalance (1.00 = even). \
         The load-report policy recomputes weights every {} ms after a {} ms blackout.\n",
        SERVICE.as_millis(),
        CLIENTS * CALLERS,
        (CLIENTS * CALLERS) as f64 / total as f64 * 100.0,
        s.secs,
        s.warmup.as_secs_f64(),
        CAPACITIES.iter().map(|c| format!("{:.1}%", *c as f64 / total as f64 * 100.0)).collect::<Vec<_>>().join(" / "),
        WEIGHT_UPDATE.as_millis(),
        WEIGHT_UPDATE.as_millis(),
    );
    let _ = writeln!(sec.body, "| policy | shares (capacity {}) | max / mean utilization | p50 ms | p99 ms | calls/s | errors |",
        CAPACITIES.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" / "));
    let _ = writeln!(sec.body, "|---|---|---:|---:|---:|---:|---:|");
    let mut imbalance = Vec::new();
    let mut p99s = Vec::new();
    for (label, name) in policies {
        let mut m = run_clients(&target, name, s).await.with_context(|| format!("policy {name}"))?;
        let util = m.utilizations(&pairs);
        let mean = util.iter().sum::<f64>() / util.len() as f64;
        let max = util.iter().copied().fold(0.0, f64::max);
        let ratio = if mean > 0.0 { max / mean } else { 0.0 };
        let (p50, p99) = (m.percentile_ms(0.50), m.percentile_ms(0.99));
        let shares: Vec<String> = pairs.iter().map(|(a, _)| format!("{:.1}%", m.share(*a) * 100.0)).collect();
        let _ = writeln!(
            sec.body,
            "| {label} | {} | {ratio:.2} | {p50:.1} | {p99:.1} | {:.0} | {} |",
            shares.join(" / "),
            m.ok() as f64 / m.elapsed_s.max(1e-9),
            m.errors
        );
        imbalance.push((label, ratio));
        p99s.push((label, p99));
    }
    let find = |v: &[(&str, f64)], l: &str| v.iter().find(|(n, _)| *n == l).map_or(0.0, |(_, x)| *x);
    let h = format!(
        "unequal capacities: weighted round robin from ORCA load reports held max/mean utilization at {:.2} (round robin {:.2}, \
         P2C PeakEWMA {:.2}) at p99 {:.2}x round robin's",
        find(&imbalance, "WRR from load reports"),
        find(&imbalance, "round robin"),
        find(&imbalance, "P2C PeakEWMA"),
        find(&p99s, "WRR from load reports") / find(&p99s, "round robin").max(1e-9),
    );
    let _ = writeln!(sec.body, "\n**{h}.** Goal: ≤ 1.05 max/mean and p99 ≤ 0.5x round robin's.");
    sec.headlines.push(h);
    sec.push_chart(
        "s6-imbalance.svg",
        "Scenario 6: max / mean backend utilization (1.00 = even)",
        &imbalance.iter().map(|(n, r)| Bar { label: n.to_string(), value: *r, text: format!("{r:.2}") }).collect::<Vec<_>>(),
    );
    sec.push_chart(
        "s6-p99.svg",
        "Scenario 6: p99 latency (ms)",
        &p99s.iter().map(|(n, p)| Bar { label: n.to_string(), value: *p, text: format!("{p:.1} ms") }).collect::<Vec<_>>(),
    );

    halving(&mut sec, &mut backends, &pairs, &target, s).await?;
    drop(backends);
    Ok(sec)
}

/// The capacity-4 backend drops to 2 a third of the way in: how long until its share follows
/// (from 50 % of the slots to 2 of 6, 33 %).
async fn halving(
    sec: &mut Section,
    backends: &mut [BackendProc],
    pairs: &[(SocketAddr, usize)],
    target: &str,
    s: Settings,
) -> anyhow::Result<()> {
    let big = pairs[3].0;
    let secs = (s.secs * 2.0).max(2.0);
    let channel = LbChannel::builder()
        .policy(policy("wrr-orca", WEIGHT_UPDATE)?)
        .build_from_target(target)?;
    anyhow::ensure!(channel.ready(Duration::from_secs(10)).await, "no backend ready");
    let load = tokio::spawn(closed_loop(
        GreeterClient::new(channel),
        CLIENTS * CALLERS,
        s.warmup,
        Duration::from_secs_f64(secs),
    ));
    // The warm-up, then a third of the measured run, before the capacity halves.
    tokio::time::sleep(s.warmup + Duration::from_secs_f64(secs / 3.0)).await;
    backends[3].set_capacity(2).await?;
    let run = load.await.context("the load task")?;
    let halved_at = Duration::from_secs_f64(secs / 3.0);
    // Shares in 250 ms windows after the change; settled once a window is within 5 points of 33 %.
    let window = Duration::from_millis(250);
    let target_share = 2.0 / 6.0;
    let mut settled = None;
    let mut t = halved_at;
    while t + window <= run.elapsed {
        let in_window: Vec<_> = run.events.iter().filter(|e| e.at >= t && e.at < t + window && e.backend.is_some()).collect();
        let share = in_window.iter().filter(|e| e.backend == Some(big)).count() as f64 / in_window.len().max(1) as f64;
        if (share - target_share).abs() <= 0.05 {
            settled = Some(t + window - halved_at);
            break;
        }
        t += window;
    }
    let before = {
        let early: Vec<_> = run.events.iter().filter(|e| e.at < halved_at && e.backend.is_some()).collect();
        early.iter().filter(|e| e.backend == Some(big)).count() as f64 / early.len().max(1) as f64
    };
    let text = match settled {
        Some(d) => format!("its share settled within 5 points of 33% {:.2} s after the change", d.as_secs_f64()),
        None => "its share had not settled within 5 points of 33% by the end of the run".to_string(),
    };
    let _ = writeln!(
        sec.body,
        "\n**Capacity halving.** One client with weighted round robin from load reports and {} callers, {secs:.1} s: \
         the capacity-4 backend drops to 2 at {:.1} s. Its share before: {:.1}%; {text} (weights are recomputed every {} ms, \
         and each report averages utilization over about a second).",
        CLIENTS * CALLERS,
        halved_at.as_secs_f64(),
        before * 100.0,
        WEIGHT_UPDATE.as_millis(),
    );
    sec.headlines.push(format!("capacity halving under ORCA weights: {text}"));
    Ok(())
}
