//! Scenario 2: HTTP/2 clients through an L4 connection balancer vs per-request picking.
//!
//! The L4 baseline is lb-agent's nftables VIP in the real kernel, inside network namespaces the
//! report makes ([`crate::netns`]): the client runs in one namespace, where the agent's sync code
//! programs its table, and the backends in another. The per-request contenders run from the same
//! namespace over the same veth, so the only difference is where the balancing decision is made.
//! Where namespaces are unavailable the baseline is `lb_examples::l4::L4Balancer`, the
//! quickstart's in-process TCP proxy, and the report says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lb_core::policy::RoundRobin;
use lb_examples::l4::L4Balancer;
use lb_examples::pb::greeter_client::GreeterClient;

use crate::drive::{closed_loop, Run};
use crate::netns::{self, Lab};
use crate::procs::{BackendProc, TempDir};
use crate::scenarios::{direct, lb_channel, start_backends, Section, Settings};
use crate::svg::Bar;

const BACKENDS: usize = 4;
const CLIENTS: usize = 5;
const CALLERS: usize = 8;

/// What one contender's calls did: successful calls per backend, and the backend each L4
/// connection landed on.
#[derive(Debug, Default)]
struct Mix {
    calls: BTreeMap<SocketAddr, u64>,
    /// Per backend, the clients (HTTP/2 connections) whose calls it answered.
    conns: BTreeMap<SocketAddr, u64>,
    errors: u64,
    elapsed: Duration,
}

impl Mix {
    fn of(runs: &[Run]) -> Mix {
        let mut m = Mix::default();
        for r in runs {
            let per = r.per_backend();
            for (a, n) in &per {
                *m.calls.entry(*a).or_insert(0) += n;
            }
            // A client's only connection goes to one backend: the one that answered most of it.
            if let Some((a, _)) = per.iter().max_by_key(|(_, n)| **n) {
                *m.conns.entry(*a).or_insert(0) += 1;
            }
            m.errors += r.errors();
            m.elapsed = m.elapsed.max(r.elapsed);
        }
        m
    }

    fn ok(&self) -> u64 {
        self.calls.values().sum()
    }

    fn share(&self, a: SocketAddr) -> f64 {
        let ok = self.ok();
        if ok == 0 {
            return 0.0;
        }
        self.calls.get(&a).copied().unwrap_or(0) as f64 / ok as f64
    }

    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The lines `netns-client` prints for the parent.
    fn write(&self, mode: &str, out: &mut String) {
        let _ = writeln!(out, "{mode} elapsed_us {}", self.elapsed.as_micros());
        let _ = writeln!(out, "{mode} errors {}", self.errors);
        for (a, n) in &self.calls {
            let _ = writeln!(out, "{mode} calls {a} {n}");
        }
        for (a, n) in &self.conns {
            let _ = writeln!(out, "{mode} conns {a} {n}");
        }
    }

    /// Reads back what [`Mix::write`] printed for `mode`.
    fn parse(text: &str, mode: &str) -> anyhow::Result<Mix> {
        let mut m = Mix::default();
        let mut seen = false;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&mode) {
                continue;
            }
            seen = true;
            let bad = || format!("unexpected line from netns-client: `{line}`");
            match f.get(1..) {
                Some(["elapsed_us", n]) => m.elapsed = Duration::from_micros(n.parse().with_context(bad)?),
                Some(["errors", n]) => m.errors = n.parse().with_context(bad)?,
                Some(["calls", a, n]) => {
                    m.calls.insert(a.parse().with_context(bad)?, n.parse().with_context(bad)?);
                }
                Some(["conns", a, n]) => {
                    m.conns.insert(a.parse().with_context(bad)?, n.parse().with_context(bad)?);
                }
                _ => anyhow::bail!(bad()),
            }
        }
        anyhow::ensure!(seen, "netns-client printed nothing for `{mode}`:\n{text}");
        Ok(m)
    }
}

/// `CLIENTS` clients, each on its own channel with `callers` concurrent callers; one run each.
async fn each<T>(clients: Vec<T>, callers: usize, s: Settings) -> Vec<Run>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut set = tokio::task::JoinSet::new();
    for c in clients {
        set.spawn(closed_loop(GreeterClient::new(c), callers, s.warmup, s.dur()));
    }
    let mut runs = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => runs.push(r),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => {}
        }
    }
    runs
}

/// The three contenders against `l4` (the address of the L4 balancer) and `addrs`.
async fn contenders(l4: SocketAddr, addrs: &[SocketAddr], s: Settings) -> anyhow::Result<[Mix; 3]> {
    let mut l4_clients = Vec::new();
    let mut rr_clients = Vec::new();
    let mut lb_clients = Vec::new();
    for _ in 0..CLIENTS {
        l4_clients.push(direct(l4).await?);
        rr_clients.push(lb_channel(addrs, Some(Box::new(RoundRobin::new()))).await?);
        lb_clients.push(lb_channel(addrs, None).await?);
    }
    let l4 = Mix::of(&each(l4_clients, CALLERS, s).await);
    let rr = Mix::of(&each(rr_clients, CALLERS, s).await);
    let lb = Mix::of(&each(lb_clients, CALLERS, s).await);
    Ok([l4, rr, lb])
}

/// The body of `lb-report netns-client`, run inside the client namespace: program the VIP with
/// lb-agent (one sync, as `lb-agent --once`), measure the contenders, print the counts.
pub(crate) async fn netns_client(agent_config: &Path, backends: &[SocketAddr], s: Settings) -> anyhow::Result<()> {
    let cfg = lb_agent::Config::load(agent_config)?;
    let opts = lb_agent::run::Options { once: true, dry_run: false, initial_timeout: Duration::from_secs(10) };
    let health = Arc::new(lb_agent::http::Health::default());
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    lb_agent::run::run(cfg, opts, health, &mut std::io::sink(), std::future::pending(), reload_rx)
        .await
        .context("lb-agent could not program the VIP")?;
    let vip: SocketAddr = netns::VIP.parse().context("the VIP is an address")?;
    let [l4, rr, lb] = contenders(vip, backends, s).await?;
    let mut out = String::new();
    l4.write("l4", &mut out);
    rr.write("rr", &mut out);
    lb.write("ewma", &mut out);
    print!("{out}");
    Ok(())
}

/// Scenario 2 in namespaces: backends in one, `lb-report netns-client` in the other.
async fn in_namespaces(lab: &Lab, s: Settings) -> anyhow::Result<(Vec<SocketAddr>, [Mix; 3])> {
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        backends.push(BackendProc::start_in(Some(lab.backends.name()), netns::backend_addr(i), Duration::ZERO).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(BackendProc::addr).collect();
    let dir = TempDir::new("agent")?;
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, netns::agent_config(&addrs)).context("write the agent's config")?;
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let exe = std::env::current_exe().context("locate the lb-report binary")?;
    let child = tokio::process::Command::new("ip")
        .args(["netns", "exec", lab.client.name()])
        .arg(exe)
        .arg("netns-client")
        .arg("--agent-config")
        .arg(&config)
        .arg("--backends")
        .arg(list.join(","))
        .arg("--secs")
        .arg(s.secs.to_string())
        .arg("--warmup-ms")
        .arg(s.warmup.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn netns-client")?;
    let limit = Duration::from_secs_f64(3.0 * (s.secs + s.warmup.as_secs_f64()) + 60.0);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .context("netns-client did not finish in time")?
        .context("netns-client")?;
    anyhow::ensure!(out.status.success(), "netns-client failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mixes = [Mix::parse(&text, "l4")?, Mix::parse(&text, "rr")?, Mix::parse(&text, "ewma")?];
    drop(backends);
    Ok((addrs, mixes))
}

/// Scenario 2 with the in-process TCP proxy as the L4 balancer, on loopback.
async fn on_loopback(s: Settings) -> anyhow::Result<(Vec<SocketAddr>, [Mix; 3])> {
    let backends = start_backends(BACKENDS, &[], false).await?;
    let addrs: Vec<SocketAddr> = backends.iter().map(BackendProc::addr).collect();
    let l4 = L4Balancer::start(SocketAddr::from(([127, 0, 0, 1], 0)), addrs.clone()).await?;
    let mixes = contenders(l4.addr(), &addrs, s).await?;
    drop(l4);
    drop(backends);
    Ok((addrs, mixes))
}

/// Scenario 2: HTTP/2 clients through an L4 connection balancer vs LbChannel: per-backend share.
pub(crate) async fn l4(s: Settings) -> anyhow::Result<Section> {
    let (baseline, (addrs, [l4, rr, lb])) = match Lab::new(BACKENDS) {
        Ok(lab) => {
            let r = in_namespaces(&lab, s).await.context("scenario 2 in network namespaces")?;
            ("lb-agent's nftables VIP", r)
        }
        Err(why) => {
            eprintln!("scenario 2: no network namespaces here ({why:#}); the L4 baseline is the in-process TCP proxy");
            ("the in-process TCP proxy", on_loopback(s).await?)
        }
    };
    let in_ns = baseline.starts_with("lb-agent");

    let mut sec = Section { title: "2. L4 connection balancing vs per-request balancing".into(), ..Default::default() };
    let setup = if in_ns {
        format!(
            "The L4 balancer is **lb-agent's nftables VIP** ({vip}) in the real kernel: the report creates two network \
             namespaces joined by a veth pair, starts the {BACKENDS} backends in one and the clients in the other, where \
             lb-agent's sync code (what `lb-agent --once` runs) programs its table. The kernel picks a backend per new \
             connection (`numgen random`), as kube-proxy does. The per-request contenders run from the same namespace over \
             the same veth.",
            vip = netns::VIP
        )
    } else {
        "The L4 balancer is `lb_examples::l4::L4Balancer`, an in-process TCP proxy that balances connections round robin \
         as kube-proxy does (network namespaces, which the agent's nftables VIP needs, were unavailable on this run: \
         root, `ip` and `nft` are required)."
            .to_string()
    };
    let _ = writeln!(
        sec.body,
        "{CLIENTS} clients in one process, each with its own channel (for the L4 run a tonic `Channel`: one HTTP/2 \
         connection through the L4 balancer; for the lb runs an `LbChannel` over the {BACKENDS} backends), {CALLERS} \
         callers each, {:.1} s, over {BACKENDS} identical backends. {setup} Per-request round robin is the even split; \
         PeakEWMA (lb's default) deliberately follows latency, so on a busy 2-core machine it shifts calls away from \
         whichever backend process is descheduled at the moment. Shares are counted from the backend each reply names.\n",
        s.secs
    );
    let _ = writeln!(sec.body, "| backend | L4 connections | L4 share | LbChannel round robin share | LbChannel PeakEWMA share |");
    let _ = writeln!(sec.body, "|---|---:|---:|---:|---:|");
    for (i, a) in addrs.iter().enumerate() {
        let _ = writeln!(
            sec.body,
            "| backend {} | {} | {:.1}% | {:.1}% | {:.1}% |",
            i + 1,
            l4.conns.get(a).copied().unwrap_or(0),
            l4.share(*a) * 100.0,
            rr.share(*a) * 100.0,
            lb.share(*a) * 100.0
        );
    }
    let mut bars = Vec::new();
    for (name, m) in [("L4", &l4), ("LbChannel RR", &rr), ("LbChannel EWMA", &lb)] {
        for (i, a) in addrs.iter().enumerate() {
            let y = m.share(*a) * 100.0;
            bars.push(Bar { label: format!("{name}, backend {}", i + 1), value: y, text: format!("{y:.1}%") });
        }
    }
    let spread = |m: &Mix| {
        let shares: Vec<f64> = addrs.iter().map(|a| m.share(*a)).collect();
        let max = shares.iter().copied().fold(0.0, f64::max);
        let min = shares.iter().copied().fold(1.0, f64::min);
        (max, if min > 0.0 { format!("{:.2}x", max / min) } else { "inf (a backend got nothing)".into() })
    };
    let (l4max, l4r) = spread(&l4);
    let (rrmax, rrr) = spread(&rr);
    let (lbmax, lbr) = spread(&lb);
    let h = format!(
        "L4 ({baseline}) vs per-request: busiest backend's share L4 {:.1}% vs LbChannel round robin {:.1}% (even = \
         {:.1}%); busiest/idlest L4 {l4r}, round robin {rrr} (PeakEWMA, which follows latency: {:.1}%, {lbr})",
        l4max * 100.0,
        rrmax * 100.0,
        100.0 / BACKENDS as f64,
        lbmax * 100.0,
    );
    let _ = writeln!(
        sec.body,
        "\nErrors: L4 {}, round robin {}, PeakEWMA {}. Throughput: L4 {:.0} calls/s, round robin {:.0} calls/s, PeakEWMA \
         {:.0} calls/s. Calls/s is not what this scenario compares: the L4 clients make {CLIENTS} HTTP/2 connections \
         carrying {CALLERS} callers each, the lb clients {} (each client one per backend) carrying about {} each, and on a \
         machine whose cores also run the backends calls/s is bound by CPU per call, which falls as more streams share \
         a connection's writes. What L4 balancing costs a user is the busiest backend's share — its latency and \
         saturation point come {:.2}x sooner than with an even split.\n\n**{h}.**",
        l4.errors,
        rr.errors,
        lb.errors,
        l4.throughput(),
        rr.throughput(),
        lb.throughput(),
        CLIENTS * BACKENDS,
        CALLERS / BACKENDS,
        l4max * BACKENDS as f64,
    );
    sec.headlines.push(h);
    sec.push_chart("s2-share.svg", "Scenario 2: share of calls per backend (%)", &bars);
    Ok(sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_trip_through_netns_client_output() {
        let a: SocketAddr = "10.201.0.11:50051".parse().expect("addr");
        let b: SocketAddr = "10.201.0.12:50051".parse().expect("addr");
        let m = Mix {
            calls: [(a, 30), (b, 10)].into_iter().collect(),
            conns: [(a, 2)].into_iter().collect(),
            errors: 3,
            elapsed: Duration::from_millis(1500),
        };
        let mut text = String::new();
        m.write("l4", &mut text);
        Mix::default().write("rr", &mut text);
        let back = Mix::parse(&text, "l4").expect("parse");
        assert_eq!((back.calls, back.conns, back.errors, back.elapsed), (m.calls, m.conns, m.errors, m.elapsed));
        assert!((Mix::parse(&text, "l4").expect("parse").share(a) - 0.75).abs() < 1e-9);
        assert!(Mix::parse(&text, "ewma").is_err(), "a missing contender is an error, not zeros");
        assert!(Mix::parse("l4 calls nonsense 3\n", "l4").is_err());
    }
}
