//! The processes the report runs against: greeter backends (this binary re-executed as
//! `lb-report backend`, so that a backend can be SIGKILLed like a real one) and nginx.
//!
//! Backends are separate processes so that the client under test does not share a Tokio runtime
//! with them, and so that a "crash" is a real SIGKILL: the kernel resets the connections, no
//! graceful HTTP/2 GOAWAY is sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A greeter backend running as a child process. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct BackendProc {
    addr: SocketAddr,
    delay: Duration,
    netns: Option<String>,
    child: Option<Child>,
    /// The rest of its stdout: answers to `calls`.
    lines: Option<Lines<BufReader<ChildStdout>>>,
}

/// How a backend process behaves beyond its delay.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shape {
    /// Calls served at once (the rest queue).
    pub(crate) capacity: Option<usize>,
    /// Report load with ORCA.
    pub(crate) orca: bool,
    /// The share of calls answered UNAVAILABLE.
    pub(crate) fail_fraction: f64,
    /// The share of calls that wait `tail_delay` more.
    pub(crate) tail_fraction: f64,
    /// The extra wait of the tail.
    pub(crate) tail_delay: Duration,
}

impl BackendProc {
    /// Starts `lb-report backend --listen <listen> --delay-ms <delay>` and waits for its address.
    pub(crate) async fn start(listen: SocketAddr, delay: Duration) -> anyhow::Result<BackendProc> {
        BackendProc::start_in(None, listen, delay).await
    }

    /// Like [`BackendProc::start`], inside the network namespace `netns` (`ip netns exec`).
    pub(crate) async fn start_in(netns: Option<&str>, listen: SocketAddr, delay: Duration) -> anyhow::Result<BackendProc> {
        BackendProc::start_shaped(netns, listen, delay, Shape::default()).await
    }

    /// Like [`BackendProc::start_in`], with a capacity and ORCA reporting.
    pub(crate) async fn start_shaped(
        netns: Option<&str>,
        listen: SocketAddr,
        delay: Duration,
        shape: Shape,
    ) -> anyhow::Result<BackendProc> {
        let exe = std::env::current_exe().context("locate the lb-report binary")?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .arg("backend")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--delay-us")
            .arg(delay.as_micros().to_string())
            .args(shape.capacity.map(|c| format!("--capacity={c}")))
            .args(shape.orca.then_some("--orca"))
            .arg(format!("--fail-fraction={}", shape.fail_fraction))
            .arg(format!("--tail-fraction={}", shape.tail_fraction))
            .arg(format!("--tail-us={}", shape.tail_delay.as_micros()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn a backend process")?;
        let stdout = child.stdout.take().context("backend stdout is piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("backend did not report its address within 10 s")??
            .context("backend exited before reporting its address")?;
        let addr: SocketAddr = line
            .strip_prefix("listening ")
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("unexpected backend output `{line}`"))?;
        Ok(BackendProc { addr, delay, netns: netns.map(str::to_string), child: Some(child), lines: Some(lines) })
    }

    /// The backend's address (also the address its replies name).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tells the backend to serve at most `n` calls at once from now on.
    pub(crate) async fn set_capacity(&mut self, n: usize) -> anyhow::Result<()> {
        self.command(&format!("capacity {n}")).await
    }

    /// Stalls the backend (it answers nothing, its connections stay open) or resumes it.
    pub(crate) async fn set_stalled(&mut self, stalled: bool) -> anyhow::Result<()> {
        self.command(if stalled { "stall" } else { "resume" }).await
    }

    /// The calls the backend has received so far (answered, failed, cancelled or in progress).
    pub(crate) async fn calls(&mut self) -> anyhow::Result<u64> {
        self.command("calls").await?;
        let lines = self.lines.as_mut().context("the backend is running")?;
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the backend did not answer `calls` within 10 s")??
            .context("the backend exited")?;
        line.strip_prefix("calls ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("unexpected backend output `{line}`"))
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.as_mut().and_then(|c| c.stdin.as_mut()).context("the backend is running")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// SIGKILLs the process and reaps it.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.lines = None;
    }

    /// Starts the backend again on the same address after [`BackendProc::kill`].
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let again = BackendProc::start_in(self.netns.as_deref(), self.addr, self.delay).await?;
        *self = again;
        Ok(())
    }
}

/// The body of `lb-report backend`: serve the greeter until killed. Lines on stdin: `capacity N`
/// resizes its capacity, `stall` and `resume` stall it and resume it, `calls` prints `calls N`
/// (the calls it received) on stdout.
pub(crate) async fn serve_backend(listen: SocketAddr, delay: Duration, shape: Shape) -> anyhow::Result<()> {
    let config = lb_examples::server::Config {
        delay,
        capacity: shape.capacity,
        orca: shape.orca,
        fail_fraction: shape.fail_fraction,
        tail_fraction: shape.tail_fraction,
        tail_delay: shape.tail_delay,
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let backend = lb_examples::server::Backend::bind_with(listen, config)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("listening {}", backend.addr());
    // Serve until the parent kills this process (or the parent dies: stdin then closes).
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "stall" => backend.set_stalled(true),
            "resume" => backend.set_stalled(false),
            "calls" => {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                writeln!(out, "calls {}", backend.received())?;
                out.flush()?;
            }
            other => {
                if let Some(n) = other.strip_prefix("capacity ").and_then(|n| n.trim().parse().ok()) {
                    backend.set_capacity(n).await;
                }
            }
        }
    }
    drop(backend);
    Ok(())
}

/// A free loopback port below the ephemeral range, so a killed backend can be restarted on it
/// without an outgoing connection having taken it meanwhile.
pub(crate) fn stable_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32768);
    let span = low.max(10_001) - 10_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Ports handed out but not bound yet (etcd's client and peer ports) must differ.
    let seed = std::process::id().wrapping_add(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 104_729);
    for i in 0..2000u32 {
        let port = 10_000 + (seed.wrapping_mul(7919).wrapping_add(i * 13)) % span;
        let port = u16::try_from(port).expect("ports below the ephemeral range fit in u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    0
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub(crate) fn new(tag: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("lb-report-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx, started with a generated config as a gRPC (`grpc_pass`) proxy over the backends.
#[derive(Debug)]
pub(crate) struct Nginx {
    addr: SocketAddr,
    child: Child,
    binary: PathBuf,
    dir: TempDir,
    /// The `nginx -v` line.
    pub(crate) version: String,
}

/// The nginx binary, if installed.
pub(crate) fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Nginx {
    /// Starts nginx in the foreground (`daemon off`) on a free loopback port, proxying HTTP/2
    /// cleartext gRPC to `backends` round robin (nginx's default) with upstream keepalive.
    pub(crate) async fn start(binary: &Path, backends: &[SocketAddr]) -> anyhow::Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        let port = stable_port();
        let d = dir.path().display();
        let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
        // `user root` only matters when running as root: the workers then need no access to a
        // user's temp dir. One worker per core, as nginx recommends (`auto`).
        let user = if is_root() { "user root;\n" } else { "" };
        let conf = format!(
            "{user}worker_processes auto;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             upstream greeters {{\n{servers}    keepalive 64;\n    keepalive_requests 1000000;\n  }}\n  \
             server {{\n    listen 127.0.0.1:{port} http2;\n    http2_max_concurrent_streams 1024;\n    keepalive_requests 1000000;\n    \
             location / {{ grpc_pass grpc://greeters; }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).context("write nginx.conf")?;
        let version = std::process::Command::new(binary)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nginx")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut nginx = Nginx { addr, child, binary: binary.to_path_buf(), dir, version };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited with {status}: {log}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(nginx);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address clients connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops nginx and waits for it: `nginx -s stop` (SIGTERM through the pid file, which the
    /// master forwards to its workers). Killing the master alone would orphan the workers.
    pub(crate) async fn stop(mut self) {
        self.signal_stop();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    fn signal_stop(&self) {
        let _ = std::process::Command::new(&self.binary)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // On early returns (a failed scenario) still stop the workers, not just the master.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_stop();
            for _ in 0..40 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
    }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
