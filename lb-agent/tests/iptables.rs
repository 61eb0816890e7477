//! The iptables backend against the real kernel, inside network namespaces the tests create.

mod support;

use support::traffic::{self, config};
use support::*;

fn lba_lines(lab: &Lab) -> Vec<String> {
    lab.client.exec(&["iptables-save"]).lines().filter(|l| l.contains("LBA-")).map(str::to_string).collect()
}

#[test]
fn tcp_and_udp_reach_every_backend_and_cleanup_leaves_nothing() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    lab.client.exec(&["nft", "add", "table", "inet", "bystander"]);
    lab.client.exec(&["nft", "add", "chain", "inet", "bystander", "keep"]);
    let bystander = lab.client.exec(&["nft", "list", "table", "inet", "bystander"]);
    lab.write_config(&config("iptables", &[0, 1, 2], &[0, 1, 2]));

    let dry = lab.agent_ok(&["--dry-run"]);
    assert!(dry.contains("-m statistic --mode random --probability 0.3333333333"), "{dry}");
    assert!(lba_lines(&lab).is_empty(), "dry run applied nothing");

    lab.agent_ok(&["--once"]);
    traffic::reaches_every_backend_and_rejects_empty(&lab, 3);
    let programmed = lba_lines(&lab);
    assert!(programmed.iter().any(|l| l == "-A PREROUTING -j LBA-SERVICES"), "{programmed:?}");
    assert!(programmed.iter().any(|l| l == "-A OUTPUT -j LBA-SERVICES"), "{programmed:?}");

    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "a restart with unchanged state writes nothing");
    lab.agent_ok(&["--once"]);
    assert_eq!(lba_lines(&lab), programmed, "and the rules are unchanged");

    assert_eq!(lab.client.exec(&["nft", "list", "table", "inet", "bystander"]), bystander);
    lab.agent_ok(&["cleanup"]);
    assert!(lba_lines(&lab).is_empty(), "cleanup left {:?}", lba_lines(&lab));
    assert_eq!(lab.client.exec(&["nft", "list", "table", "inet", "bystander"]), bystander);
}

#[test]
fn removing_a_backend_keeps_established_connections() {
    skip_unless_capable!();
    let lab = lab_with_servers(3);
    traffic::removal_keeps_established_and_moves_new_flows(&lab, "iptables");
}

fn lba6_lines(lab: &Lab) -> Vec<String> {
    lab.client.exec(&["ip6tables-save"]).lines().filter(|l| l.contains("LBA-")).map(str::to_string).collect()
}

#[test]
fn ipv6_and_dual_stack_through_ip6tables_and_cleanup_of_both() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(3);
    traffic::ipv6_and_dual_stack_reach_their_family(&lab, "iptables", 3);
    assert!(lba6_lines(&lab).iter().any(|l| l.contains("-d fd00:96::50/128")), "{:?}", lba6_lines(&lab));
    assert_eq!(lab.agent_ok(&["--dry-run"]), "", "a restart with unchanged state writes nothing");
    lab.agent_ok(&["cleanup"]);
    assert!(lba_lines(&lab).is_empty() && lba6_lines(&lab).is_empty(), "cleanup left {:?} {:?}", lba_lines(&lab), lba6_lines(&lab));
}

#[test]
fn removing_an_ipv6_endpoint_keeps_established_connections() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(3);
    traffic::ipv6_removal_keeps_established(&lab, "iptables");
}

#[test]
fn client_ip_affinity_sticks_and_moves_with_its_endpoint() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(3);
    traffic::affinity_sticks_per_client(&lab, "iptables");
}

#[test]
fn an_ipv4_only_config_runs_no_ip6tables() {
    skip_unless_capable!();
    let lab = lab_with_servers(1);
    lab.write_config(&config("iptables", &[0], &[0]));
    let dry = lab.agent_ok(&["--dry-run"]);
    assert!(dry.starts_with("# iptables-restore --noflush\n") && !dry.contains("ip6tables"), "{dry}");
}
