//! Shared fixtures for the etcd integration tests: a real `etcd` on free loopback ports, a TCP proxy
//! that can cut connections, echo backends and polling helpers. Pools in these tests connect through
//! `lb_core::test_util::TestConnector::over_tcp`.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::{Endpoint, EndpointSet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("lb-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound then released; etcd binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// PEM files of a throw-away CA, an etcd server certificate (for 127.0.0.1) and a client
/// certificate, made with the `openssl` command line tool.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl (Debian package openssl; scripts/test-all.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=lb-test-ca", "-keyout", "ca.key", "-out", "ca.crt"];
        ca.extend(ec);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run(&ca);
        for (name, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            let (key, csr, crt, extf) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            std::fs::write(dir.join(&extf), ext).expect("write extension file");
            let mut req = vec!["req", "-subj", if name == "server" { "/CN=localhost" } else { "/CN=lb-client" }, "-keyout", &key, "-out", &csr];
            req.extend(ec);
            run(&req);
            run(&["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", &crt, "-extfile", &extf]);
        }
        Certs {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A free loopback port *below* the kernel's ephemeral range, for servers that are restarted on
/// the same port. A port from the ephemeral range can be taken, while the server is down, by any
/// outgoing connection's source port (the load loops open thousands), and the restart then fails.
pub fn server_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (from, to) = (10_000u32, u32::from(low.max(10_001)));
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Spread processes running in parallel apart; then walk.
    let seed = std::process::id() as usize * 7919 + NEXT.fetch_add(1, Ordering::SeqCst) * 104_729;
    for i in 0..2000usize {
        let port = from + ((seed + i * 7) % (to - from) as usize) as u32;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// A real single-member etcd on free loopback ports with its own data dir.
#[derive(Debug)]
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    tls: Option<Certs>,
    name: String,
    /// `--initial-cluster`; `None` for a single member.
    cluster: Option<String>,
}

impl Etcd {
    /// Starts etcd and waits until it serves requests.
    pub async fn start() -> Etcd {
        Self::start_with(None).await
    }

    /// Starts etcd serving clients over TLS only, requiring client certificates signed by the CA.
    pub async fn start_tls() -> Etcd {
        let dir = TempDir::new("certs");
        let certs = Certs::generate(dir.path());
        let etcd = Self::start_with(Some(certs)).await;
        // The certificates live in the etcd dir from now on.
        drop(dir);
        etcd
    }

    async fn start_with(tls: Option<Certs>) -> Etcd {
        let dir = TempDir::new("etcd");
        let tls = tls.map(|c| {
            let copy = |p: &Path| {
                let to = dir.path().join(p.file_name().expect("file name"));
                std::fs::copy(p, &to).expect("copy certificate");
                to
            };
            Certs {
                ca: copy(&c.ca),
                server_cert: copy(&c.server_cert),
                server_key: copy(&c.server_key),
                client_cert: copy(&c.client_cert),
                client_key: copy(&c.client_key),
            }
        });
        let mut etcd = Etcd {
            dir,
            client_port: server_port(),
            peer_port: server_port(),
            child: None,
            tls,
            name: "lbtest".into(),
            cluster: None,
        };
        // Another test process may grab the same port between our check and etcd's bind: then
        // etcd exits at once, and new ports (and a clean data dir) are tried.
        for _ in 0..3 {
            etcd.launch();
            match etcd.try_ready().await {
                Ok(()) => return etcd,
                Err(e) if e.starts_with("exited") => {
                    etcd.child = None;
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                    etcd.client_port = server_port();
                    etcd.peer_port = server_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("etcd could not start on three sets of ports; log:\n{}", etcd.log_tail());
    }

    pub fn certs(&self) -> Option<&Certs> {
        self.tls.as_ref()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("open etcd log");
        let mut cmd = Command::new(std::env::var("LB_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into()));
        let initial = self.cluster.clone().unwrap_or_else(|| format!("{}={peer}", self.name));
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .args(self.tls.iter().flat_map(|c| {
                [
                    format!("--cert-file={}", c.server_cert.display()),
                    format!("--key-file={}", c.server_key.display()),
                    format!("--trusted-ca-file={}", c.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd
            .spawn()
            .expect("start etcd (Debian package etcd-server; scripts/test-all.sh installs it)");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready().await {
            panic!("{e}");
        }
    }

    async fn try_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited at start ({status}); etcd log:\n{}", self.log_tail()));
                }
            }
            if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(2), self.client()).await {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), c.get("/probe", None)).await {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("etcd not ready within 60 s; log:\n{}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.client_port).into()
    }

    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some(c) = &self.tls {
            let read = |p: &Path| std::fs::read(p).expect("read certificate");
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&c.ca)))
                    .identity(etcd_client::Identity::from_pem(read(&c.client_cert), read(&c.client_key))),
            );
        }
        etcd_client::Client::connect([self.endpoint()], Some(opts)).await
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again with the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts again on the same ports with an empty data dir (a lost disk, a fresh member).
    pub async fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.spawn().await;
    }
}

/// A real etcd cluster of several members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    pub async fn start(n: usize) -> EtcdCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (server_port(), server_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| Etcd {
                dir: TempDir::new("etcd-member"),
                client_port,
                peer_port,
                child: None,
                tls: None,
                name: format!("m{i}"),
                cluster: Some(initial.clone()),
            })
            .collect();
        // Every member must be up before any can elect a leader and answer.
        for m in &mut members {
            m.launch();
        }
        for m in &mut members {
            m.wait_ready().await;
        }
        EtcdCluster { members }
    }

    /// `host:port,host:port,…` of every member, for a target URI.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(Etcd::endpoint).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of an address whose connections can be cut and refused on demand, to
/// break a client's connection to etcd while etcd itself keeps running.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (Arc::clone(&open), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().expect("proxy lock").push(h);
            }
        });
        Proxy { addr, open, conns, accept }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for h in self.conns.lock().expect("proxy lock").drain(..) {
            h.abort();
        }
    }

    pub fn resume(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A TCP echo server on an ephemeral loopback port.
#[derive(Debug)]
pub struct Echo {
    pub addr: SocketAddr,
    pub served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let served = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&served);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Echo { addr, served, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request to an echo backend: connect, send, read the echo.
pub async fn echo_request(addr: SocketAddr) -> std::io::Result<()> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        if &buf != b"ping" {
            return Err(std::io::Error::other("bad echo"));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))?
}

/// Applies a discovery stream to an `EndpointSet` in the background, for assertions.
#[derive(Debug)]
pub struct SetWatcher {
    set: Arc<Mutex<EndpointSet>>,
    task: JoinHandle<()>,
}

impl SetWatcher {
    pub fn new(mut discover: BoxDiscover) -> SetWatcher {
        let set: Arc<Mutex<EndpointSet>> = Arc::default();
        let s = Arc::clone(&set);
        let task = tokio::spawn(async move {
            while let Some(item) = discover.next().await {
                if let Ok(update) = item {
                    s.lock().expect("set lock").apply(update);
                }
            }
        });
        SetWatcher { set, task }
    }

    pub fn ids(&self) -> Vec<String> {
        self.set.lock().expect("set lock").iter().map(|e| e.id().to_string()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Endpoint> {
        self.set.lock().expect("set lock").get(&id.into()).cloned()
    }

    /// Waits until `cond` holds on the set; returns how long it took. Panics after `timeout`.
    pub async fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&EndpointSet) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond(&self.set.lock().expect("set lock")) {
                return start.elapsed();
            }
            assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}; set = {:?}", self.ids());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for SetWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls an async condition every 50 ms until it holds; panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys (as strings) under a prefix, read directly from etcd. An etcd that cannot be read is an
/// error, never an empty list: "the key is gone" must not pass because etcd was unreachable.
pub async fn keys(etcd: &Etcd, prefix: &str) -> Result<Vec<String>, String> {
    let mut c = etcd.client().await.map_err(|e| format!("connect to etcd at {}: {e}", etcd.endpoint()))?;
    let get = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()));
    match tokio::time::timeout(Duration::from_secs(5), get).await {
        Ok(Ok(r)) => Ok(r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()),
        Ok(Err(e)) => Err(format!("read {prefix} from etcd: {e}")),
        Err(_) => Err(format!("read {prefix} from etcd: no answer within 5 s")),
    }
}

/// Watches the keys under `prefix` for `period` (say, two TTLs), reading etcd every 100 ms: every
/// reading must find `n` keys on live leases. Keys on leases that outlive their TTL were renewed,
/// which "the keys are there" at one instant does not prove (etcd restores leases with a fresh TTL
/// at restart). A reading that fails is an error, not a pass.
pub async fn stays_registered(etcd: &Etcd, prefix: &str, n: usize, period: Duration) -> Result<(), String> {
    let until = Instant::now() + period;
    let mut readings = 0;
    while Instant::now() < until {
        let ttls = lease_ttls(etcd, prefix).await?;
        if ttls.len() != n || ttls.iter().any(|(_, ttl)| *ttl <= 0) {
            return Err(format!("after {readings} good readings, {prefix} holds {} keys on leases with TTLs {ttls:?}", ttls.len()));
        }
        readings += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// (lease id, remaining TTL in seconds) of every key under `prefix`.
/// The lease and its remaining TTL of every key under `prefix` (TTL -1: the lease is gone).
pub async fn lease_ttls(etcd: &Etcd, prefix: &str) -> Result<Vec<(i64, i64)>, String> {
    let mut c = etcd.client().await.map_err(|e| format!("connect: {e}"))?;
    let r = tokio::time::timeout(Duration::from_secs(5), c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())))
        .await
        .map_err(|_| "get timed out".to_string())?
        .map_err(|e| format!("get: {e}"))?;
    let mut out = Vec::new();
    for kv in r.kvs() {
        let t = c.lease_time_to_live(kv.lease(), None).await.map_err(|e| format!("lease {}: {e}", kv.lease()))?;
        out.push((kv.lease(), t.ttl()));
    }
    Ok(out)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
