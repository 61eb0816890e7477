//! The double's HTTP side: routing, request parsing and blocking queries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::state::{parse_go_duration, validate_meta, Check, Service};
use super::{CheckStatus, Fault, Shared};

type Resp = Response<Full<Bytes>>;

/// Returned by a handler to drop its connection without answering (a restart in progress).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the Consul double restarted")
    }
}

impl std::error::Error for Dropped {}

const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

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
                tracing::warn!(%error, "consul double: accept failed");
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
                    // The handshake runs in the connection's task, so a client that stalls or
                    // fails it holds up no one else.
                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => serve(stream, shared, shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%error, "consul double: TLS handshake failed"),
                        Err(_) => tracing::debug!("consul double: TLS handshake timed out"),
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
    // A restart closes every connection, idle keep-alive ones included, as a real restart does.
    let mut generation = shared.generation.subscribe();
    let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
        _ = generation.changed() => {}
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Dropped> {
    let generation = shared.generation.subscribe();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let token = request_token(&req, &query);
    // The token is resolved once, as the request arrives (Consul: `ResolveTokenAndDefaultMeta`
    // before the blocking loop).
    let caller = {
        let mut state = shared.lock();
        state.last_token = token.clone();
        Caller::of(&shared.config, &state.detached, token.as_deref())
    };
    // Consul sets the agent's default ACL policy on every answer (agent/http.go, `wrap`).
    let policy = if shared.config.acl_token.is_some() { "deny" } else { "allow" };
    let caller = match caller {
        Some(caller) => caller,
        // An unknown secret is refused outright, reads included (`acl.ErrNotFound` → 403).
        None => return Ok(with_policy(text(StatusCode::FORBIDDEN, "ACL not found"), policy)),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    // Consul (Go's net/http) matches on the decoded path: `service%3Ax` names check `service:x`.
    let decoded: Vec<String> = path.trim_start_matches('/').splitn(5, '/').map(|seg| decode(seg, false)).collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let resp = match (method, segments.as_slice()) {
        (Method::GET, ["v1", "health", "service", name]) => health(&shared, &caller, name, &query, generation).await?,
        (Method::PUT, ["v1", "agent", "service", "register"]) => {
            let name = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("Name").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            match caller.denied_write(&name) {
                Some(denied) => denied,
                None => agent(&shared, |s| register(s, &query, &body)),
            }
        }
        (Method::PUT, ["v1", "agent", "service", "deregister", id]) => match caller.denied_write(id) {
            Some(denied) => denied,
            None => agent(&shared, |s| deregister(s, id)),
        },
        (Method::PUT, ["v1", "agent", "check", verb @ ("pass" | "warn" | "fail"), id]) => match caller.denied_write(id) {
            Some(denied) => denied,
            None => {
                let status = match *verb {
                    "pass" => CheckStatus::Passing,
                    "warn" => CheckStatus::Warning,
                    _ => CheckStatus::Critical,
                };
                let note = query.get("note").and_then(|v| v.first()).cloned().unwrap_or_default();
                agent(&shared, |s| update_check(s, id, status, &note))
            }
        },
        (m, ["v1", "health" | "agent", ..]) => text(StatusCode::METHOD_NOT_ALLOWED, &format!("method {m} not allowed")),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    Ok(with_policy(resp, policy))
}

/// The secret a request carries: `X-Consul-Token`, else `Authorization: Bearer`, else the
/// deprecated `?token=` (Consul's order of precedence puts the query parameter first).
fn request_token(req: &Request<Incoming>, query: &Query) -> Option<String> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    query
        .get("token")
        .and_then(|v| v.first())
        .cloned()
        .or_else(|| header("x-consul-token"))
        .or_else(|| header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_string)))
        .filter(|t| !t.is_empty())
}

/// Who a request acts as, with ACLs on (`default_policy = deny`).
enum Caller {
    /// ACLs off, or the management token: everything is allowed.
    Management,
    /// No token: Consul's anonymous token, which holds no policy here.
    Anonymous,
    /// A token with a read-only policy ([`DoubleConfig::reader_tokens`](super::DoubleConfig)).
    Reader,
    /// A token that exists but holds no policy ([`DoubleConfig::unprivileged_tokens`](super::DoubleConfig),
    /// or a reader whose policy was detached).
    Unprivileged,
}

impl Caller {
    /// `None` for a secret the double does not know.
    fn of(config: &super::DoubleConfig, detached: &BTreeSet<String>, token: Option<&str>) -> Option<Caller> {
        let Some(management) = &config.acl_token else { return Some(Caller::Management) };
        match token {
            None => Some(Caller::Anonymous),
            Some(t) if t == management => Some(Caller::Management),
            Some(t) if config.reader_tokens.iter().any(|r| r == t) && !detached.contains(t) => Some(Caller::Reader),
            Some(t) if config.unprivileged_tokens.iter().chain(&config.reader_tokens).any(|u| u == t) => Some(Caller::Unprivileged),
            Some(_) => None,
        }
    }

    fn accessor(&self) -> &'static str {
        match self {
            // Consul's fixed accessor ID of the anonymous token.
            Caller::Anonymous => "00000000-0000-0000-0000-000000000002",
            _ => "6a1253d2-1785-24fd-91c2-f8e78c745511",
        }
    }

    /// The answer to a write (`service:write`) on `what` the caller may not make: 403
    /// `Permission denied` as Consul ≥ 1.12 words it; `None` when it may.
    fn denied_write(&self, what: &str) -> Option<Resp> {
        match self {
            Caller::Management => None,
            _ => Some(text(
                StatusCode::FORBIDDEN,
                &format!(
                    "Permission denied: token with AccessorID '{}' lacks permission 'service:write' on \"{what}\"",
                    self.accessor()
                ),
            )),
        }
    }

    /// Whether entries of a service may be read (`service:read` and `node:read`).
    fn may_read(&self) -> bool {
        matches!(self, Caller::Management | Caller::Reader)
    }
}

fn with_policy(mut resp: Resp, policy: &'static str) -> Resp {
    resp.headers_mut()
        .insert("x-consul-default-acl-policy", hyper::header::HeaderValue::from_static(policy));
    resp
}

/// Runs an agent endpoint, unless the test took the agent down; wakes blocking queries after it.
fn agent(shared: &Shared, f: impl FnOnce(&Shared) -> Resp) -> Resp {
    if shared.lock().agent_down {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
    }
    let resp = f(shared);
    shared.notify();
    resp
}

fn register(shared: &Shared, query: &Query, body: &[u8]) -> Resp {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("Request decode failed: {e}")),
    };
    let name = match v.get("Name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return text(StatusCode::BAD_REQUEST, "Missing service name"),
    };
    let id = v.get("ID").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(&name).to_string();
    let namespace = query
        .get("ns")
        .and_then(|v| v.first())
        .cloned()
        .or_else(|| v.get("Namespace").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "default".into());
    let port = match v.get("Port") {
        None | Some(Value::Null) => 0,
        Some(p) => match p.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) => p,
            None => return text(StatusCode::BAD_REQUEST, "Request decode failed: invalid Port"),
        },
    };
    let meta: BTreeMap<String, String> = match v.get("Meta") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, val) in m {
                match val.as_str() {
                    Some(s) => out.insert(k.clone(), s.to_string()),
                    None => return text(StatusCode::BAD_REQUEST, "Request decode failed: Meta values must be strings"),
                };
            }
            out
        }
        Some(_) => return text(StatusCode::BAD_REQUEST, "Request decode failed: Meta must be an object"),
    };
    if let Err(e) = validate_meta(&meta) {
        return text(StatusCode::BAD_REQUEST, &format!("Invalid Service Meta: {e}"));
    }
    let weights = match v.get("Weights") {
        None | Some(Value::Null) => (1, 1),
        Some(w) => {
            let passing = w.get("Passing").and_then(Value::as_u64).unwrap_or(0);
            let warning = w.get("Warning").and_then(Value::as_u64).unwrap_or(0);
            if passing == 0 {
                return text(StatusCode::BAD_REQUEST, "Invalid Weights: Passing must be greater than 0");
            }
            (passing, warning)
        }
    };
    let tags = v
        .get("Tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let mut check_defs: Vec<&Value> = v.get("Checks").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    if let Some(c) = v.get("Check").filter(|c| !c.is_null()) {
        check_defs.push(c);
    }
    let now = Instant::now();
    let mut checks = Vec::new();
    for (i, c) in check_defs.into_iter().enumerate() {
        let Some(ttl) = c.get("TTL").and_then(Value::as_str) else {
            return text(StatusCode::BAD_REQUEST, "the Consul double supports only TTL checks");
        };
        let Some(ttl) = parse_go_duration(ttl) else {
            return text(StatusCode::BAD_REQUEST, &format!("Request decode failed: invalid TTL {ttl:?}"));
        };
        let deregister_after = match c.get("DeregisterCriticalServiceAfter").and_then(Value::as_str) {
            None => None,
            Some(s) => match parse_go_duration(s) {
                Some(d) => Some(d),
                None => return text(StatusCode::BAD_REQUEST, &format!("Request decode failed: invalid duration {s:?}")),
            },
        };
        let status = match c.get("Status").and_then(Value::as_str) {
            None | Some("") => CheckStatus::Critical,
            Some(s) => match CheckStatus::parse(s) {
                Some(s) => s,
                None => return text(StatusCode::BAD_REQUEST, &format!("Invalid check status: {s:?}")),
            },
        };
        let default_id = if i == 0 { format!("service:{id}") } else { format!("service:{id}:{}", i + 1) };
        checks.push(Check {
            id: c.get("CheckID").and_then(Value::as_str).filter(|s| !s.is_empty()).map_or(default_id, str::to_string),
            name: c.get("Name").and_then(Value::as_str).unwrap_or("Service TTL check").to_string(),
            service_id: id.clone(),
            ttl,
            deregister_after,
            status,
            output: String::new(),
            expires: now + ttl,
            critical_since: (status == CheckStatus::Critical).then_some(now),
            passes: 0,
        });
    }
    let svc = Service {
        id,
        name,
        namespace,
        tags,
        address: v.get("Address").and_then(Value::as_str).unwrap_or("").to_string(),
        port,
        meta,
        weights,
        create_index: 0,
        modify_index: 0,
    };
    shared.lock().register(svc, checks);
    text(StatusCode::OK, "")
}

fn deregister(shared: &Shared, id: &str) -> Resp {
    if shared.lock().deregister(id) {
        text(StatusCode::OK, "")
    } else {
        text(StatusCode::NOT_FOUND, &format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."))
    }
}

fn update_check(shared: &Shared, id: &str, status: CheckStatus, note: &str) -> Resp {
    let mut state = shared.lock();
    if state.set_status(id, status, note, Instant::now()) {
        return text(StatusCode::OK, "");
    }
    match state.unknown_check_status {
        500 => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("CheckID {id:?} does not have associated TTL")),
        _ => text(StatusCode::NOT_FOUND, &format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name.")),
    }
}

async fn health(
    shared: &Shared,
    caller: &Caller,
    name: &str,
    query: &Query,
    mut generation: watch::Receiver<u64>,
) -> Result<Resp, Dropped> {
    let first = |k: &str| query.get(k).and_then(|v| v.first()).map(String::as_str);
    if let Some(dc) = first("dc") {
        if dc != shared.config.datacenter {
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter"));
        }
    }
    let passing = query.contains_key("passing") && first("passing") != Some("false");
    let namespace = first("ns").unwrap_or("default");
    let tags: Vec<String> = query.get("tag").cloned().unwrap_or_default();
    let min_index: u64 = match first("index").map(str::parse).transpose() {
        Ok(i) => i.unwrap_or(0),
        Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "Invalid index")),
    };
    let wait = match first("wait") {
        None => DEFAULT_WAIT,
        Some(w) => match parse_go_duration(w) {
            Some(w) => w.min(MAX_WAIT),
            None => return Ok(text(StatusCode::BAD_REQUEST, &format!("Invalid wait time {w:?}"))),
        },
    };
    // Consul spreads wake-ups by adding up to wait/16 (agent/consul/rpc.go, `jitterFraction`).
    let jitter = wait.mul_f64(rand::rng().random_range(0.0..1.0) / 16.0);
    let deadline = Instant::now() + wait + jitter;
    let mut changed = shared.changed.subscribe();
    loop {
        changed.borrow_and_update();
        {
            let mut state = shared.lock();
            let index = state.index_of(name);
            let fault = state.fault.clone();
            if fault != Fault::None {
                state.health_queries += 1;
                return Ok(faulty(&fault, index, state.health(name, namespace, passing, &tags)));
            }
            if min_index == 0 || index > min_index || Instant::now() >= deadline {
                state.health_queries += 1;
                let entries = state.health(name, namespace, passing, &tags);
                if caller.may_read() {
                    return Ok(json_resp(StatusCode::OK, index, &Value::Array(entries)));
                }
                // Reads are filtered, not refused: 200 and what the token may see (nothing here).
                // The header says so only to a caller that presented a token: Consul hides it
                // from the anonymous token so as not to leak that something exists
                // (`maskResultsFilteredByACLs`), and only when something was actually hidden.
                let mut resp = json_resp(StatusCode::OK, index, &json!([]));
                if !matches!(caller, Caller::Anonymous) && !entries.is_empty() {
                    resp.headers_mut().insert(
                        "x-consul-results-filtered-by-acls",
                        hyper::header::HeaderValue::from_static("true"),
                    );
                }
                return Ok(resp);
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = generation.changed() => return Err(Dropped),
        }
    }
}

fn faulty(fault: &Fault, index: u64, mut entries: Vec<Value>) -> Resp {
    match fault {
        Fault::None => json_resp(StatusCode::OK, index, &Value::Array(entries)),
        Fault::ServerError => text(StatusCode::INTERNAL_SERVER_ERROR, "rpc error making call: No cluster leader"),
        Fault::Garbage => {
            let mut resp = text(StatusCode::OK, "<html><body>502 upstream garbage</body></html>");
            resp.headers_mut().insert("x-consul-index", index.into());
            resp
        }
        Fault::Empty => json_resp(StatusCode::OK, index, &json!([])),
        Fault::MalformedEntries => {
            let node = json!({"Node": "double-node", "Address": "127.0.0.1"});
            entries.push(json!({"Node": node, "Service": {"ID": "no-port", "Service": "x", "Address": "127.0.0.1"}, "Checks": []}));
            entries.push(json!({"Node": node, "Service": {"ID": "bad-port", "Service": "x", "Address": "127.0.0.1", "Port": "eighty"}, "Checks": []}));
            entries.push(json!({"Node": node, "Service": {"ID": "bad-addr", "Service": "x", "Address": "not an ip", "Port": 80}, "Checks": []}));
            entries.push(json!({"Node": node, "Service": 42, "Checks": []}));
            entries.push(json!("not an object"));
            json_resp(StatusCode::OK, index, &Value::Array(entries))
        }
    }
}

fn json_resp(status: StatusCode, index: u64, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("x-consul-index", index.into());
    resp.headers_mut().insert("x-consul-knownleader", hyper::header::HeaderValue::from_static("true"));
    resp
}

fn text(status: StatusCode, body: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}

type Query = BTreeMap<String, Vec<String>>;

fn parse_query(q: &str) -> Query {
    let mut out: Query = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k, true)).or_default().push(decode(v, true));
    }
    out
}

/// Percent-decoding; `+` is a space only in query strings.
fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                match bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
