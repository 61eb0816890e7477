//! Registration and discovery through the C ABI against a real etcd (cargo feature `etcd`).
//!
//! `cargo test -p lb-ffi --features etcd --test etcd_registration` (scripts/test-all.sh runs it with
//! `--all-features`). The test starts its own `etcd` (Debian's etcd-server) on free loopback ports.

mod support;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::time::{Duration, Instant};

use lb_ffi::*;
use support::handle::{addr, last_error, Bal};
use support::Backend;

struct Etcd {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Etcd {
    fn start() -> Etcd {
        let (port, peer) = (free_port(), free_port());
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ffi-etcd-{}-{port}", std::process::id()));
        let mut cmd =
            Command::new(std::env::var("LB_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into()));
        cmd.arg("--name=ffi")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=ffi=http://127.0.0.1:{peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let etcd = Etcd { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !etcd.healthy() {
            assert!(Instant::now() < deadline, "etcd not healthy within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// etcd's own `/health` endpoint, over plain HTTP/1.0.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Reg(*mut lb_registration);

impl Reg {
    fn new(target: &str, instance: &str) -> Reg {
        let t = CString::new(target).expect("no NUL");
        let i = CString::new(instance).expect("no NUL");
        let mut out = ptr::null_mut();
        // SAFETY: valid C strings and a writable out-pointer.
        let s = unsafe { lb_registration_new(t.as_ptr(), i.as_ptr(), &mut out) };
        assert_eq!(s, lb_status::LB_OK, "{}", last_error());
        Reg(out)
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        // SAFETY: from lb_registration_new, freed once.
        unsafe { lb_registration_free(self.0) }
    }
}

fn listed(b: &Bal) -> Vec<String> {
    let mut v: Vec<String> = b.endpoints()["endpoints"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["addr"].as_str().expect("addr").to_string())
        .collect();
    v.sort();
    v
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registered_instances_are_discovered_and_free_deregisters() {
    let etcd = Etcd::start();
    let (a, b) = (Backend::start(false), Backend::start(false));
    let service = format!("etcd://127.0.0.1:{}/ffi-greeter", etcd.port);
    let reg_a = Reg::new(
        &format!("{service}?ttl=20s"),
        &format!(r#"{{"addr":"{}","zone":"z1"}}"#, a.addr),
    );
    let _reg_b = Reg::new(
        &format!("{service}?ttl=20s"),
        &format!(r#"{{"addr":"{}","zone":"z2"}}"#, b.addr),
    );

    let bal = Bal::new(&service, r#"{"policy":"rr"}"#).expect("an etcd balancer");
    assert_eq!(bal.ready(30_000), lb_status::LB_OK, "{}", last_error());
    let mut both = vec![a.addr.to_string(), b.addr.to_string()];
    both.sort();
    wait_until("both instances are listed", || listed(&bal) == both);
    let p = bal.pick(None).expect("pick");
    assert!(both.contains(&addr(&p)));
    assert_eq!(bal.report(p.token, 0, -1), lb_status::LB_OK);

    // Freeing a registration revokes its lease: the instance leaves discovery at once, well before
    // its 20 s TTL could have run out (a bound with room for a loaded machine).
    let freed = Instant::now();
    drop(reg_a);
    wait_until("the freed instance is gone", || {
        listed(&bal) == vec![b.addr.to_string()]
    });
    assert!(
        freed.elapsed() < Duration::from_secs(20),
        "deregistered in {:?}",
        freed.elapsed()
    );
    for _ in 0..10 {
        let p = bal.pick(None).expect("pick");
        assert_eq!(addr(&p), b.addr.to_string());
        assert_eq!(bal.report(p.token, 0, -1), lb_status::LB_OK);
    }
}
