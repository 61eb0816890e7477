//! The scenarios of the report. Each one starts what it needs on loopback, measures the
//! contenders side by side in the same run, and returns a markdown [`Section`] with its charts.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use lb_core::policy::{P2c, RoundRobin};
use lb_examples::pb::greeter_client::GreeterClient;
use lb_tonic::LbChannel;
use tonic::transport::{Channel, Endpoint};

use crate::drive::{closed_loop, Run};
use crate::procs::{nginx_binary, stable_port, BackendProc, Nginx};
use crate::svg::{bar_chart, Bar};

/// How long and how hard to run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Measured seconds per contender and round.
    pub(crate) secs: f64,
    /// Warm-up before each measurement.
    pub(crate) warmup: Duration,
    /// Rounds of scenario 1 (figures are medians over rounds).
    pub(crate) rounds: usize,
    /// Fault scenario length; the backend is killed at 1/3 and restarted at 2/3.
    pub(crate) fault_secs: f64,
}

impl Settings {
    /// The full run (a few minutes on 2 cores).
    pub(crate) fn full() -> Self {
        Settings { secs: 5.0, warmup: Duration::from_secs(1), rounds: 3, fault_secs: 15.0 }
    }

    /// The `--quick` run of the test suite (proves the harness, numbers are noise).
    pub(crate) fn quick() -> Self {
        Settings { secs: 0.7, warmup: Duration::from_millis(200), rounds: 1, fault_secs: 3.0 }
    }

    pub(crate) fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }
}

/// One section of the report.
#[derive(Debug, Default)]
pub(crate) struct Section {
    /// The `##` heading.
    pub(crate) title: String,
    /// Markdown body (charts are referenced by file name).
    pub(crate) body: String,
    /// `(file name, SVG document)`.
    pub(crate) charts: Vec<(String, String)>,
    /// One-line headline figures for the summary.
    pub(crate) headlines: Vec<String>,
}

impl Section {
    pub(crate) fn push_chart(&mut self, file: &str, title: &str, bars: &[Bar]) {
        let _ = writeln!(self.body, "\n![{title}]({file})\n");
        self.charts.push((file.to_string(), bar_chart(title, bars)));
    }
}

pub(crate) async fn start_backends(n: usize, delays: &[Duration], stable: bool) -> anyhow::Result<Vec<BackendProc>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let port = if stable { stable_port() } else { 0 };
        let delay = delays.get(i).copied().unwrap_or(Duration::ZERO);
        v.push(BackendProc::start(SocketAddr::from(([127, 0, 0, 1], port)), delay).await?);
    }
    Ok(v)
}

fn static_target(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("static:///{}", list.join(","))
}

pub(crate) async fn lb_channel(addrs: &[SocketAddr], policy: Option<Box<dyn lb_core::Policy>>) -> anyhow::Result<LbChannel> {
    let mut b = LbChannel::builder();
    if let Some(p) = policy {
        b = b.policy(p);
    }
    let ch = b.build_from_target(&static_target(addrs)).context("build LbChannel")?;
    anyhow::ensure!(ch.ready(Duration::from_secs(10)).await, "LbChannel found no ready endpoint");
    Ok(ch)
}

fn balance_list(addrs: &[SocketAddr]) -> anyhow::Result<Channel> {
    let eps = addrs
        .iter()
        .map(|a| Endpoint::from_shared(format!("http://{a}")).map(|e| e.tcp_nodelay(true)))
        .collect::<Result<Vec<_>, _>>()
        .context("endpoint URIs")?;
    Ok(Channel::balance_list(eps.into_iter()))
}

pub(crate) async fn direct(addr: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .context("endpoint URI")?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[derive(Clone, Copy, Debug)]
struct Fig {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

fn fig(r: &Run) -> Fig {
    Fig { rps: r.throughput(), p50: r.percentile_ms(0.50), p99: r.percentile_ms(0.99), errors: r.errors() }
}

/// Scenario 1: nginx `grpc_pass` vs LbChannel vs `balance_list` vs a direct channel.
pub(crate) async fn centralized(s: Settings) -> anyhow::Result<Section> {
    const BACKENDS: usize = 4;
    const CALLERS: usize = 32;
    let backends = start_backends(BACKENDS, &[], false).await?;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let mut sec = Section { title: "1. Centralized proxy vs in-process balancing".into(), ..Default::default() };

    let nginx = match nginx_binary() {
        Some(bin) => match Nginx::start(&bin, &addrs).await {
            Ok(n) => Some(n),
            Err(e) => {
                let _ = writeln!(sec.body, "nginx could not start: `{e}`; its row is missing.\n");
                None
            }
        },
        None => {
            let _ = writeln!(
                sec.body,
                "**nginx is not installed on this machine: its row is not measured** (`scripts/test-all.sh` installs the `nginx` package).\n"
            );
            None
        }
    };
    let nginx_ch = match &nginx {
        Some(n) => Some(direct(n.addr()).await?),
        None => None,
    };
    let lb = lb_channel(&addrs, None).await?;
    let bl = balance_list(&addrs)?;
    let dir = direct(addrs[0]).await?;

    let names = [
        "nginx grpc_pass (central proxy)",
        "LbChannel (P2C PeakEWMA)",
        "tonic balance_list",
        "direct Channel, 1 backend (floor)",
    ];
    let mut results: Vec<Vec<Fig>> = vec![Vec::new(); names.len()];
    for round in 0..s.rounds {
        if let Some(ch) = &nginx_ch {
            results[0].push(fig(&closed_loop(GreeterClient::new(ch.clone()), CALLERS, s.warmup, s.dur()).await));
        }
        results[1].push(fig(&closed_loop(GreeterClient::new(lb.clone()), CALLERS, s.warmup, s.dur()).await));
        results[2].push(fig(&closed_loop(GreeterClient::new(bl.clone()), CALLERS, s.warmup, s.dur()).await));
        results[3].push(fig(&closed_loop(GreeterClient::new(dir.clone()), CALLERS, s.warmup, s.dur()).await));
        eprintln!("scenario 1: round {} of {} done", round + 1, s.rounds);
    }
    let med: Vec<Option<Fig>> = results
        .iter()
        .map(|r| {
            (!r.is_empty()).then(|| Fig {
                rps: median(r.iter().map(|f| f.rps).collect()),
                p50: median(r.iter().map(|f| f.p50).collect()),
                p99: median(r.iter().map(|f| f.p99).collect()),
                errors: r.iter().map(|f| f.errors).sum(),
            })
        })
        .collect();

    let _ = writeln!(
        sec.body,
        "Unary `SayHello` over {BACKENDS} greeter backends (separate processes, no artificial delay), {CALLERS} concurrent \
         closed-loop callers in one client process, {:.1} s per contender after a {:.1} s warm-up, {} interleaved round(s); \
         figures are medians over rounds. nginx: {}, `worker_processes auto`, HTTP/2 cleartext listener, `grpc_pass` to an \
         upstream of the same {BACKENDS} backends with `keepalive 64`; the client reaches it over one tonic `Channel` (one \
         HTTP/2 connection, like the direct floor), while `LbChannel` and `balance_list` hold connections to every backend.\n",
        s.secs,
        s.warmup.as_secs_f64(),
        s.rounds,
        nginx.as_ref().map(|n| n.version.as_str()).unwrap_or("not running"),
    );
    let direct_fig = med[3];
    let _ = writeln!(sec.body, "| client | calls/s | p50 ms | p99 ms | errors | calls/s vs floor |");
    let _ = writeln!(sec.body, "|---|---:|---:|---:|---:|---:|");
    for (n, f) in names.iter().zip(&med) {
        match f {
            Some(f) => {
                let vs = direct_fig.map(|d| format!("{:.2}x", f.rps / d.rps)).unwrap_or_default();
                let _ = writeln!(
                    sec.body,
                    "| {n} | {:.0} | {:.3} | {:.3} | {} | {vs} |",
                    f.rps, f.p50, f.p99, f.errors
                );
            }
            None => {
                let _ = writeln!(sec.body, "| {n} | not measured (nginx not available) | | | | |");
            }
        }
    }
    if let (Some(n), Some(l)) = (med[0], med[1]) {
        let h = format!(
            "LbChannel vs nginx grpc_pass: {:.2}x the throughput, p50 {:.2}x, p99 {:.2}x (lower latency ratio = faster)",
            l.rps / n.rps,
            l.p50 / n.p50,
            l.p99 / n.p99
        );
        let _ = writeln!(sec.body, "\n**{h}.**");
        sec.headlines.push(h);
    }
    if let (Some(b), Some(l)) = (med[2], med[1]) {
        let h = format!(
            "LbChannel vs tonic balance_list: {:.2}x the throughput, p99 {:.2}x",
            l.rps / b.rps,
            l.p99 / b.p99
        );
        let _ = writeln!(sec.body, "\n**{h}.**");
        sec.headlines.push(h);
    }
    let measured: Vec<(&str, Fig)> = names.iter().zip(&med).filter_map(|(n, f)| f.map(|f| (*n, f))).collect();
    sec.push_chart(
        "s1-throughput.svg",
        "Scenario 1: throughput (calls/s, higher is better)",
        &measured.iter().map(|(n, f)| Bar { label: n.to_string(), value: f.rps, text: format!("{:.0}", f.rps) }).collect::<Vec<_>>(),
    );
    sec.push_chart(
        "s1-p99.svg",
        "Scenario 1: p99 latency (ms, lower is better)",
        &measured.iter().map(|(n, f)| Bar { label: n.to_string(), value: f.p99, text: format!("{:.2} ms", f.p99) }).collect::<Vec<_>>(),
    );
    if let Some(n) = nginx {
        n.stop().await;
    }
    drop(backends);
    Ok(sec)
}

/// Scenario 3: one of five backends ten times slower.
pub(crate) async fn slow(s: Settings) -> anyhow::Result<Section> {
    const CALLERS: usize = 32;
    let fast = Duration::from_millis(1);
    let slow = Duration::from_millis(10);
    let delays = [slow, fast, fast, fast, fast];
    let backends = start_backends(5, &delays, false).await?;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let slow_addr = addrs[0];

    let rr = lb_channel(&addrs, Some(Box::new(RoundRobin::new()))).await?;
    let lr = lb_channel(&addrs, Some(Box::new(P2c::least_request()))).await?;
    let ewma = lb_channel(&addrs, Some(Box::new(P2c::peak_ewma()))).await?;
    let bl = balance_list(&addrs)?;
    let runs = [
        ("LbChannel round robin", closed_loop(GreeterClient::new(rr), CALLERS, s.warmup, s.dur()).await),
        ("LbChannel P2C least-request", closed_loop(GreeterClient::new(lr), CALLERS, s.warmup, s.dur()).await),
        ("LbChannel P2C PeakEWMA", closed_loop(GreeterClient::new(ewma), CALLERS, s.warmup, s.dur()).await),
        ("tonic balance_list", closed_loop(GreeterClient::new(bl), CALLERS, s.warmup, s.dur()).await),
    ];
    let mut sec = Section { title: "3. One slow backend".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "5 backends: four answer after {} ms, one after {} ms (10x). {CALLERS} closed-loop callers, {:.1} s per policy. \
         An even split would send the slow backend 20% of the calls. While it gets more than 1% of the calls, \
         p99 is its own latency whatever the policy; the mean, p90 and throughput show how much less it is used.\n",
        fast.as_millis(),
        slow.as_millis(),
        s.secs
    );
    let _ = writeln!(sec.body, "| client | calls/s | mean ms | p50 ms | p90 ms | p99 ms | slow backend's share | errors |");
    let _ = writeln!(sec.body, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in &runs {
        let f = fig(r);
        let _ = writeln!(
            sec.body,
            "| {n} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}% | {} |",
            f.rps,
            r.mean_ms(),
            f.p50,
            r.percentile_ms(0.90),
            f.p99,
            r.share(slow_addr) * 100.0,
            f.errors
        );
    }
    let (rr_f, ewma_f, bl_f) = (fig(&runs[0].1), fig(&runs[2].1), fig(&runs[3].1));
    let h = format!(
        "slow backend: P2C PeakEWMA sends it {:.1}% of calls vs {:.1}% for round robin, {:.2}x round robin's throughput; \
         p99 {:.2}x round robin's and {:.2}x balance_list's",
        runs[2].1.share(slow_addr) * 100.0,
        runs[0].1.share(slow_addr) * 100.0,
        ewma_f.rps / rr_f.rps,
        ewma_f.p99 / rr_f.p99,
        ewma_f.p99 / bl_f.p99,
    );
    let _ = writeln!(sec.body, "\n**{h}.**");
    sec.headlines.push(h);
    sec.push_chart(
        "s3-p99.svg",
        "Scenario 3: p99 latency with one 10x slower backend (ms)",
        &runs.iter().map(|(n, r)| {
            let p = r.percentile_ms(0.99);
            Bar { label: n.to_string(), value: p, text: format!("{p:.2} ms") }
        }).collect::<Vec<_>>(),
    );
    sec.push_chart(
        "s3-slow-share.svg",
        "Scenario 3: share of calls sent to the slow backend (%)",
        &runs.iter().map(|(n, r)| {
            let p = r.share(slow_addr) * 100.0;
            Bar { label: n.to_string(), value: p, text: format!("{p:.1}%") }
        }).collect::<Vec<_>>(),
    );
    drop(backends);
    Ok(sec)
}

struct FaultFig {
    /// Failures went on until the backend was restarted.
    until_restart: bool,
    /// Failed calls after the restart.
    after_restart: u64,
    name: &'static str,
    calls: u64,
    failed: u64,
    /// From the kill to the last failed call (zero when nothing failed).
    recover: Option<Duration>,
    /// From the restart to the first call the restarted backend answered.
    back: Option<Duration>,
    /// The restarted backend's share in the last third.
    last_share: f64,
}

/// Scenario 5: a backend SIGKILLed during load, then restarted on the same port.
pub(crate) async fn faults(s: Settings) -> anyhow::Result<Section> {
    const CALLERS: usize = 16;
    let mut out = Vec::new();
    for name in ["LbChannel (defaults)", "tonic balance_list"] {
        let mut backends = start_backends(3, &[], true).await?;
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        let victim = addrs[0];
        let total = Duration::from_secs_f64(s.fault_secs);
        let kill_at = total / 3;
        let restart_at = total * 2 / 3;
        let load = if name.starts_with("LbChannel") {
            let ch = lb_channel(&addrs, None).await?;
            tokio::spawn(closed_loop(GreeterClient::new(ch), CALLERS, Duration::ZERO, total))
        } else {
            let ch = balance_list(&addrs)?;
            // balance_list connects lazily; one call makes the comparison start from connected.
            let _ = GreeterClient::new(ch.clone())
                .say_hello(lb_examples::pb::HelloRequest { name: "warm".into() })
                .await;
            tokio::spawn(closed_loop(GreeterClient::new(ch), CALLERS, Duration::ZERO, total))
        };
        // The load's clock starts when the task first runs; this one is close enough (ms).
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep_until(t0 + kill_at).await;
        let killed = t0.elapsed();
        backends[0].kill().await;
        tokio::time::sleep_until(t0 + restart_at).await;
        let restarted_at = t0.elapsed();
        backends[0].restart().await?;
        let restarted_up = t0.elapsed();
        let run = load.await.context("load task")?;
        let failed: Vec<Duration> = run.events.iter().filter(|e| e.backend.is_none()).map(|e| e.at).collect();
        // Recovery is judged before the restart; failures after it are counted separately.
        let recover = failed.iter().filter(|at| **at < restarted_at).max().map(|last| last.saturating_sub(killed));
        let after_restart = failed.iter().filter(|at| **at >= restarted_at).count() as u64;
        let back = run
            .events
            .iter()
            .filter(|e| e.backend == Some(victim) && e.at > restarted_up)
            .map(|e| e.at)
            .min()
            .map(|first| first.saturating_sub(restarted_at));
        let last: Vec<_> = run.events.iter().filter(|e| e.at > restart_at + (total - restart_at) / 2).collect();
        let last_ok = last.iter().filter(|e| e.backend.is_some()).count().max(1);
        let last_share = last.iter().filter(|e| e.backend == Some(victim)).count() as f64 / last_ok as f64;
        let until_restart = failed
            .iter()
            .any(|at| *at < restarted_at && *at + Duration::from_millis(500) >= restarted_at);
        out.push(FaultFig {
            until_restart,
            after_restart,
            name,
            calls: run.events.len() as u64,
            failed: failed.len() as u64,
            recover,
            back,
            last_share,
        });
        drop(backends);
    }
    let mut sec = Section { title: "5. Faults: a backend SIGKILLed during load".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "3 backends (separate processes), {CALLERS} closed-loop callers, {:.1} s of load per client; at 1/3 one backend is \
         SIGKILLed (no GOAWAY, connections reset by the kernel), at 2/3 it is started again on the same port. No retries \
         are configured on either client. *Recovery* is the time from the kill to the last failed call; *back in rotation* \
         is the time from the restart to the first call the restarted backend answered; its share is over the last sixth \
         of the run (even = 33%).\n",
        s.fault_secs
    );
    let ms = |d: Option<Duration>| d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "—".into());
    let _ = writeln!(sec.body, "| client | calls | failed calls | recovery | failed after the restart | back in rotation | restarted backend's share at the end |");
    let _ = writeln!(sec.body, "|---|---:|---:|---:|---:|---:|---:|");
    for f in &out {
        let _ = writeln!(
            sec.body,
            "| {} | {} | {} | {} | {} | {} | {:.1}% |",
            f.name,
            f.calls,
            f.failed,
            if f.failed == 0 {
                "no failures".to_string()
            } else if f.until_restart {
                format!("none: failed until the restart ({})", ms(f.recover))
            } else {
                ms(f.recover)
            },
            f.after_restart,
            ms(f.back),
            f.last_share * 100.0
        );
    }
    if let [lb, bl] = &out[..] {
        let h = format!(
            "backend SIGKILL under load: {} failed calls with LbChannel vs {} with tonic balance_list; LbChannel back to no errors after {}",
            lb.failed,
            bl.failed,
            if lb.failed == 0 { "0 ms".to_string() } else { ms(lb.recover) }
        );
        let _ = writeln!(sec.body, "\n**{h}.**");
        sec.headlines.push(h);
    }
    sec.push_chart(
        "s5-failed.svg",
        "Scenario 5: failed calls after a backend SIGKILL",
        &out.iter().map(|f| Bar { label: f.name.into(), value: f.failed as f64, text: f.failed.to_string() }).collect::<Vec<_>>(),
    );
    Ok(sec)
}

