//! The nftables backend against the real kernel, inside network namespaces the tests create.

mod support;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use support::traffic::{self, config, TCP_VIP};
use support::*;

const BYSTANDER: &str = "table inet bystander {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr 192.0.2.1 drop
	}
}
";

/// `nft monitor` inside the lab's client namespace, its lines read on a thread.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// The marker tables the test created (deleted again at the end), and the pids of the `nft`
    /// processes that made them, which the monitor's `# new generation … by process <pid>` names.
    markers: Vec<(String, u32)>,
}

impl Monitor {
    /// Starts the monitor and returns once it has reported a change of the test's own (a marker
    /// table): before that it may not have subscribed yet, and a quiet monitor would prove nothing.
    fn start(lab: &Lab) -> Monitor {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.client.name, "nft", "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("nft monitor");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut monitor = Monitor { child, lines, markers: Vec::new() };
        let t0 = Instant::now();
        loop {
            monitor.mark(lab, &format!("lbt_marker_{}", monitor.markers.len()));
            // A second per attempt paces the retries; the overall bound is the patience.
            if let Ok(line) = monitor.lines.recv_timeout(Duration::from_secs(1)) {
                assert!(monitor.is_ours(&line), "nothing but the test's markers yet: {line}");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "nft monitor never reported a change");
        }
        monitor
    }

    /// Adds the table `name` with an `nft` of its own (`ip netns exec` execs it: same pid).
    fn mark(&mut self, lab: &Lab, name: &str) {
        let mut nft = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.client.name, "nft", "add", "table", "inet", name])
            .spawn()
            .expect("spawn nft");
        let pid = nft.id();
        assert!(nft.wait().expect("nft runs").success(), "nft add table {name}");
        self.markers.push((name.to_string(), pid));
    }

    /// A line about a marker table or the transaction of an `nft` that made one.
    fn is_ours(&self, line: &str) -> bool {
        line.contains("table inet lbt_marker_")
            || (line.starts_with("# new generation") && self.markers.iter().any(|(_, pid)| line.contains(&format!("by process {pid} "))))
    }

    /// Adds the marker table `end`, and returns every event the monitor reported before it that
    /// was not the test's own.
    fn until_marker(mut self, lab: &Lab, end: &str) -> Vec<String> {
        self.mark(lab, end);
        let mut events = Vec::new();
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("nft monitor reports the end marker");
            if line.contains(&format!("table inet {end}")) {
                break;
            }
            if !self.is_ours(&line) {
                events.push(line);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (name, _) in &self.markers {
            lab.client.exec(&["nft", "delete", "table", "inet", name]);
        }
        events
    }
}

fn add_bystander(lab: &Lab) -> String {
    let f = std::env::temp_dir().join(format!("{}-bystander.nft", lab.client.name));
    std::fs::write(&f, BYSTANDER).expect("write bystander");
    lab.client.exec(&["nft", "-f", f.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(f);
    lab.client.exec(&["nft", "list", "table", "inet", "bystander"])
}

#[test]
fn tcp_and_udp_reach_every_backend_and_the_rest_is_untouched() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    let bystander = add_bystander(&lab);
    lab.write_config(&config("nftables", &[0, 1, 2], &[0, 1, 2]));

    let dry = lab.agent_ok(&["--dry-run"]);
    assert!(dry.contains("table inet lb_agent {") && dry.contains("add element inet lb_agent be_tcp4"), "{dry}");
    assert!(!lab.client.try_exec(&["nft", "list", "table", "inet", "lb_agent"]).status.success(), "dry run applied nothing");

    lab.agent_ok(&["--once"]);
    traffic::reaches_every_backend_and_rejects_empty(&lab, 3);

    // A restart with unchanged state writes nothing: no netlink event between two changes of the
    // test's own, which prove the monitor was listening before and still is after; empty dry run.
    let monitor = Monitor::start(&lab);
    lab.agent_ok(&["--once"]);
    let events = monitor.until_marker(&lab, "lbt_marker_end");
    assert!(events.is_empty(), "restart wrote to the kernel: {events:?}");
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "nothing left to do");

    assert_eq!(lab.client.exec(&["nft", "list", "table", "inet", "bystander"]), bystander);

    lab.agent_ok(&["cleanup"]);
    let ruleset = lab.client.exec(&["nft", "list", "ruleset"]);
    assert_eq!(ruleset.trim(), bystander.trim(), "cleanup leaves only the bystander");
    lab.agent_ok(&["cleanup"]); // idempotent
}

#[test]
fn removing_a_backend_keeps_established_connections() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    traffic::removal_keeps_established_and_moves_new_flows(&lab, "nftables");
}

#[test]
fn weights_become_shares_of_new_flows() {
    skip_unless_capable!();
    let lab = lab_with_servers(2);
    lab.write_config(&format!(
        "[[service]]\nvip = \"{TCP_VIP}\"\ntarget = \"static:///{};weight=100,{};weight=300\"\n",
        backend(0, 8080),
        backend(1, 8080)
    ));
    lab.agent_ok(&["--once"]);
    let spread = lab.tcp_spread(vip(TCP_VIP), 200);
    let heavy = spread.get("b1").copied().unwrap_or(0);
    // Expected 150 of 200 (p = 0.75, sd ≈ 6.1): 115..=185 is beyond 5 sd either way.
    assert!((115..=185).contains(&heavy), "weight 300 vs 100 gave {spread:?}");
}

/// Lines of `n` extra services, so that a sync takes long enough to be interrupted.
fn big_config(n: usize) -> String {
    let mut s = config("nftables", &[0, 1, 2], &[0, 1, 2]);
    for i in 0..n {
        s.push_str(&format!(
            "[[service]]\nvip = \"10.97.{}.{}:80\"\ntarget = \"{}\"\n",
            i / 250,
            i % 250 + 1,
            target(&[backend(0, 8080), backend(1, 8080), backend(2, 8080)])
        ));
    }
    s
}

fn service_count(lab: &Lab) -> usize {
    let json = lab.client.exec(&["nft", "-j", "list", "map", "inet", "lb_agent", "svc_tcp4"]);
    json.matches("\"goto\"").count()
}

/// The pids of the children of every thread of `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
                .collect()
        })
        .unwrap_or_default()
}

/// The command name of `pid`, while it lives.
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_string())
}

/// Whether `pid` is stopped by a signal (state `T`), a zombie, or gone.
fn stopped_or_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| matches!(st, "T" | "t" | "Z" | "X")),
        Err(_) => true,
    }
}

/// Waits until no process is left in the lab's client namespace (a killed agent's `nft` may
/// outlive it briefly).
fn wait_netns_empty(lab: &Lab) {
    let t0 = Instant::now();
    let pids = || {
        let out = std::process::Command::new("ip").args(["netns", "pids", &lab.client.name]).output().expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    while !pids().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "orphaned nft never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_mid_sync_then_restart_converges_without_resetting_connections() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    lab.write_config(&config("nftables", &[0, 1, 2], &[0, 1, 2]));
    lab.agent_ok(&["--once"]);
    let before = service_count(&lab);
    let mut conn = lab.connect(support::vip(TCP_VIP)).expect("connect");
    let who_before = who(&mut conn).expect("ask");

    const EXTRA: usize = 4000;
    // Each attempt starts the agent on the big configuration and freezes it and its `nft` while
    // the batch is on its way; the attempt counts only if the table is still the old one once
    // both are stopped (a stopped process is in no syscall, and nft's batch commits within one
    // sendmsg), so the kill below provably lands mid-sync. A machine fast enough to commit first
    // gets the old table back and another attempt.
    let mut caught = false;
    for attempt in 1..=5 {
        lab.write_config(&big_config(EXTRA));
        let mut agent = lab.spawn_agent(&[]);
        let stderr = agent.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let t0 = Instant::now();
        loop {
            let line = lines.next().expect("agent log ended before applying").expect("read log");
            if line.contains("applying transaction") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "agent never started a sync");
        }
        // The log line comes just before `nft` is spawned; catch it once it runs `nft` (not
        // between fork and exec, where the agent itself waits on the child in `vfork`), while it
        // takes the batch.
        let t1 = Instant::now();
        let mut children = children_of(agent.id());
        while !children.iter().any(|c| comm(*c).as_deref() == Some("nft")) && t1.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
            children = children_of(agent.id());
        }
        let pids: Vec<i32> = children.iter().copied().chain([agent.id() as i32]).collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGSTOP);
        }
        let t2 = Instant::now();
        while !pids.iter().all(|p| stopped_or_gone(*p)) {
            assert!(t2.elapsed() < Duration::from_secs(30), "the agent and its nft never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mid_sync = children.iter().any(|c| comm(*c).as_deref() == Some("nft")) && service_count(&lab) == before;
        // Kill the agent and the `nft` it is feeding, as a node crash would: whatever of the
        // batch reached the kernel uncommitted is discarded with the socket.
        for pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGKILL);
        }
        let _ = agent.wait();
        wait_netns_empty(&lab);
        eprintln!("attempt {attempt}: killed the agent and its children {children:?}; mid-sync: {mid_sync}");
        if mid_sync {
            caught = true;
            break;
        }
        // Too late: the batch had committed. Put the old table back and try again.
        lab.write_config(&config("nftables", &[0, 1, 2], &[0, 1, 2]));
        lab.agent_ok(&["--once"]);
        assert_eq!(service_count(&lab), before, "the old table is back");
    }
    assert!(caught, "nft committed {EXTRA} services before it could be stopped, five times");

    // All or nothing: the kill landed before the commit, so the table is the old one, not a mix.
    let after_kill = service_count(&lab);
    assert_eq!(after_kill, before, "a sync killed before its commit left {after_kill} services");
    assert_eq!(who(&mut conn).expect("connection survives the crash"), who_before);

    lab.write_config(&big_config(EXTRA));
    lab.agent_ok(&["--once"]);
    assert_eq!(service_count(&lab), before + EXTRA, "restart converges");
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "converged: nothing left to write");
    assert_eq!(who(&mut conn).expect("connection survives the restart"), who_before);
    assert_eq!(lab.tcp_spread(vip("10.97.3.7:80"), 30).len(), 3, "a new service balances");
}

#[test]
fn a_hand_edited_table_is_rebuilt_not_trusted() {
    skip_unless_capable!();
    let lab = lab_with_servers(2);
    lab.write_config(&config("nftables", &[0, 1], &[0, 1]));
    lab.agent_ok(&["--once"]);
    lab.client.exec(&["nft", "delete", "element", "inet", "lb_agent", "be_tcp4", "{ 10.96.0.10 . 80 . 1 }"]);
    lab.agent_ok(&["--once"]);
    assert_eq!(lab.tcp_spread(vip(TCP_VIP), 40).len(), 2, "the missing slot is back");
    assert_eq!(lab.agent_ok(&["--dry-run"]), "");
}

#[test]
fn serves_healthz_and_metrics() {
    skip_unless_capable!();
    let lab = lab_with_servers(1);
    let mut cfg = config("nftables", &[0], &[0]);
    cfg.insert_str(0, "metrics_addr = \"127.0.0.1:9464\"\n");
    lab.write_config(&cfg);
    let mut agent = lab.spawn_agent(&[]);
    let get = |path: &'static str| {
        lab.client.run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect("127.0.0.1:9464").ok()?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            Some(body)
        })
    };
    let t0 = Instant::now();
    let health = loop {
        match get("/healthz") {
            Some(b) if b.starts_with("HTTP/1.1 200") => break b,
            _ if t0.elapsed() > Duration::from_secs(20) => panic!("agent never became healthy"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(health.ends_with("ok\n"));
    let metrics = get("/metrics").expect("metrics");
    for name in ["lb_agent_sync_duration_seconds_bucket", "lb_agent_objects_programmed{backend=\"nftables\"} 7", "lb_agent_syncs_total"] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn forwarded_traffic_is_balanced_and_hairpin_is_masqueraded() {
    skip_unless_capable!();
    let lab = lab_with_servers(2);
    // The client namespace becomes the backends' router: their VIP traffic arrives on its
    // prerouting hook. Redirects would teach the backends to bypass it.
    // Through /proc rather than sysctl(8), which a minimal Debian lacks; /proc/sys/net is the
    // namespace's own under `ip netns exec`.
    for (ns, key, value) in [
        (&lab.client, "ipv4/ip_forward", "1"),
        (&lab.client, "ipv4/conf/all/send_redirects", "0"),
        (&lab.client, "ipv4/conf/vc/send_redirects", "0"),
        (&lab.backends, "ipv4/conf/all/accept_redirects", "0"),
    ] {
        ns.exec(&["sh", "-c", &format!("echo {value} > /proc/sys/net/{key}")]);
    }
    lab.write_config(&format!(
        "[[service]]\nvip = \"10.96.0.30:80\"\ntarget = \"{}\"\n[[service]]\nvip = \"10.96.0.31:80\"\ntarget = \"{}\"\n",
        target(&[backend(1, 8080)]),
        target(&[backend(0, 8080)]),
    ));
    lab.agent_ok(&["--once"]);
    let ask = |ns: &Netns, to: &'static str| {
        ns.run(move || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&to.parse().expect("addr"), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            who(&mut s)
        })
    };
    // A remote client routed through the agent's namespace: its flows meet the prerouting hook.
    let remote = Netns::new(format!("{}-r", lab.client.name));
    lab.client.exec(&["ip", "link", "add", "vr", "type", "veth", "peer", "name", "vx", "netns", &remote.name]);
    lab.client.exec(&["ip", "addr", "add", "10.201.0.1/24", "dev", "vr"]);
    lab.client.exec(&["ip", "link", "set", "vr", "up"]);
    remote.exec(&["ip", "addr", "add", "10.201.0.2/24", "dev", "vx"]);
    remote.exec(&["ip", "link", "set", "vx", "up"]);
    remote.exec(&["ip", "route", "add", "default", "via", "10.201.0.1"]);
    assert_eq!(ask(&remote, "10.96.0.30:80").expect("forwarded flow"), "b1");
    // Hairpin: 10.200.0.11 reaches its own VIP and is DNAT'ed back to itself; without the
    // masquerade the reply would go straight back and the handshake would never complete.
    assert_eq!(ask(&lab.backends, "10.96.0.31:80").expect("hairpin flow"), "b0");
}

#[test]
fn topology_prefers_this_node_and_falls_back() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    let cfg = |eps: &str| {
        format!("[node]\nname = \"n1\"\nzone = \"z1\"\n[[service]]\nvip = \"{TCP_VIP}\"\ntarget = \"static:///{eps}\"\ntopology = [\"node\", \"zone\", \"any\"]\n")
    };
    let (b0, b1, b2) = (backend(0, 8080), backend(1, 8080), backend(2, 8080));
    lab.write_config(&cfg(&format!("{b0};node=n1;zone=z1,{b1};node=n2;zone=z1,{b2};node=n3;zone=z2")));
    lab.agent_ok(&["--once"]);
    assert_eq!(lab.tcp_spread(vip(TCP_VIP), 20).keys().collect::<Vec<_>>(), vec!["b0"], "same node first");
    lab.write_config(&cfg(&format!("{b1};node=n2;zone=z1,{b2};node=n3;zone=z2")));
    lab.agent_ok(&["--once"]);
    assert_eq!(lab.tcp_spread(vip(TCP_VIP), 20).keys().collect::<Vec<_>>(), vec!["b1"], "then same zone");
    lab.write_config(&cfg(&format!("{b2};node=n3;zone=z2")));
    lab.agent_ok(&["--once"]);
    assert_eq!(lab.tcp_spread(vip(TCP_VIP), 20).keys().collect::<Vec<_>>(), vec!["b2"], "then anywhere");
}

#[test]
fn a_bad_config_fails_clearly_and_touches_nothing() {
    skip_unless_capable!();
    let lab = lab_with_servers(1);
    lab.write_config(&config("nftables", &[0], &[0]));
    lab.agent_ok(&["--once"]);
    let table = lab.client.exec(&["nft", "list", "table", "inet", "lb_agent"]);
    lab.write_config(&format!("{}\n[[service]]\nvip = \"10.96.0.99\"\ntarget = \"static:///10.200.0.11:1\"\n", config("nftables", &[0], &[0])));
    let out = lab.agent(&["--once"]);
    assert!(!out.status.success(), "a bad config must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vip `10.96.0.99` is not ip:port"), "{err}");
    assert_eq!(lab.client.exec(&["nft", "list", "table", "inet", "lb_agent"]), table, "the kernel is untouched");
}

#[test]
fn sighup_reloads_the_configuration() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    lab.write_config(&config("nftables", &[0, 1, 2], &[0, 1, 2]));
    let mut agent = lab.spawn_agent(&[]);
    let stderr = agent.stderr.take().expect("stderr");
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let logged = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(e) => panic!("the agent never logged {what:?}: {e}"),
            }
        }
    };
    let hup = |agent: &std::process::Child| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::SIGHUP).expect("SIGHUP");
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the first sync", &|| lab.tcp_who(vip(TCP_VIP)).is_ok());

    // An invalid file is rejected and the agent keeps balancing.
    lab.write_config("[[service]]\nvip = \"nonsense\"\n");
    hup(&agent);
    let rejected = logged("configuration rejected");
    assert!(rejected.contains("keeping the current one"), "{rejected}");
    assert_eq!(lab.tcp_spread(vip(TCP_VIP), 30).len(), 3, "still balancing after a bad reload");

    let mut cfg = config("nftables", &[1, 2], &[0, 1, 2]);
    cfg.push_str(&format!("[[service]]\nvip = \"10.96.0.40:80\"\ntarget = \"{}\"\n", target(&[backend(0, 8080)])));
    lab.write_config(&cfg);
    hup(&agent);
    wait_for("b0 to leave the TCP VIP", &|| !lab.tcp_spread(vip(TCP_VIP), 20).contains_key("b0"));
    assert_eq!(lab.tcp_who(vip("10.96.0.40:80")).expect("the added service"), "b0");
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "kernel matches the reloaded configuration");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn ipv6_and_dual_stack_services_reach_their_own_family() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(3);
    traffic::ipv6_and_dual_stack_reach_their_family(&lab, "nftables", 3);
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "a restart with unchanged dual-stack state writes nothing");
}

#[test]
fn removing_an_ipv6_endpoint_keeps_established_connections() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(3);
    traffic::ipv6_removal_keeps_established(&lab, "nftables");
}

#[test]
fn client_ip_affinity_sticks_and_moves_with_its_endpoint() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(3);
    traffic::affinity_sticks_per_client(&lab, "nftables");
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "a restart with unchanged affinity services writes nothing");
}

#[test]
fn dry_run_of_a_dual_stack_config_shows_both_families() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(2);
    lab.write_config(&traffic::dual_config("nftables", &[0, 1], &[0], "affinity = \"client-ip\""));
    let dry = lab.agent_ok(&["--dry-run"]);
    for needle in [
        "table inet lb_agent {",
        "add element inet lb_agent svc_tcp4 { 10.96.0.50 . 80 : goto aff_t4_0a600032_0050 }",
        "fd00:96::50 . 80 : goto aff_t6_fd000096000000000000000000000050_0050",
        "add element inet lb_agent be_udp6 { fd00:96::53 . 53 . 0 : fd00:200::11 . 5353 }",
        "fd00:96::20 . 80 : goto no_endpoints",
        "timeout 10800s",
        "dnat ip6 to [fd00:200::12]:8080",
        "add element inet lb_agent hairpin6 {",
    ] {
        assert!(dry.contains(needle), "missing `{needle}` in\n{dry}");
    }
    assert!(!lab.client.try_exec(&["nft", "list", "table", "inet", "lb_agent"]).status.success(), "dry run applied nothing");
    // The printed transaction is valid input for nft as it is.
    let file = std::env::temp_dir().join(format!("{}-dry.nft", lab.client.name));
    std::fs::write(&file, &dry).expect("write dry run");
    lab.client.exec(&["nft", "-c", "-f", file.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(file);
}

#[test]
fn cleanup_removes_both_families_and_an_old_ipv4_table_and_nothing_else() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(2);
    let bystander = add_bystander(&lab);
    // What an agent from before dual-stack left behind: its IPv4-only table.
    lab.client.exec(&["nft", "add", "table", "ip", "lb_agent"]);
    lab.client.exec(&["nft", "add", "chain", "ip", "lb_agent", "services"]);
    lab.write_config(&traffic::dual_config("nftables", &[0, 1], &[0], "affinity = \"client-ip\""));
    lab.agent_ok(&["--once"]);
    assert!(!lab.client.try_exec(&["nft", "list", "table", "ip", "lb_agent"]).status.success(), "the old table was replaced");
    assert_eq!(lab.tcp_spread(vip(traffic::DUAL_VIP6), 10).len(), 1, "affinity: one endpoint per source");
    let udp = lab.udp_socket(vip(traffic::UDP_VIP6));
    udp_who(&udp).expect("an IPv6 UDP flow");
    lab.agent_ok(&["cleanup"]);
    let ruleset = lab.client.exec(&["nft", "list", "ruleset"]);
    assert_eq!(ruleset.trim(), bystander.trim(), "cleanup leaves only the bystander");
    lab.agent_ok(&["cleanup"]); // idempotent
}
