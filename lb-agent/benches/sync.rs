//! Sync-time benchmark: the agent's nftables layout vs a kube-proxy-style nftables layout vs
//! iptables-restore, at 1k and 10k services × 10 endpoints, in a network namespace of its own; and
//! the agent's layout with every service dual-stack (an IPv4 and an IPv6 VIP, 10 endpoints per
//! family), measured in the same run.
//!
//! Run as root: `cargo bench -p lb-agent --bench sync` (sizes as arguments: `-- 1000 10000`).
//! For each layout and size: a cold sync (empty kernel → everything), then single changes — add
//! one service, remove one endpoint from a service (for dual-stack: both VIPs of one service, in
//! one transaction, as the agent does when one registry entry changes) — each timed end to end (transaction text
//! generation + the kernel tool). The agent's own numbers come from its real backend (`Nft::sync`,
//! planning included). The kube-proxy layout follows kube-proxy's nftables mode (a chain per
//! service with a `numgen` verdict map, a chain per endpoint, a `service-ips` verdict map) and
//! sends it incremental transactions touching only the changed service, as kube-proxy's partial
//! sync does. The iptables column uses the agent's iptables backend (kube-proxy's iptables layout,
//! rewritten in full per change, as kube-proxy's iptables mode rewrites its chains).

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Instant;

use lb_agent::iptables::Iptables;
use lb_agent::nft::Nft;
use lb_agent::{Backend, Desired, Destination, Protocol, ServiceKey, ServiceState};

const ENDPOINTS: usize = 10;

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    // `--agent-only`: skip the baselines (the kube-proxy-style layout needs minutes at 10k).
    let agent_only = std::env::args().any(|a| a == "--agent-only");
    let sizes = if sizes.is_empty() { vec![1_000, 10_000] } else { sizes };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: the sync benchmark programs netfilter in its own namespace and needs root");
        return;
    }
    println!("lb-agent sync benchmark, {ENDPOINTS} endpoints per service; times are end to end (plan + kernel tool)");
    println!("{:<26} {:>8} {:>10} {:>22} {:>22}", "layout", "services", "cold (s)", "add service p50/p99 ms", "remove endpoint p50/p99");
    std::io::Write::flush(&mut std::io::stdout()).ok();
    for &n in &sizes {
        let ours = bench_ours(n, false);
        ours.print("lb-agent nft (global map)", n);
        println!("  of which planning (dry run, no kernel): p50 {:.3} ms, p99 {:.3} ms", p(&ours.plan, 50.0), p(&ours.plan, 99.0));
        println!(
            "  floor: an empty `nft -f -` p50 {:.2} ms, p99 {:.2} ms; one element delete+add p50 {:.2} ms, p99 {:.2} ms (tiny table)",
            p(&ours.floor, 50.0),
            p(&ours.floor, 99.0),
            p(&ours.floor_replace, 50.0),
            p(&ours.floor_replace, 99.0)
        );
        println!(
            "  restart with unchanged state (read the table once + compare, nothing written): {:.3} s",
            ours.restart
        );
        let dual = bench_ours(n, true);
        dual.print("lb-agent nft, dual-stack", n);
        println!(
            "  dual-stack ({} VIPs, {} endpoints) vs IPv4 at {n}: cold ×{:.2}, add ×{:.2}, remove ×{:.2}; restart {:.3} s",
            2 * n,
            2 * n * ENDPOINTS,
            dual.cold / ours.cold,
            p(&dual.add, 50.0) / p(&ours.add, 50.0),
            p(&dual.remove, 50.0) / p(&ours.remove, 50.0),
            dual.restart
        );
        if agent_only {
            continue;
        }
        let kp = bench_kube_proxy_nft(n);
        kp.print("kube-proxy-style nft", n);
        let legacy = has("iptables-legacy-restore");
        if n > 1_000 && !legacy {
            println!("iptables-restore (nft)      {n:>8}  skipped: iptables-nft needs minutes per sync at this size, and iptables-legacy-restore is not installed");
            ours.ratios_nft(&kp, n);
            continue;
        }
        let tools = if legacy {
            ("iptables-legacy-restore", "iptables-legacy-save")
        } else {
            ("iptables-restore", "iptables-save")
        };
        let ipt = bench_iptables(n, tools);
        ipt.print(tools.0, n);
        println!(
            "  ratios vs lb-agent at {n}: kube-proxy-style nft cold ×{:.1}, add ×{:.1}, remove ×{:.1}; iptables cold ×{:.1}, add ×{:.1}, remove ×{:.1}",
            kp.cold / ours.cold,
            p(&kp.add, 50.0) / p(&ours.add, 50.0),
            p(&kp.remove, 50.0) / p(&ours.remove, 50.0),
            ipt.cold / ours.cold,
            p(&ipt.add, 50.0) / p(&ours.add, 50.0),
            p(&ipt.remove, 50.0) / p(&ours.remove, 50.0),
        );
    }
}

struct Result_ {
    /// Seconds a restarted agent takes to learn the table and find nothing to do.
    restart: f64,
    /// Milliseconds of an empty nft transaction and of replacing one element of a tiny map: what
    /// the machine charges whatever the layout.
    floor: Vec<f64>,
    floor_replace: Vec<f64>,
    /// Milliseconds the agent spends planning one change (a dry run: no kernel call), if measured.
    plan: Vec<f64>,
    cold: f64,
    add: Vec<f64>,
    remove: Vec<f64>,
}

impl Result_ {
    fn ratios_nft(&self, kp: &Result_, n: usize) {
        println!(
            "  ratios vs lb-agent at {n}: kube-proxy-style nft cold ×{:.1}, add ×{:.1}, remove ×{:.1}",
            kp.cold / self.cold,
            p(&kp.add, 50.0) / p(&self.add, 50.0),
            p(&kp.remove, 50.0) / p(&self.remove, 50.0),
        );
    }

    fn print(&self, name: &str, n: usize) {
        println!(
            "{name:<26} {n:>8} {:>10.3} {:>10.2} / {:>9.2} {:>10.2} / {:>9.2}",
            self.cold,
            p(&self.add, 50.0),
            p(&self.add, 99.0),
            p(&self.remove, 50.0),
            p(&self.remove, 99.0)
        );
        std::io::Write::flush(&mut std::io::stdout()).ok();
    }
}

fn p(samples: &[f64], pct: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((pct / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[i.min(s.len() - 1)]
}

/// A fresh namespace the calling thread enters (children it spawns run there); deleted on drop.
struct Netns(String, File);

impl Netns {
    fn enter(tag: &str) -> Netns {
        let name = format!("lbb-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add").success();
        assert!(ok, "cannot create namespace {name}");
        let host = File::open("/proc/self/ns/net").expect("own netns");
        let f = File::open(format!("/run/netns/{name}")).expect("netns file");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter bench namespace");
        Netns(name, host)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.1, nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn has(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn vip(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new([10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into(), 80)
}

fn endpoint(i: usize, e: usize) -> SocketAddrV4 {
    let n = i * ENDPOINTS + e;
    SocketAddrV4::new([10, 128 + (n >> 16) as u8, (n >> 8) as u8, n as u8].into(), 8080)
}

fn vip6(i: usize) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, (i >> 16) as u16, i as u16).into(), 80)
}

fn endpoint6(i: usize, e: usize) -> SocketAddr {
    let n = i * ENDPOINTS + e;
    SocketAddr::new(Ipv6Addr::new(0xfd00, 0x128, 0, 0, 0, 0, (n >> 16) as u16, n as u16).into(), 8080)
}

fn key(i: usize) -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, vip: vip(i).into() }
}

fn key6(i: usize) -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, vip: vip6(i) }
}

fn state_of(destinations: Vec<Destination>) -> ServiceState {
    ServiceState { keep_flows: destinations.iter().map(|d| d.addr).collect(), destinations, affinity: None }
}

fn state(i: usize, endpoints: usize) -> ServiceState {
    state_of((0..endpoints).map(|e| Destination { addr: endpoint(i, e).into(), weight: 1 }).collect())
}

fn state6(i: usize, endpoints: usize) -> ServiceState {
    state_of((0..endpoints).map(|e| Destination { addr: endpoint6(i, e), weight: 1 }).collect())
}

fn desired(n: usize) -> Desired {
    (0..n).map(|i| (key(i), state(i, ENDPOINTS))).collect()
}

/// Service `i` with `endpoints` endpoints into `d`, in both families when `dual`; returns the
/// keys it wrote (what the agent's loop passes to `sync_changed`).
fn put(d: &mut Desired, i: usize, endpoints: usize, dual: bool) -> std::collections::BTreeSet<ServiceKey> {
    d.insert(key(i), state(i, endpoints));
    if dual {
        d.insert(key6(i), state6(i, endpoints));
        [key(i), key6(i)].into()
    } else {
        [key(i)].into()
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t0 = Instant::now();
    let r = f();
    (t0.elapsed().as_secs_f64(), r)
}

fn changes(n: usize) -> usize {
    if n >= 10_000 { 20 } else { 50 }
}

fn bench_ours(n: usize, dual: bool) -> Result_ {
    let _ns = Netns::enter(if dual { "dual" } else { "ours" });
    let mut nft = Nft::new("lb_agent", 256);
    let mut d = Desired::new();
    for i in 0..n {
        put(&mut d, i, ENDPOINTS, dual);
    }
    let (cold, r) = time(|| {
        nft.load().and_then(|_| nft.sync(&d, false))
    });
    r.expect("cold sync");
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for c in 0..changes(n) {
        // As the agent's loop does: it knows which service changed.
        let changed = put(&mut d, n + c, ENDPOINTS, dual);
        let (t, r) = time(|| nft.sync_changed(&d, &changed, false));
        r.expect("add service");
        add.push(t * 1e3);
        let changed = put(&mut d, c * 7, ENDPOINTS - 1, dual);
        let (t, r) = time(|| nft.sync_changed(&d, &changed, false));
        r.expect("remove endpoint");
        remove.push(t * 1e3);
    }
    let mut plan = Vec::new();
    for c in 0..changes(n) {
        let mut d2 = d.clone();
        let changed = put(&mut d2, 2 * n + c, ENDPOINTS, dual);
        let (t, r) = time(|| nft.sync_changed(&d2, &changed, true));
        r.expect("dry run");
        plan.push(t * 1e3);
    }
    let (restart, r) = time(|| {
        let mut again = Nft::new("lb_agent", 256);
        again.load().and_then(|_| again.sync(&d, false))
    });
    assert!(r.expect("restart sync").is_noop(), "a restart with unchanged state must write nothing");
    let (floor, floor_replace) = if dual { (vec![0.0], vec![0.0]) } else { floor(changes(n)) };
    Result_ { restart, floor, floor_replace, plan, cold, add, remove }
}

fn floor(k: usize) -> (Vec<f64>, Vec<f64>) {
    let _ns = Netns::enter("floor");
    nft("table ip floor {\n\tmap m { type ipv4_addr : ipv4_addr; elements = { 10.0.0.1 : 10.0.0.2 } }\n}\n");
    let mut empty = Vec::new();
    let mut replace = Vec::new();
    for i in 0..k {
        empty.push(time(|| nft("")).0 * 1e3);
        let s = format!("delete element ip floor m {{ 10.0.0.1 }}\nadd element ip floor m {{ 10.0.0.1 : 10.0.1.{} }}\n", i % 250);
        replace.push(time(|| nft(&s)).0 * 1e3);
    }
    (empty, replace)
}

fn nft(script: &str) {
    lb_agent::exec::run("nft", &["-f", "-"], Some(script)).expect("nft transaction");
}

fn kp_service(out: &mut String, i: usize, endpoints: usize, fresh: bool) {
    let svc = format!("service-{i}");
    if fresh {
        let _ = writeln!(out, "add chain ip kp {svc}");
    } else {
        let _ = writeln!(out, "flush chain ip kp {svc}");
    }
    let mut vmap = Vec::new();
    for e in 0..endpoints {
        let ep = endpoint(i, e);
        let chain = format!("endpoint-{i}-{e}");
        if fresh {
            let _ = writeln!(out, "add chain ip kp {chain}");
            let _ = writeln!(out, "add rule ip kp {chain} ip saddr {} jump mark-for-masquerade", ep.ip());
            let _ = writeln!(out, "add rule ip kp {chain} meta l4proto tcp dnat to {ep}");
        }
        vmap.push(format!("{e} : goto {chain}"));
    }
    let _ = writeln!(out, "add rule ip kp {svc} numgen random mod {endpoints} vmap {{ {} }}", vmap.join(", "));
    if fresh {
        let v = vip(i);
        let _ = writeln!(out, "add element ip kp service-ips {{ {} . {} : goto {svc} }}", v.ip(), v.port());
    }
}

fn bench_kube_proxy_nft(n: usize) -> Result_ {
    let _ns = Netns::enter("kp");
    let mut cold_script = String::from(
        "table ip kp {
	map service-ips { type ipv4_addr . inet_service : verdict; }
	chain mark-for-masquerade {
		meta mark set meta mark or 0x4000
	}
	chain services {
		ip daddr . tcp dport vmap @service-ips
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}
	chain nat-prerouting {
		type nat hook prerouting priority -100; policy accept;
		jump services
	}
	chain nat-postrouting {
		type nat hook postrouting priority 100; policy accept;
		meta mark & 0x4000 == 0x4000 masquerade
	}
}
",
    );
    for i in 0..n {
        kp_service(&mut cold_script, i, ENDPOINTS, true);
    }
    let (cold, ()) = time(|| nft(&cold_script));
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for c in 0..if n >= 10_000 { 5 } else { 20 } {
        let (t, ()) = time(|| {
            let mut s = String::new();
            kp_service(&mut s, n + c, ENDPOINTS, true);
            nft(&s)
        });
        add.push(t * 1e3);
        let (t, ()) = time(|| {
            let mut s = String::new();
            kp_service(&mut s, c * 7, ENDPOINTS - 1, false);
            let _ = writeln!(s, "flush chain ip kp endpoint-{}-{}", c * 7, ENDPOINTS - 1);
            let _ = writeln!(s, "delete chain ip kp endpoint-{}-{}", c * 7, ENDPOINTS - 1);
            nft(&s)
        });
        remove.push(t * 1e3);
    }
    Result_ { restart: 0.0, floor: Vec::new(), floor_replace: Vec::new(), plan: Vec::new(), cold, add, remove }
}

fn bench_iptables(n: usize, tools: (&'static str, &'static str)) -> Result_ {
    let _ns = Netns::enter("ipt");
    let mut ipt = Iptables::with_tools(tools.0, tools.1);
    let mut d = desired(n);
    let (cold, r) = time(|| ipt.load().and_then(|_| ipt.sync(&d, false)));
    r.expect("cold iptables-restore");
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let k = if n >= 10_000 { 2 } else { 5 };
    for c in 0..k {
        d.insert(key(n + c), state(n + c, ENDPOINTS));
        let (t, r) = time(|| ipt.sync(&d, false));
        r.expect("add service");
        add.push(t * 1e3);
        d.insert(key(c * 7), state(c * 7, ENDPOINTS - 1));
        let (t, r) = time(|| ipt.sync(&d, false));
        r.expect("remove endpoint");
        remove.push(t * 1e3);
    }
    Result_ { restart: 0.0, floor: Vec::new(), floor_replace: Vec::new(), plan: Vec::new(), cold, add, remove }
}
