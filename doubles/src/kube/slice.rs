//! Builders for the EndpointSlices a test feeds the double, shaped like the EndpointSlice
//! controller's output (service-name and managed-by labels, explicit conditions).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Starts a slice named `name` for `service` in namespace `default`, address type `IPv4`.
pub fn endpoint_slice(name: &str, service: &str) -> SliceBuilder {
    SliceBuilder {
        name: name.to_string(),
        service: service.to_string(),
        namespace: "default".to_string(),
        address_type: "IPv4".to_string(),
        ports: Vec::new(),
        endpoints: Vec::new(),
    }
}

/// Starts an endpoint at `ip`: ready, serving, not terminating.
pub fn endpoint(ip: &str) -> EndpointBuilder {
    EndpointBuilder(Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    })
}

/// Builds an [`EndpointSlice`].
#[derive(Clone, Debug)]
pub struct SliceBuilder {
    name: String,
    service: String,
    namespace: String,
    address_type: String,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
}

impl SliceBuilder {
    /// Sets the namespace.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// Sets `addressType` (`IPv4`, `IPv6`, `FQDN`).
    pub fn address_type(mut self, address_type: &str) -> Self {
        self.address_type = address_type.to_string();
        self
    }

    /// Adds a TCP port; `None` is the unnamed port of a single-port service.
    pub fn port(mut self, name: Option<&str>, port: u16) -> Self {
        self.ports.push(EndpointPort {
            name: name.map(str::to_string),
            port: Some(i32::from(port)),
            protocol: Some("TCP".to_string()),
            app_protocol: None,
        });
        self
    }

    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        self.endpoints.push(endpoint.0);
        self
    }

    /// The slice.
    pub fn build(self) -> EndpointSlice {
        let labels = BTreeMap::from([
            ("kubernetes.io/service-name".to_string(), self.service),
            ("endpointslice.kubernetes.io/managed-by".to_string(), "endpointslice-controller.k8s.io".to_string()),
        ]);
        EndpointSlice {
            address_type: self.address_type,
            endpoints: Some(self.endpoints),
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(self.namespace),
                labels: Some(labels),
                ..Default::default()
            },
            ports: Some(self.ports),
        }
    }
}

/// Builds one endpoint of a slice.
#[derive(Clone, Debug)]
pub struct EndpointBuilder(Endpoint);

impl EndpointBuilder {
    fn conditions(&mut self) -> &mut EndpointConditions {
        self.0.conditions.get_or_insert_with(Default::default)
    }

    /// Sets `conditions.ready` (`None`: unset, which the API defines as ready).
    pub fn ready(mut self, ready: Option<bool>) -> Self {
        self.conditions().ready = ready;
        self
    }

    /// Sets `conditions.serving`.
    pub fn serving(mut self, serving: Option<bool>) -> Self {
        self.conditions().serving = serving;
        self
    }

    /// Sets `conditions.terminating`.
    pub fn terminating(mut self, terminating: Option<bool>) -> Self {
        self.conditions().terminating = terminating;
        self
    }

    /// A pod shutting down gracefully but still serving: `ready=false, serving=true,
    /// terminating=true`, what the controller publishes during termination.
    pub fn terminating_but_serving(self) -> Self {
        self.ready(Some(false)).serving(Some(true)).terminating(Some(true))
    }

    /// A pod that is not ready (starting up, failing its readiness probe).
    pub fn not_ready(self) -> Self {
        self.ready(Some(false)).serving(Some(false)).terminating(Some(false))
    }

    /// Sets `zone`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.0.zone = Some(zone.to_string());
        self
    }

    /// Sets `nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.to_string());
        self
    }

    /// Sets `hints.forZones`.
    pub fn hints(mut self, zones: &[&str]) -> Self {
        self.0.hints = Some(EndpointHints {
            for_zones: Some(zones.iter().map(|z| ForZone { name: z.to_string() }).collect()),
            for_nodes: None,
        });
        self
    }

    /// Sets `targetRef` to pod `name` (uid derived from it).
    pub fn pod(mut self, name: &str) -> Self {
        self.0.target_ref = Some(ObjectReference {
            kind: Some("Pod".to_string()),
            name: Some(name.to_string()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        });
        self
    }
}
