//! Test fixtures: network namespaces with real TCP/UDP backends, and the agent binary run inside.
//!
//! Every lab creates its own namespaces (`lbt-<pid>-<n>-c` for the client and the agent,
//! `lbt-<pid>-<n>-b` for the backends), joined by a veth pair created directly inside them, with
//! addresses from 10.200.0.0/24 and fd00:200::/64 that exist only there (IPv6 ones without
//! duplicate address detection, so they are usable at once). Dropping the lab (also on panic) stops the
//! servers and deletes the namespaces. Nothing touches the host's own tables.
#![allow(dead_code, unreachable_pub)]

pub mod traffic;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Why these tests cannot run here, if they cannot: only when not root.
///
/// As root — CI, where `scripts/test-all.sh` runs and installs the tools — nothing excuses a test:
/// a missing tool or a namespace that cannot be created panics, so the test fails instead of
/// passing without having run.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root: the agent tests need network namespaces and netfilter".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("running as root, but `ip netns list` fails: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("running as root, but `ip` cannot run (install iproute2): {e}"),
    }
    for tool in ["nft", "iptables-restore", "conntrack"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success()) {
            panic!("running as root, but `{tool}` is not installed (scripts/test-all.sh installs it)");
        }
    }
    // Creating a namespace is what the tests need; some sandboxes let root list but not create.
    let probe = format!("lbt-{}-probe-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let created = Command::new("ip").args(["netns", "add", &probe]).output().expect("spawn ip netns add");
    assert!(
        created.status.success(),
        "running as root, but a network namespace cannot be created: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    None
}

/// Reports that the calling test skips itself: `SKIPPED <binary>::<test>: <reason>` on the
/// process's real stdout (the harness captures only the `print!` macros, so a skip printed with
/// them is never seen) and in the file `$LB_TEST_SKIP_LOG`, which `scripts/test-all.sh` lists at
/// the end. The same contract as `lb_core::test_util::skip`, which this crate's tests do not link.
pub fn skipped(reason: &str) {
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_string();
    let exe = std::env::current_exe().ok();
    let stem = exe.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let binary = stem.rsplit_once('-').map_or(stem.as_str(), |(name, _)| name);
    let line = format!("SKIPPED {binary}::{test}: {reason}\n");
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("LB_TEST_SKIP_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// Returns early from a test, reporting the skip where it is seen, when it cannot run here (not
/// root); as root a missing capability fails the test instead (see [`skip_reason`]).
#[macro_export]
macro_rules! skip_unless_capable {
    () => {
        if let Some(reason) = support::skip_reason() {
            support::skipped(&reason);
            return;
        }
    };
}

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn command");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside; panics with its stderr if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&sh(&full).stdout).into_owned()
    }

    /// Runs a command inside and returns its output whatever the status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("spawn ip netns exec")
    }

    /// Runs `f` on a thread that entered this namespace; sockets it creates stay in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

fn enter(path: &str) {
    let f = File::open(path).expect("open netns file");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A client namespace (where the agent runs) and a backend namespace with `n` addresses.
pub struct Lab {
    pub client: Netns,
    pub backends: Netns,
    pub config: PathBuf,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Lab {
    pub fn new(backends: u8) -> Lab {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("lbt-{}-{n}", std::process::id());
        let client = Netns::new(format!("{base}-c"));
        let be = Netns::new(format!("{base}-b"));
        client.exec(&["ip", "link", "add", "vc", "type", "veth", "peer", "name", "vb", "netns", &be.name]);
        client.exec(&["ip", "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"]);
        client.exec(&["ip", "link", "set", "vc", "up"]);
        client.exec(&["ip", "addr", "add", &format!("{CLIENT_IP6}/64"), "dev", "vc", "nodad"]);
        for i in 0..backends {
            be.exec(&["ip", "addr", "add", &format!("{}/24", backend_ip(i)), "dev", "vb"]);
            be.exec(&["ip", "addr", "add", &format!("{}/64", backend_ip6(i)), "dev", "vb", "nodad"]);
        }
        be.exec(&["ip", "link", "set", "vb", "up"]);
        // VIPs need a route before DNAT rewrites them; any next hop on the link does.
        client.exec(&["ip", "route", "add", "default", "via", &backend_ip(0).to_string()]);
        be.exec(&["ip", "route", "add", "default", "via", &CLIENT_IP.to_string()]);
        if backends > 0 {
            client.exec(&["ip", "-6", "route", "add", "default", "via", &backend_ip6(0).to_string()]);
        }
        be.exec(&["ip", "-6", "route", "add", "default", "via", &CLIENT_IP6.to_string()]);
        Lab {
            client,
            backends: be,
            config: std::env::temp_dir().join(format!("{base}.toml")),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        }
    }

    /// Starts a TCP server at `addr` in the backend namespace; every line it reads is answered
    /// with `name`, so one connection can be asked "who are you" many times.
    pub fn tcp_backend(&mut self, addr: impl Into<SocketAddr>, name: &str) {
        let (stop, name, addr) = (self.stop.clone(), name.to_string(), addr.into());
        let path = format!("/run/netns/{}", self.backends.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.servers.push(std::thread::spawn(move || {
            enter(&path);
            let l = TcpListener::bind(addr).expect("bind backend");
            l.set_nonblocking(true).expect("nonblocking listener");
            ready_tx.send(()).expect("signal ready");
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (name, stop) = (name.clone(), stop.clone());
                        std::thread::spawn(move || serve_lines(s, &name, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        ready_rx.recv().expect("backend started");
    }

    /// Starts a UDP server at `addr` answering every datagram with `name`.
    pub fn udp_backend(&mut self, addr: impl Into<SocketAddr>, name: &str) {
        let (stop, name, addr) = (self.stop.clone(), name.to_string(), addr.into());
        let path = format!("/run/netns/{}", self.backends.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.servers.push(std::thread::spawn(move || {
            enter(&path);
            let s = UdpSocket::bind(addr).expect("bind udp backend");
            s.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
            ready_tx.send(()).expect("signal ready");
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(name.as_bytes(), peer);
                }
            }
        }));
        ready_rx.recv().expect("backend started");
    }

    /// Writes the agent's configuration file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Runs the agent inside the client namespace and waits for it.
    pub fn agent(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client.name, AGENT, "--config"])
            .arg(&self.config)
            .args(args)
            .output()
            .expect("spawn agent");
        out
    }

    /// Runs the agent and asserts it succeeded; returns stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent(args);
        assert!(
            out.status.success(),
            "lb-agent {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the agent in the background (stderr piped for the caller to watch).
    pub fn spawn_agent(&self, args: &[&str]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.client.name, AGENT, "--config"])
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent")
    }

    /// Opens a TCP connection from the client namespace.
    pub fn connect(&self, to: impl Into<SocketAddr>) -> std::io::Result<TcpStream> {
        let to = to.into();
        self.client.run(move || {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(s)
        })
    }

    /// Opens a TCP connection from the client namespace with source address `from` (one that
    /// [`Lab::add_client_ips`] added).
    pub fn connect_from(&self, from: IpAddr, to: impl Into<SocketAddr>) -> std::io::Result<TcpStream> {
        use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
        let to = to.into();
        self.client.run(move || {
            let family = if from.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            // Bounds connect() as connect_timeout does (Linux applies SO_SNDTIMEO to connect).
            socket::setsockopt(&fd, sockopt::SendTimeout, &nix::sys::time::TimeVal::new(3, 0))?;
            socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(SocketAddr::new(from, 0)))?;
            socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(to))?;
            let s = TcpStream::from(fd);
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(s)
        })
    }

    /// Adds `n` more client addresses (10.200.0.100+ and fd00:200::100+) to the client's link.
    pub fn add_client_ips(&self, n: u8) -> Vec<(IpAddr, IpAddr)> {
        (0..n)
            .map(|i| {
                let v4 = Ipv4Addr::new(10, 200, 0, 100 + i);
                let v6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x100 + u16::from(i));
                self.client.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "vc"]);
                self.client.exec(&["ip", "addr", "add", &format!("{v6}/64"), "dev", "vc", "nodad"]);
                (IpAddr::V4(v4), IpAddr::V6(v6))
            })
            .collect()
    }

    /// Connects to `to`, asks who answers, and closes.
    pub fn tcp_who(&self, to: impl Into<SocketAddr>) -> std::io::Result<String> {
        let mut s = self.connect(to)?;
        who(&mut s)
    }

    /// Counts which backend answers `n` fresh TCP connections.
    pub fn tcp_spread(&self, to: impl Into<SocketAddr>, n: usize) -> BTreeMap<String, usize> {
        let to = to.into();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let name = self.tcp_who(to).expect("connect to the VIP");
            *seen.entry(name).or_insert(0) += 1;
        }
        seen
    }

    /// A UDP socket in the client namespace, connected to `to`.
    pub fn udp_socket(&self, to: impl Into<SocketAddr>) -> UdpSocket {
        let to = to.into();
        self.client.run(move || {
            let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().expect("any") } else { "[::]:0".parse().expect("any") };
            let s = UdpSocket::bind(any).expect("bind client udp");
            s.connect(to).expect("connect udp");
            s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            s
        })
    }

    /// Counts which backend answers one datagram from each of `n` fresh sockets.
    pub fn udp_spread(&self, to: impl Into<SocketAddr>, n: usize) -> BTreeMap<String, usize> {
        let to = to.into();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let s = self.udp_socket(to);
            let name = udp_who(&s).expect("datagram answered");
            *seen.entry(name).or_insert(0) += 1;
        }
        seen
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

fn serve_lines(s: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Asks a connection which backend it reached.
pub fn who(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    Ok(line.trim().to_string())
}

/// Sends a datagram and returns the answering backend's name.
pub fn udp_who(s: &UdpSocket) -> std::io::Result<String> {
    s.send(b"who")?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 11 + i)
}

pub fn backend(i: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(backend_ip(i), port)
}

pub fn backend_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x11 + u16::from(i))
}

pub fn backend6(i: u8, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(backend_ip6(i), port, 0, 0)
}

pub fn vip(s: &str) -> SocketAddr {
    s.parse().expect("valid vip")
}

/// A static target listing `addrs`.
pub fn target<A: ToString>(addrs: &[A]) -> String {
    format!("static:///{}", addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
}

/// Standard names of the backends: b0, b1, ….
pub fn name(i: u8) -> String {
    format!("b{i}")
}

/// Names of the IPv6 backends: v6-b0, v6-b1, ….
pub fn name6(i: u8) -> String {
    format!("v6-b{i}")
}

/// A lab with `n` TCP backends on :8080 and `n` UDP backends on :5353, named b0…
pub fn lab_with_servers(n: u8) -> Lab {
    let mut lab = Lab::new(n);
    for i in 0..n {
        lab.tcp_backend(backend(i, 8080), &name(i));
        lab.udp_backend(backend(i, 5353), &name(i));
    }
    lab
}

/// [`lab_with_servers`] plus the same servers on the backends' IPv6 addresses, named v6-b0…
pub fn dual_lab_with_servers(n: u8) -> Lab {
    let mut lab = lab_with_servers(n);
    for i in 0..n {
        lab.tcp_backend(backend6(i, 8080), &name6(i));
        lab.udp_backend(backend6(i, 5353), &name6(i));
    }
    lab
}
