//! A double of Consul's HTTP API: agent service registration with TTL checks, and health blocking
//! queries. A test double, not Consul.
//!
//! No Consul server can be installed where lb's tests run, so this double serves the handful of
//! endpoints lb uses, over real HTTP/1.1 on a loopback port, with the semantics lb relies on
//! (from Consul's API docs, "Blocking Queries", "Agent Service", "Agent Check", "Health"):
//!
//! | endpoint | semantics kept |
//! |---|---|
//! | `PUT /v1/agent/service/register` | `Name`, `ID` (defaults to `Name`), `Tags`, `Address`, `Port`, `Meta` (validated with Consul's rules), `Weights`, one `Check` or `Checks` of kind TTL with `CheckID` (default `service:<ID>`), `TTL`, `Status` (initial, default `critical`), `DeregisterCriticalServiceAfter`; re-registering an ID replaces it; `?ns=` |
//! | `PUT /v1/agent/service/deregister/<id>` | 404 for an unknown ID |
//! | `PUT /v1/agent/check/{pass,warn,fail}/<id>` | resets the TTL; an unknown check answers 404 `Unknown check ID` (Consul ≥ 1.11) or, with [`ConsulDouble::set_unknown_check_status`]`(500)`, older agents' 500 |
//! | `GET /v1/health/service/<name>` | `?passing`, repeated `?tag=`, `?dc=` (an unknown datacenter is a 500 `No path to datacenter`), `?ns=`; `X-Consul-Index`; with `?index=N` it blocks until the result's index exceeds N or `?wait=` (default 5m, max 10m) plus up to `wait/16` jitter elapses |
//!
//! A TTL check not passed within its TTL turns critical (output `TTL expired`); a service whose
//! check stays critical longer than `DeregisterCriticalServiceAfter` is deregistered. Only writes
//! that change something bump the index, so a TTL pass does not wake blocking queries.
//!
//! ACLs, with [`DoubleConfig::acl_token`] set, as an agent with `acl.enabled` and
//! `default_policy = deny` answers (Consul API docs, "Authentication" and "Results Filtered by ACLs";
//! `agent/http.go`): the token is read from `X-Consul-Token`, `Authorization: Bearer` or `?token=`;
//! an unknown secret gets `403 ACL not found`, reads included; a read the token may not see is
//! *filtered*, not refused: `200`, the entries it may see (none here), and
//! `X-Consul-Results-Filtered-By-ACLs: true` when something was hidden — except for a request
//! without a token (the anonymous token), from which Consul hides that header; a write without
//! `service:write` gets `403 Permission denied: token with AccessorID '…' lacks permission …`. Every
//! answer carries `X-Consul-Default-ACL-Policy`. The management token may do everything;
//! [`DoubleConfig::reader_tokens`] hold a read-only policy (`service_prefix "" { policy = "read" }`
//! and the same for nodes): they read everything and write nothing; [`DoubleConfig::unprivileged_tokens`]
//! exist but hold no policy. [`ConsulDouble::detach_read_policy`] takes a reader's policy away at
//! run time, as an operator editing the token does; Consul resolves a request's token when the
//! request arrives (`ResolveTokenAndDefaultMeta` before the blocking loop), so a query already
//! held answers with the privileges it arrived with, and the next one is filtered.
//!
//! Deliberate differences from Consul, for fast tests: `DeregisterCriticalServiceAfter` has no
//! one-minute minimum and the reaper runs every [`DoubleConfig::reap_interval`] (Consul: 30 s);
//! there is one node and one datacenter; only TTL checks exist.
//!
//! Test controls: [`ConsulDouble::restart_with_reset_index`] (forgets every registration, resets the
//! index and drops open connections, like an agent restarted without its data), [`Fault`]s injected
//! into health responses (500s, garbage, malformed entries, empty lists), and counters.
//!
//! [`ConsulDouble::start_tls`] serves the same API over HTTPS with a caller-made [`rustls`] server
//! configuration (its certificate, and optionally client-certificate verification, as Consul's
//! `verify_incoming`); [`ConsulDouble::start`] and [`ConsulDouble::start_with`] serve plain HTTP.

mod server;
mod state;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
pub use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use self::state::State;

/// The status of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// `passing`
    Passing,
    /// `warning`
    Warning,
    /// `critical`
    Critical,
}

impl CheckStatus {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// A failure injected into `GET /v1/health/service/…` responses (answered at once, no blocking).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Normal operation.
    #[default]
    None,
    /// `500 Internal Server Error` with a Consul-like message.
    ServerError,
    /// `200 OK` with a body that is not JSON, and the current `X-Consul-Index`.
    Garbage,
    /// The real entries plus malformed ones (no port, a port that is not a number, an address that
    /// is not an IP, a `Service` that is not an object).
    MalformedEntries,
    /// `200 OK` with `[]` and no ACL header: an agent that lost its catalog (a token that may not
    /// read the service is a different answer: see [`DoubleConfig::unprivileged_tokens`]).
    Empty,
}

/// Options of a [`ConsulDouble`].
#[derive(Clone, Debug)]
pub struct DoubleConfig {
    /// The address to bind (default `127.0.0.1:0`).
    pub addr: SocketAddr,
    /// When set, ACLs are on with `default_policy = deny` and this is the management token (it may
    /// read and write everything); see the [module docs](self) for what other callers get.
    pub acl_token: Option<String>,
    /// With ACLs on, tokens that exist but hold no policy: their reads are filtered to nothing
    /// (`200`, `[]`, `X-Consul-Results-Filtered-By-ACLs: true`), their writes answer `403`.
    pub unprivileged_tokens: Vec<String>,
    /// With ACLs on, tokens holding a read-only policy: they read every service and node, their
    /// writes answer `403` (see [`ConsulDouble::detach_read_policy`]).
    pub reader_tokens: Vec<String>,
    /// How often TTLs and `DeregisterCriticalServiceAfter` are enforced (default 20 ms).
    pub reap_interval: Duration,
    /// The node name in health entries (default `double-node`).
    pub node: String,
    /// The datacenter (default `dc1`).
    pub datacenter: String,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            acl_token: None,
            unprivileged_tokens: Vec::new(),
            reader_tokens: Vec::new(),
            reap_interval: Duration::from_millis(20),
            node: "double-node".into(),
            datacenter: "dc1".into(),
        }
    }
}

/// What the double knows of one registered service (for assertions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The service ID.
    pub id: String,
    /// The service name.
    pub name: String,
    /// The namespace (`default` unless registered with `?ns=`).
    pub namespace: String,
    /// `Address:Port`.
    pub address: String,
    /// The port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Service meta.
    pub meta: std::collections::BTreeMap<String, String>,
    /// `Weights.Passing`, `Weights.Warning`.
    pub weights: (u64, u64),
    /// The worst status of its checks (passing when it has none).
    pub status: CheckStatus,
    /// TTL passes received by its checks since registration.
    pub passes: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped on every write; blocking queries wait on it.
    changed: watch::Sender<u64>,
    /// Bumped by a restart; in-flight requests drop their connection when it changes.
    generation: watch::Sender<u64>,
    config: DoubleConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is still consistent enough for a test
        // double to keep answering.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// A running Consul double. Stops when dropped.
pub struct ConsulDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// `http`, or `https` when started with [`ConsulDouble::start_tls`].
    scheme: &'static str,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ConsulDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDouble").field("addr", &self.addr).field("scheme", &self.scheme).finish()
    }
}

impl ConsulDouble {
    /// Starts a double on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(DoubleConfig::default()).await
    }

    /// Starts a double with options.
    pub async fn start_with(config: DoubleConfig) -> io::Result<Self> {
        Self::start_inner(config, None).await
    }

    /// Starts a double that serves HTTPS only (as an agent with `tls.https` and `ports.https`),
    /// with this rustls server configuration: its certificate, and whether and how it verifies
    /// client certificates (Consul's `verify_incoming`). A failed handshake closes that connection.
    pub async fn start_tls(config: DoubleConfig, tls: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        Self::start_inner(config, Some(TlsAcceptor::from(tls))).await
    }

    async fn start_inner(config: DoubleConfig, tls: Option<TlsAcceptor>) -> io::Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config.node.clone(), config.datacenter.clone())),
            changed: watch::channel(0).0,
            generation: watch::channel(0).0,
            config,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept = tokio::spawn(server::accept_loop(listener, Arc::clone(&shared), shutdown_rx, tls));
        let reaper = tokio::spawn(reap_loop(Arc::clone(&shared)));
        Ok(ConsulDouble {
            shared,
            addr,
            scheme,
            shutdown,
            tasks: vec![accept, reaper],
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` for a `consul://` target URI.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://host:port`, or `https://host:port` for a double started with
    /// [`ConsulDouble::start_tls`].
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Simulates an agent restarted without its data: every service and check is forgotten, the
    /// index drops back to 1 (so it goes backwards for every client), and open connections are
    /// dropped without a response.
    pub fn restart_with_reset_index(&self) {
        self.shared.lock().reset();
        self.shared.generation.send_modify(|g| *g += 1);
        self.shared.notify();
    }

    /// Injects a fault into health responses (until set back to [`Fault::None`]).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.lock().fault = fault;
        // Wake blocked queries so the fault shows at once.
        self.shared.notify();
    }

    /// Makes every agent endpoint (register, deregister, check updates) answer 500, as an agent
    /// that lost its servers does; `false` restores them.
    pub fn set_agent_down(&self, down: bool) {
        self.shared.lock().agent_down = down;
    }

    /// The status an unknown check ID gets on `check/pass`: 404 (Consul ≥ 1.11, the default) or
    /// 500 (older agents).
    pub fn set_unknown_check_status(&self, status: u16) {
        self.shared.lock().unknown_check_status = status;
    }

    /// Sets a check's status as an operator (or `consul` CLI) would. Returns false when unknown.
    pub fn set_check_status(&self, check_id: &str, status: CheckStatus) -> bool {
        let ok = self.shared.lock().set_status(check_id, status, "set by the test", tokio::time::Instant::now());
        self.shared.notify();
        ok
    }

    /// Detaches the read policy from one of [`DoubleConfig::reader_tokens`] (`false`: `token` is not
    /// one): from its next request on, it holds no policy and its reads are filtered. It does not
    /// wake blocking queries, as Consul's ACL changes do not touch the health tables they watch.
    pub fn detach_read_policy(&self, token: &str) -> bool {
        if !self.shared.config.reader_tokens.iter().any(|t| t == token) {
            return false;
        }
        self.shared.lock().detached.insert(token.to_string());
        true
    }

    /// Attaches the read policy again to a token [`ConsulDouble::detach_read_policy`] took it from.
    pub fn attach_read_policy(&self, token: &str) -> bool {
        self.shared.lock().detached.remove(token)
    }

    /// Deregisters a service behind its owner's back (as `consul services deregister` does).
    pub fn force_deregister(&self, service_id: &str) -> bool {
        let ok = self.shared.lock().deregister(service_id);
        self.shared.notify();
        ok
    }

    /// The registered services, in ID order.
    pub fn services(&self) -> Vec<ServiceInfo> {
        let state = self.shared.lock();
        state
            .services
            .values()
            .map(|s| {
                let checks: Vec<_> = state.checks.values().filter(|c| c.service_id == s.id).collect();
                let status = checks.iter().map(|c| c.status).fold(CheckStatus::Passing, worst);
                ServiceInfo {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    address: format!("{}:{}", s.address, s.port),
                    port: s.port,
                    tags: s.tags.clone(),
                    meta: s.meta.clone(),
                    weights: s.weights,
                    status,
                    passes: checks.iter().map(|c| c.passes).sum(),
                }
            })
            .collect()
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// How many health queries were answered (to check clients do not loop tightly).
    pub fn health_queries(&self) -> u64 {
        self.shared.lock().health_queries
    }

    /// How many service registrations were accepted.
    pub fn registrations(&self) -> u64 {
        self.shared.lock().registrations
    }

    /// How many services were deregistered (by their owner, by an operator, or by the reaper).
    pub fn deregistrations(&self) -> u64 {
        self.shared.lock().deregistrations
    }

    /// How many times a check turned critical because its TTL ran out without a pass.
    pub fn ttl_expirations(&self) -> u64 {
        self.shared.lock().ttl_expirations
    }

    /// The `X-Consul-Token` of the last request, if it had one.
    pub fn last_token(&self) -> Option<String> {
        self.shared.lock().last_token.clone()
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn worst(a: CheckStatus, b: CheckStatus) -> CheckStatus {
    use CheckStatus::*;
    match (a, b) {
        (Critical, _) | (_, Critical) => Critical,
        (Warning, _) | (_, Warning) => Warning,
        _ => Passing,
    }
}

async fn reap_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let changed = shared.lock().tick(tokio::time::Instant::now());
        if changed {
            shared.notify();
        }
    }
}
