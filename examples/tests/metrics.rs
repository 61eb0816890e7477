//! Seeing the metrics: `greeter-server` and `greeter-client` serve Prometheus text at `/metrics`
//! (scraped over HTTP here), and the Grafana dashboard in `docs/` queries only metrics lb emits,
//! with labels they carry.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_core::metrics::{Kind, CATALOG};
use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use support::{free_port, Server};

/// `GET /metrics` over a plain TCP connection; returns the status line and the body.
fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of the series line that starts with `prefix` (a name and its labels).
fn value(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn greeter_server_serves_its_call_metrics_at_slash_metrics() {
    let server = Server::start_logged(&["--metrics-addr", "127.0.0.1:0"]);
    // The metrics listener is up, and logged, before the server prints its gRPC address.
    let log = server.log();
    let metrics: SocketAddr = log
        .lines()
        .find(|l| l.contains("serving Prometheus metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the metrics address is logged:\n{log}"));
    let mut client = GreeterClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    for _ in 0..3 {
        client.say_hello(HelloRequest { name: "metrics".into() }).await.expect("SayHello succeeds");
    }
    let (status, body) = tokio::task::spawn_blocking(move || scrape(metrics)).await.expect("scrape");
    assert!(status.contains("200"), "{status}");
    let method = r#"grpc_method="helloworld.Greeter/SayHello""#;
    assert_eq!(value(&body, &format!("grpc_server_call_started{{{method}}}")), Some(3.0), "{body}");
    let count = format!(r#"grpc_server_call_duration_count{{{method},grpc_status="OK"}}"#);
    assert_eq!(value(&body, &count), Some(3.0), "{body}");
    assert!(body.contains("grpc_server_call_duration_bucket{"), "a histogram with A66's buckets: {body}");
    assert!(body.contains("# TYPE grpc_server_call_duration histogram"), "{body}");
}

#[test]
fn greeter_client_serves_lbs_metrics_while_it_runs() {
    let server = Server::start(&[]);
    let port = free_port();
    let target = format!("static:///{}", server.addr);
    let mut client = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(["--target", &target, "--duration-secs", "30", "--concurrency", "2"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--metrics-endpoint-labels"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("greeter-client starts");
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    let call_count = format!(r#"grpc_client_call_duration_count{{grpc_target="{target}",grpc_status="OK"}}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        // Each scrape is one look; the client is running calls meanwhile.
        if std::net::TcpStream::connect(metrics).is_ok() {
            let (_, body) = scrape(metrics);
            if value(&body, &call_count).is_some_and(|n| n >= 10.0) {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "no call series at http://{metrics}/metrics");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = client.kill();
    let _ = client.wait();
    let endpoint = server.addr.to_string();
    let attempts = format!(r#"grpc_client_attempt_started{{grpc_target="{target}",lb_endpoint="{endpoint}"}}"#);
    assert!(value(&body, &attempts).is_some_and(|n| n >= 10.0), "attempts by endpoint: {body}");
    let picks = format!(r#"lb_endpoint_picks_total{{target="{target}",endpoint="{endpoint}"}}"#);
    assert!(value(&body, &picks).is_some_and(|n| n >= 10.0), "picks by endpoint: {body}");
    let ready = format!(r#"lb_endpoint_phase{{target="{target}",endpoint="{endpoint}",phase="ready"}}"#);
    assert_eq!(value(&body, &ready), Some(1.0), "{body}");
    assert!(body.contains("# HELP grpc_client_call_duration "), "described: {body}");
}

/// The series names an exporter renders for a metric: `.` becomes `_`, and a histogram is read
/// through its `_bucket`, `_sum` and `_count` series.
fn rendered(name: &str, kind: Kind) -> Vec<String> {
    let base = name.replace('.', "_");
    match kind {
        Kind::Histogram => vec![format!("{base}_bucket"), format!("{base}_sum"), format!("{base}_count")],
        Kind::Counter | Kind::Gauge => vec![base],
    }
}

/// Every `name{matchers}` selector in a PromQL expression, with the label keys it matches on.
fn selectors(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    for (i, _) in expr.match_indices('{') {
        let start = expr[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        let name = &expr[start..i];
        if name.is_empty() || bytes.get(start).is_some_and(|b| b.is_ascii_digit()) {
            continue;
        }
        let end = expr[i..].find('}').map(|e| i + e).expect("a closed selector");
        let keys = expr[i + 1..end]
            .split(',')
            .filter_map(|m| m.split(['=', '!']).next())
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        out.push((name.to_string(), keys));
    }
    out
}

fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_lb_emits() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("docs/grafana-dashboard.json exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its panels' queries: {exprs:?}");
    // What lb emits, as Prometheus sees it: series name → the label keys it may carry.
    let mut emitted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in CATALOG {
        let mut labels: BTreeSet<String> = m.labels.iter().map(|l| l.replace('.', "_")).collect();
        if m.kind == Kind::Histogram {
            labels.insert("le".into());
        }
        for name in rendered(m.name, m.kind) {
            emitted.insert(name, labels.clone());
        }
    }
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let found = selectors(expr);
        assert!(!found.is_empty(), "every query selects a metric with a label matcher: {expr}");
        for (name, keys) in found {
            let labels = emitted
                .get(&name)
                .unwrap_or_else(|| panic!("the dashboard queries `{name}`, which lb does not emit: {expr}"));
            for key in keys {
                assert!(labels.contains(&key), "`{name}` has no label `{key}`: {expr}");
            }
            queried.insert(name);
        }
    }
    for a66 in ["grpc_client_attempt_started", "grpc_client_attempt_duration_bucket", "grpc_client_call_duration_bucket"] {
        assert!(queried.contains(a66), "the dashboard graphs {a66}");
    }
}
