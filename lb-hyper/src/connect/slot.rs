//! What a response occupies on its connection, held by its body until the body ends.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Holds what a response occupies on its connection until dropped: an HTTP/2 stream counted
/// against the connection's limit, or an HTTP/1.1 connection lent to the request.
pub struct StreamSlot(Slot);

enum Slot {
    /// An HTTP/2 stream: a count to give back (no allocation per request).
    Counted(Arc<AtomicUsize>),
    /// Anything else to hold, e.g. an HTTP/1.1 connection's lease.
    #[allow(dead_code)] // held for its `Drop`
    Held(Box<dyn Send + Sync + 'static>),
}

impl StreamSlot {
    pub(crate) fn new(inner: impl Send + Sync + 'static) -> Self {
        StreamSlot(Slot::Held(Box::new(inner)))
    }

    /// A slot that decrements `count` when dropped (the caller has incremented it).
    pub(crate) fn counted(count: Arc<AtomicUsize>) -> Self {
        StreamSlot(Slot::Counted(count))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Slot::Counted(count) = &self.0 {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamSlot")
    }
}

pin_project! {
    /// A response body that keeps its connection slot until it ends.
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
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let last = match &frame {
            Some(Ok(f)) => f.is_trailers() || this.inner.is_end_stream(),
            _ => true,
        };
        if last {
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
