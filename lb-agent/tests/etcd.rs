//! The agent running continuously against a real etcd, following endpoint changes incrementally.
#![cfg(feature = "etcd")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::traffic::TCP_VIP;
use support::*;

/// etcd started inside the lab's client namespace (its own loopback), killed on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_etcd(lab: &Lab) -> Etcd {
    let dir = std::env::temp_dir().join(format!("{}-etcd", lab.client.name));
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.client.name, "etcd", "--name", "lbt"])
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=lbt=http://127.0.0.1:2380",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd (scripts/test-all.sh installs etcd-server)");
    let etcd = Etcd { child, dir };
    let t0 = Instant::now();
    while etcd_call(lab, "/v3/kv/range", &format!("{{\"key\":\"{}\"}}", b64("probe"))).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(20), "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

/// One call of etcd's JSON gateway from inside the client namespace.
fn etcd_call(lab: &Lab, path: &str, body: &str) -> Option<String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    lab.client.run(move || {
        let mut s = TcpStream::connect("127.0.0.1:2379").ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.starts_with("HTTP/1.1 200").then_some(resp)
    })
}

fn put(lab: &Lab, key: &str, value: &str) {
    let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key), b64(value));
    etcd_call(lab, "/v3/kv/put", &body).expect("etcd put");
}

fn delete(lab: &Lab, key: &str) {
    etcd_call(lab, "/v3/kv/deleterange", &format!("{{\"key\":\"{}\"}}", b64(key))).expect("etcd delete");
}

fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn follows_etcd_changes_while_running() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    let _etcd = start_etcd(&lab);
    for i in 0..2 {
        put(&lab, &format!("/lb/services/web/b{i}"), &format!("{{\"v\":1,\"addr\":\"{}\"}}", backend(i, 8080)));
    }
    lab.write_config(&format!("[[service]]\nvip = \"{TCP_VIP}\"\ntarget = \"etcd://127.0.0.1:2379/web\"\n"));
    let mut agent = lab.spawn_agent(&[]);
    let stderr = agent.stderr.take().expect("stderr");
    // Drain the log so the agent never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut std::io::BufReader::new(stderr), &mut std::io::sink()));

    wait_for("two backends", || lab.tcp_spread(vip(TCP_VIP), 20).len() == 2);
    put(&lab, "/lb/services/web/b2", &format!("{{\"v\":1,\"addr\":\"{}\"}}", backend(2, 8080)));
    wait_for("the added backend", || lab.tcp_spread(vip(TCP_VIP), 30).len() == 3);

    let mut conn = lab.connect(vip(TCP_VIP)).expect("connect");
    let gone = who(&mut conn).expect("ask");
    delete(&lab, &format!("/lb/services/web/{gone}"));
    wait_for("the removal", || !lab.tcp_spread(vip(TCP_VIP), 20).contains_key(&gone));
    assert_eq!(who(&mut conn).expect("established connection survives"), gone);
    // The incremental syncs left exactly what a fresh agent would compute.
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "kernel matches the registry");

    let _ = agent.kill();
    let _ = agent.wait();
}
