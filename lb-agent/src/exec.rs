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
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was configured as piped");
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::io(format!("cannot write to `{program}`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("cannot wait for `{program}`: {e}")))?;
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
