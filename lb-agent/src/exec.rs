//! Running the kernel's own tools (`nft`, `iptables-restore`, `conntrack`, `ipvsadm`).
//!
//! The agent talks to the kernel through these programs rather than raw netlink: `nft -f -` commits
//! its whole input as one netlink batch (all or nothing), which is the atomicity the agent relies on,
//! and the programs are what an operator uses to inspect the result.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::Error;

/// Runs `program args…` with `input` on stdin; returns stdout, or an error carrying stderr.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("cannot run `{program}`: {e} (is it installed and are we root?)")))?;
    // Feed stdin from another thread: a tool that answers before it has read everything would
    // otherwise block on a full stdout pipe while we block on its full stdin pipe.
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("stdin was configured as piped");
        let input = input.to_string();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()))
    });
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("cannot wait for `{program}`: {e}")))?;
    if let Some(w) = writer {
        if let Ok(Err(e)) = w.join() {
            if out.status.success() {
                return Err(Error::io(format!("cannot write to `{program}`: {e}")));
            }
        }
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(Error::kernel(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            first_lines(&stderr, 20)
        )))
    }
}

fn first_lines(s: &str, n: usize) -> String {
    let mut lines: Vec<&str> = s.lines().take(n).collect();
    if s.lines().count() > n {
        lines.push("…");
    }
    lines.join("\n")
}
