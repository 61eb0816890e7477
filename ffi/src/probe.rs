//! The pool's connector for C callers: a TCP probe, no protocol.
//!
//! C callers open their own connections to the address a pick returns, so `lb-core`'s pool has no
//! connection to hold. Its endpoint state machine is still worth having: with `probe` on (the
//! default), "connecting" an endpoint means opening and closing one TCP connection to it, so an
//! endpoint that refuses connections is ejected with exponential backoff before any caller is sent
//! there, and `lb_balancer_wait_ready` means "at least one endpoint accepted a connection".
//!
//! While an endpoint is up, the probe is repeated every `probe_interval`; the first probe that fails
//! ends the "connection", which makes the pool reconnect — that is, probe again with backoff — and
//! keep the endpoint out of rotation until it answers. This is a TCP-level active health check; the
//! caller's reports (`lb_balancer_report`) drive the request-level one (outlier detection).
//!
//! With `probe` off, every endpoint is ready as soon as discovery lists it and only reports eject it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use lb_core::pool::{Connect, Connected};
use lb_core::Endpoint;
use tokio::net::TcpStream;

/// What the pool holds per endpoint: nothing but the fact that the last probe succeeded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probed;

#[derive(Debug)]
pub(crate) struct ProbeConnect {
    /// `None`: no probing at all.
    probe: Option<ProbeTiming>,
}

#[derive(Clone, Copy, Debug)]
struct ProbeTiming {
    /// Zero: probe once, on (re)connect only.
    interval: Duration,
    timeout: Duration,
}

impl ProbeConnect {
    pub(crate) fn new(probe: bool, interval: Duration, timeout: Duration) -> Self {
        ProbeConnect {
            probe: probe.then_some(ProbeTiming { interval, timeout }),
        }
    }
}

async fn probe_once(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("probe timed out after {timeout:?}"),
        )),
    }
}

impl Connect for ProbeConnect {
    type Connection = Probed;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Connected<Probed>, io::Error>> + Send + 'static>>;

    fn connect(&self, endpoint: &Endpoint) -> Self::Future {
        let addr = endpoint.addr();
        let probe = self.probe;
        Box::pin(async move {
            let Some(timing) = probe else {
                return Ok(Connected::without_close_signal(Probed));
            };
            // The pool applies its own connect timeout around this future as well.
            probe_once(addr, timing.timeout).await?;
            if timing.interval.is_zero() {
                return Ok(Connected::without_close_signal(Probed));
            }
            let watch = async move {
                loop {
                    tokio::time::sleep(timing.interval).await;
                    if let Err(e) = probe_once(addr, timing.timeout).await {
                        tracing::info!(endpoint = %addr, error = %e, "probe failed");
                        return;
                    }
                }
            };
            Ok(Connected::new(Probed, watch))
        })
    }
}
