//! `hyper-demo`: lb's `LbClient` for hyper 1.x, over HTTP/1.1 and HTTP/2, against three in-process
//! HTTP servers.
//!
//! ```text
//! cargo run -p lb-examples --bin hyper-demo [-- --requests N] [-- --json]
//! ```
//!
//! Each server answers `Hello from <its address>` and echoes, in response headers, the `Host` (or
//! HTTP/2 `:authority`) and the HTTP version it received — so the demo shows both where requests
//! went and what lb did to the request on the way: the caller addresses a logical name
//! (`http://greeter.internal/hello`), lb picks an endpoint per request and connects to its address,
//! and the demo prints the `Host` / `:authority` the servers actually received with each protocol.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_core::policy::{P2c, RoundRobin};
use lb_core::Policy;
use lb_examples::load::{self, Budget};
use lb_examples::pb::HelloReply;
use lb_examples::table::{self, BackendInfo, Run, Style};
use lb_hyper::{LbClient, Protocol};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What callers address: a logical name, not any one server.
const CALLER_AUTHORITY: &str = "greeter.internal";
const URL: &str = "http://greeter.internal/hello";

#[derive(Debug, Parser)]
#[command(name = "hyper-demo", about = "lb's LbClient for hyper over HTTP/1.1 and HTTP/2")]
struct Args {
    /// Requests per scenario.
    #[arg(long, default_value_t = 600)]
    requests: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Also print one JSON line with every scenario's report at the end.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_examples::init_logging("warn");
    let args = Args::parse();
    match run(args).await {
        // `quickstart | head` closes stdout early: that is the reader's choice, not an error.
        Err(e) if lb_examples::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let style = Style::detect();

    let mut infos = Vec::new();
    for i in 1..=3 {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(listener));
        infos.push(BackendInfo {
            label: format!("h{i}"),
            addr: addr.to_string(),
            zone: String::new(),
            delay_ms: 0,
        });
    }
    let target = format!("static:///{}", infos.iter().map(|b| b.addr.as_str()).collect::<Vec<_>>().join(","));

    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(out, "{}", table::render_title("lb hyper demo: LbClient over HTTP/1.1 and HTTP/2", style))?;
    writeln!(
        out,
        "3 hyper servers on 127.0.0.1; {} GET http://greeter.internal/hello per scenario from {} callers.",
        args.requests, args.concurrency
    )?;
    writeln!(out)?;
    write!(out, "{}", table::render_backends(&infos, style))?;
    writeln!(out)?;
    drop(out);

    let budget = Budget::Requests(args.requests);
    let scenarios: [(&str, &str, Protocol, Box<dyn Policy>); 2] = [
        ("http1-rr", "LbClient over HTTP/1.1, round robin", Protocol::Http1, Box::new(RoundRobin::new())),
        ("http2-p2c-ewma", "LbClient over HTTP/2, P2C PeakEWMA", Protocol::Http2, Box::new(P2c::peak_ewma())),
    ];
    let mut json = Vec::new();
    for (i, (key, title, protocol, policy)) in scenarios.into_iter().enumerate() {
        let client: LbClient<Empty<Bytes>> = LbClient::builder()
            .protocol(protocol)
            .policy(policy)
            .build_from_target(&target)
            .context("cannot build the LbClient")?;
        // Every connection up first (an empty list is not "all healthy": discovery may not have answered).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let endpoints = client.endpoints();
            if Instant::now() >= deadline || (!endpoints.is_empty() && endpoints.iter().all(|e| e.healthy)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What the servers saw, from one request: the Host / :authority and the version.
        let probe = client
            .request(Request::get(URL).body(Empty::new())?)
            .await
            .context("probe request")?;
        let seen_host = header(&probe, "x-seen-host");
        let seen_version = header(&probe, "x-seen-version");
        drop(probe);

        let started = Instant::now();
        let report = load::run(budget, args.concurrency, move |_| {
            let client = client.clone();
            async move { get(&client).await }
        })
        .await;
        let elapsed = started.elapsed();
        // Report what the servers actually saw rather than what lb documents, so the demo stays true.
        let finding = if seen_host == CALLER_AUTHORITY {
            format!(
                "the servers saw {seen_version} with Host `{seen_host}`: lb connected to the endpoint it \
                 picked and kept the name the caller addressed, so virtual hosting still works."
            )
        } else {
            format!(
                "the servers saw {seen_version} with authority `{seen_host}`, the endpoint lb picked: the \
                 request URI's authority is rewritten to the chosen endpoint's address."
            )
        };
        let run = Run { report: &report, elapsed };
        let mut out = std::io::stdout().lock();
        write!(out, "{}", table::render_scenario(i + 1, title, &infos, &run, &finding, style))?;
        writeln!(out)?;
        drop(out);
        json.push(serde_json::json!({
            "key": key,
            "report": report,
            "seen_host": seen_host,
            "seen_version": seen_version,
        }));
    }
    if args.json {
        let backends: Vec<&str> = infos.iter().map(|b| b.addr.as_str()).collect();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::json!({ "backends": backends, "scenarios": json }))?;
    }
    Ok(())
}

/// One GET, adapted to the load generator's reply type: the body is the reply's message.
async fn get(client: &LbClient<Empty<Bytes>>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
    let request = Request::get(URL)
        .body(Empty::new())
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(tonic::Status::unknown(format!("HTTP {}", response.status())));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .to_bytes();
    Ok(tonic::Response::new(HelloReply {
        message: String::from_utf8_lossy(&body).into_owned(),
    }))
}

fn header<B>(response: &Response<B>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

/// A tiny HTTP/1.1 + HTTP/2 server: `Hello from <addr>`, echoing what it received in headers.
async fn serve(listener: TcpListener) {
    let addr = listener.local_addr().expect("a bound listener has an address");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                // HTTP/2 carries the authority in the URI (`:authority`), HTTP/1.1 in `Host`.
                let host = req
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_default();
                let response = Response::builder()
                    .header("x-seen-host", host)
                    .header("x-seen-version", format!("{:?}", req.version()))
                    .body(Full::new(Bytes::from(format!("Hello from {addr}"))))
                    .expect("static response parts are valid");
                Ok::<_, Infallible>(response)
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
}
