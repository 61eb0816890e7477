//! One endpoint's HTTP/1.1 connections: a small pool, one request at a time per connection.
//!
//! HTTP/1.1 cannot multiplex, so an endpoint gets up to `max_connections` connections. A request
//! takes an idle one, or opens a new one while under the cap, or waits for one to come back. A
//! connection comes back when its response body ends (the [`StreamSlot`] drops), because hyper's
//! HTTP/1.1 sender is busy until then. Idle connections are reused newest first, so after a burst
//! the surplus ages at the bottom of the idle list; once the pool has grown, a task closes
//! connections idle longer than the idle timeout, all but the first one, which stands for the
//! endpoint (its end is the pool's signal that the endpoint went away).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::dial::Dialer;
use super::{SendError, StreamSlot};
use lb_core::BoxError;

pub(crate) struct H1Pool<B> {
    addr: SocketAddr,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Idle<B>>>,
    open: AtomicUsize,
    returned: Notify,
    dialer: Dialer,
    max_connections: usize,
    idle_timeout: Option<Duration>,
    reaping: AtomicBool,
}

struct Idle<B> {
    send: SendRequest<B>,
    since: Instant,
    /// The endpoint's first connection, never closed for idleness.
    primary: bool,
}

/// Gives the sender back to its pool when the response is over.
struct Lease<B: 'static> {
    pool: Weak<H1Pool<B>>,
    send: Option<SendRequest<B>>,
    primary: bool,
}

impl<B: 'static> Drop for Lease<B> {
    fn drop(&mut self) {
        let (Some(pool), Some(send)) = (self.pool.upgrade(), self.send.take()) else { return };
        if send.is_closed() {
            pool.open.fetch_sub(1, Ordering::Relaxed);
        } else {
            let idle = Idle { send, since: Instant::now(), primary: self.primary };
            pool.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it").push(idle);
        }
        pool.returned.notify_one();
    }
}

impl<B> H1Pool<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(
        addr: SocketAddr,
        first: SendRequest<B>,
        dialer: Dialer,
        max_connections: usize,
        idle_timeout: Option<Duration>,
    ) -> Self {
        H1Pool {
            addr,
            idle: Mutex::new(vec![Idle { send: first, since: Instant::now(), primary: true }]),
            open: AtomicUsize::new(1),
            returned: Notify::new(),
            dialer,
            max_connections: max_connections.max(1),
            idle_timeout,
            reaping: AtomicBool::new(false),
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// True when every connection is closed (idle ones are checked; leased ones count as open).
    pub(crate) fn is_closed(&self) -> bool {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it");
        let before = idle.len();
        idle.retain(|i| !i.send.is_closed());
        self.open.fetch_sub(before - idle.len(), Ordering::Relaxed);
        self.open.load(Ordering::Relaxed) == 0
    }

    fn take_idle(&self) -> Option<(SendRequest<B>, bool)> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it");
        while let Some(i) = idle.pop() {
            if i.send.is_closed() {
                self.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            return Some((i.send, i.primary));
        }
        None
    }

    /// Once the pool has more than one connection: closes, every quarter of the idle timeout,
    /// the connections (but the primary) idle for longer than it. Ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        let Some(timeout) = self.idle_timeout else { return };
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let tick = (timeout / 4).max(Duration::from_millis(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut idle = pool.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it");
                let before = idle.len();
                // Dropping the sender lets hyper close the connection.
                idle.retain(|i| i.primary || now.saturating_duration_since(i.since) < timeout);
                let closed = before - idle.len();
                drop(idle);
                if closed > 0 {
                    pool.open.fetch_sub(closed, Ordering::Relaxed);
                    tracing::debug!(endpoint = %pool.addr, closed, "closed idle http/1.1 connections");
                }
            }
        });
    }

    pub(crate) async fn send(self: &Arc<Self>, req: Request<B>) -> Result<(Response<Incoming>, StreamSlot), SendError<B>> {
        let (mut send, primary) = loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(taken) = self.take_idle() {
                break taken;
            }
            let open = self.open.load(Ordering::Relaxed);
            if open < self.max_connections
                && self
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                match self.dialer.h1::<B>(self.addr).await {
                    Ok((send, driver)) => {
                        tokio::spawn(driver);
                        self.start_reaper();
                        break (send, false);
                    }
                    Err(error) => {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        return Err(SendError::unsent(req, error));
                    }
                }
            }
            returned.await;
        };
        if let Err(error) = send.ready().await {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(SendError::unsent(req, error));
        }
        let result = send.try_send_request(req).await;
        let lease = Lease {
            pool: Arc::downgrade(self),
            send: Some(send),
            primary,
        };
        match result {
            Ok(rsp) => Ok((rsp, StreamSlot::new(lease))),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::unsent(req, e.into_error())),
                None => Err(SendError::sent(e.into_error())),
            },
        }
    }
}
