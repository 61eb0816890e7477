//! Response bodies that keep a request counted until their last frame.
//!
//! linkerd's `hyper-balance` showed why: a balancer that stops counting a request at the response
//! headers sees a server stream that runs for minutes as zero load. [`TrackedBody`] holds the
//! request's [`LoadGuard`] and its connection [`StreamSlot`] until the body ends or is dropped,
//! setting the outcome from the trailers (gRPC) or the status (HTTP) on the way.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use lb_core::{LoadGuard, Outcome};
use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::connect::StreamSlot;

pin_project! {
    /// A response body that counts its request as in flight until it ends; see the
    /// [module docs](self).
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<LoadGuard>,
        slot: Option<StreamSlot>,
        classify: Classify,
        decided: bool,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, mut guard: LoadGuard, slot: StreamSlot, classify: Classify, head: (Outcome, bool)) -> Self {
        guard.set_outcome(head.0);
        TrackedBody {
            inner,
            guard: Some(guard),
            slot: Some(slot),
            classify,
            decided: head.1,
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
                        }
                        *this.decided = true;
                    }
                    // Trailers are the last frame: callers (tonic's `Streaming`) stop polling here.
                    true
                }
                None => this.inner.is_end_stream(),
            },
            Some(Err(_)) => {
                if let Some(g) = this.guard.as_mut() {
                    g.set_outcome(Outcome::Failure);
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
                }
            }
            this.slot.take();
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

pin_project! {
    /// A response body that keeps its connection slot until it ends (no load tracking).
    #[derive(Debug)]
    pub struct SlotBody<B> {
        #[pin]
        inner: B,
        slot: Option<StreamSlot>,
    }
}

impl<B> SlotBody<B> {
    pub(crate) fn new(inner: B, slot: StreamSlot) -> Self {
        SlotBody { inner, slot: Some(slot) }
    }
}

impl<B: Body> Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.slot.take();
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
