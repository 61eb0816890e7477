//! End-to-end unary gRPC on loopback: 4 tonic backends (in a child process, as backends are other
//! processes in real life), 64 concurrent callers, side by side in one run:
//!
//! - `LbChannel` (P2C PeakEWMA, the default);
//! - tonic's `Channel::balance_list` over the same 4 backends (tower's P2C behind one `Buffer` task);
//! - one direct tonic `Channel` to a single backend: the floor (no balancing at all);
//! - `LbChannel` over that same single backend, which isolates the cost of lb's request path;
//! - `LbChannel` with round robin, which separates the policy's effect from the request path's;
//! - `LbChannel` with PeakEWMA forgetting faster (τ = 1 s instead of linkerd's 10 s), which shows
//!   how much of PeakEWMA's result on identical backends is its memory of latency spikes;
//! - `LbChannel` (P2C PeakEWMA) recording its per-call metrics into a Prometheus recorder
//!   (metrics-exporter-prometheus, A66's buckets, upkeep every 5 s and a render every 15 s as a
//!   scrape would), against the first mode, whose per-call handles were registered before any
//!   recorder was installed and so are the no-ops a process without a recorder has.
//!
//! Each mode runs `LB_BENCH_SECS` seconds (default 3) after a 1 s warm-up; the modes run
//! interleaved, `LB_BENCH_ROUNDS` rounds (default 5), and each figure is the median over rounds
//! with the min–max beside it; each ratio is the median of the per-round ratios, with their
//! min–max, so one lucky round cannot carry it.
//! Results are ratios, because the machine is shared and absolute numbers are noise. Besides
//! throughput and latency it reports the client process's CPU time per call (from /proc), the
//! figure least disturbed by other load: it is what the request path itself costs.
//!
//! Run: `cargo bench -p lb-tonic --bench grpc`

#[path = "../tests/support/lbtest.rs"]
#[allow(dead_code, unreachable_pub, missing_docs, clippy::all)]
mod lbtest;

use std::net::SocketAddr;
use std::time::Duration;

use lbtest::echo_client::EchoClient;
use lbtest::echo_server::{Echo, EchoServer};
use lbtest::{EchoReply, EchoRequest};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

const CALLERS: usize = 64;
const BACKENDS: usize = 4;

#[derive(Clone)]
struct Svc(String);

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            backend: self.0.clone(),
            message: req.into_inner().message,
        }))
    }

    type ServerStreamStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn server_stream(&self, _: Request<EchoRequest>) -> Result<Response<Self::ServerStreamStream>, Status> {
        Err(Status::unimplemented("not benchmarked"))
    }
}

async fn start_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(EchoServer::new(Svc(addr.to_string())))
            .serve_with_incoming(incoming),
    );
    addr
}

#[derive(Clone, Copy, Debug)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// This (client) process's CPU time per call, in microseconds.
    cpu_us: f64,
}

/// User + system CPU time of this process (all threads), from /proc (Linux), in seconds.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn run<T>(client: EchoClient<T>, secs: f64) -> Figures
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let go = |dur: Duration| {
        let client = client.clone();
        async move {
            let stop = Instant::now() + dur;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CALLERS {
                let mut c = client.clone();
                tasks.spawn(async move {
                    let mut lat = Vec::with_capacity(16 * 1024);
                    let mut errors = 0u64;
                    while Instant::now() < stop {
                        let t = Instant::now();
                        match c.unary(EchoRequest::default()).await {
                            Ok(_) => lat.push(t.elapsed().as_micros() as u32),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                });
            }
            let mut all = Vec::new();
            let mut errors = 0;
            while let Some(r) = tasks.join_next().await {
                let (l, e) = r.expect("caller does not panic");
                all.extend(l);
                errors += e;
            }
            (all, errors)
        }
    };
    go(Duration::from_secs(1)).await;
    let dur = Duration::from_secs_f64(secs);
    let cpu0 = process_cpu();
    let (mut lat, errors) = go(dur).await;
    let cpu = process_cpu() - cpu0;
    assert_eq!(errors, 0, "benchmark calls failed");
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64;
    Figures {
        rps: lat.len() as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_us: cpu * 1e6 / lat.len().max(1) as f64,
    }
}

/// `median [min-max]` of `values`, with `digits` decimals.
fn spread(values: impl Iterator<Item = f64>, digits: usize) -> String {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return "-".into();
    }
    let m = median(&mut v);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    format!("{m:.digits$} [{lo:.digits$}-{hi:.digits$}]")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 0 {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// The child process: serves the backends and prints their addresses on one line.
fn serve_backends() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut addrs = Vec::new();
        for _ in 0..BACKENDS {
            addrs.push(start_backend().await.to_string());
        }
        println!("{}", addrs.join(","));
        // Serve until the parent closes our stdin.
        let mut buf = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut tokio::io::stdin(), &mut buf).await;
    });
}

fn spawn_backends() -> (std::process::Child, Vec<SocketAddr>) {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("own path");
    let mut child = std::process::Command::new(exe)
        .env("LB_BENCH_SERVE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("backend process starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).expect("addresses line");
    let addrs = line.trim().split(',').map(|a| a.parse().expect("an address")).collect();
    (child, addrs)
}

fn main() {
    if std::env::var_os("LB_BENCH_SERVE").is_some() {
        return serve_backends();
    }
    // `cargo bench` passes `--bench`; nothing to parse.
    let (mut child, addrs) = spawn_backends();
    let secs: f64 = std::env::var("LB_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let rounds: usize = std::env::var("LB_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let target = format!("static:///{}", addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","));
        let lb = lb_tonic::LbChannel::from_target(&target).expect("valid target");
        assert!(lb.ready(Duration::from_secs(5)).await);
        let endpoints = addrs.iter().map(|a| {
            tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("valid uri").tcp_nodelay(true)
        });
        let balance_list = tonic::transport::Channel::balance_list(endpoints);
        let direct = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[0]))
            .expect("valid uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connects");

        // The same single backend as `direct`, through LbChannel: the request path's own cost.
        let lb_one = lb_tonic::LbChannel::from_target(&format!("static:///{}", addrs[0])).expect("valid target");
        assert!(lb_one.ready(Duration::from_secs(5)).await);

        let lb_rr = lb_tonic::LbChannel::builder()
            .policy(lb_core::policy::RoundRobin::new())
            .build_from_target(&target)
            .expect("valid target");
        assert!(lb_rr.ready(Duration::from_secs(5)).await);

        let lb_fast = lb_tonic::LbChannel::builder()
            .peak_ewma_config(lb_core::load::EwmaConfig { decay: Duration::from_secs(1), ..Default::default() })
            .build_from_target(&target)
            .expect("valid target");
        assert!(lb_fast.ready(Duration::from_secs(5)).await);

        // Every channel above registers its per-call series with no recorder installed: their
        // handles are no-ops. (A status's histogram is registered the first time it is recorded,
        // so one call each, now.) The one built after the recorder records into Prometheus.
        for channel in [&lb, &lb_one, &lb_rr, &lb_fast] {
            EchoClient::new(channel.clone()).unary(EchoRequest::default()).await.expect("a first call");
        }
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(lb_core::metrics::DURATION_BUCKETS)
            .expect("valid buckets")
            .install_recorder()
            .expect("the first recorder of this process");
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
                n += 1;
                if n % 3 == 0 {
                    // What a scrape every 15 s costs the client.
                    std::hint::black_box(upkeep.render());
                }
            }
        });
        let lb_metrics = lb_tonic::LbChannel::from_target(&target).expect("valid target");
        assert!(lb_metrics.ready(Duration::from_secs(5)).await);

        let names = [
            "LbChannel (P2C PeakEWMA)",
            "tonic balance_list",
            "direct Channel (floor)",
            "LbChannel, 1 backend",
            "LbChannel (round robin)",
            "LbChannel (PeakEWMA, τ 1 s)",
            "LbChannel, Prometheus recorder",
        ];
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); names.len()];
        // `LB_BENCH_ONLY=i` runs only mode `i` (for profiling one client with `perf`);
        // `LB_BENCH_ONLY=i,j,…` runs those modes one after another in this one process.
        let only: Option<Vec<usize>> = std::env::var("LB_BENCH_ONLY")
            .ok()
            .map(|s| s.split(',').filter_map(|i| i.trim().parse().ok()).collect());
        if let Some(modes) = only {
            for i in modes {
                let f = match i {
                    0 => run(EchoClient::new(lb.clone()), secs).await,
                    1 => run(EchoClient::new(balance_list.clone()), secs).await,
                    2 => run(EchoClient::new(direct.clone()), secs).await,
                    3 => run(EchoClient::new(lb_one.clone()), secs).await,
                    4 => run(EchoClient::new(lb_rr.clone()), secs).await,
                    5 => run(EchoClient::new(lb_fast.clone()), secs).await,
                    _ => run(EchoClient::new(lb_metrics.clone()), secs).await,
                };
                println!(
                    "{}: {:.0} calls/s, p50 {:.0} us, p99 {:.0} us, client CPU {:.1} us/call",
                    names[i.min(names.len() - 1)],
                    f.rps,
                    f.p50_us,
                    f.p99_us,
                    f.cpu_us
                );
            }
            return;
        }
        for round in 0..rounds {
            results[0].push(run(EchoClient::new(lb.clone()), secs).await);
            results[1].push(run(EchoClient::new(balance_list.clone()), secs).await);
            results[2].push(run(EchoClient::new(direct.clone()), secs).await);
            results[3].push(run(EchoClient::new(lb_one.clone()), secs).await);
            results[4].push(run(EchoClient::new(lb_rr.clone()), secs).await);
            results[5].push(run(EchoClient::new(lb_fast.clone()), secs).await);
            results[6].push(run(EchoClient::new(lb_metrics.clone()), secs).await);
            eprintln!("round {} of {rounds}:", round + 1);
            for (n, r) in names.iter().zip(&results) {
                let f = r[round];
                eprintln!(
                    "  {n:<28} {:>10.0} calls/s  p50 {:>7.0} us  p99 {:>7.0} us  client CPU {:>5.1} us/call",
                    f.rps, f.p50_us, f.p99_us, f.cpu_us
                );
            }
        }
        println!(
            "unary gRPC, {BACKENDS} loopback backends (another process), {CALLERS} callers, {secs} s x {rounds} rounds: median [min-max]"
        );
        println!("{:<28} {:>24} {:>22} {:>22}", "client", "calls/s", "p99 us", "client CPU us/call");
        for (n, r) in names.iter().zip(&results) {
            println!(
                "{n:<28} {:>24} {:>22} {:>22}",
                spread(r.iter().map(|f| f.rps), 0),
                spread(r.iter().map(|f| f.p99_us), 0),
                spread(r.iter().map(|f| f.cpu_us), 1),
            );
        }
        let per_round = |x: usize, y: usize, f: fn(&Figures) -> f64| {
            spread(results[x].iter().zip(&results[y]).map(|(a, b)| f(a) / f(b)), 2)
        };
        for (label, x, y) in [
            ("LbChannel / balance_list", 0, 1),
            ("LbChannel / direct", 0, 2),
            ("LbChannel round robin / balance_list", 4, 1),
            ("LbChannel PeakEWMA τ 1 s / balance_list", 5, 1),
            ("same single backend, LbChannel / direct", 3, 2),
            ("with a Prometheus recorder / without", 6, 0),
        ] {
            println!(
                "{label}: throughput {}x, p99 {}x, client CPU per call {}x",
                per_round(x, y, |f| f.rps),
                per_round(x, y, |f| f.p99_us),
                per_round(x, y, |f| f.cpu_us),
            );
        }
        let scrape = prometheus.render();
        let calls = scrape
            .lines()
            .find(|l| l.starts_with("grpc_client_call_duration_count") && l.contains("grpc_status=\"OK\""))
            .unwrap_or("no call series: the recorder recorded nothing");
        println!("the recorder saw: {calls}");
    });
    let _ = child.kill();
    let _ = child.wait();
}
