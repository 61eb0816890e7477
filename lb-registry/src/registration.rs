//! Registration: keep an instance listed in a registry for as long as it runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use lb_core::Endpoint;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Error;

/// Registers instances in one kind of registry.
///
/// Implementations keep the registration alive with heartbeats and re-register, with backoff, for as
/// long as the [`Registration`] lives, whatever happens to the registry in between (outages longer
/// than the TTL, data loss, a revoked lease). They never give up.
pub trait Registrar: Send + Sync + 'static {
    /// Registers `instance` under `service`. Resolves once the first registration succeeded (or
    /// failed: the error is returned and nothing keeps running).
    fn register(
        &self,
        service: &str,
        instance: Endpoint,
    ) -> Pin<Box<dyn Future<Output = Result<Registration, Error>> + Send + 'static>>;
}

/// A live registration. [`Registration::deregister`] removes it at once; dropping it does the same
/// in the background (best effort, while the runtime still runs).
pub struct Registration {
    description: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("instance", &self.description).finish()
    }
}

impl Registration {
    /// Wraps a provider's keep-alive task. The task must deregister and return once `stop` fires
    /// (or its sender is dropped).
    pub fn from_task(description: impl Into<String>, stop: oneshot::Sender<()>, task: JoinHandle<()>) -> Self {
        Registration {
            description: description.into(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Deregisters now and waits until the registry confirmed it (or gave up trying).
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// What is registered, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
