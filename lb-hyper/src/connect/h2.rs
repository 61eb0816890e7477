//! One endpoint's HTTP/2 connections: a primary one plus extras opened under stream pressure.
//!
//! HTTP/2 multiplexes every request over one connection, but a server caps the streams a connection
//! may carry at once (`SETTINGS_MAX_CONCURRENT_STREAMS`); h2 queues streams above the cap on the
//! client side, where they wait invisibly. hyper does not expose the peer's setting (h2's
//! `SendRequest::current_max_send_streams` is hidden behind hyper's dispatcher), so the limit is a
//! configured number: when every open connection carries that many streams, one more connection is
//! opened in the background (the request at hand is not delayed; it goes on the least-loaded one).
//! The default, 100, is the smallest limit RFC 9113 §6.5.2 recommends servers to allow, so by
//! default no request waits in h2's hidden queue behind a conforming server. (hyper makes that
//! queue worse than h2's: while one stream waits to open, its dispatcher accepts no further request
//! on the connection.) An extra connection that carried no stream at any check for the idle
//! timeout (checked every quarter of it) is let go: the pool drops its handle and hyper closes the
//! connection once the streams already on it finish. Requests prefer the least-loaded connection
//! and, on a tie, the primary, so extras fall idle when the pressure that opened them ends. The
//! primary stays for as long as the endpoint does; a closed extra is forgotten.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;

use super::dial::Dialer;
use super::{SendError, StreamSlot};
use lb_core::BoxError;

pub(crate) struct Sub<B> {
    /// For `is_closed`, which needs no exclusive access.
    send: SendRequest<B>,
    /// Sending needs `&mut`: each thread locks its own stripe of clones made once, rather than
    /// cloning (and dropping) a sender per request — a sender's clone and drop are four atomic
    /// operations on counters every sending thread shares.
    stripes: Box<[Mutex<SendRequest<B>>]>,
    in_flight: Arc<AtomicUsize>,
}

/// Sender clones per connection: a few per core keeps two threads from wanting the same one.
const STRIPES: usize = 8;

impl<B> Sub<B> {
    fn new(send: SendRequest<B>) -> Self {
        let stripes = (0..STRIPES).map(|_| Mutex::new(send.clone())).collect();
        Sub {
            send,
            stripes,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn stripe(&self) -> MutexGuard<'_, SendRequest<B>> {
        thread_local! {
            static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let i = HOME.with(|h| {
            if h.get() == usize::MAX {
                h.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            h.get()
        }) % self.stripes.len();
        // A sender is never left half-used by a panic (the lock only spans a channel send).
        self.stripes[i].lock().unwrap_or_else(PoisonError::into_inner)
    }
}



pub(crate) struct H2Pool<B> {
    addr: SocketAddr,
    subs: ArcSwap<Vec<Arc<Sub<B>>>>,
    opening: AtomicBool,
    dialer: Dialer,
    max_streams: usize,
    max_connections: usize,
    idle_timeout: Option<Duration>,
}

impl<B> H2Pool<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(
        addr: SocketAddr,
        primary: SendRequest<B>,
        dialer: Dialer,
        max_streams: usize,
        max_connections: usize,
        idle_timeout: Option<Duration>,
    ) -> Self {
        let sub = Arc::new(Sub::new(primary));
        H2Pool {
            addr,
            subs: ArcSwap::from_pointee(vec![sub]),
            opening: AtomicBool::new(false),
            dialer,
            max_streams: max_streams.max(1),
            max_connections: max_connections.max(1),
            idle_timeout,
        }
    }

    /// Open connections (the primary included).
    pub(crate) fn connections(&self) -> usize {
        self.subs.load().iter().filter(|s| !s.send.is_closed()).count()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.subs.load().iter().all(|s| s.send.is_closed())
    }

    pub(crate) async fn send(self: &Arc<Self>, req: Request<B>) -> Result<(Response<Incoming>, StreamSlot), SendError<B>> {
        let (sent, slot) = self.start(req)?;
        Ok((sent.await?, slot))
    }

    /// Hands `req` to the least-loaded connection now; the future waits for the response. The
    /// slot counts the stream against that connection until dropped.
    // The error carries the unsent request back, as hyper's own `try_send_request` does.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub(crate) fn start(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Result<(impl Future<Output = Result<Response<Incoming>, SendError<B>>> + Send + 'static, StreamSlot), SendError<B>> {
        let subs = self.subs.load();
        let best = subs
            .iter()
            .filter(|s| !s.send.is_closed())
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed));
        let Some(sub) = best else {
            return Err(SendError::unsent(req, "connection closed"));
        };
        let now = sub.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = StreamSlot::counted(Arc::clone(&sub.in_flight));
        // hyper hands the request to the connection's task here; the future only awaits the answer.
        let response = sub.stripe().try_send_request(req);
        drop(subs);
        if now >= self.max_streams {
            self.grow();
        }
        let sent = async move {
            match response.await {
                Ok(rsp) => Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(req) => Err(SendError::unsent(req, e.into_error())),
                    None => Err(SendError::sent(e.into_error())),
                },
            }
        };
        Ok((sent, slot))
    }

    /// Opens one more connection in the background unless one is already being opened or the cap
    /// is reached.
    fn grow(self: &Arc<Self>) {
        if self.connections() >= self.max_connections {
            return;
        }
        if self.opening.swap(true, Ordering::AcqRel) {
            return;
        }
        // Counted again under the flag: an opening that ended between the check above and the
        // swap has added its connection by now (the flag is released only after that), and may
        // have reached the cap.
        if self.connections() >= self.max_connections {
            self.opening.store(false, Ordering::Release);
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let dialer = self.dialer.clone();
        let addr = self.addr;
        let idle_timeout = self.idle_timeout;
        tokio::spawn(async move {
            let result = dialer.h2::<B>(addr).await;
            let Some(pool) = weak.upgrade() else { return };
            match result {
                Ok((send, driver)) => {
                    let sub = Arc::new(Sub::new(send));
                    let added = Arc::downgrade(&sub);
                    pool.subs.rcu(|subs| {
                        let mut next: Vec<_> = subs.iter().filter(|s| !s.send.is_closed()).cloned().collect();
                        next.push(Arc::clone(&sub));
                        next
                    });
                    // Released once the connection is counted: a grow() in between would have
                    // seen neither the flag nor the connection, and opened one past the cap.
                    pool.opening.store(false, Ordering::Release);
                    tracing::debug!(endpoint = %addr, connections = pool.connections(), "opened an extra http/2 connection");
                    drop(pool);
                    drop(sub);
                    tokio::spawn(async move {
                        let mut driver = std::pin::pin!(driver);
                        if let Some(timeout) = idle_timeout {
                            tokio::select! {
                                _ = &mut driver => {}
                                _ = until_idle(&added, timeout) => {
                                    // Dropping the pool's handle lets hyper close the connection
                                    // once the streams still on it (if any) are done.
                                    forget(&weak, &added);
                                    tracing::debug!(endpoint = %addr, "closing an idle extra http/2 connection");
                                    driver.await;
                                    return;
                                }
                            }
                        } else {
                            driver.await;
                        }
                        // Forget the closed extra so it is not scanned on every request.
                        forget(&weak, &added);
                    });
                }
                Err(error) => {
                    pool.opening.store(false, Ordering::Release);
                    tracing::debug!(endpoint = %addr, %error, "extra http/2 connection failed");
                }
            }
        });
    }
}

/// Resolves once `sub` has had no stream in flight at every check for `timeout` (checks every
/// quarter of it), or at once when it is gone.
async fn until_idle<B>(sub: &Weak<Sub<B>>, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(1));
    let mut idle = Duration::ZERO;
    while idle < timeout {
        tokio::time::sleep(tick).await;
        let Some(s) = sub.upgrade() else { return };
        idle = if s.in_flight.load(Ordering::Relaxed) == 0 { idle + tick } else { Duration::ZERO };
    }
}

/// Removes `sub` from `pool`'s connections.
fn forget<B>(pool: &Weak<H2Pool<B>>, sub: &Weak<Sub<B>>) {
    if let (Some(pool), Some(sub)) = (pool.upgrade(), sub.upgrade()) {
        pool.subs.rcu(|subs| subs.iter().filter(|s| !Arc::ptr_eq(s, &sub)).cloned().collect::<Vec<_>>());
    }
}
