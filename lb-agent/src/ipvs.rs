//! The IPVS backend: one virtual server per service, through `ipvsadm-restore`.
//!
//! As in kube-proxy's IPVS mode, the VIPs are assigned to a dummy interface (`lb-ipvs0`) so that
//! the kernel accepts traffic to them locally, and IPVS forwards each new connection to a real
//! server (masquerading, scheduler `wrr`). Endpoints that still serve but get no new flows are kept
//! with weight 0, IPVS' own way to drain; a service without endpoints has no virtual server, so the
//! local VIP answers new connections with a reset (TCP) or port-unreachable (UDP).
//!
//! IPv6 VIPs are IPv6 virtual servers (`-A -t [fd00:96::10]:80`), their addresses `/128` on the
//! same dummy interface. Client-IP affinity is IPVS' persistence (`-p <timeout>`), which is what
//! kube-proxy's IPVS mode uses for `sessionAffinity: ClientIP`.
//!
//! Limitations: `ipvsadm-restore` applies its commands one by one, so a crash mid-sync can leave a
//! partial update (the next sync repairs it), and this project's test kernels have no IPVS
//! (`CONFIG_IP_VS` unset), so this backend is only exercised where `/proc/net/ip_vs` exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::backend::{Backend, SyncReport};
use crate::model::{Desired, Family, Protocol, ServiceKey};
use crate::{conntrack, exec, Error};

/// The dummy interface holding the VIPs.
pub const DUMMY: &str = "lb-ipvs0";

/// True when the running kernel has IPVS.
pub fn available() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists()
}

/// The IPVS backend.
#[derive(Debug, Default)]
pub struct Ipvs {
    link: bool,
    vips: BTreeSet<IpAddr>,
    /// Virtual servers of ours and their real servers with weights.
    services: BTreeMap<ServiceKey, Virtual>,
}

/// One virtual server as committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Virtual {
    /// Persistence timeout in seconds (client-IP affinity), if any.
    persistent: Option<u32>,
    reals: BTreeMap<SocketAddr, u32>,
}

/// `10.96.0.10/32` or `fd00:96::10/128`.
fn host(ip: IpAddr) -> String {
    match Family::of(ip) {
        Family::V4 => format!("{ip}/32"),
        Family::V6 => format!("{ip}/128"),
    }
}

/// The scheduler and persistence arguments of `-A` / `-E`.
fn options(v: &Virtual) -> String {
    match v.persistent {
        Some(t) => format!("-s wrr -p {t}"),
        None => "-s wrr".to_string(),
    }
}

impl Ipvs {
    /// A backend that has not yet read the kernel.
    pub fn new() -> Self {
        Self::default()
    }

    fn flag(p: Protocol) -> &'static str {
        match p {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        }
    }

    fn want(desired: &Desired) -> BTreeMap<ServiceKey, Virtual> {
        desired
            .iter()
            .filter(|(_, s)| !s.destinations.is_empty())
            .map(|(k, s)| {
                let mut reals: BTreeMap<SocketAddr, u32> = s.destinations.iter().map(|d| (d.addr, d.weight)).collect();
                for a in &s.keep_flows {
                    reals.entry(*a).or_insert(0);
                }
                (*k, Virtual { persistent: s.affinity.map(|a| a.timeout_secs), reals })
            })
            .collect()
    }
}

impl Backend for Ipvs {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn load(&mut self) -> Result<(), Error> {
        if !available() {
            return Err(Error::kernel("this kernel has no IPVS (/proc/net/ip_vs is absent); use backend = \"nftables\""));
        }
        *self = Ipvs::new();
        match exec::run("ip", &["-o", "addr", "show", "dev", DUMMY], None) {
            Ok(out) => {
                self.link = true;
                for w in out.split_whitespace().filter_map(|w| w.strip_suffix("/32").or_else(|| w.strip_suffix("/128"))) {
                    if let Ok(ip) = w.parse() {
                        self.vips.insert(ip);
                    }
                }
            }
            Err(_) => self.link = false,
        }
        let saved = exec::run("ipvsadm-save", &["-n"], None)?;
        for line in saved.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let proto = match w.get(1) {
                Some(&"-t") => Protocol::Tcp,
                Some(&"-u") => Protocol::Udp,
                _ => continue,
            };
            let Some(vip) = w.get(2).and_then(|v| v.parse::<SocketAddr>().ok()) else { continue };
            if !self.vips.contains(&vip.ip()) {
                continue; // not ours
            }
            let key = ServiceKey { protocol: proto, vip };
            let arg = |flag: &str| w.iter().position(|x| *x == flag).and_then(|i| w.get(i + 1));
            match w.first() {
                Some(&"-A") => {
                    self.services.entry(key).or_default().persistent = arg("-p").and_then(|t| t.parse().ok());
                }
                Some(&"-a") => {
                    let real = arg("-r").and_then(|r| r.parse().ok());
                    let weight = arg("-w").and_then(|r| r.parse().ok());
                    if let (Some(real), Some(weight)) = (real, weight) {
                        self.services.entry(key).or_default().reals.insert(real, weight);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn sync(&mut self, desired: &Desired, dry_run: bool) -> Result<SyncReport, Error> {
        let want = Self::want(desired);
        let want_vips: BTreeSet<IpAddr> = desired.keys().map(|k| k.vip.ip()).collect();
        let mut commands = Vec::new();
        if !self.link {
            commands.push(format!("ip link add {DUMMY} type dummy"));
        }
        for ip in want_vips.difference(&self.vips) {
            commands.push(format!("ip addr add {} dev {DUMMY}", host(*ip)));
        }
        let mut tx = String::new();
        let mut flush = Vec::new();
        for (key, cur) in &self.services {
            let f = Self::flag(key.protocol);
            match want.get(key) {
                None => {
                    let _ = writeln!(tx, "-D {f} {}", key.vip);
                }
                Some(next) => {
                    for real in cur.reals.keys().filter(|r| !next.reals.contains_key(r)) {
                        let _ = writeln!(tx, "-d {f} {} -r {real}", key.vip);
                    }
                }
            }
            flush.extend(conntrack::stale(key, cur.reals.keys().copied(), desired.get(key)).into_iter().map(|e| (*key, e)));
        }
        for (key, next) in &want {
            let f = Self::flag(key.protocol);
            let cur = self.services.get(key);
            match cur {
                None => {
                    let _ = writeln!(tx, "-A {f} {} {}", key.vip, options(next));
                }
                Some(c) if c.persistent != next.persistent => {
                    let _ = writeln!(tx, "-E {f} {} {}", key.vip, options(next));
                }
                Some(_) => {}
            }
            for (real, w) in &next.reals {
                match cur.and_then(|c| c.reals.get(real)) {
                    None => {
                        let _ = writeln!(tx, "-a {f} {} -r {real} -m -w {w}", key.vip);
                    }
                    Some(old) if old != w => {
                        let _ = writeln!(tx, "-e {f} {} -r {real} -m -w {w}", key.vip);
                    }
                    Some(_) => {}
                }
            }
        }
        let stale_vips: Vec<IpAddr> = self.vips.difference(&want_vips).copied().collect();
        for ip in &stale_vips {
            commands.push(format!("ip addr del {} dev {DUMMY}", host(*ip)));
        }
        let objects = want.values().map(|v| 1 + v.reals.len()).sum();
        if dry_run {
            commands.extend(conntrack::describe(&flush));
            return Ok(SyncReport { transaction: tx, commands, objects });
        }
        for c in commands.iter().filter(|c| !c.contains(" del ")) {
            run_shell_words(c)?;
        }
        if !tx.is_empty() {
            exec::run("ipvsadm-restore", &[], Some(&tx))?;
        }
        for c in commands.iter().filter(|c| c.contains(" del ")) {
            run_shell_words(c)?;
        }
        self.link = true;
        self.vips = want_vips;
        self.services = want;
        commands.extend(conntrack::run(&flush));
        Ok(SyncReport { transaction: tx, commands, objects })
    }

    fn cleanup(&mut self, dry_run: bool) -> Result<SyncReport, Error> {
        let mut tx = String::new();
        for key in self.services.keys() {
            let _ = writeln!(tx, "-D {} {}", Self::flag(key.protocol), key.vip);
        }
        let commands = if self.link { vec![format!("ip link del {DUMMY}")] } else { Vec::new() };
        if !dry_run {
            if !tx.is_empty() {
                exec::run("ipvsadm-restore", &[], Some(&tx))?;
            }
            for c in &commands {
                run_shell_words(c)?;
            }
            *self = Ipvs::new();
        }
        Ok(SyncReport { transaction: tx, commands, objects: 0 })
    }
}

fn run_shell_words(cmd: &str) -> Result<(), Error> {
    let mut w = cmd.split_whitespace();
    let program = w.next().expect("commands are built non-empty");
    let args: Vec<&str> = w.collect();
    exec::run(program, &args, None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, ServiceState};

    fn key(port: u16) -> ServiceKey {
        ServiceKey { protocol: Protocol::Tcp, vip: SocketAddr::from(([10, 96, 0, 10], port)) }
    }

    fn ep(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8080))
    }

    #[test]
    fn plans_virtual_servers_and_drains_with_weight_zero() {
        let mut ipvs = Ipvs::new();
        let mut desired = Desired::new();
        desired.insert(
            key(80),
            ServiceState {
                destinations: vec![Destination { addr: ep(1), weight: 100 }],
                keep_flows: [ep(1), ep(2)].into(),
                affinity: None,
            },
        );
        desired.insert(key(81), ServiceState::default());
        let r = ipvs.sync(&desired, true).expect("dry run needs no kernel");
        assert_eq!(r.commands, vec!["ip link add lb-ipvs0 type dummy", "ip addr add 10.96.0.10/32 dev lb-ipvs0"]);
        assert_eq!(
            r.transaction,
            "-A -t 10.96.0.10:80 -s wrr\n-a -t 10.96.0.10:80 -r 10.0.0.1:8080 -m -w 100\n-a -t 10.96.0.10:80 -r 10.0.0.2:8080 -m -w 0\n",
            "a service without endpoints gets no virtual server, so its local VIP refuses"
        );

        // As if committed: removing the service and the VIP.
        ipvs.link = true;
        ipvs.vips = [key(80).vip.ip()].into();
        ipvs.services = Ipvs::want(&desired);
        let r = ipvs.sync(&Desired::new(), true).expect("dry run");
        assert_eq!(r.transaction, "-D -t 10.96.0.10:80\n");
        assert_eq!(r.commands, vec!["ip addr del 10.96.0.10/32 dev lb-ipvs0"]);
    }

    #[test]
    fn ipv6_virtual_servers_with_persistence() {
        let mut ipvs = Ipvs::new();
        let k = ServiceKey { protocol: Protocol::Udp, vip: "[fd00:96::10]:53".parse().expect("vip") };
        let real: SocketAddr = "[fd00::1]:5353".parse().expect("real");
        let mut desired = Desired::new();
        desired.insert(
            k,
            ServiceState {
                destinations: vec![Destination { addr: real, weight: 1 }],
                keep_flows: [real].into(),
                affinity: Some(crate::model::Affinity { timeout_secs: 60 }),
            },
        );
        let r = ipvs.sync(&desired, true).expect("dry run needs no kernel");
        assert_eq!(r.commands, vec!["ip link add lb-ipvs0 type dummy", "ip addr add fd00:96::10/128 dev lb-ipvs0"]);
        assert_eq!(r.transaction, "-A -u [fd00:96::10]:53 -s wrr -p 60\n-a -u [fd00:96::10]:53 -r [fd00::1]:5353 -m -w 1\n");

        // Committed; affinity switched off edits the virtual server in place.
        ipvs.link = true;
        ipvs.vips = [k.vip.ip()].into();
        ipvs.services = Ipvs::want(&desired);
        desired.get_mut(&k).expect("present").affinity = None;
        let r = ipvs.sync(&desired, true).expect("dry run");
        assert_eq!(r.transaction, "-E -u [fd00:96::10]:53 -s wrr\n");
    }
}
