//! The response future of [`Balance`](super::Balance): pick, wait, send, re-pick an unsent request.
//!
//! It also keeps the call's books (see [`crate::metrics`]): each send is an attempt, whose load
//! guard records `grpc.client.attempt.*` when it ends; the call ends with the attempt whose response
//! reaches the caller (its guard, moved into the response body, records `grpc.client.call.duration`
//! at the body's end), or here, when the engine itself ends it with an error or the caller drops
//! it. One `lb.call` span at debug level covers the engine's part of each call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::pick::{Wait, Waiter};
use super::track::{EndpointError, TrackCompletion};
use crate::endpoint::Endpoint;
use crate::load::{LoadGuard, Outcome};
use crate::metrics::{Dialect, Status};
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
        call: Call,
        span: tracing::Span,
    }

    impl<C, Req, T> PinnedDrop for ResponseFuture<C, Req, T>
    where
        C: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.call.done {
                return;
            }
            // The caller gave up (or a face's timeout fired) before the response.
            let status = this.call.drop_status.unwrap_or(this.call.dialect.cancelled());
            let start = this.call.start.or(this.waiter.waited_since());
            if let StateProj::Calling { guard: Some(guard), .. } = this.state.project() {
                guard.set_status(status);
                if let Some(start) = start {
                    guard.end_call(start);
                }
            } else if let Some(start) = start {
                this.pool.series().call_ended(status, start.elapsed());
            }
        }
    }
}

/// The call's books.
#[derive(Debug)]
struct Call {
    /// When the call began: its first pick, or the start of its wait for one.
    start: Option<Instant>,
    /// Sends so far.
    attempts: u8,
    dialect: Dialect,
    /// Set once the call's end is recorded, or handed to the response.
    done: bool,
    /// The status of a call dropped before its end (unset: cancelled).
    drop_status: Option<Status>,
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
            .field("call", &self.call)
            .finish()
    }
}

/// What a call is admitted with: its wait for an endpoint, its reroutes, the breaker's gate and
/// the endpoints it should avoid.
pub(crate) struct Admit<'a> {
    pub(crate) wait: Wait,
    pub(crate) reroutes: u8,
    pub(crate) gate: Option<&'a Arc<super::Gate>>,
    pub(crate) avoid: Option<super::Avoid>,
}

impl<C, Req, T> ResponseFuture<C, Req, T>
where
    C: Service<Req>,
    T: TrackCompletion<C::Response>,
{
    pub(crate) fn new(pool: Pool<C>, req: Req, ctx: PickContext, track: T, admit: Admit<'_>) -> Self {
        let Admit { wait, reroutes, gate, avoid } = admit;
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
        // Disabled (a cheap `Span::none`) unless debug is on for this crate.
        let span = tracing::debug_span!(
            "lb.call",
            target_uri = %pool.target(),
            endpoint = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        let dialect = track.dialect();
        ResponseFuture {
            state,
            req: Some(req),
            pool,
            ctx,
            wait,
            waiter: Waiter::new(gate.cloned(), avoid),
            track,
            reroutes_left: reroutes,
            permit,
            call: Call {
                start: None,
                attempts: 0,
                dialect,
                done: false,
                drop_status: None,
            },
            span,
        }
    }
}

impl<C, Req, T> ResponseFuture<C, Req, T>
where
    C: Service<Req>,
{
    /// Marks the call as timed out by the face's own deadline: dropped now, it (and its attempt in
    /// flight) is recorded as `DEADLINE_EXCEEDED` (gRPC) or `timeout` rather than as cancelled.
    pub fn timed_out(self: Pin<&mut Self>) {
        let call = self.project().call;
        call.drop_status = Some(call.dialect.timeout());
    }
}

impl<C, Req, T> Future for ResponseFuture<C, Req, T>
where
    C: Service<Req> + Clone,
    C::Error: EndpointError<Req>,
    T: TrackCompletion<C::Response>,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error));
                }
                StateProj::Picking => {
                    let mut picked = match ready!(this.waiter.poll_pick(this.pool, this.ctx, *this.wait, cx)) {
                        Ok(picked) => picked,
                        Err(error) => {
                            let status = match error {
                                super::error::PickError::Unavailable(_) => this.call.dialect.unavailable(),
                                super::error::PickError::Overloaded(_) => this.call.dialect.overloaded(),
                            };
                            end_call(this.call, this.pool, this.waiter, status);
                            return Poll::Ready(Err(error.into_error()));
                        }
                    };
                    if let Some(permit) = this.permit.take() {
                        // The slot rides the guard to the end of the response.
                        picked.guard.hold(permit);
                    }
                    if this.call.start.is_none() {
                        this.call.start = Some(this.waiter.waited_since().unwrap_or(picked.guard.started_at()));
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
                                mut guard,
                            } = picked.take().expect("Readying holds its pick until it moves on");
                            let req = this.req.take().expect("a request is sent once at a time");
                            this.call.attempts = this.call.attempts.saturating_add(1);
                            guard.begin_attempt();
                            if let Some(avoid) = this.waiter.avoid() {
                                avoid.attempted.push(endpoint.id());
                            }
                            this.span.record("endpoint", tracing::field::display(endpoint.addr()));
                            this.span.record("attempt", this.call.attempts);
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
                                end_call(this.call, this.pool, this.waiter, this.call.dialect.unavailable());
                                return Poll::Ready(Err(error.into_error()));
                            }
                            *this.reroutes_left -= 1;
                            this.pool.series().reroute();
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
                        Ok(rsp) => {
                            // The call ends with this response (at the end of its body, for
                            // trackers that move the guard there).
                            if let Some(start) = this.call.start {
                                guard.end_call(start);
                            }
                            this.call.done = true;
                            return Poll::Ready(Ok(this.track.track_completion(guard, rsp)));
                        }
                        Err(error) => error,
                    };
                    let unsent = error.take_unsent();
                    // A request that never reached the backend counts for nothing (see above).
                    let unprocessed = unsent.is_some() || error.is_unprocessed();
                    guard.set_outcome(if unprocessed { Outcome::Cancelled } else { Outcome::Failure });
                    let status = if unprocessed {
                        this.call.dialect.unavailable()
                    } else {
                        this.call.dialect.failed()
                    };
                    guard.set_status(status);
                    match unsent {
                        Some(req) if *this.reroutes_left > 0 => {
                            drop(guard);
                            *this.reroutes_left -= 1;
                            this.pool.series().reroute();
                            let endpoint = endpoint.take().expect("polled after completion");
                            tracing::debug!(endpoint = %endpoint.addr(), "request not sent; sending it to another endpoint");
                            this.waiter.exclude(endpoint);
                            *this.req = Some(req);
                            this.state.set(State::Picking);
                        }
                        _ => {
                            // This attempt's end is the call's.
                            if let Some(start) = this.call.start {
                                guard.end_call(start);
                            }
                            this.call.done = true;
                            drop(guard);
                            return Poll::Ready(Err(error.into_error()));
                        }
                    }
                }
            }
        }
    }
}

/// Records the end of a call the engine ends itself, before any attempt carries it.
#[cold]
fn end_call<C>(call: &mut Call, pool: &Pool<C>, waiter: &Waiter, status: Status) {
    call.done = true;
    let waited = call.start.or(waiter.waited_since()).map(|s| s.elapsed()).unwrap_or_default();
    pool.series().call_ended(status, waited);
}
