//! The response future of [`Balance`](super::Balance).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::error::Unavailable;
use super::service::TrackCompletion;
use crate::load::{LoadGuard, Outcome};
use crate::policy::PickContext;
use crate::pool::{Picked, Pool};
use crate::BoxError;

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<C, Req>
    where
        C: Service<Req>,
    {
        Waiting { wait: Wait },
        Readying { picked: Option<Picked<C>> },
        Calling { #[pin] fut: C::Future, guard: Option<LoadGuard> },
    }
}

pin_project! {
    /// Picks, waits for readiness, and calls; see [`Balance`](super::Balance).
    pub struct ResponseFuture<C, Req, T>
    where
        C: Service<Req>,
    {
        #[pin]
        state: State<C, Req>,
        req: Option<Req>,
        pool: Pool<C>,
        ctx: PickContext,
        track: T,
        failfast: Duration,
        started: Instant,
        deadline: Option<Pin<Box<Sleep>>>,
        reroutes_left: u8,
    }
}

impl<C, Req, T> fmt::Debug for ResponseFuture<C, Req, T>
where
    C: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("ctx", &self.ctx).finish()
    }
}

/// Subscribes *before* picking, so a snapshot published in between is not missed.
fn pick_or_wait<C, Req>(pool: &Pool<C>, ctx: &PickContext) -> State<C, Req>
where
    C: Service<Req> + Clone + Send + Sync + 'static,
{
    if let Some(picked) = pool.pick(ctx) {
        return State::Readying { picked: Some(picked) };
    }
    let mut rx = pool.subscribe();
    if let Some(picked) = pool.pick(ctx) {
        return State::Readying { picked: Some(picked) };
    }
    State::Waiting {
        wait: Box::pin(async move {
            if rx.changed().await.is_err() {
                // The pool task is gone; only the deadline can end this wait.
                std::future::pending::<()>().await;
            }
        }),
    }
}

impl<C, Req, T> ResponseFuture<C, Req, T>
where
    C: Service<Req> + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        pool: Pool<C>,
        req: Req,
        ctx: PickContext,
        track: T,
        failfast: Duration,
        reroutes: u8,
    ) -> Self {
        let state = pick_or_wait(&pool, &ctx);
        ResponseFuture {
            state,
            req: Some(req),
            pool,
            ctx,
            track,
            failfast,
            started: Instant::now(),
            deadline: None,
            reroutes_left: reroutes,
        }
    }
}

impl<C, Req, T> Future for ResponseFuture<C, Req, T>
where
    C: Service<Req> + Clone + Send + Sync + 'static,
    C::Error: Into<BoxError>,
    T: TrackCompletion<C::Response>,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Waiting { wait } => {
                    if wait.as_mut().poll(cx).is_ready() {
                        let next = pick_or_wait(this.pool, this.ctx);
                        this.state.set(next);
                        continue;
                    }
                    let failfast = *this.failfast;
                    let started = *this.started;
                    let deadline = this
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(started + failfast)));
                    ready!(deadline.as_mut().poll(cx));
                    crate::metrics::no_endpoint(this.pool.target());
                    let err = Unavailable::new(
                        this.pool.target().clone(),
                        this.started.elapsed(),
                        this.pool.is_initialized(),
                    );
                    return Poll::Ready(Err(err.into()));
                }
                StateProj::Readying { picked } => {
                    let p = picked.as_mut().expect("Readying always holds a pick until it moves on");
                    match p.connection.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {
                            let Picked { mut connection, guard, .. } =
                                picked.take().expect("Readying always holds a pick until it moves on");
                            let req = this.req.take().expect("the request is sent once");
                            let fut = connection.call(req);
                            this.state.set(State::Calling { fut, guard: Some(guard) });
                        }
                        Poll::Ready(Err(error)) => {
                            let Picked { endpoint, mut guard, .. } =
                                picked.take().expect("Readying always holds a pick until it moves on");
                            guard.set_outcome(Outcome::Failure);
                            drop(guard);
                            let error: BoxError = error.into();
                            if *this.reroutes_left == 0 {
                                return Poll::Ready(Err(error));
                            }
                            *this.reroutes_left -= 1;
                            tracing::debug!(endpoint = %endpoint.addr(), %error, "connection not ready; re-picking");
                            let next = pick_or_wait(this.pool, this.ctx);
                            this.state.set(next);
                        }
                    }
                }
                StateProj::Calling { fut, guard } => {
                    let result = ready!(fut.poll(cx));
                    let mut guard = guard.take().expect("polled after completion");
                    return Poll::Ready(match result {
                        Ok(rsp) => Ok(this.track.track_completion(guard, rsp)),
                        Err(e) => {
                            guard.set_outcome(Outcome::Failure);
                            Err(e.into())
                        }
                    });
                }
            }
        }
    }
}
