//! Scenario 2's L4 baseline in the real kernel: lb-agent's nftables VIP inside network namespaces
//! the report creates for itself.
//!
//! Two namespaces joined by a veth pair: `lbr-<pid>-c` (the client and the agent's table) and
//! `lbr-<pid>-b` (the backends, one address each on 10.201.0.0/24). The addresses and the VIP
//! exist only inside them, and dropping the [`Lab`] deletes both, so the host's own netfilter
//! tables are never touched. When namespaces cannot be made here (not root, no `ip`, no `nft`, a
//! container without `CAP_SYS_ADMIN`), [`Lab::new`] says why and the report falls back to the
//! in-process TCP proxy.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use anyhow::{bail, Context};

/// The client's address on the veth pair.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The VIP lb-agent programs in the client namespace.
pub(crate) const VIP: &str = "10.96.0.10:80";
/// The port the backends listen on.
pub(crate) const BACKEND_PORT: u16 = 50051;

/// The address of backend `i` inside the backend namespace.
pub(crate) fn backend_addr(i: usize) -> SocketAddr {
    let last = u8::try_from(11 + i).unwrap_or(u8::MAX);
    SocketAddr::from((Ipv4Addr::new(10, 201, 0, last), BACKEND_PORT))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> anyhow::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run `{}`", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The client and backend namespaces of scenario 2.
#[derive(Debug)]
pub(crate) struct Lab {
    /// Where the client runs and lb-agent programs its table.
    pub(crate) client: Netns,
    /// Where the backends listen.
    pub(crate) backends: Netns,
}

impl Lab {
    /// Creates the namespaces with `n` backend addresses, or says why it cannot.
    pub(crate) fn new(n: usize) -> anyhow::Result<Lab> {
        if !crate::procs::is_root() {
            bail!("not running as root");
        }
        run(&["sh", "-c", "command -v nft"]).context("`nft` is not installed")?;
        let base = format!("lbr-{}", std::process::id());
        let client = Netns::new(format!("{base}-c"))?;
        let backends = Netns::new(format!("{base}-b"))?;
        client.exec(&["ip", "link", "add", "vc", "type", "veth", "peer", "name", "vb", "netns", &backends.name])?;
        client.exec(&["ip", "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"])?;
        client.exec(&["ip", "link", "set", "vc", "up"])?;
        for i in 0..n {
            backends.exec(&["ip", "addr", "add", &format!("{}/24", backend_addr(i).ip()), "dev", "vb"])?;
        }
        backends.exec(&["ip", "link", "set", "vb", "up"])?;
        // The VIP needs a route before the agent's DNAT rewrites it; any next hop on the link does.
        client.exec(&["ip", "route", "add", "default", "via", &backend_addr(0).ip().to_string()])?;
        backends.exec(&["ip", "route", "add", "default", "via", &CLIENT_IP.to_string()])?;
        Ok(Lab { client, backends })
    }
}

/// lb-agent's configuration for the scenario: one TCP service, the VIP over `backends`.
pub(crate) fn agent_config(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    format!(
        "backend = \"nftables\"\ntable = \"lb_report\"\n[[service]]\nvip = \"{VIP}\"\nprotocol = \"tcp\"\ntarget = \"static:///{}\"\n",
        list.join(",")
    )
}
