//! [`Discovery`]: a validated target URI that makes discovery streams on demand.

use lb_core::discover::BoxDiscover;
use lb_core::pool::MakeDiscover;

use crate::{resolve, Error, Target};

/// A target URI checked once, that makes a fresh discovery stream whenever a pool asks: the
/// discovery half of a hand-built tower stack (`lb_core::pool::PoolLayer::new(name, discovery,
/// options)`).
#[derive(Clone, Debug)]
pub struct Discovery {
    target: Target,
}

impl Discovery {
    /// Parses `target` and checks that this build can resolve it (scheme, options), so that
    /// mistakes surface here rather than as a pool that never learns an endpoint.
    pub fn new(target: &str) -> Result<Self, Error> {
        let target = Target::parse(target)?;
        // Resolving builds the stream without touching the network (providers start on first
        // poll); it is dropped at once.
        drop(resolve(&target)?);
        Ok(Discovery { target })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl MakeDiscover for Discovery {
    fn make_discover(&self) -> BoxDiscover {
        match resolve(&self.target) {
            Ok(d) => d,
            // `new` resolved the same target already, so this does not happen; if it did, the
            // pool would log the error and keep waiting rather than the process panicking.
            Err(e) => Box::pin(
                futures_util::stream::once(async move { Err(e.into()) }).chain(futures_util::stream::pending()),
            ),
        }
    }
}

use futures_util::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn makes_streams_for_valid_targets_only() {
        let d = Discovery::new("static:///127.0.0.1:1,127.0.0.1:2").expect("valid");
        let mut s = d.make_discover();
        match s.next().await {
            Some(Ok(lb_core::Update::Reset(eps))) => assert_eq!(eps.len(), 2),
            other => panic!("a full set first, got {other:?}"),
        }
        let err = Discovery::new("nope:///x").expect_err("unknown scheme");
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(Discovery::new("static:///not-an-address").is_err());
    }
}
