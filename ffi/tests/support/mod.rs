//! Shared fixtures: plain TCP backends on 127.0.0.1, and locating the library cargo just built.
#![allow(dead_code, unreachable_pub)]

pub mod handle;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A plain TCP backend: reads one line, answers `ok\n` (or `fail\n` when failing) and closes.
/// Connections that send nothing (the balancer's TCP probes) are not counted as requests.
pub struct Backend {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(failing: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&served), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(conn, failing, &s));
            }
        });
        Backend {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests this backend answered.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, failing: bool, served: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // a probe: connected and closed
    }
    served.fetch_add(1, Ordering::SeqCst);
    let _ = (&conn).write_all(if failing { b"fail\n" } else { b"ok\n" });
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `static:///a,b,c` for these backends.
pub fn static_target(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// The directory holding the `liblb_ffi.so` built for this test run.
///
/// `cargo test -p lb-ffi` compiles the library once with every crate type of `[lib]`, including the
/// cdylib, into the same `deps/` directory as this test executable, before running any test. So
/// the library next to `current_exe()` is the one built from the sources under test, whatever the
/// target dir or profile. A library from a plain `cargo build` (one level up) is the fallback.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe
        .parent()
        .expect("the test executable has a directory")
        .to_path_buf();
    for dir in [
        deps.clone(),
        deps.parent().map(Path::to_path_buf).unwrap_or_default(),
    ] {
        if dir.join("liblb_ffi.so").exists() {
            return dir;
        }
    }
    panic!(
        "liblb_ffi.so not found next to {} (run through `cargo test -p lb-ffi`, which builds it)",
        exe.display()
    );
}

/// Compiles `examples/lb_demo.c` with the system C compiler against the cdylib; returns the binary.
pub fn build_c_example() -> PathBuf {
    build_c("examples/lb_demo.c")
}

/// Compiles a C program of this crate (a path relative to it) with the system C compiler, against
/// the cdylib and its header; returns the binary.
pub fn build_c(source: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lb-ffi-c");
    std::fs::create_dir_all(&out_dir).expect("create the output directory");
    let stem = Path::new(source).file_stem().and_then(|s| s.to_str()).expect("a file name");
    let bin = out_dir.join(format!("{stem}-{}", std::process::id()));
    let lib = lib_dir();
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-O1",
        ])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join(source))
        .arg("-o")
        .arg(&bin)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-llb_ffi", "-lpthread"])
        .status()
        .expect("run the system C compiler (cc)");
    assert!(status.success(), "compiling {source} failed");
    bin
}

/// The per-endpoint tallies an example prints: `served <addr> <n> failed <m>`, `unavailable <n>`.
#[derive(Debug, Default)]
pub struct Tally {
    pub served: BTreeMap<String, (u64, u64)>,
    pub unavailable: u64,
    pub endpoints_json: Option<serde_json::Value>,
}

impl Tally {
    pub fn parse(stdout: &str) -> Tally {
        let mut t = Tally::default();
        for line in stdout.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["served", addr, n, "failed", m] => {
                    t.served.insert(
                        addr.to_string(),
                        (n.parse().expect("a count"), m.parse().expect("a count")),
                    );
                }
                ["unavailable", n] => t.unavailable = n.parse().expect("a count"),
                _ => {}
            }
            if let Some(json) = line.strip_prefix("endpoints ") {
                t.endpoints_json = Some(serde_json::from_str(json).expect("endpoints JSON parses"));
            }
        }
        t
    }

    pub fn served(&self, b: &Backend) -> u64 {
        self.served.get(&b.addr.to_string()).map_or(0, |s| s.0)
    }

    pub fn phase(&self, b: &Backend) -> String {
        let json = self
            .endpoints_json
            .as_ref()
            .expect("the example printed its endpoints");
        json["endpoints"]
            .as_array()
            .expect("endpoints array")
            .iter()
            .find(|e| e["addr"] == b.addr.to_string())
            .map(|e| e["phase"].as_str().unwrap_or_default().to_string())
            .expect("the backend is listed")
    }
}
