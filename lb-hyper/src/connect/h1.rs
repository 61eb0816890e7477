//! One endpoint's HTTP/1.1 connections: a small pool, one request at a time per connection.
//!
//! HTTP/1.1 cannot multiplex, so an endpoint gets up to `max_connections` connections. A request
//! takes an idle one, or opens a new one while under the cap, or waits for one to come back. A
//! connection comes back when its response body ends (the [`StreamSlot`] drops), because hyper's
//! HTTP/1.1 sender is busy until then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::Notify;

use super::dial::Dialer;
use super::{SendError, StreamSlot};
use lb_core::BoxError;

pub(crate) struct H1Pool<B> {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<B>>>,
    open: AtomicUsize,
    returned: Notify,
    dialer: Dialer,
    max_connections: usize,
}

/// Gives the sender back to its pool when the response is over.
struct Lease<B: 'static> {
    pool: Weak<H1Pool<B>>,
    send: Option<SendRequest<B>>,
}

impl<B: 'static> Drop for Lease<B> {
    fn drop(&mut self) {
        let (Some(pool), Some(send)) = (self.pool.upgrade(), self.send.take()) else { return };
        if send.is_closed() {
            pool.open.fetch_sub(1, Ordering::Relaxed);
        } else {
            pool.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it").push(send);
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
    pub(crate) fn new(addr: SocketAddr, first: SendRequest<B>, dialer: Dialer, max_connections: usize) -> Self {
        H1Pool {
            addr,
            idle: Mutex::new(vec![first]),
            open: AtomicUsize::new(1),
            returned: Notify::new(),
            dialer,
            max_connections: max_connections.max(1),
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// True when every connection is closed (idle ones are checked; leased ones count as open).
    pub(crate) fn is_closed(&self) -> bool {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it");
        let before = idle.len();
        idle.retain(|s| !s.is_closed());
        self.open.fetch_sub(before - idle.len(), Ordering::Relaxed);
        self.open.load(Ordering::Relaxed) == 0
    }

    fn take_idle(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned: no code panics while holding it");
        while let Some(send) = idle.pop() {
            if send.is_closed() {
                self.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            return Some(send);
        }
        None
    }

    pub(crate) async fn send(self: &Arc<Self>, req: Request<B>) -> Result<(Response<Incoming>, StreamSlot), SendError<B>> {
        let mut send = loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(send) = self.take_idle() {
                break send;
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
                        break send;
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
