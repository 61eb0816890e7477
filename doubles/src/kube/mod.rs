//! A double of the Kubernetes API server's EndpointSlice API: list and watch with real
//! `discovery.k8s.io/v1` JSON. A test double, not the API server.
//!
//! No kube-apiserver can be installed where lb's tests run, so this double serves the resource lb
//! reads over real HTTP/1.1 on a loopback port, with the list/watch protocol clients such as
//! `kube-runtime`'s watcher and client-go's reflector rely on (Kubernetes API concepts: "Efficient
//! detection of changes", "Watch bookmarks", "Retrieving large results sets in chunks"):
//!
//! | request | semantics kept |
//! |---|---|
//! | `GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices` (and cluster-wide `…/v1/endpointslices`) | `labelSelector` (equality- and set-based), `limit` + `continue` (chunks; a token older than the compaction is `410 Expired`); the list's `metadata.resourceVersion` |
//! | the same with `watch=1` (or `true`) | newline-delimited `ADDED` / `MODIFIED` / `DELETED` events (a change that moves an object into or out of the selection is `ADDED` / `DELETED`, as the watch cache filters); from `resourceVersion=N` the changes after `N`, or without one (or `0`) synthetic `ADDED`s for what exists; `BOOKMARK`s when `allowWatchBookmarks=true`; `sendInitialEvents=true` ends the initial events with the `k8s.io/initial-events-end` bookmark; `timeoutSeconds`; a version older than the compaction gets HTTP 200 and then an `ERROR` event carrying a `410 Expired` Status, as the API server's watch cache does |
//! | `GET`, `PUT` (with optimistic concurrency on `resourceVersion`), `DELETE` `…/endpointslices/{name}`, `POST …/endpointslices` (`generateName` too) | so a test can drive the double with any Kubernetes client |
//!
//! Every write takes the next resourceVersion (one counter, like etcd's revision). Errors are
//! `Status` objects.
//!
//! Authentication and authorization, when [`DoubleConfig::bearer_token`] is set, as the API server
//! answers them: a request without that `Authorization: Bearer` token (or with an unknown one) is
//! `401` with the Status `{"reason":"Unauthorized","message":"Unauthorized"}`; a token from
//! [`DoubleConfig::forbidden_tokens`] authenticates as a service account that RBAC grants nothing,
//! and gets `403` with `{"reason":"Forbidden","message":"endpointslices.discovery.k8s.io is
//! forbidden: User \"…\" cannot list resource \"endpointslices\" in API group
//! \"discovery.k8s.io\" in the namespace \"default\""}`; a token from [`DoubleConfig::list_only_tokens`]
//! authenticates as one granted `get` and `list` but not `watch` (a Role missing a verb): its lists
//! answer, its watches get the same `403` saying `cannot watch`. [`KubeDouble::start_tls`] serves HTTPS with
//! a caller-made certificate, and [`KubeDouble::kubeconfig_with`] writes the kubeconfig a client
//! needs for it (server URL, CA file, token).
//!
//! Deliberate differences, for fast tests: bookmarks go out every [`DoubleConfig::bookmark_interval`]
//! (the API server: about once a minute) and only to watchers that have not seen the current
//! version; one token and two sets of restricted tokens stand for the authenticators and RBAC;
//! there is no other resource, no protobuf, and no HTTP/2.
//!
//! Test controls: [`KubeDouble::apply`] / [`KubeDouble::delete`] (what the EndpointSlice controller
//! would write), [`KubeDouble::compact`] (etcd compaction), [`KubeDouble::expire_watches`] (a `410`
//! to every open watch, as when watchers fall out of the watch cache's window),
//! [`KubeDouble::close_watches`], [`KubeDouble::set_unavailable`] (every request answers 503),
//! [`KubeDouble::inject_watch_line`] (malformed events), and request counters.

mod selector;
mod server;
mod slice;
mod store;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tokio::task::JoinHandle;
pub use tokio_rustls::rustls;

pub use self::slice::{endpoint, endpoint_slice, EndpointBuilder, SliceBuilder};
use self::store::{error_line, Store};

/// Options of a [`KubeDouble`].
#[derive(Clone, Debug)]
pub struct DoubleConfig {
    /// The address to bind (default `127.0.0.1:0`).
    pub addr: SocketAddr,
    /// How often watchers that asked for bookmarks and are behind the current version get one
    /// (default 200 ms); `None` sends them only on [`KubeDouble::send_bookmarks`].
    pub bookmark_interval: Option<Duration>,
    /// When set, every request must carry `Authorization: Bearer <this>` (401 otherwise); see the
    /// [module docs](self).
    pub bearer_token: Option<String>,
    /// Tokens that authenticate but that RBAC grants nothing: every request with one is 403.
    pub forbidden_tokens: Vec<String>,
    /// Tokens that RBAC grants `get` and `list` on endpointslices but not `watch` (nor writes):
    /// their watches are 403.
    pub list_only_tokens: Vec<String>,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Some(Duration::from_millis(200)),
            bearer_token: None,
            forbidden_tokens: Vec::new(),
            list_only_tokens: Vec::new(),
        }
    }
}

/// What [`authorize`](server) checks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Auth {
    bearer_token: Option<String>,
    forbidden_tokens: Vec<String>,
    list_only_tokens: Vec<String>,
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    auth: Auth,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves a store that is still consistent enough for a test
        // double to keep answering.
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running Kubernetes API server double. Stops when dropped.
pub struct KubeDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// `http`, or `https` when started with [`KubeDouble::start_tls`].
    scheme: &'static str,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for KubeDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDouble").field("addr", &self.addr).finish()
    }
}

impl KubeDouble {
    /// Starts a double on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(DoubleConfig::default()).await
    }

    /// Starts a double with options.
    pub async fn start_with(config: DoubleConfig) -> io::Result<Self> {
        Self::start_inner(config, None).await
    }

    /// Starts a double that serves HTTPS only, with this rustls server configuration (its
    /// certificate, and client-certificate verification if the test wants it).
    pub async fn start_tls(config: DoubleConfig, tls: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        Self::start_inner(config, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_inner(config: DoubleConfig, tls: Option<tokio_rustls::TlsAcceptor>) -> io::Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            auth: Auth {
                bearer_token: config.bearer_token.clone(),
                forbidden_tokens: config.forbidden_tokens.clone(),
                list_only_tokens: config.list_only_tokens.clone(),
            },
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(server::accept_loop(listener, Arc::clone(&shared), shutdown_rx, tls))];
        if let Some(every) = config.bookmark_interval {
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    shared.lock().bookmarks();
                }
            }));
        }
        Ok(KubeDouble {
            shared,
            addr,
            scheme,
            shutdown,
            tasks,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:40123` (`https://` when started with
    /// [`KubeDouble::start_tls`]), for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// A kubeconfig document whose current context points at the double (namespace `default`,
    /// no credentials), for programs that read `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with(None, None)
    }

    /// A kubeconfig document for the double with credentials: `token` as the user's bearer token,
    /// and `ca_file`, a PEM file, as the cluster's `certificate-authority` (for a TLS double).
    pub fn kubeconfig_with(&self, token: Option<&str>, ca_file: Option<&std::path::Path>) -> String {
        let ca = ca_file.map(|p| format!("    certificate-authority: {}\n", p.display())).unwrap_or_default();
        let user = match token {
            Some(t) => format!("\n    token: {t}"),
            None => " {}".to_string(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {url}\n{ca}contexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user:{user}\n",
            url = self.url()
        )
    }

    /// Creates or replaces a slice (namespace `default` unless its metadata says otherwise), as the
    /// EndpointSlice controller would; watchers get `ADDED` or `MODIFIED`. Returns the new
    /// resourceVersion.
    ///
    /// # Panics
    /// When the slice has no name (a test bug).
    pub fn apply(&self, slice: EndpointSlice) -> u64 {
        assert!(
            slice.metadata.name.as_deref().is_some_and(|n| !n.is_empty()),
            "an EndpointSlice given to the double needs metadata.name"
        );
        self.shared.lock().apply(slice)
    }

    /// Deletes a slice; watchers get `DELETED`. Returns whether it existed.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        self.shared.lock().delete(namespace, name).is_some()
    }

    /// The current slice `namespace/name`, as stored (with its resourceVersion).
    pub fn get(&self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        self.shared
            .lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| o.slice.clone())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Compacts the history up to the current version: a watch or `continue` from an older version
    /// is answered `410 Expired` from now on. Open watches are not disturbed.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Compacts, then sends every open watch an `ERROR` event with a `410 Expired` Status and ends
    /// it, as the API server does to watchers that fell out of its watch cache's window. Clients
    /// must relist.
    pub fn expire_watches(&self) {
        let mut store = self.shared.lock();
        store.compact();
        let message = format!("too old resource version: the watch cache now starts at {}", store.rv + 1);
        for w in store.watchers.drain(..) {
            let _ = w.tx.send(error_line(410, "Expired", &message));
        }
    }

    /// Ends every open watch cleanly, as the API server does at a watch's timeout. Clients re-watch
    /// from the last version they saw.
    pub fn close_watches(&self) {
        self.shared.lock().watchers.clear();
    }

    /// Sends a `BOOKMARK` with the current version to every bookmark-enabled watch that has not
    /// seen it.
    pub fn send_bookmarks(&self) {
        self.shared.lock().bookmarks();
    }

    /// Sends `line` (plus a newline) as is to every open watch: a malformed event, to check that a
    /// client survives one.
    pub fn inject_watch_line(&self, line: &str) {
        let bytes = bytes::Bytes::from(format!("{line}\n"));
        self.shared.lock().watchers.retain(|w| w.tx.send(bytes.clone()).is_ok());
    }

    /// While set, every request answers `503 ServiceUnavailable` and open watches are ended, as
    /// when the API server loses etcd.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut store = self.shared.lock();
        store.unavailable = unavailable;
        if unavailable {
            store.watchers.clear();
        }
    }

    /// List requests served so far (a relist shows up here).
    pub fn list_requests(&self) -> u64 {
        self.shared.lock().list_requests
    }

    /// Watch requests served so far.
    pub fn watch_requests(&self) -> u64 {
        self.shared.lock().watch_requests
    }

    /// Watch and `continue` requests answered `410 Expired` because their version was older than
    /// the compaction (each makes a client relist).
    pub fn expired_requests(&self) -> u64 {
        self.shared.lock().expired_requests
    }

    /// Requests answered `503` while [`KubeDouble::set_unavailable`] was set.
    pub fn unavailable_answers(&self) -> u64 {
        self.shared.lock().unavailable_answers
    }

    /// Requests refused with `401` or `403`.
    pub fn auth_failures(&self) -> u64 {
        self.shared.lock().auth_failures
    }

    /// Watches currently open.
    pub fn open_watches(&self) -> usize {
        let mut store = self.shared.lock();
        store.watchers.retain(|w| !w.tx.is_closed());
        store.watchers.len()
    }
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
