//! Shared fixtures: run the example binaries as child processes and clean them up.

#![allow(dead_code, unreachable_pub)] // each test file uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `greeter-server` child process, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
}

impl Server {
    /// Starts `greeter-server --addr 127.0.0.1:0 <extra>` and reads the address it prints first.
    pub fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("greeter-server starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).expect("read the first stdout line");
        let addr = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("greeter-server's first line is its address, got {first:?}"));
        Server { addr, child }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("greeter-server did not exit within 5 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `static:///` target listing the servers.
pub fn static_target(servers: &[&Server]) -> String {
    let list: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// Runs `greeter-client` to completion and returns its output.
pub fn run_client(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("greeter-client runs")
}
