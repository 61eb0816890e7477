//! Response bodies that keep a request counted until their last frame.
//!
//! linkerd's `hyper-balance` showed why: a balancer that stops counting a request at the response
//! headers sees a server stream that runs for minutes as zero load. [`TrackBody`] is the
//! [`TrackCompletion`] lb's engine hands each response to: it moves the request's [`LoadGuard`]
//! into a [`TrackedBody`], which holds it until the body ends or is dropped, setting the outcome
//! from the trailers (gRPC) or the status (HTTP) on the way ([`Classify`]). It works over any
//! `http::Response<B>`: lb-hyper's own connections, or a per-endpoint service a user composed.
//!
//! On the way it also picks up what the server says of its own load: an ORCA load report in the
//! `endpoint-load-metrics-bin` trailer (or header), and an overload answer's hint
//! ([`Classify::penalty`]); both ride the guard into the endpoint's load state.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use lb_core::balance::TrackCompletion;
use lb_core::metrics::Dialect;
use lb_core::{LoadGuard, Outcome};
use pin_project_lite::pin_project;

use crate::classify::{Classify, Verdict};

/// Ends each request with its response body; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct TrackBody {
    classify: Classify,
}

impl TrackBody {
    /// Judges outcomes with `classify`.
    pub fn new(classify: Classify) -> Self {
        TrackBody { classify }
    }

    /// For gRPC: the outcome is the `grpc-status` ([`Classify::grpc`]).
    pub fn grpc() -> Self {
        TrackBody::new(Classify::grpc())
    }

    /// For plain HTTP: 5xx is a failure ([`Classify::http`]).
    pub fn http() -> Self {
        TrackBody::new(Classify::http())
    }

    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self.classify, Classify::Grpc { .. })
    }
}

impl<B> TrackCompletion<http::Response<B>> for TrackBody {
    type Output = http::Response<TrackedBody<B>>;

    fn track_completion(&self, mut guard: LoadGuard, response: http::Response<B>) -> Self::Output {
        let verdict = self.classify.head(response.status(), response.headers());
        // HTTP/1.1 responses and trailers-only gRPC answers carry these in their headers.
        if let Some(report) = lb_orca::from_headers(response.headers()) {
            guard.set_report(report);
        }
        if let Some(penalty) = self.classify.penalty(Some(response.status()), response.headers()) {
            guard.set_penalty(penalty);
        }
        // A gRPC answer's status comes with its trailers; until then, a caller that drops the body
        // cancelled the call.
        let status = self.classify.head_status(response.status(), response.headers());
        guard.set_status(status.unwrap_or(self.classify.dialect().cancelled()));
        let classify = self.classify.clone();
        response.map(|b| TrackedBody::new(b, guard, classify, verdict))
    }

    fn dialect(&self) -> Dialect {
        self.classify.dialect()
    }
}

pin_project! {
    /// A response body that counts its request as in flight until it ends; see the
    /// [module docs](self).
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<LoadGuard>,
        classify: Classify,
        decided: bool,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, mut guard: LoadGuard, classify: Classify, head: Verdict) -> Self {
        guard.set_outcome(head.outcome);
        TrackedBody {
            inner,
            guard: Some(guard),
            classify,
            decided: head.is_final,
        }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let end = match &frame {
            Some(Ok(f)) => match f.trailers_ref() {
                Some(t) => {
                    if let Some(outcome) = this.classify.trailers(t) {
                        if let Some(g) = this.guard.as_mut() {
                            g.set_outcome(outcome);
                            if let Some(status) = this.classify.trailers_status(t) {
                                g.set_status(status);
                            }
                        }
                        *this.decided = true;
                    }
                    if let Some(g) = this.guard.as_mut() {
                        if let Some(report) = lb_orca::from_headers(t) {
                            g.set_report(report);
                        }
                        if let Some(penalty) = this.classify.penalty(None, t) {
                            g.set_penalty(penalty);
                        }
                    }
                    // Trailers are the last frame: callers (tonic's `Streaming`) stop polling here.
                    true
                }
                None => this.inner.is_end_stream(),
            },
            Some(Err(_)) => {
                if let Some(g) = this.guard.as_mut() {
                    g.set_outcome(Outcome::Failure);
                    g.set_status(this.classify.broken_status());
                }
                *this.decided = true;
                true
            }
            None => true,
        };
        if end {
            if let Some(mut g) = this.guard.take() {
                if !*this.decided {
                    g.set_outcome(this.classify.end_without_status());
                    if let Some(status) = this.classify.missing_status() {
                        g.set_status(status);
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
