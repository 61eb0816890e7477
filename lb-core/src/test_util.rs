//! Test support (feature `test-util`): a scriptable [`Connect`] for tests and benches, and skips that are seen.
//!
//! [`TestConnector`] stands in for a protocol crate's connector wherever what is under test is the
//! engine (discovery, the pool's state machine, picking) rather than a wire protocol. It connects at
//! once to any endpoint and yields a connection value: the endpoint's address by default, or what a
//! closure makes per endpoint (a `()` for benches, a `tower_test` mock for a balanced service). A
//! test keeps a clone as its handle, since clones share one script, and from it
//!
//! - refuses chosen addresses with [`Refused`], for good or for the next few attempts, and accepts
//!   them again at run time;
//! - reads how many connection attempts each address has had (refused ones included), which is how
//!   a test sees that an endpoint kept its connection across a discovery reset;
//! - fires an address's close signal, the connection "dying" under the pool, when the connector was
//!   made [`with_close_signals`](TestConnector::with_close_signals).
//!
//! [`TestConnector::over_tcp`] adds a real TCP connect before each connection is yielded, for tests
//! whose endpoints are live listeners and whose point is that an unreachable one does not connect.
//!
//! [`skip`] reports a test that cannot run here where it is seen, instead of a silent pass.
//!
//! Close signals are opt-in because each is an allocation the pool holds for the connection's life;
//! without them, a bench that measures the pool's memory measures the pool and one attempt counter
//! per address.
//!
//! ```
//! use std::time::Duration;
//! use lb_core::policy::RoundRobin;
//! use lb_core::test_util::TestConnector;
//! use lb_core::{discover, Endpoint, Pool, PoolConfig, Update};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (up, down) = (([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into());
//! let connector = TestConnector::new();
//! connector.refuse(down);
//! let (tx, rx) = discover::channel();
//! let pool = Pool::spawn(Box::pin(rx), connector.clone(), RoundRobin::new(), PoolConfig::new("doc"));
//! tx.send(Update::Reset(vec![Endpoint::new(up), Endpoint::new(down)]));
//! assert!(pool.ready_timeout(Duration::from_secs(1)).await);
//! let picked = pool.pick(&Default::default()).expect("the endpoint that accepts");
//! assert_eq!(picked.connection, up, "the connection value is the address");
//! assert_eq!(pool.snapshot().healthy(), 1);
//! assert_eq!((connector.attempts(up), connector.attempts(down)), (1, 1));
//! connector.accept(down); // the pool's next reconnect attempt succeeds
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::Either;
use tokio::sync::Notify;

use crate::endpoint::Endpoint;
use crate::pool::{Connect, Connected};
use crate::BoxError;

/// A connector driven by the test that holds a clone of it; see the [module docs](self).
pub struct TestConnector<C = SocketAddr> {
    make: Arc<dyn Fn(&Endpoint) -> C + Send + Sync>,
    over_tcp: bool,
    close_signals: bool,
    script: Arc<Mutex<Script>>,
}

#[derive(Debug, Default)]
struct Script {
    refusals: HashMap<SocketAddr, Refusal>,
    attempts: HashMap<SocketAddr, usize>,
    /// The close signal of the latest connection yielded per address.
    open: HashMap<SocketAddr, Arc<Notify>>,
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    UntilAccepted,
    Next(u32),
}

impl TestConnector<SocketAddr> {
    /// A connector whose connection to an endpoint is the endpoint's address.
    pub fn new() -> Self {
        TestConnector::with_connection(Endpoint::addr)
    }
}

impl Default for TestConnector<SocketAddr> {
    fn default() -> Self {
        TestConnector::new()
    }
}

impl<C> TestConnector<C> {
    /// A connector whose connection to an endpoint is what `make` returns for it.
    ///
    /// `make` runs on every attempt that is not refused, so a reconnect gets a fresh value.
    pub fn with_connection(make: impl Fn(&Endpoint) -> C + Send + Sync + 'static) -> Self {
        TestConnector {
            make: Arc::new(make),
            over_tcp: false,
            close_signals: false,
            script: Arc::default(),
        }
    }

    /// Opens (and at once closes) a TCP connection to each endpoint before yielding its connection,
    /// failing with the I/O error when nothing listens: reachability is proven, the value stays
    /// what [`with_connection`](Self::with_connection) makes.
    pub fn over_tcp(mut self) -> Self {
        self.over_tcp = true;
        self
    }

    /// Gives every connection a close signal that [`close`](Self::close) fires (off by default; see
    /// the [module docs](self)).
    pub fn with_close_signals(mut self) -> Self {
        self.close_signals = true;
        self
    }

    /// Refuses every attempt to `addr` with [`Refused`] until [`accept`](Self::accept).
    pub fn refuse(&self, addr: SocketAddr) {
        self.script().refusals.insert(addr, Refusal::UntilAccepted);
    }

    /// Refuses the next `attempts` attempts to `addr`, then accepts again.
    pub fn refuse_next(&self, addr: SocketAddr, attempts: u32) {
        self.script().refusals.insert(addr, Refusal::Next(attempts));
    }

    /// Stops refusing `addr`: its next attempt connects.
    pub fn accept(&self, addr: SocketAddr) {
        self.script().refusals.remove(&addr);
    }

    /// How many connection attempts `addr` has had, refused and failed ones included.
    pub fn attempts(&self, addr: SocketAddr) -> usize {
        self.script().attempts.get(&addr).copied().unwrap_or(0)
    }

    /// Fires the close signal of the latest connection yielded to `addr`, as if the peer had hung up.
    /// Returns false when there was none to close: never connected, already closed, or the connector
    /// is not [`with_close_signals`](Self::with_close_signals).
    pub fn close(&self, addr: SocketAddr) -> bool {
        match self.script().open.remove(&addr) {
            Some(closed) => {
                // A stored permit: the signal fires even if the pool has not polled it yet.
                closed.notify_one();
                true
            }
            None => false,
        }
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
}

/// No update of the script can stop half way, so a lock poisoned by a panic elsewhere still guards
/// a consistent script: it is used as is rather than failing every later step of the test.
fn lock(script: &Mutex<Script>) -> MutexGuard<'_, Script> {
    script.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Script {
    /// Counts an attempt to `addr`; whether it is refused.
    fn attempt(&mut self, addr: SocketAddr) -> bool {
        *self.attempts.entry(addr).or_default() += 1;
        match self.refusals.get_mut(&addr) {
            Some(Refusal::UntilAccepted) => true,
            Some(Refusal::Next(left)) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }
}

impl<C> Clone for TestConnector<C> {
    fn clone(&self) -> Self {
        TestConnector {
            make: Arc::clone(&self.make),
            over_tcp: self.over_tcp,
            close_signals: self.close_signals,
            script: Arc::clone(&self.script),
        }
    }
}

impl<C> fmt::Debug for TestConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestConnector")
            .field("over_tcp", &self.over_tcp)
            .field("close_signals", &self.close_signals)
            .field("script", &*self.script())
            .finish_non_exhaustive()
    }
}

impl<C: Clone + Send + Sync + 'static> Connect for TestConnector<C> {
    type Connection = C;
    type Error = BoxError;
    /// Ready at once unless [`over_tcp`](Self::over_tcp): nothing is boxed, so a connection
    /// attempt costs what a real connector's would at the least (benches measure the pool's memory
    /// with thousands of them under way at once).
    type Future = Either<Ready<Result<Connected<C>, BoxError>>, OverTcp<C>>;

    fn connect(&self, endpoint: &Endpoint) -> Self::Future {
        let addr = endpoint.addr();
        if self.script().attempt(addr) {
            return Either::Left(ready(Err(Refused { addr }.into())));
        }
        let connection = (self.make)(endpoint);
        let signals = self.close_signals.then(|| Arc::clone(&self.script));
        if !self.over_tcp {
            return Either::Left(ready(Ok(connected(connection, addr, signals.as_deref()))));
        }
        Either::Right(Box::pin(async move {
            // Dropped at once: only the handshake matters, the value is the connection.
            tokio::net::TcpStream::connect(addr).await?;
            Ok(connected(connection, addr, signals.as_deref()))
        }))
    }
}

type OverTcp<C> = Pin<Box<dyn Future<Output = Result<Connected<C>, BoxError>> + Send>>;

/// `connection` with a close signal registered in `signals`' script, or with none.
fn connected<C>(connection: C, addr: SocketAddr, signals: Option<&Mutex<Script>>) -> Connected<C> {
    let Some(script) = signals else {
        return Connected::without_close_signal(connection);
    };
    let closed = Arc::new(Notify::new());
    lock(script).open.insert(addr, Arc::clone(&closed));
    Connected::new(connection, async move { closed.notified().await })
}

/// A connection attempt that a [`TestConnector`] was told to refuse.
#[derive(Debug)]
pub struct Refused {
    addr: SocketAddr,
}

impl Refused {
    /// The refused address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl fmt::Display for Refused {
    // No address: the pool names the endpoint next to the error, and messages stay comparable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection refused by the test connector")
    }
}

impl std::error::Error for Refused {}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    async fn connect<C: Clone + Send + Sync + 'static>(c: &TestConnector<C>, addr: SocketAddr) -> Result<Connected<C>, BoxError> {
        c.connect(&Endpoint::new(addr)).await
    }

    #[tokio::test]
    async fn refusals_are_counted_and_lifted() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let c = TestConnector::new();
        c.refuse_next(addr, 2);
        for _ in 0..2 {
            let err = connect(&c, addr).await.expect_err("refused");
            assert_eq!(err.downcast_ref::<Refused>().map(Refused::addr), Some(addr));
        }
        assert_eq!(connect(&c, addr).await.expect("accepted after two").into_parts().0, addr);
        c.refuse(addr);
        assert!(connect(&c, addr).await.is_err());
        c.clone().accept(addr);
        assert!(connect(&c, addr).await.is_ok(), "a clone's accept lifts the refusal");
        assert_eq!(c.attempts(addr), 5);
    }

    #[tokio::test]
    async fn close_fires_the_latest_connections_signal() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let silent = TestConnector::new();
        let _ = connect(&silent, addr).await.expect("connected");
        assert!(!silent.close(addr), "no signal without with_close_signals");

        let c = TestConnector::new().with_close_signals();
        let (_, closed) = connect(&c, addr).await.expect("connected").into_parts();
        assert!(c.close(addr));
        assert!(closed.now_or_never().is_some(), "fired, though not yet polled when closed");
        assert!(!c.close(addr), "each connection closes once");
    }

    #[tokio::test]
    async fn over_tcp_connects_only_where_something_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        let c = TestConnector::with_connection(|_| "value").over_tcp();
        assert_eq!(connect(&c, addr).await.expect("listening").into_parts().0, "value");
        drop(listener);
        let err = connect(&c, addr).await.expect_err("nothing listens any more");
        assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err}");
        assert_eq!(c.attempts(addr), 2);
    }
}

mod skip;
pub use self::skip::{skip, SKIP_LOG};
