//! The deployment files in `deploy/`: the systemd unit (verified by systemd itself, and its
//! privileges tried for real in a namespace) and the Kubernetes manifests (every document read
//! into the API's types).

mod support;

use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize as _;
use support::traffic::{self, UDP_VIP6};
use support::*;

const UNIT: &str = include_str!("../deploy/lb-agent.service");
const MANIFESTS: &str = include_str!("../deploy/kubernetes.yaml");

/// `Key=value` lines of the unit's sections, comments left out.
fn directives() -> Vec<(&'static str, &'static str)> {
    UNIT.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn directive(key: &str) -> Vec<&'static str> {
    directives().into_iter().filter(|(k, _)| *k == key).map(|(_, v)| v).collect()
}

#[test]
fn the_systemd_unit_verifies_and_grants_only_net_admin() {
    assert_eq!(directive("CapabilityBoundingSet"), ["CAP_NET_ADMIN"]);
    assert_eq!(directive("AmbientCapabilities"), ["CAP_NET_ADMIN"]);
    assert_eq!(directive("DynamicUser"), ["yes"]);
    assert_eq!(directive("NoNewPrivileges"), ["yes"]);
    assert_eq!(directive("Restart"), ["on-failure"]);
    assert!(directive("ExecStopPost").is_empty(), "stopping the agent must leave the rules in place");
    assert!(directive("PrivateNetwork").is_empty(), "the agent programs the host's network namespace");

    let have = Command::new("sh").args(["-c", "command -v systemd-analyze"]).output().is_ok_and(|o| o.status.success());
    if !have {
        // As root (CI) the test command installs it: its absence is a failure, not a skip.
        assert!(!nix::unistd::Uid::effective().is_root(), "running as root, but systemd-analyze is not installed (scripts/test-all.sh installs systemd)");
        skipped("systemd-analyze is not installed (scripts/test-all.sh installs systemd)");
        return;
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("lbt-{}-unit", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = dir.join("lb-agent.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/lb-agent", AGENT)).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {stderr}");
    assert!(!stderr.contains("lb-agent.service"), "systemd-analyze warns about the unit: {stderr}");
}

/// The unit's privileges, for real: the agent as an unprivileged user holding only CAP_NET_ADMIN
/// (what DynamicUser + AmbientCapabilities give it) programs both families, deletes IPv6 UDP
/// conntrack entries, and cleans up.
#[test]
fn net_admin_alone_is_enough_for_nftables_and_conntrack() {
    skip_unless_capable!();
    let lab = dual_lab_with_servers(2);
    let as_unprivileged = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.client.name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin", AGENT, "--config"])
            .arg(&lab.config)
            .args(args)
            .output()
            .expect("run the agent through setpriv (util-linux)");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "lb-agent {args:?} with CAP_NET_ADMIN only failed: {stderr}");
        assert!(!stderr.contains("cannot delete stale UDP conntrack"), "conntrack needs more than CAP_NET_ADMIN: {stderr}");
    };
    lab.write_config(&traffic::dual_config("nftables", &[0, 1], &[0, 1], "affinity = \"client-ip\""));
    as_unprivileged(&["--once"]);
    assert_eq!(lab.tcp_spread(vip(traffic::DUAL_VIP6), 5).len(), 1, "programmed, with affinity");
    let udp = lab.udp_socket(vip(UDP_VIP6));
    let first = udp_who(&udp).expect("IPv6 UDP answered");
    let keep: Vec<u8> = (0..2).filter(|i| name6(*i) != first).collect();
    lab.write_config(&traffic::dual_config("nftables", &[0, 1], &keep, "affinity = \"client-ip\""));
    as_unprivileged(&["--once"]);
    assert_ne!(udp_who(&udp).expect("still answered"), first, "the conntrack entry was deleted");
    as_unprivileged(&["cleanup"]);
    assert_eq!(lab.client.exec(&["nft", "list", "ruleset"]).trim(), "", "cleaned up");
}

/// A document as its API type. k8s-openapi skips fields it does not know, so the value is also
/// written back and compared: a misspelt or misplaced field fails here, not on a cluster.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: serde_yaml::Value, kind: &str) -> T {
    let t: T = match serde_yaml::from_value(value.clone()) {
        Ok(t) => t,
        Err(e) => panic!("the {kind} document is not a valid {kind}: {e}"),
    };
    let back = serde_yaml::to_value(&t).expect("an API object serializes");
    assert_eq!(back, value, "the {kind} document has fields its type does not know");
    t
}

#[test]
fn kubernetes_manifests_are_valid_api_objects_with_what_the_agent_needs() {
    let (mut sa, mut role, mut binding, mut config, mut ds) = (None, None, None, None, None);
    for doc in serde_yaml::Deserializer::from_str(MANIFESTS) {
        let value = serde_yaml::Value::deserialize(doc).expect("a YAML document");
        let kind = value.get("kind").and_then(serde_yaml::Value::as_str).expect("every document has a kind").to_string();
        match kind.as_str() {
            "ServiceAccount" => sa = Some(typed::<ServiceAccount>(value, &kind)),
            "ClusterRole" => role = Some(typed::<ClusterRole>(value, &kind)),
            "ClusterRoleBinding" => binding = Some(typed::<ClusterRoleBinding>(value, &kind)),
            "ConfigMap" => config = Some(typed::<ConfigMap>(value, &kind)),
            "DaemonSet" => ds = Some(typed::<DaemonSet>(value, &kind)),
            other => panic!("unexpected document kind {other}"),
        }
    }
    let (sa, role, binding, config, ds) = (
        sa.expect("a ServiceAccount"),
        role.expect("a ClusterRole"),
        binding.expect("a ClusterRoleBinding"),
        config.expect("a ConfigMap"),
        ds.expect("a DaemonSet"),
    );

    // RBAC: EndpointSlices and Services, read-only, bound to the DaemonSet's account.
    let rules = role.rules.expect("rules");
    for (group, resource) in [("discovery.k8s.io", "endpointslices"), ("", "services")] {
        let rule = rules
            .iter()
            .find(|r| r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == resource)))
            .unwrap_or_else(|| panic!("no rule for {resource}"));
        assert_eq!(rule.api_groups.as_deref(), Some(&[group.to_string()][..]));
        assert_eq!(rule.verbs, ["get", "list", "watch"], "{resource}: read-only");
    }
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().expect("role name"));
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!((subject.kind.as_str(), Some(&subject.name), subject.namespace.as_ref()), ("ServiceAccount", sa.metadata.name.as_ref(), sa.metadata.namespace.as_ref()));

    // The DaemonSet: the node's network, only NET_ADMIN, node name and zone from the downward API.
    let spec = ds.spec.template.spec.expect("pod spec");
    assert_eq!(spec.service_account_name, sa.metadata.name);
    assert_eq!(spec.host_network, Some(true));
    let c = &spec.containers[0];
    let sc = c.security_context.as_ref().expect("securityContext");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_ne!(sc.privileged, Some(true));
    let env = c.env.as_ref().expect("env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(field("POD_ZONE").as_deref(), Some("metadata.labels['topology.kubernetes.io/zone']"));
    for (var, names) in [("NODE_NAME", lb_agent::config::NODE_ENV), ("POD_ZONE", lb_agent::config::ZONE_ENV)] {
        assert!(names.contains(&var), "the agent reads {var}");
    }

    // The ConfigMap holds a configuration the agent accepts, mounted where the args point, and the
    // liveness probe asks the agent's own /healthz.
    let toml = config.data.as_ref().and_then(|d| d.get("config.toml")).expect("config.toml in the ConfigMap");
    let cfg: lb_agent::Config = toml.parse().expect("the ConfigMap's configuration is valid");
    let args = c.args.as_ref().expect("args");
    let mount = c.volume_mounts.as_ref().expect("mounts").iter().find(|m| m.name == "config").expect("config mount");
    assert_eq!(args, &["--config".to_string(), format!("{}/config.toml", mount.mount_path)]);
    let probe = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("liveness probe");
    let metrics = cfg.metrics_addr.expect("metrics_addr set, for the probe");
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(probe.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(metrics.port())));
    assert_eq!(probe.host.as_deref(), Some(metrics.ip().to_string().as_str()));
    assert_eq!(cfg.services[0].keys.len(), 2, "the example is dual-stack");
}
