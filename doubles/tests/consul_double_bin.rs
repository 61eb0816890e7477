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
