//! The response body of [`LbChannel`](crate::LbChannel).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;

pin_project! {
    /// A gRPC response body: counts its request as in flight until its end (see
    /// [`lb_hyper::TrackedBody`]) and reports transport failures as `tonic::Status`
    /// (`UNAVAILABLE`, or `CANCELLED` for a stream reset with `CANCEL`), as gRPC specifies.
    ///
    /// Its `Default` is an empty body, which tonic's generated `with_interceptor` constructors ask
    /// for.
    #[derive(Debug, Default)]
    pub struct ResponseBody {
        #[pin]
        inner: Option<lb_hyper::ResponseBody>,
    }
}

impl ResponseBody {
    pub(crate) fn new(inner: lb_hyper::ResponseBody) -> Self {
        ResponseBody { inner: Some(inner) }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.project().inner.as_pin_mut() {
            Some(inner) => {
                let frame = ready!(inner.poll_frame(cx));
                Poll::Ready(frame.map(|f| f.map_err(status_from_hyper)))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

fn status_from_hyper(e: hyper::Error) -> Status {
    let cancelled = e.is_canceled();
    let mut status = if cancelled {
        Status::cancelled(format!("stream cancelled: {e}"))
    } else {
        Status::unavailable(format!("connection failed mid-stream: {e}"))
    };
    status.set_source(std::sync::Arc::new(e));
    status
}
