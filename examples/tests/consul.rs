//! `greeter-server --register consul://…` and `greeter-client --target consul://…` across a restart
//! of the registry: the registry is the `consul-double` binary (lb-doubles' double of Consul's HTTP
//! API; no Consul server can be installed on the test machines), killed with SIGKILL and started
//! again on the same port with no state and a reset index, as an agent restarted without its data.
//!
//! What an operator relies on: a client sending throughout loses no call, and the servers register
//! themselves again without being restarted.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lb_examples::load::Report;
use support::{run_client, Server};

/// Builds `consul-double` (another package's binary, so Cargo does not hand its path to this test)
/// and returns its path.
fn consul_double_bin() -> PathBuf {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut child = Command::new(cargo)
        .args(["build", "-p", "lb-doubles", "--bin", "consul-double", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run cargo build for consul-double");
    let stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        let mut exe = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "consul-double" {
                exe = msg["executable"].as_str().map(PathBuf::from);
            }
        }
        exe
    });
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait().expect("poll cargo") {
            assert!(status.success(), "cargo build -p lb-doubles --bin consul-double failed");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("building consul-double took more than 15 minutes");
        }
        thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("reader").expect("cargo reported the consul-double executable")
}

/// A `consul-double` process, killed (SIGKILL) on drop.
struct ConsulDouble {
    addr: SocketAddr,
    child: Child,
}

impl ConsulDouble {
    fn start(bin: &PathBuf, addr: &str) -> ConsulDouble {
        Self::start_with(bin, addr, &[])
    }

    /// With more of `consul-double`'s options (ACL tokens).
    fn start_with(bin: &PathBuf, addr: &str, extra: &[&str]) -> ConsulDouble {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(bin)
                .args(["--addr", addr])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("consul-double starts");
            let mut first = String::new();
            BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first).expect("read its first line");
            if let Ok(addr) = first.trim().parse() {
                return ConsulDouble { addr, child };
            }
            // The port may still be held for a moment by the killed process.
            let _ = child.wait();
            assert!(Instant::now() < deadline, "consul-double could not bind {addr}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (polling, at most 30 s) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn report_and_log(args: &[&str]) -> (Report, String) {
    let out = run_client(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "greeter-client failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}")), stderr)
}

#[test]
fn greeters_ride_through_a_restart_of_the_consul_double() {
    let bin = consul_double_bin();
    let consul = ConsulDouble::start(&bin, "127.0.0.1:0");
    let addr = consul.addr;
    let target = format!("consul://{addr}/greeter");
    let a = Server::start_logged(&["--zone", "a", "--register", &target, "--ttl-secs", "1"]);
    let b = Server::start_logged(&["--zone", "b", "--register", &target, "--ttl-secs", "1"]);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());

    let (r, log) = report_and_log(&["--target", &target, "--requests", "200", "--concurrency", "4", "--policy", "rr"]);
    assert_eq!(r.errors, 0, "{r:?}\n{log}");
    assert!(r.share(&a_addr) > 0.4 && r.share(&b_addr) > 0.4, "both discovered: {r:?}");

    // A client sends throughout: the registry dies, stays down for a while, comes back empty.
    let client = {
        let target = target.clone();
        thread::spawn(move || report_and_log(&["--target", &target, "--duration-secs", "8", "--concurrency", "4", "--policy", "rr"]))
    };
    let answered = |s: &Server| s.log().matches("hello answered").count();
    let (a_before, b_before) = (answered(&a), answered(&b));
    wait_until("both servers answer the running client", || answered(&a) > a_before && answered(&b) > b_before);
    drop(consul);
    // Down long enough that the servers' heartbeats fail (they log it) while the client sends.
    wait_until("the servers' heartbeats fail", || {
        a.log().contains("consul heartbeat failed") && b.log().contains("consul heartbeat failed")
    });
    assert!(!client.is_finished(), "the client was still sending when the registry came back");
    let consul = ConsulDouble::start(&bin, &addr.to_string());
    let (r, log) = client.join().expect("client thread");
    assert_eq!(r.errors, 0, "the client kept its endpoints through the registry restart: {r:?}\n{log}");
    assert!(r.share(&a_addr) > 0.3 && r.share(&b_addr) > 0.3, "{r:?}");

    // The servers registered again by themselves: a client started now discovers both.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run_client(&["--target", &target, "--requests", "100", "--concurrency", "4", "--policy", "rr"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let both = out.status.success()
            && serde_json::from_str::<Report>(stdout.trim())
                .is_ok_and(|r| r.errors == 0 && r.share(&a_addr) > 0.3 && r.share(&b_addr) > 0.3);
        if both {
            break;
        }
        assert!(Instant::now() < deadline, "the servers did not register again within 20 s: {stdout}");
        thread::sleep(Duration::from_millis(200));
    }
    drop((a, b, consul));
}

/// Registers `service` on the double at `addr` through its HTTP API with `token`, its TTL check
/// passing for ten minutes; returns the HTTP status line.
fn register_by_hand(addr: SocketAddr, token: &str, service: &str, port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let body = format!(
        r#"{{"Name":"{service}","ID":"{service}-{port}","Address":"127.0.0.1","Port":{port},"Check":{{"TTL":"10m","Status":"passing"}}}}"#
    );
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the consul double");
    write!(
        stream,
        "PUT /v1/agent/service/register HTTP/1.1\r\nHost: {addr}\r\nX-Consul-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the registration");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer.lines().next().unwrap_or_default().to_string()
}

/// LbChannel end to end (greeter-client) with a token Consul filters reads for: the calls fail
/// `UNAVAILABLE` with a message naming the token and the ACL filtering, not "no endpoint" alone.
#[test]
fn a_client_whose_token_consul_filters_fails_saying_so() {
    let bin = consul_double_bin();
    let consul = ConsulDouble::start_with(&bin, "127.0.0.1:0", &["--acl-token", "management-token", "--unprivileged-token", "weak-token-3f9a"]);
    let status = register_by_hand(consul.addr, "management-token", "greeter", 50051);
    assert!(status.contains(" 200 "), "registered: {status}");
    let target = format!("consul://{}/greeter", consul.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(["--target", &target, "--requests", "1", "--concurrency", "1"])
        .env("CONSUL_HTTP_TOKEN", "weak-token-3f9a")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("greeter-client runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "no call succeeded: {stderr}");
    let failed = stderr.lines().find(|l| l.contains("request failed")).unwrap_or_else(|| panic!("a failed call is logged: {stderr}"));
    assert!(failed.contains("Unavailable"), "{failed}");
    assert!(failed.contains("consul filtered the health answer for `greeter` by ACLs"), "the cause: {failed}");
    assert!(failed.contains("…3f9a (from CONSUL_HTTP_TOKEN)"), "the token, by its last characters: {failed}");
    assert!(!failed.contains("weak-token"), "never the secret: {failed}");
}
