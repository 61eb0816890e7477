//! The `consul-double` binary's contract with the tests of other crates: the first stdout line is
//! the bound address, and Consul's HTTP API answers there (checked with raw HTTP/1.1, so a broken
//! client library cannot hide a broken double).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Double(Child);

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(extra: &[&str]) -> (Double, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consul-double"))
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("consul-double starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first).expect("first line");
    let addr = first.trim().parse().unwrap_or_else(|_| panic!("first line is the address, got {first:?}"));
    (Double(child), addr)
}

/// One request; returns (status, headers, body).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let token = token.map(|t| format!("X-Consul-Token: {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{token}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn serves_registration_and_health_with_the_token_it_was_given() {
    let (_double, addr) = start(&["--acl-token", "t0k"]);
    let (status, _, _) = http(addr, "GET", "/v1/health/service/web", None, "");
    assert_eq!(status, 403, "the token is required");

    let reg = r#"{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":8080,
                 "Check":{"TTL":"30s","Status":"passing"}}"#;
    let (status, _, body) = http(addr, "PUT", "/v1/agent/service/register", Some("t0k"), reg);
    assert_eq!(status, 200, "{body}");
    let (status, head, body) = http(addr, "GET", "/v1/health/service/web?passing", Some("t0k"), "");
    assert_eq!(status, 200);
    assert!(head.contains("x-consul-index: "), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["Service"]["ID"], "web-1");
    assert_eq!(v[0]["Service"]["Port"], 8080);

    let (status, _, _) = http(addr, "PUT", "/v1/agent/check/fail/service:web-1", Some("t0k"), "");
    assert_eq!(status, 200);
    let (_, _, body) = http(addr, "GET", "/v1/health/service/web?passing", Some("t0k"), "");
    assert_eq!(body, "[]", "?passing filters critical instances");
    let (status, _, body) = http(addr, "PUT", "/v1/agent/check/pass/service:nope", Some("t0k"), "");
    assert_eq!(status, 404, "{body}");
}

fn index_of(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("x-consul-index: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("an X-Consul-Index header")
}

#[test]
fn blocking_queries_return_on_change_or_after_wait_and_ttl_passes_do_not_wake_them() {
    let (_double, addr) = start(&[]);
    let reg = r#"{"ID":"api-1","Name":"api","Address":"127.0.0.1","Port":9090,"Check":{"TTL":"30s","Status":"passing"}}"#;
    assert_eq!(http(addr, "PUT", "/v1/agent/service/register", None, reg).0, 200);
    let (_, head, _) = http(addr, "GET", "/v1/health/service/api?passing", None, "");
    let index = index_of(&head);

    // Nothing changes but a TTL pass: the query is held for the whole wait (plus at most wait/16).
    let passer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        http(addr, "PUT", "/v1/agent/check/pass/service:api-1", None, "").0
    });
    let t = std::time::Instant::now();
    let (status, head, _) = http(addr, "GET", &format!("/v1/health/service/api?passing&index={index}&wait=1s"), None, "");
    let held = t.elapsed();
    assert_eq!((status, passer.join().expect("passer")), (200, 200));
    assert_eq!(index_of(&head), index, "a TTL pass with the same output is not a change");
    assert!(held >= Duration::from_millis(950) && held < Duration::from_millis(3000), "held {held:?}");

    // A registration is a change: the query returns at once with a higher index.
    let registrar = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let reg = r#"{"ID":"api-2","Name":"api","Address":"127.0.0.1","Port":9091}"#;
        http(addr, "PUT", "/v1/agent/service/register", None, reg).0
    });
    let t = std::time::Instant::now();
    let (_, head, body) = http(addr, "GET", &format!("/v1/health/service/api?passing&index={index}&wait=10s"), None, "");
    assert_eq!(registrar.join().expect("registrar"), 200);
    assert!(t.elapsed() < Duration::from_secs(5), "returned on the change, not after the wait");
    assert!(index_of(&head) > index);
    assert!(body.contains("api-2"), "{body}");
}
