//! The response future of [`Balance`](super::Balance): pick, wait, send, re-pick an unsent request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::pick::{Wait, Waiter};
use super::track::{EndpointError, TrackCompletion};
use crate::endpoint::Endpoint;
use crate::load::{LoadGuard, Outcome};
use crate::policy::PickContext;
use crate::pool::{Picked, Pool};
use crate::BoxError;

pin_project! {
    #[project = StateProj]
    enum State<C, Req>
    where
        C: Service<Req>,
    {
        Refused { error: Option<BoxError> },
        Picking,
        Readying { picked: Option<Picked<C>> },
        Calling {
            #[pin]
            fut: C::Future,
            guard: Option<LoadGuard>,
            endpoint: Option<Arc<Endpoint>>,
        },
    }
}

pin_project! {
    /// Picks an endpoint (waiting for one if needed), drives its service to readiness, sends, and
    /// sends again elsewhere a request the endpoint handed back unsent; see
    /// [`Balance`](super::Balance).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<C, Req, T>
    where
        C: Service<Req>,
    {
        #[pin]
        state: State<C, Req>,
        req: Option<Req>,
        pool: Pool<C>,
        ctx: PickContext,
        wait: Wait,
        waiter: Waiter,
        track: T,
        reroutes_left: u8,
        permit: Option<super::Permit>,
    }
}

impl<C, Req, T> fmt::Debug for ResponseFuture<C, Req, T>
where
    C: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("target", self.pool.target())
            .field("ctx", &self.ctx)
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl<C, Req, T> ResponseFuture<C, Req, T>
where
    C: Service<Req>,
{
    pub(crate) fn new(
        pool: Pool<C>,
        req: Req,
        ctx: PickContext,
        wait: Wait,
        track: T,
        reroutes: u8,
        gate: Option<&Arc<super::Gate>>,
    ) -> Self {
        let (state, permit) = match gate {
            None => (State::Picking, None),
            Some(gate) => match gate.enter() {
                Some(permit) => (State::Picking, Some(permit)),
                None => {
                    let bound = gate.limits().max_in_flight.unwrap_or(0);
                    let error = super::error::Overloaded::new(Arc::clone(pool.target()), super::Limit::InFlight, bound);
                    (State::Refused { error: Some(Box::new(error)) }, None)
                }
            },
        };
        ResponseFuture {
            state,
            req: Some(req),
            pool,
            ctx,
            wait,
            waiter: Waiter::gated(gate.cloned()),
            track,
            reroutes_left: reroutes,
            permit,
        }
    }
}

impl<C, Req, T> Future for ResponseFuture<C, Req, T>
where
    C: Service<Req> + Clone,
    C::Error: EndpointError<Req>,
    T: TrackCompletion<C::Response>,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error));
                }
                StateProj::Picking => {
                    let mut picked = ready!(this.waiter.poll_pick(this.pool, this.ctx, *this.wait, cx))
                        .map_err(super::error::PickError::into_error)?;
                    if let Some(permit) = this.permit.take() {
                        // The slot rides the guard to the end of the response.
                        picked.guard.hold(permit);
                    }
                    this.state.set(State::Readying { picked: Some(picked) });
                }
                StateProj::Readying { picked } => {
                    let p = picked.as_mut().expect("Readying holds its pick until it moves on");
                    match p.connection.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {
                            let Picked {
                                endpoint,
                                mut connection,
                                guard,
                            } = picked.take().expect("Readying holds its pick until it moves on");
                            let req = this.req.take().expect("a request is sent once at a time");
                            let fut = connection.call(req);
                            this.state.set(State::Calling {
                                fut,
                                guard: Some(guard),
                                endpoint: Some(endpoint),
                            });
                        }
                        Poll::Ready(Err(error)) => {
                            // The request is still ours: nothing was sent. The pool learns of a
                            // broken connection from its close signal; counting this too would let
                            // one benign close under many callers look like a burst of failures.
                            let Picked { endpoint, .. } = picked.take().expect("Readying holds its pick until it moves on");
                            if *this.reroutes_left == 0 {
                                return Poll::Ready(Err(error.into_error()));
                            }
                            *this.reroutes_left -= 1;
                            tracing::debug!(endpoint = %endpoint.addr(), "endpoint not ready; picking another");
                            this.waiter.exclude(endpoint);
                            this.state.set(State::Picking);
                        }
                    }
                }
                StateProj::Calling { fut, guard, endpoint } => {
                    let result = ready!(fut.poll(cx));
                    let mut guard = guard.take().expect("polled after completion");
                    let mut error = match result {
                        Ok(rsp) => return Poll::Ready(Ok(this.track.track_completion(guard, rsp))),
                        Err(error) => error,
                    };
                    let unsent = error.take_unsent();
                    // A request that never reached the backend counts for nothing (see above).
                    let unprocessed = unsent.is_some() || error.is_unprocessed();
                    guard.set_outcome(if unprocessed { Outcome::Cancelled } else { Outcome::Failure });
                    drop(guard);
                    match unsent {
                        Some(req) if *this.reroutes_left > 0 => {
                            *this.reroutes_left -= 1;
                            let endpoint = endpoint.take().expect("polled after completion");
                            tracing::debug!(endpoint = %endpoint.addr(), "request not sent; sending it to another endpoint");
                            this.waiter.exclude(endpoint);
                            *this.req = Some(req);
                            this.state.set(State::Picking);
                        }
                        _ => return Poll::Ready(Err(error.into_error())),
                    }
                }
            }
        }
    }
}
