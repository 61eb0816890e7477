//! Benchmark (not a test): etcd discovery propagation and initial load.
//!
//! ```text
//! cargo run --release -p lb-registry --features etcd --example etcd_bench [-- CHANGES INSTANCES]
//! ```
//!
//! Starts its own etcd (the `etcd` binary on PATH, or `LB_BENCH_ETCD=host:port` to use a running one)
//! and measures, side by side in one run:
//!
//! 1. Propagation: for CHANGES (default 200) alternating puts and deletes of an instance key, the
//!    time from issuing the etcd request to the change being visible in a `lb_core::Pool`'s picker
//!    (through `EtcdResolver` and its cache), next to a raw `etcd-client` watch on the same prefix —
//!    the floor any etcd-based client pays — and the ratio of the two.
//! 2. Initial load: INSTANCES (default 10,000) under one service, time from creating the resolver to
//!    a picker holding all of them, next to a raw paginated `get` of the same prefix, plus the
//!    resident-memory growth of the process (pool + cache + resolver).

#[cfg(not(feature = "etcd"))]
fn main() {
    eprintln!("etcd_bench needs the etcd feature: cargo run --release -p lb-registry --features etcd --example etcd_bench");
}

#[cfg(feature = "etcd")]
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(bench::run());
}

#[cfg(feature = "etcd")]
mod bench {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use etcd_client::{Client, EventType, GetOptions, WatchOptions};
    use futures_util::StreamExt as _;
    use lb_core::policy::RoundRobin;
    use lb_core::test_util::TestConnector;
    use lb_core::{Pool, PoolConfig};
    use lb_registry::etcd::EtcdResolver;
    use lb_registry::Resolver as _;
    use tokio::time::Instant;

    /// Connects instantly, so what is measured is discovery, not TCP.
    fn instant() -> TestConnector<()> {
        TestConnector::with_connection(|_| ())
    }

    struct Server {
        child: Option<Child>,
        dir: std::path::PathBuf,
        endpoint: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    async fn etcd() -> Server {
        if let Ok(ep) = std::env::var("LB_BENCH_ETCD") {
            return Server { child: None, dir: std::env::temp_dir().join("unused-lb-bench"), endpoint: ep };
        }
        let dir = std::env::temp_dir().join(format!("lb-etcd-bench-{}", std::process::id()));
        let (c, p) = (port(), port());
        let mut cmd = Command::new("etcd");
        cmd.arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{p}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd.spawn().expect("start etcd (install etcd-server)");
        let server = Server { child: Some(child), dir, endpoint: format!("127.0.0.1:{c}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut cl) = Client::connect([server.endpoint.clone()], None).await {
                if cl.get("/probe", None).await.is_ok() {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn value(port: u16) -> String {
        format!(r#"{{"v":1,"addr":"10.1.{}.{}:{port}","zone":"z{}"}}"#, port / 250, port % 250, port % 3)
    }

    fn rss_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
            .map_or(0, |pages| pages * 4096)
    }

    fn pct(sorted: &[Duration], p: f64) -> Duration {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    async fn wait_until(pool: &Pool<()>, timeout: Duration, cond: impl Fn(&Pool<()>) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut rx = pool.subscribe();
        loop {
            if cond(pool) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return cond(pool);
            }
        }
    }

    pub(super) async fn run() {
        let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
        let changes = args.first().copied().unwrap_or(200).max(100);
        let instances = args.get(1).copied().unwrap_or(10_000);
        let server = etcd().await;
        let mut client = Client::connect([server.endpoint.clone()], None).await.expect("connect");
        println!("etcd at {}; {changes} changes; {instances} instances", server.endpoint);

        // ---- propagation -------------------------------------------------------------------
        let prefix = "/lb/services/prop/";
        for i in 0..2u16 {
            client.put(format!("{prefix}base{i}"), value(1000 + i), None).await.expect("put");
        }
        let resolver = EtcdResolver::builder([server.endpoint.clone()]).build_resolver().expect("options");
        let pool = Pool::spawn(resolver.resolve("prop"), instant(), RoundRobin::new(), PoolConfig::new("prop"));
        assert!(pool.ready_timeout(Duration::from_secs(10)).await, "pool ready");

        // The floor: a raw watch on the same prefix, timestamps taken as events arrive.
        let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<(bool, Instant)>();
        let mut wc = client.clone();
        let (_w, mut ws) = wc
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .expect("raw watch")
            .split();
        tokio::spawn(async move {
            while let Ok(Some(r)) = ws.message().await {
                let now = Instant::now();
                for e in r.events() {
                    let _ = raw_tx.send((e.event_type() == EventType::Put, now));
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let has = |p: &Pool<()>, healthy: bool| {
            p.snapshot()
                .entries()
                .iter()
                .any(|e| e.endpoint.id().as_str() == "moving" && (!healthy || e.healthy))
        };
        let (mut lb_issue, mut lb_ack, mut raw_issue) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..changes {
            let put = i % 2 == 0;
            let t0 = Instant::now();
            if put {
                client.put(format!("{prefix}moving"), value(2000 + (i % 500) as u16), None).await.expect("put");
            } else {
                client.delete(format!("{prefix}moving"), None).await.expect("delete");
            }
            let acked = Instant::now();
            let ok = wait_until(&pool, Duration::from_secs(10), |p| if put { has(p, true) } else { !has(p, false) }).await;
            assert!(ok, "change {i} never reached the picker");
            let seen = Instant::now();
            let (kind, raw_at) = tokio::time::timeout(Duration::from_secs(10), raw_rx.recv())
                .await
                .expect("raw watch event")
                .expect("raw watch open");
            assert_eq!(kind, put, "raw watch saw the change");
            lb_issue.push(seen - t0);
            lb_ack.push(seen.saturating_duration_since(acked));
            raw_issue.push(raw_at.saturating_duration_since(t0));
        }
        for v in [&mut lb_issue, &mut lb_ack, &mut raw_issue] {
            v.sort();
        }
        println!("\npropagation over {changes} changes (put/delete alternating), ms");
        println!("{:<44} {:>8} {:>8} {:>8}", "", "p50", "p99", "max");
        for (name, v) in [
            ("request issued -> lb picker", &lb_issue),
            ("request acknowledged -> lb picker", &lb_ack),
            ("request issued -> raw etcd watch (floor)", &raw_issue),
        ] {
            println!("{name:<44} {:>8.2} {:>8.2} {:>8.2}", ms(pct(v, 0.5)), ms(pct(v, 0.99)), ms(pct(v, 1.0)));
        }
        println!(
            "ratio lb/raw watch: p50 {:.2}x, p99 {:.2}x   (target: lb p99 <= 50 ms)",
            ms(pct(&lb_issue, 0.5)) / ms(pct(&raw_issue, 0.5)).max(1e-6),
            ms(pct(&lb_issue, 0.99)) / ms(pct(&raw_issue, 0.99)).max(1e-6)
        );
        drop(pool);

        // ---- initial load ------------------------------------------------------------------
        let big = "/lb/services/big/";
        let mut tasks = Vec::new();
        let per = instances.div_ceil(8);
        for w in 0..8 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w * per)..((w + 1) * per).min(instances) {
                    let v = format!(
                        r#"{{"v":1,"addr":"10.{}.{}.{}:8080","weight":100,"zone":"z{}","region":"r1","node":"n{}","metadata":{{"version":"1.4.2"}}}}"#,
                        i / 65536 % 256,
                        i / 256 % 256,
                        i % 256,
                        i % 3,
                        i % 50
                    );
                    c.put(format!("{big}i-{i:05}"), v, None).await.expect("put");
                }
            }));
        }
        for t in tasks {
            t.await.expect("loader");
        }

        let t0 = Instant::now();
        let mut raw = 0;
        let mut from = big.as_bytes().to_vec();
        loop {
            let r = client
                .get(from.clone(), Some(GetOptions::new().with_range("/lb/services/big0").with_limit(1000)))
                .await
                .expect("raw get");
            raw += r.kvs().len();
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let raw_time = t0.elapsed();
        assert_eq!(raw, instances);

        // The registry side alone: list + decode + cache, up to the full set leaving the stream.
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        let resolver = EtcdResolver::builder([server.endpoint.clone()]).build_resolver().expect("options");
        let mut stream = resolver.resolve("big");
        let delivered = loop {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Ok(lb_core::Update::Reset(l)))) => break l.len(),
                Ok(Some(_)) => continue,
                _ => panic!("the resolver delivered no full set"),
            }
        };
        let reset_time = t0.elapsed();
        assert_eq!(delivered, instances);
        drop(stream);

        let t0 = Instant::now();
        let resolver = EtcdResolver::builder([server.endpoint.clone()]).build_resolver().expect("options");
        let pool = Pool::spawn(resolver.resolve("big"), instant(), RoundRobin::new(), PoolConfig::new("big"));
        let first = wait_until(&pool, Duration::from_secs(60), |p| p.snapshot().entries().len() == instances).await;
        let listed = t0.elapsed();
        let all = wait_until(&pool, Duration::from_secs(60), |p| p.snapshot().healthy() == instances).await;
        let ready = t0.elapsed();
        assert!(first && all, "all {instances} instances reached the picker");
        let rss1 = rss_bytes();
        println!("\ninitial load of {instances} instances under one service");
        println!("raw paginated etcd get (floor)              {:>8.1} ms", ms(raw_time));
        println!("resolver -> full set delivered (no pool)   {:>8.1} ms  ({:.2}x the raw get)", ms(reset_time), ms(reset_time) / ms(raw_time));
        println!("resolver -> picker knows all                {:>8.1} ms  ({:.2}x the raw get)", ms(listed), ms(listed) / ms(raw_time));
        println!("resolver -> all pickable (connected)        {:>8.1} ms  (target <= 1000 ms)", ms(ready));
        println!(
            "resident memory growth (resolver + pool)    {:>8.1} MiB ({:.0} bytes/instance, approximate: allocator reuse)",
            (rss1.saturating_sub(rss0)) as f64 / 1048576.0,
            (rss1.saturating_sub(rss0)) as f64 / instances as f64
        );
        drop(pool);
        drop(server);
    }
}
