//! The discovery stream: `kube-runtime`'s watcher events → diffed [`Update`]s.
//!
//! The watcher reports a (re)list as `Init`, `InitApply`…, `InitDone` — after the first list and
//! after every `410 Gone` or other restart — and watch events in between as `Apply` / `Delete`.
//! A relist is buffered and swapped in whole at `InitDone` (the `reflector` store's contract), so a
//! relist that fails half-way changes nothing, and it is emitted as one `Reset` that the pool diffs
//! — or as `Current` when it found exactly what was already served (the watcher re-established
//! itself and nothing changed meanwhile). A watch that resumes without a relist after an error is
//! invisible here (kube-runtime consumes its bookmarks), so the data counts as fresh again with the
//! next event or relist; a cache's `resync` bounds that.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, ResourceExt as _};
use lb_core::backoff::Backoff;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Update};
use tracing::{debug, info, warn};

use super::slices::{self, Skipped};
use super::view::{Change, View};
use super::{Inner, ServiceRef, AUTH_ERRORS, INVALID_ENTRIES};

type Events = BoxStream<'static, Result<Event<EndpointSlice>, watcher::Error>>;

/// The API server refused the client's credentials (401) or its identity's access (403). Said
/// plainly, with what to fix, because kube's own message ("ApiError: Forbidden … (ErrorResponse
/// …)") buries it.
#[derive(Debug)]
pub(crate) struct AuthError {
    code: u16,
    service: String,
    namespace: String,
    server_message: String,
}

impl AuthError {
    /// The 401 or 403 inside a watcher error, if that is what it is.
    fn from_watch_error(error: &watcher::Error, service: &str, namespace: &str) -> Option<Self> {
        let status = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
            watcher::Error::WatchError(s) => s,
            _ => return None,
        };
        matches!(status.code, 401 | 403).then(|| AuthError {
            code: status.code,
            service: service.to_string(),
            namespace: namespace.to_string(),
            server_message: status.message.clone(),
        })
    }

    fn reason(&self) -> &'static str {
        if self.code == 401 {
            "unauthorized"
        } else {
            "forbidden"
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code == 401 {
            write!(
                f,
                "the Kubernetes API server refused lb's credentials (401 Unauthorized) for the EndpointSlices of `{}` in \
                 namespace `{}`: the bearer token or client certificate (from KUBECONFIG or the pod's service account) is \
                 missing, expired or not valid for this API server",
                self.service, self.namespace
            )?;
        } else {
            write!(
                f,
                "the Kubernetes API server denied lb's identity (403 Forbidden) the EndpointSlices of `{}` in namespace `{}`: \
                 grant it `list` and `watch` on `endpointslices` in API group `discovery.k8s.io` there (a Role and a \
                 RoleBinding)",
                self.service, self.namespace
            )?;
        }
        if !self.server_message.is_empty() {
            write!(f, "; the server said: {}", self.server_message)?;
        }
        Ok(())
    }
}

impl std::error::Error for AuthError {}

pub(super) fn discover(inner: Arc<Inner>, svc: ServiceRef) -> BoxDiscover {
    let view = View::new(svc.port.clone(), inner.opts.clone());
    let state = Watch {
        inner,
        svc,
        events: None,
        namespace: String::new(),
        client_retry: None,
        view,
        relist: None,
        listed: false,
        pending: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut w| async move {
        let item = w.next_item().await;
        Some((item, w))
    }))
}

struct Watch {
    inner: Arc<Inner>,
    svc: ServiceRef,
    events: Option<Events>,
    /// The namespace watched (known once a client exists), for messages.
    namespace: String,
    /// Paces attempts to create a client while neither KUBECONFIG nor the in-cluster config works
    /// (`None` until one failed).
    client_retry: Option<Backoff>,
    /// The merged endpoints of the last complete list plus the watch events since.
    view: View,
    /// A relist in progress, by slice name.
    relist: Option<BTreeMap<String, EndpointSlice>>,
    /// True once a list completed.
    listed: bool,
    pending: VecDeque<Update>,
}

impl Watch {
    async fn next_item(&mut self) -> Result<Update, BoxError> {
        loop {
            if let Some(u) = self.pending.pop_front() {
                return Ok(u);
            }
            if self.events.is_none() {
                let events = self.connect().await?;
                self.events = Some(events);
            }
            let Some(events) = self.events.as_mut() else { continue };
            match events.next().await {
                Some(Ok(event)) => self.on_event(event),
                Some(Err(error)) => {
                    // The watcher recovers by itself (re-watch, or relist after 410) after its
                    // backoff; until a relist completes the last set stands.
                    if let Some(auth) = AuthError::from_watch_error(&error, &self.svc.name, &self.namespace) {
                        metrics::counter!(AUTH_ERRORS, "registry" => "kubernetes", "reason" => auth.reason()).increment(1);
                        warn!(service = %self.svc.name, error = %auth, "kubernetes API refused the watch; keeping the last known endpoints");
                        return Err(Box::new(auth));
                    }
                    warn!(service = %self.svc.name, %error, "kubernetes watch error; keeping the last known endpoints");
                    return Err(Box::new(error));
                }
                None => {
                    // Only a backoff that gives up ends the watcher; start a fresh one.
                    self.events = None;
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<Events, BoxError> {
        // The first failure is reported at once; the wait comes before each retry.
        if let Some(retry) = &mut self.client_retry {
            tokio::time::sleep(retry.next()).await;
        }
        let client = match &self.inner.client {
            Some(c) => c.clone(),
            None => match inferred_client().await {
                Ok(c) => c,
                Err(error) => {
                    self.client_retry.get_or_insert_with(|| Backoff::new(Duration::from_secs(2), Duration::from_secs(30)));
                    warn!(service = %self.svc.name, %error, "no kubernetes client (neither KUBECONFIG nor in-cluster config works)");
                    return Err(Box::new(error));
                }
            },
        };
        self.client_retry = None;
        let namespace = self.svc.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        info!(service = %self.svc.name, %namespace, "watching endpointslices");
        self.namespace = namespace.clone();
        let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", self.svc.name));
        let stream = watcher::watcher(api, config);
        Ok(match self.inner.backoff {
            Some((initial, max)) => stream.backoff(KubeBackoff(Backoff::new(initial, max))).boxed(),
            None => stream.default_backoff().boxed(),
        })
    }

    fn on_event(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Init => {
                debug!(service = %self.svc.name, "endpointslice list started");
                self.relist = Some(BTreeMap::new());
            }
            Event::InitApply(slice) => {
                let (_, skipped) = slices::convert(&slice, &self.svc.port, &self.inner.opts);
                self.report(&slice, skipped);
                self.relist.get_or_insert_with(BTreeMap::new).insert(slice.name_any(), slice);
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let before = self.listed.then(|| self.view.endpoints());
                let endpoints = self.view.replace_all(listed.iter().map(|(name, s)| (name.clone(), s)));
                info!(service = %self.svc.name, slices = listed.len(), endpoints = endpoints.len(), "endpointslices listed");
                if before.as_ref() == Some(&endpoints) {
                    self.pending.push_back(Update::Current);
                } else {
                    self.pending.push_back(Update::Reset(endpoints));
                }
                self.listed = true;
            }
            Event::Apply(slice) => {
                let change = self.view.apply(&slice.name_any(), &slice);
                self.report(&slice, change.skipped.clone());
                self.emit(change);
            }
            Event::Delete(slice) => {
                let change = self.view.delete(&slice.name_any());
                self.emit(change);
            }
        }
    }

    fn emit(&mut self, change: Change) {
        // Before the first complete list there is nothing to diff against; `InitDone` emits.
        if !self.listed {
            return;
        }
        debug!(service = %self.svc.name, upserted = change.upserted.len(), removed = change.removed.len(), "endpointslice change");
        // Additions first, so a replacement never leaves a moment with fewer endpoints.
        if !change.upserted.is_empty() {
            self.pending.push_back(Update::Add(change.upserted));
        }
        if !change.removed.is_empty() {
            self.pending.push_back(Update::Remove(change.removed));
        }
    }

    /// Logs what a slice contributes nothing for, and counts unusable addresses (once per slice
    /// version).
    fn report(&self, slice: &EndpointSlice, skipped: Skipped) {
        let Skipped { bad_address, no_port } = skipped;
        if bad_address > 0 {
            warn!(
                service = %self.svc.name,
                slice = %slice.name_any(),
                address_type = %slice.address_type,
                skipped = bad_address,
                "endpoints without a usable IP address skipped"
            );
            metrics::counter!(INVALID_ENTRIES, "registry" => "kubernetes", "reason" => "address").increment(bad_address as u64);
        }
        if no_port > 0 {
            // Normal for pods that do not expose this port: the controller gives them their own slice.
            debug!(service = %self.svc.name, slice = %slice.name_any(), port = ?self.svc.port, "endpointslice lacks the requested port");
        }
    }
}

/// The client from KUBECONFIG or the in-cluster configuration, as `kube::Client::try_default`
/// builds it but without kube's retry layer: that layer retries 429/503/504 answers up to 15
/// times with delays doubling from 5 ms (about two and a half minutes in all) before the watcher
/// hears of anything, so an API server outage would show no error, no staleness, and recovery
/// would wait out the last delay. The watcher's own backoff retries instead, reporting every
/// failure.
async fn inferred_client() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// lb-core's backoff in the shape kube-runtime's watcher takes, for
/// [`super::KubernetesResolverBuilder::watch_backoff`].
struct KubeBackoff(Backoff);

impl Iterator for KubeBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next())
    }
}

impl kube::runtime::utils::Backoff for KubeBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests;
