//! Shared fixtures: run the example binaries as child processes and clean them up.

#![allow(dead_code, unreachable_pub)] // each test file uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A `greeter-server` child process, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    /// The rest of its stdout (kept open: the server prints a summary line when it stops).
    stdout: BufReader<ChildStdout>,
    log: Option<std::path::PathBuf>,
}

impl Server {
    /// Starts `greeter-server --addr 127.0.0.1:0 <extra>` and reads the address it prints first.
    pub fn start(extra: &[&str]) -> Server {
        Self::spawn(extra, None)
    }

    /// Like [`Server::start`], with the server's stderr (at `info`, and each answered call at
    /// `debug`) kept in a file for [`Server::log`].
    pub fn start_logged(extra: &[&str]) -> Server {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lb-examples-server-{}-{n}.log", std::process::id()));
        Self::spawn(extra, Some(path))
    }

    fn spawn(extra: &[&str], log: Option<std::path::PathBuf>) -> Server {
        let (stderr, level) = match &log {
            Some(path) => (Stdio::from(std::fs::File::create(path).expect("create the server log")), "info,lb_examples::server=debug"),
            None => (Stdio::inherit(), "warn"),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("greeter-server starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read the first stdout line");
        let addr = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("greeter-server's first line is its address, got {first:?}"));
        Server { addr, child, stdout, log }
    }

    /// What the server logged so far (empty unless started with [`Server::start_logged`]).
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Waits until the server has answered a call (it must have been started with
    /// [`Server::start_logged`]): the event a test waits for before it stops a server under load.
    pub fn wait_answered(&self) {
        assert!(self.log.is_some(), "wait_answered needs a server started with start_logged");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains("hello answered") {
            assert!(std::time::Instant::now() < deadline, "{} answered no call within 30 s", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it exited 0.
    pub fn terminate(self) -> bool {
        self.terminate_with_log().0
    }

    /// [`Server::terminate`], then the calls the server says it received (its last stdout line,
    /// `{"addr":"ip:port","calls":N}`); panics when the line is missing or malformed.
    pub fn terminate_with_calls(mut self) -> (bool, u64) {
        let addr = self.addr;
        let mut rest = String::new();
        // Read to the end first: the pipe closes when the server exits.
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).expect("read the server's stdout to its end");
        let clean = self.child.wait().expect("reap greeter-server").success();
        let last = rest.lines().last().unwrap_or_else(|| panic!("no summary line on stdout: {rest:?}"));
        let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("summary `{last}`: {e}"));
        assert_eq!(v["addr"].as_str(), Some(addr.to_string().as_str()), "{last}");
        let calls = v["calls"].as_u64().unwrap_or_else(|| panic!("no calls count in `{last}`"));
        (clean, calls)
    }

    /// [`Server::terminate`], also returning the server's log.
    pub fn terminate_with_log(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        // Generous: a drain delay, a deregistration, and a loaded machine.
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return (status.success(), self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("greeter-server did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = &self.log {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A `static:///` target listing the servers.
pub fn static_target(servers: &[&Server]) -> String {
    let list: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// Runs `greeter-client` to completion and returns its output.
pub fn run_client(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("greeter-client runs")
}

/// A free loopback port (bound then released; the child process binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// A real single-member etcd (Debian's `etcd-server`) on free loopback ports, killed on drop.
pub struct Etcd {
    pub port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl Etcd {
    /// Starts etcd and waits (at most 30 s) until `/health` answers.
    pub fn start() -> Etcd {
        let port = free_port();
        let peer = free_port();
        let dir = std::env::temp_dir().join(format!("lb-examples-etcd-{}-{port}", std::process::id()));
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name=lbexamples")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=lbexamples={peer_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd.spawn().expect("start etcd (Debian package etcd-server; scripts/test-all.sh installs it)");
        let mut etcd = Etcd { port, child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !etcd.healthy() {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!("etcd exited at start: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "etcd not healthy within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
