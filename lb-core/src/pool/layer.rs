//! [`PoolLayer`]: a connector (the per-endpoint service factory) becomes a target's [`Pool`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::{Connect, Pool};
use crate::discover::BoxDiscover;
use crate::options::{Options, OptionsError};

/// Makes a discovery stream each time a [`PoolLayer`] builds a pool.
///
/// Implemented for closures returning a [`BoxDiscover`]; `lb-registry` implements it for a
/// resolved target URI.
pub trait MakeDiscover: Send + Sync + 'static {
    /// A fresh discovery stream: a full set first, then changes.
    fn make_discover(&self) -> BoxDiscover;
}

impl<F> MakeDiscover for F
where
    F: Fn() -> BoxDiscover + Send + Sync + 'static,
{
    fn make_discover(&self) -> BoxDiscover {
        self()
    }
}

/// Builds a [`Pool`] over a connector: discovery, one state machine per endpoint, outlier
/// detection, lock-free snapshots. Holds configuration only; see [`crate::balance`] for the whole
/// stack.
///
/// # Panics
/// [`Layer::layer`] spawns the pool's task, so it must run inside a Tokio runtime (as
/// [`Pool::spawn`]).
pub struct PoolLayer<D> {
    name: Arc<str>,
    discover: Arc<D>,
    options: Arc<Options>,
}

impl<D: MakeDiscover> PoolLayer<D> {
    /// A layer for the target called `name` (logs, metrics, errors), discovering with `discover`
    /// and configured by `options`, which are validated here.
    pub fn new(name: impl AsRef<str>, discover: D, options: Options) -> Result<Self, OptionsError> {
        options.validate()?;
        Ok(PoolLayer {
            name: Arc::from(name.as_ref()),
            discover: Arc::new(discover),
            options: Arc::new(options),
        })
    }
}

impl<D> Clone for PoolLayer<D> {
    fn clone(&self) -> Self {
        PoolLayer {
            name: Arc::clone(&self.name),
            discover: Arc::clone(&self.discover),
            options: Arc::clone(&self.options),
        }
    }
}

impl<D> fmt::Debug for PoolLayer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayer")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish()
    }
}

impl<D: MakeDiscover, K: Connect> Layer<K> for PoolLayer<D> {
    type Service = Pool<K::Connection>;

    fn layer(&self, connector: K) -> Pool<K::Connection> {
        Pool::spawn_with_health(
            self.options.discover(self.discover.make_discover()),
            connector,
            self.options.build_policy(),
            self.options.pool_config(&self.name),
            None,
        )
    }
}
