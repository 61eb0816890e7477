//! Session affinity from a Kubernetes Service, for `kubernetes:///` targets.
//!
//! A Service with `sessionAffinity: ClientIP` asks kube-proxy to keep each client on one endpoint
//! for `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800). The agent honours the same
//! field for a service whose target is `kubernetes:///<service>.<namespace>:<port>` and whose
//! configuration entry does not set `affinity` (an explicit entry wins): one task per such
//! service watches that one Service object (`metadata.name` field selector, kube-runtime's
//! watcher, which relists and re-watches by itself) and sends [`Event::ServiceAffinity`] whenever
//! the affinity changes. Until the first answer the service has no affinity; a deleted Service,
//! or one whose affinity is `None`, turns it off. Needs `get`, `list`, `watch` on Services (the
//! ClusterRole in `deploy/kubernetes.yaml` grants them).

use crate::agent::Event;
use crate::config::Config;
#[cfg(feature = "kubernetes")]
use crate::model::Affinity;

/// The affinity a Service asks for (`None` unless `sessionAffinity` is `ClientIP`); a timeout the
/// API server would not have accepted falls back to Kubernetes' default.
#[cfg(feature = "kubernetes")]
pub fn affinity_of(svc: &k8s_openapi::api::core::v1::Service) -> Option<Affinity> {
    let spec = svc.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| (1..=Affinity::MAX_TIMEOUT_SECS).contains(t));
    Some(Affinity { timeout_secs: timeout.unwrap_or(Affinity::DEFAULT_TIMEOUT_SECS) })
}

/// `(name, namespace)` of a `kubernetes:///` target's Service (`<service>[.<namespace>][:<port>]`).
pub fn service_of(path: &str) -> (&str, Option<&str>) {
    let host = path.rsplit_once(':').map_or(path, |(h, _)| h);
    match host.split_once('.') {
        Some((name, ns)) => (name, Some(ns)),
        None => (host, None),
    }
}

/// Starts one Service watch per service that takes its affinity from Kubernetes.
pub(crate) fn spawn_affinity_watches(
    cfg: &Config,
    generation: u64,
    tx: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Vec<tokio::task::JoinHandle<()>> {
    #[cfg(feature = "kubernetes")]
    {
        cfg.services
            .iter()
            .enumerate()
            .filter(|(_, svc)| !svc.affinity_explicit && svc.target.scheme() == "kubernetes")
            .map(|(service, svc)| {
                let (name, namespace) = service_of(svc.target.path());
                let (name, namespace, tx) = (name.to_string(), namespace.map(str::to_string), tx.clone());
                tokio::spawn(watch::run(name, namespace, generation, service, tx))
            })
            .collect()
    }
    // Without the feature a `kubernetes:///` target is refused when it is resolved.
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = (cfg, generation, tx);
        Vec::new()
    }
}

#[cfg(feature = "kubernetes")]
mod watch {
    use std::time::Duration;

    use futures_util::StreamExt as _;
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::watcher::{self, Event as WatchEvent};
    use kube::runtime::WatchStreamExt as _;
    use kube::Api;
    use lb_core::backoff::Backoff;
    use tokio::sync::mpsc::UnboundedSender;

    use super::{affinity_of, Event};

    pub(super) async fn run(name: String, namespace: Option<String>, generation: u64, service: usize, tx: UnboundedSender<Event>) {
        let mut retry = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        let client = loop {
            match kube::Client::try_default().await {
                Ok(c) => break c,
                Err(error) => {
                    tracing::warn!(service = %name, %error, "no kubernetes client for the Service's affinity; retrying");
                    tokio::time::sleep(retry.next()).await;
                }
            }
        };
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        let api: Api<Service> = Api::namespaced(client, &ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let mut last: Option<Option<super::Affinity>> = None;
        while let Some(event) = events.next().await {
            let affinity = match event {
                Ok(WatchEvent::Apply(svc) | WatchEvent::InitApply(svc)) => affinity_of(&svc),
                Ok(WatchEvent::Delete(_)) => None,
                Ok(WatchEvent::Init | WatchEvent::InitDone) => continue,
                Err(error) => {
                    tracing::warn!(service = %name, %error, "kubernetes Service watch error; keeping the last affinity");
                    continue;
                }
            };
            if last != Some(affinity) {
                last = Some(affinity);
                tracing::info!(service = %name, namespace = %ns, ?affinity, "session affinity from the Service");
                if tx.send(Event::ServiceAffinity { generation, service, affinity }).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_from_targets() {
        assert_eq!(service_of("greeter.default:grpc"), ("greeter", Some("default")));
        assert_eq!(service_of("greeter:8080"), ("greeter", None));
        assert_eq!(service_of("greeter"), ("greeter", None));
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn client_ip_affinity_from_a_service() {
        let svc = |spec: serde_json::Value| -> k8s_openapi::api::core::v1::Service {
            serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec}))
                .expect("a Service")
        };
        assert_eq!(affinity_of(&svc(serde_json::json!({"sessionAffinity": "None"}))), None);
        assert_eq!(affinity_of(&svc(serde_json::json!({}))), None);
        assert_eq!(
            affinity_of(&svc(serde_json::json!({"sessionAffinity": "ClientIP"}))),
            Some(Affinity { timeout_secs: 10_800 }),
            "Kubernetes' default timeout"
        );
        assert_eq!(
            affinity_of(&svc(serde_json::json!({
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}
            }))),
            Some(Affinity { timeout_secs: 60 })
        );
    }
}
