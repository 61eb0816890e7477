//! The double's HTTP side: routing, list (with `limit`/`continue`), watch streams, and the write
//! verbs (create, replace, delete) for EndpointSlices.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::selector::Selector;
use super::store::{bookmark_line, error_line, event_line, status, EventType, Watcher};
use super::Shared;

type Body = BoxBody<Bytes, Infallible>;
type Resp = Response<Body>;

const PREFIX: &str = "/apis/discovery.k8s.io/v1/";
/// The API server picks a watch timeout in [minRequestTimeout, 2 × minRequestTimeout] (30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "kubernetes API server double: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(stream, shared, shutdown).await,
                Some(acceptor) => {
                    // In the connection's task: a client that stalls or fails the handshake holds
                    // up no one else.
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve(stream, shared, shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%error, "kubernetes API server double: TLS handshake failed"),
                        Err(_) => tracing::debug!("kubernetes API server double: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve<S>(stream: S, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

/// The API server's authentication and authorization of one request, as it answers them: no or an
/// unknown bearer token is `401 Unauthorized` (a Status whose message is just "Unauthorized"); a
/// known identity without RBAC permission is `403 Forbidden`, naming the user, the verb, the
/// resource and the namespace.
fn authorize(shared: &Shared, req: &Request<Incoming>, path: &str, query: &Query) -> Option<Resp> {
    let auth = &shared.auth;
    let Some(required) = &auth.bearer_token else { return None };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let verb = match *req.method() {
        Method::GET if query.flag("watch") => "watch",
        Method::GET if path.ends_with("/endpointslices") => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "access",
    };
    let user = match presented {
        Some(t) if t == required => return None,
        Some(t) if auth.list_only_tokens.iter().any(|l| l == t) => {
            if matches!(verb, "get" | "list") {
                return None;
            }
            LIST_ONLY_USER
        }
        Some(t) if auth.forbidden_tokens.iter().any(|f| f == t) => FORBIDDEN_USER,
        _ => {
            shared.lock().auth_failures += 1;
            return Some(error(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"));
        }
    };
    shared.lock().auth_failures += 1;
    let scope = match path.split('/').skip_while(|s| *s != "namespaces").nth(1) {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    let message = format!(
        "endpointslices.discovery.k8s.io is forbidden: User \"{user}\" cannot {verb} resource \"endpointslices\" in API group \"discovery.k8s.io\"{scope}"
    );
    Some(error(StatusCode::FORBIDDEN, "Forbidden", &message))
}

/// The user a forbidden token authenticates as.
const FORBIDDEN_USER: &str = "system:serviceaccount:default:lb-without-rbac";
/// The user a list-only token authenticates as.
const LIST_ONLY_USER: &str = "system:serviceaccount:default:lb-list-only";

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    if let Some(refused) = authorize(&shared, &req, &path, &query) {
        return Ok(refused);
    }
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "BadRequest", "could not read the request body")),
    };
    if let Some(mut store) = Some(shared.lock()).filter(|s| s.unavailable) {
        store.unavailable_answers += 1;
        drop(store);
        return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the API server double is unavailable"));
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(not_found(&path));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET, ["endpointslices"]) => collection(&shared, None, &query),
        (&Method::GET, ["namespaces", ns, "endpointslices"]) => collection(&shared, Some(ns), &query),
        (&Method::POST, ["namespaces", ns, "endpointslices"]) => create(&shared, ns, &body),
        (&Method::GET, ["namespaces", ns, "endpointslices", name]) => get(&shared, ns, name),
        (&Method::PUT, ["namespaces", ns, "endpointslices", name]) => replace(&shared, ns, name, &body),
        (&Method::DELETE, ["namespaces", ns, "endpointslices", name]) => delete(&shared, ns, name),
        (m, [.., "endpointslices"] | [.., "endpointslices", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &format!("{m} is not supported on this resource"))
        }
        _ => not_found(&path),
    };
    Ok(resp)
}

fn collection(shared: &Shared, namespace: Option<&str>, query: &Query) -> Resp {
    let selector = match Selector::parse(query.get("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if query.flag("watch") {
        watch_stream(shared, namespace, selector, query)
    } else {
        list(shared, namespace, &selector, query)
    }
}

fn list(shared: &Shared, namespace: Option<&str>, selector: &Selector, query: &Query) -> Resp {
    let mut store = shared.lock();
    store.list_requests += 1;
    // A continue token is `<resourceVersion of the first page>/<namespace>/<name of the last item>`.
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (store.rv, None),
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            match (parts.next().and_then(|v| v.parse::<u64>().ok()), parts.next(), parts.next()) {
                (Some(rv), Some(ns), Some(name)) => {
                    if rv < store.compacted {
                        store.expired_requests += 1;
                        return error(
                            StatusCode::GONE,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        );
                    }
                    (rv, Some((ns.to_string(), name.to_string())))
                }
                _ => return error(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token"),
            }
        }
    };
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|&l| l > 0);
    let mut items = Vec::new();
    let mut next = None;
    for o in store.select(namespace, selector) {
        if let Some(after) = &after {
            if (o.namespace.as_str(), o.slice.metadata.name.as_deref().unwrap_or("")) <= (after.0.as_str(), after.1.as_str()) {
                continue;
            }
        }
        if limit.is_some_and(|l| items.len() == l) {
            let last: &Value = items.last().expect("limit > 0, so a full page has a last item");
            next = Some(format!(
                "{list_rv}/{}/{}",
                last["metadata"]["namespace"].as_str().unwrap_or(""),
                last["metadata"]["name"].as_str().unwrap_or("")
            ));
            break;
        }
        let mut v = serde_json::to_value(&o.slice).unwrap_or(Value::Null);
        // Items of a list carry no kind or apiVersion; the list does.
        if let Some(m) = v.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        items.push(v);
    }
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if let Some(next) = next {
        metadata["continue"] = json!(next);
    }
    json_response(
        StatusCode::OK,
        &json!({ "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": metadata, "items": items }),
    )
}

fn watch_stream(shared: &Shared, namespace: Option<&str>, selector: Selector, query: &Query) -> Resp {
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.flag("sendInitialEvents");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut store = shared.lock();
    store.watch_requests += 1;
    let rv = query.get("resourceVersion").unwrap_or("");
    let seen = match rv {
        // "Start at most recent" and "any": synthetic ADDED events for what exists, then changes.
        "" | "0" => {
            for o in store.select(namespace, &selector) {
                let _ = tx.send(event_line(EventType::Added, &o.slice));
            }
            if initial_events && bookmarks {
                let _ = tx.send(bookmark_line(store.rv, true));
            }
            store.rv
        }
        rv => {
            let Ok(from) = rv.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, "BadRequest", &format!("invalid resourceVersion {rv:?}"));
            };
            if from < store.compacted {
                store.expired_requests += 1;
                // The API server answers 200 and then an ERROR event carrying a 410 Status.
                let _ = tx.send(error_line(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", store.compacted + 1),
                ));
                drop(tx);
                return streaming(rx, timeout);
            }
            let wants = |o: &super::store::Stored| {
                namespace.is_none_or(|n| n == o.namespace) && selector.matches(&o.labels())
            };
            let mut seen = from;
            for e in store.history.iter().filter(|e| e.rv > from) {
                if let Some(line) = e.as_seen_by(wants) {
                    let _ = tx.send(line);
                    seen = e.rv;
                }
            }
            seen
        }
    };
    store.watchers.push(Watcher {
        namespace: namespace.map(str::to_string),
        selector,
        bookmarks,
        seen,
        tx,
    });
    drop(store);
    streaming(rx, timeout)
}

fn get(shared: &Shared, ns: &str, name: &str) -> Resp {
    match shared.lock().objects.get(&(ns.to_string(), name.to_string())) {
        Some(o) => json_response(StatusCode::OK, &o.slice),
        None => slice_not_found(name),
    }
}

fn parse_slice(ns: &str, body: &[u8]) -> Result<EndpointSlice, Box<Resp>> {
    let mut slice: EndpointSlice = serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "BadRequest", &format!("the body is not an EndpointSlice: {e}"))))?;
    match slice.metadata.namespace.as_deref() {
        Some(other) if other != ns => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )))
        }
        _ => slice.metadata.namespace = Some(ns.to_string()),
    }
    Ok(slice)
}

fn create(shared: &Shared, ns: &str, body: &[u8]) -> Resp {
    let mut slice = match parse_slice(ns, body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut store = shared.lock();
    if slice.metadata.name.as_deref().unwrap_or("").is_empty() {
        match slice.metadata.generate_name.as_deref() {
            Some(prefix) if !prefix.is_empty() => slice.metadata.name = Some(format!("{prefix}{:05x}", store.uid + 1)),
            _ => return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value: name or generateName is required"),
        }
    }
    let name = slice.metadata.name.clone().unwrap_or_default();
    if store.objects.contains_key(&(ns.to_string(), name.clone())) {
        return error(StatusCode::CONFLICT, "AlreadyExists", &format!("endpointslices.discovery.k8s.io \"{name}\" already exists"));
    }
    store.apply(slice);
    let stored = &store.objects[&(ns.to_string(), name)];
    json_response(StatusCode::CREATED, &stored.slice)
}

fn replace(shared: &Shared, ns: &str, name: &str, body: &[u8]) -> Resp {
    let slice = match parse_slice(ns, body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if slice.metadata.name.as_deref() != Some(name) {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "the name of the object does not match the name on the URL");
    }
    let mut store = shared.lock();
    let key = (ns.to_string(), name.to_string());
    let Some(current) = store.objects.get(&key) else {
        return slice_not_found(name);
    };
    // Optimistic concurrency, as the API server does it: a stale resourceVersion is a conflict.
    if let Some(rv) = slice.metadata.resource_version.as_deref().filter(|rv| !rv.is_empty()) {
        if Some(rv) != current.slice.metadata.resource_version.as_deref() {
            return error(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("Operation cannot be fulfilled on endpointslices.discovery.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            );
        }
    }
    store.apply(slice);
    json_response(StatusCode::OK, &store.objects[&key].slice)
}

fn delete(shared: &Shared, ns: &str, name: &str) -> Resp {
    match shared.lock().delete(ns, name) {
        Some(slice) => json_response(StatusCode::OK, &slice),
        None => slice_not_found(name),
    }
}

/// A watch response: newline-delimited JSON events, chunked, ending at the timeout or when the
/// double drops the watcher.
fn streaming(rx: mpsc::UnboundedReceiver<Bytes>, timeout: Duration) -> Resp {
    let body = WatchBody {
        rx,
        deadline: Box::pin(tokio::time::sleep(timeout)),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("a static status and header make a valid response")
}

struct WatchBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Poll::Ready(Some(line)) = self.rx.poll_recv(cx) {
            return Poll::Ready(Some(Ok(Frame::data(line))));
        }
        if self.rx.is_closed() && self.rx.is_empty() {
            return Poll::Ready(None);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn json_response(code: StatusCode, v: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a static status and header make a valid response")
}

fn error(code: StatusCode, reason: &str, message: &str) -> Resp {
    json_response(code, &status(code.as_u16(), reason, message))
}

fn not_found(path: &str) -> Resp {
    error(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find the requested resource ({path})"))
}

fn slice_not_found(name: &str) -> Resp {
    error(StatusCode::NOT_FOUND, "NotFound", &format!("endpointslices.discovery.k8s.io \"{name}\" not found"))
}

/// A decoded query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter the way the API server reads them (`true`, `1`).
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
