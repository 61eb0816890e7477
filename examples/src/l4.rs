//! An in-process L4 (TCP) load balancer that balances *connections* round robin, as kube-proxy,
//! IPVS or an L4 cloud load balancer do.
//!
//! It is the baseline the quickstart measures lb against. gRPC runs on HTTP/2, which multiplexes
//! every request of a client over one long-lived connection; a connection balancer picks a backend
//! once, when that connection opens, so every request of the client lands on the same backend
//! however many backends there are. That is the imbalance per-request balancing fixes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running connection balancer. Dropping it stops accepting; open connections are closed too.
#[derive(Debug)]
pub struct L4Balancer {
    addr: SocketAddr,
    connections: Arc<Vec<AtomicU64>>,
    accept: JoinHandle<()>,
}

impl L4Balancer {
    /// Listens on `listen` (port 0 picks a free one) and forwards each accepted connection to the
    /// next of `backends`, round robin.
    pub async fn start(listen: SocketAddr, backends: Vec<SocketAddr>) -> std::io::Result<L4Balancer> {
        if backends.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an L4 balancer needs at least one backend",
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Vec<AtomicU64>> = Arc::new(backends.iter().map(|_| AtomicU64::new(0)).collect());
        let counts = connections.clone();
        let accept = tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            let mut proxies = tokio::task::JoinSet::new();
            loop {
                let (client, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "l4 balancer: accept failed");
                        continue;
                    }
                };
                let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                counts[i].fetch_add(1, Ordering::Relaxed);
                let backend = backends[i];
                tracing::debug!(%peer, %backend, "l4 balancer: new connection");
                // Reap finished proxies so a long run does not accumulate handles.
                while proxies.try_join_next().is_some() {}
                proxies.spawn(proxy(client, backend));
            }
        });
        Ok(L4Balancer { addr, connections, accept })
    }

    /// The address clients connect to (the "virtual IP").
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections went to each backend, in the order the backends were given.
    pub fn connections(&self) -> Vec<u64> {
        self.connections.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for L4Balancer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every proxied connection.
        self.accept.abort();
    }
}

async fn proxy(mut client: TcpStream, backend: SocketAddr) {
    let mut upstream = match TcpStream::connect(backend).await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%backend, %error, "l4 balancer: backend unreachable");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%backend, %error, "l4 balancer: connection closed");
    }
}
