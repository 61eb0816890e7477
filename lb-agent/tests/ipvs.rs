//! The IPVS backend: only where the kernel has IPVS (this project's test kernels do not).

mod support;

use support::traffic::{self, config};
use support::*;

fn ipvs_missing() -> bool {
    if !lb_agent::ipvs::available() {
        skipped("this kernel has no IPVS (/proc/net/ip_vs is absent; CONFIG_IP_VS unset)");
        return true;
    }
    if std::process::Command::new("sh").args(["-c", "command -v ipvsadm-restore"]).output().map_or(true, |o| !o.status.success()) {
        skipped("ipvsadm is not installed");
        return true;
    }
    false
}

#[test]
fn tcp_and_udp_reach_every_backend() {
    skip_unless_capable!();
    if ipvs_missing() {
        return;
    }
    let lab = lab_with_servers(3);
    lab.write_config(&config("ipvs", &[0, 1, 2], &[0, 1, 2]));
    lab.agent_ok(&["--once"]);
    traffic::reaches_every_backend_and_rejects_empty(&lab, 3);
    assert_eq!(lab.agent_ok(&["--dry-run"]), "");
    lab.agent_ok(&["cleanup"]);
}

#[test]
fn removing_a_backend_keeps_established_connections() {
    skip_unless_capable!();
    if ipvs_missing() {
        return;
    }
    let lab = lab_with_servers(3);
    traffic::removal_keeps_established_and_moves_new_flows(&lab, "ipvs");
}

#[test]
fn ipv6_and_dual_stack_virtual_servers() {
    skip_unless_capable!();
    if ipvs_missing() {
        return;
    }
    let lab = dual_lab_with_servers(3);
    traffic::ipv6_and_dual_stack_reach_their_family(&lab, "ipvs", 3);
    traffic::ipv6_removal_keeps_established(&lab, "ipvs");
    lab.agent_ok(&["cleanup"]);
}

#[test]
fn client_ip_affinity_is_persistence() {
    skip_unless_capable!();
    if ipvs_missing() {
        return;
    }
    let lab = dual_lab_with_servers(3);
    traffic::affinity_sticks_per_client(&lab, "ipvs");
    lab.agent_ok(&["cleanup"]);
}
