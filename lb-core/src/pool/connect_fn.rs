//! [`connect_fn`]: a connector from a closure.

use std::fmt;
use std::future::Future;

use super::{Connect, Connected};
use crate::endpoint::Endpoint;
use crate::BoxError;

/// A [`Connect`] made from a closure; see [`connect_fn`].
#[derive(Clone)]
pub struct ConnectFn<F> {
    f: F,
}

impl<F> fmt::Debug for ConnectFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFn").finish_non_exhaustive()
    }
}

/// A connector from a closure that opens one endpoint's service, e.g. a tonic `Channel` wrapped in
/// per-endpoint tower layers:
///
/// ```
/// use lb_core::pool::{connect_fn, Connected};
///
/// let connector = connect_fn(|endpoint: &lb_core::Endpoint| {
///     let addr = endpoint.addr();
///     async move {
///         // Open a connection to `addr` here; this one is a stand-in service.
///         let svc = tower::service_fn(move |req: String| async move {
///             Ok::<_, lb_core::BoxError>(format!("{addr} answered {req}"))
///         });
///         Ok::<_, std::io::Error>(Connected::without_close_signal(svc))
///     }
/// });
/// # let _ = connector;
/// ```
///
/// The service must be a cheap `Clone` handle (every request clones it), and `Send + Sync`.
pub fn connect_fn<F>(f: F) -> ConnectFn<F> {
    ConnectFn { f }
}

impl<F, Fut, C, E> Connect for ConnectFn<F>
where
    F: Fn(&Endpoint) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Connected<C>, E>> + Send + 'static,
    C: Clone + Send + Sync + 'static,
    E: Into<BoxError>,
{
    type Connection = C;
    type Error = E;
    type Future = Fut;

    fn connect(&self, endpoint: &Endpoint) -> Fut {
        (self.f)(endpoint)
    }
}
