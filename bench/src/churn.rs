//! Scenario 4: instances registered and deregistered in a real etcd during load, then etcd
//! SIGKILLed and restarted during load.
//!
//! The deregistered backends keep running, so any failed call is the balancer's doing (a stale or
//! wiped endpoint set), and the propagation times are discovery's: from `register()`/`deregister()`
//! returning to the first/last call the client sent to that backend.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use lb_examples::pb::greeter_client::GreeterClient;
use lb_registry::{Registration, Target};
use lb_tonic::LbChannel;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::drive::closed_loop;
use crate::procs::{stable_port, BackendProc, TempDir};
use crate::scenarios::{Section, Settings};
use crate::svg::Bar;

/// A single-member etcd on loopback, restartable on the same ports and data dir.
struct Etcd {
    dir: TempDir,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Etcd {
    async fn start() -> anyhow::Result<Etcd> {
        let mut e = Etcd { dir: TempDir::new("etcd")?, client: stable_port(), peer: stable_port(), child: None };
        e.launch().await?;
        Ok(e)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let bin = std::env::var("LB_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let mut cmd = Command::new(bin);
        cmd.arg("--name=bench")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).context("etcd log file")?)
            .kill_on_drop(true);
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        self.child = Some(cmd.spawn().context("spawn etcd (Debian package etcd-server)")?);
        wait_listening(self.client, self.dir.path()).await
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

async fn wait_listening(port: u16, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
    anyhow::bail!("etcd did not listen on {port} within 15 s; log:\n{log}")
}

async fn register(target: &Target, addr: SocketAddr) -> anyhow::Result<Registration> {
    lb_registry::register(target, lb_core::Endpoint::new(addr))
        .await
        .with_context(|| format!("register {addr} in etcd"))
}

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
    if m < 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.0} ms")
    }
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn median_max(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_unstable();
    format!("{} / {}", ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

/// Runs scenario 4.
pub(crate) async fn churn(s: Settings) -> anyhow::Result<Section> {
    const CALLERS: usize = 16;
    const BACKENDS: usize = 6;
    const LIVE: usize = 3;
    let mut etcd = Etcd::start().await?;
    let mut backends = Vec::new();
    for _ in 0..BACKENDS {
        backends.push(BackendProc::start(SocketAddr::from(([127, 0, 0, 1], 0)), Duration::ZERO).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let uri = format!("etcd://127.0.0.1:{}/greeter?ttl=3s", etcd.client);
    let target = Target::parse(&uri).context("etcd target")?;
    let mut live: std::collections::VecDeque<(usize, Registration)> = Default::default();
    for (i, a) in addrs.iter().enumerate().take(LIVE) {
        live.push_back((i, register(&target, *a).await?));
    }
    let ch = LbChannel::from_target(&uri).context("LbChannel over etcd")?;
    anyhow::ensure!(ch.ready(Duration::from_secs(10)).await, "no endpoint discovered from etcd");

    let total = Duration::from_secs_f64(s.fault_secs * 1.5);
    let churn_end = total / 2;
    let steps = 6u32;
    let step = churn_end / (steps + 1);
    let load = tokio::spawn(closed_loop(GreeterClient::new(ch.clone()), CALLERS, Duration::ZERO, total));
    let t0 = Instant::now();
    // (backend, when register()/deregister() returned)
    let mut added: Vec<(SocketAddr, Duration)> = Vec::new();
    let mut removed: Vec<(SocketAddr, Duration)> = Vec::new();
    let mut next = LIVE;
    for k in 1..=steps {
        tokio::time::sleep_until(t0 + step * k).await;
        if let Some((i, reg)) = live.pop_front() {
            reg.deregister().await;
            removed.push((addrs[i], t0.elapsed()));
        }
        let i = next % BACKENDS;
        next += 1;
        live.push_back((i, register(&target, addrs[i]).await?));
        added.push((addrs[i], t0.elapsed()));
    }
    // etcd down for a fifth of the run, then back with the same data.
    let down_at = total * 6 / 10;
    let up_at = total * 8 / 10;
    tokio::time::sleep_until(t0 + down_at).await;
    etcd.kill().await;
    let killed = t0.elapsed();
    tokio::time::sleep_until(t0 + up_at).await;
    etcd.launch().await?;
    let restarted = t0.elapsed();
    // One more registration after the restart: how long until the client sees it.
    let i = next % BACKENDS;
    let after_restart = match live.iter().any(|(j, _)| *j == i) {
        true => None,
        false => {
            live.push_back((i, register(&target, addrs[i]).await?));
            Some((addrs[i], t0.elapsed()))
        }
    };
    let run = load.await.context("load task")?;

    let first_after = |a: SocketAddr, t: Duration| {
        run.events.iter().filter(|e| e.backend == Some(a) && e.at >= t).map(|e| e.at).min().map(|x| x - t)
    };
    let last_after = |a: SocketAddr, t: Duration| {
        // The last call it answered before it was registered again (if it was).
        let back = added
            .iter()
            .chain(after_restart.iter())
            .filter(|(b, at)| *b == a && *at > t)
            .map(|(_, at)| *at)
            .min()
            .unwrap_or(total);
        run.events
            .iter()
            .filter(|e| e.backend == Some(a) && e.at < back)
            .map(|e| e.at)
            .max()
            .map(|x| x.saturating_sub(t))
    };
    let add_lat: Vec<Duration> = added.iter().filter_map(|(a, t)| first_after(*a, *t)).collect();
    let rm_lat: Vec<Duration> = removed.iter().filter_map(|(a, t)| last_after(*a, *t)).collect();
    let errors_in = |from: Duration, to: Duration| {
        run.events.iter().filter(|e| e.backend.is_none() && e.at >= from && e.at < to).count()
    };
    let calls_in = |from: Duration, to: Duration| run.events.iter().filter(|e| e.at >= from && e.at < to).count();

    let mut sec = Section { title: "4. Churn in etcd, and etcd stopped during load".into(), ..Default::default() };
    let _ = writeln!(
        sec.body,
        "A real etcd ({}) on loopback; {BACKENDS} backends, {LIVE} registered at a time (lease TTL 3 s); one `LbChannel` on \
         `etcd://…/greeter` with {CALLERS} closed-loop callers for {:.1} s. During the first half, {steps} times: deregister \
         the oldest instance, register another one (deregistered backends keep running, so a failed call is the \
         client's fault). Then etcd is SIGKILLed at {} and restarted with the same data at {}; one more instance is \
         registered after the restart. *Added → first call*: from `register()` returning to the first call it answered; \
         *removed → last call*: from `deregister()` returning to the last call it answered (0 when the client had \
         already stopped before `deregister()` returned: the watch event can arrive before the revoke's reply).\n",
        etcd_version(),
        total.as_secs_f64(),
        ms(killed),
        ms(restarted),
    );
    let _ = writeln!(sec.body, "| phase | calls | failed calls |");
    let _ = writeln!(sec.body, "|---|---:|---:|");
    let z = Duration::ZERO;
    for (name, a, b) in [
        ("churn (first half)", z, churn_end),
        ("etcd down", killed, restarted),
        ("after etcd restart", restarted, total + Duration::from_secs(1)),
    ] {
        let _ = writeln!(sec.body, "| {name} | {} | {} |", calls_in(a, b), errors_in(a, b));
    }
    let _ = writeln!(sec.body, "\n| propagation | median / max |\n|---|---:|");
    let _ = writeln!(sec.body, "| added → first call ({} registrations) | {} |", added.len(), median_max(add_lat.clone()));
    let _ = writeln!(sec.body, "| removed → last call ({} deregistrations) | {} |", removed.len(), median_max(rm_lat.clone()));
    match after_restart.and_then(|(a, t)| first_after(a, t)) {
        Some(d) => {
            let _ = writeln!(sec.body, "| registered after the etcd restart → first call | {} |", ms(d));
        }
        None => {
            let _ = writeln!(sec.body, "| registered after the etcd restart → first call | not seen within the run |");
        }
    }
    let h = format!(
        "etcd churn: {} failed calls of {} with {} register/deregister steps and etcd SIGKILLed for {}; propagation median {} (add) / {} (remove)",
        run.errors(),
        run.events.len(),
        steps,
        ms(restarted - killed),
        median(&add_lat).map(ms).unwrap_or_else(|| "—".into()),
        median(&rm_lat).map(ms).unwrap_or_else(|| "—".into()),
    );
    let _ = writeln!(sec.body, "\n**{h}.**");
    sec.headlines.push(h);
    let mut bars: Vec<Bar> = Vec::new();
    for (n, v) in [("added → first call", &add_lat), ("removed → last call", &rm_lat)] {
        let mut v = v.clone();
        v.sort_unstable();
        if let Some(m) = v.get(v.len() / 2) {
            bars.push(Bar { label: format!("{n} (median)"), value: m.as_secs_f64() * 1e3, text: ms(*m) });
        }
    }
    if !bars.is_empty() {
        sec.push_chart("s4-propagation.svg", "Scenario 4: etcd propagation time (ms)", &bars);
    }
    for (_, reg) in live {
        reg.deregister().await;
    }
    drop(ch);
    etcd.kill().await;
    drop(backends);
    Ok(sec)
}

fn etcd_version() -> String {
    let bin = std::env::var("LB_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "etcd".into())
}
