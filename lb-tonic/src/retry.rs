//! Re-sending requests that reached a backend, under a policy the user configures: the gRPC face
//! of [`lb_hyper::retry`], which drives the attempts (and hedges) for both clients.
//!
//! Requests that never reached a backend are re-sent elsewhere without any policy (see
//! [`lb_core::balance`]). A request that did reach one is re-sent only when a [`RetryPolicy`] is set,
//! and only while that is safe, following gRPC's retry design (gRFC A6):
//!
//! - the request body must be complete and buffered: its frames are read as far as they are
//!   *already available*, up to [`RetryPolicy::max_buffer`] bytes. A unary call's single message is
//!   available at once; a client stream that is still producing is never waited for (that could
//!   deadlock a bidirectional call) and is simply not retried;
//! - the attempt must have failed before the response was committed: a trailers-only response whose
//!   `grpc-status` is in [`RetryPolicy::codes`], or a broken connection when `UNAVAILABLE` is listed.
//!   Once response headers with a body arrive, the call is committed and never retried;
//! - the channel's retry budget has room ([`Builder::retry_budget`](crate::Builder::retry_budget),
//!   default 0.2 of the recent calls plus 10 per second): a spent budget ends the call with its
//!   answer, counted in `lb_retry_budget_exhausted_total`. A server's `grpc-retry-pushback-ms` sets
//!   the delay (a negative one stops retrying), and attempts after the first carry
//!   `grpc-previous-rpc-attempts`.
//!
//! Hedging ([`Builder::hedge`](crate::Builder::hedge), [`lb_hyper::HedgePolicy`]) buffers the same
//! way; [`grpc_codes`] lists its non-fatal codes in tonic's terms, and [`lb_hyper::Hedgeable`] in
//! a `tonic::Request`'s extensions marks a call safe to hedge.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use tonic::body::Body;
use tonic::Code;

/// Which failed attempts are retried, or not fatal to a hedged call, in tonic's codes.
pub fn grpc_codes(codes: impl IntoIterator<Item = Code>) -> lb_hyper::RetryOn {
    lb_hyper::RetryOn::grpc_codes(codes.into_iter().map(|c| c as i32))
}

/// When and how often to re-send a request that reached a backend; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    codes: Vec<Code>,
    max_buffer: usize,
    backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    /// At most `max_attempts` attempts in all (the first included; at most 5, as gRFC A6 caps
    /// them), on `UNAVAILABLE` only, buffering request bodies up to 64 KiB; each delay is drawn at
    /// random below a bound that starts at 10 ms and doubles per attempt, up to 1 s (A6's backoff).
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.clamp(1, lb_hyper::retry::MAX_ATTEMPTS),
            codes: vec![Code::Unavailable],
            max_buffer: 64 * 1024,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }

    /// The gRPC codes that make an attempt retryable.
    pub fn codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.codes = codes.into_iter().collect();
        self
    }

    /// The largest request body kept for re-sending.
    pub fn max_buffer(mut self, bytes: usize) -> Self {
        self.max_buffer = bytes;
        self
    }

    /// The bound of the delay before the first re-send; it doubles per attempt.
    pub fn backoff(mut self, delay: Duration) -> Self {
        self.backoff = delay;
        self
    }

    /// The largest delay bound (default 1 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn to_hyper(&self) -> lb_hyper::RetryPolicy {
        lb_hyper::RetryPolicy::new(self.max_attempts)
            .on(grpc_codes(self.codes.iter().copied()))
            .backoff(self.backoff)
            .max_backoff(self.max_backoff)
    }

    pub(crate) fn max_buffer_bytes(&self) -> usize {
        self.max_buffer
    }
}

/// A request body either fully buffered (re-sendable) or passed through as is.
pub(crate) enum Buffered {
    Complete(Bytes),
    Partial(Body),
}

/// Reads the frames of `body` that are available without waiting, up to `limit` bytes.
pub(crate) fn buffer_ready(mut body: Body, limit: usize) -> Buffered {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    // The usual case, one data frame, is kept without copying.
    let mut single: Option<Bytes> = None;
    let mut many: Option<BytesMut> = None;
    let taken = |single: &mut Option<Bytes>, many: &mut Option<BytesMut>| match many.take() {
        Some(m) => m.freeze(),
        None => single.take().unwrap_or_default(),
    };
    loop {
        let len = many.as_ref().map_or_else(|| single.as_ref().map_or(0, |b| b.len()), |m| m.len());
        if len > limit {
            return Buffered::Partial(prepend(taken(&mut single, &mut many), body));
        }
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return Buffered::Complete(taken(&mut single, &mut many)),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => match (&mut single, &mut many) {
                    (_, Some(m)) => m.extend_from_slice(&data),
                    (None, None) => single = Some(data),
                    (Some(first), None) => {
                        let mut m = BytesMut::with_capacity(first.len() + data.len());
                        m.extend_from_slice(first);
                        m.extend_from_slice(&data);
                        single = None;
                        many = Some(m);
                    }
                },
                // Request trailers are not part of gRPC; a body with them is not replayed.
                Err(frame) => {
                    let rest = prepend_frame(taken(&mut single, &mut many), frame, body);
                    return Buffered::Partial(rest);
                }
            },
            Poll::Ready(Some(Err(status))) => {
                return Buffered::Partial(Body::new(futures_body(vec![], Some(status), None)));
            }
            Poll::Pending => return Buffered::Partial(prepend(taken(&mut single, &mut many), body)),
        }
    }
}

fn prepend(head: Bytes, rest: Body) -> Body {
    if head.is_empty() {
        return rest;
    }
    Body::new(futures_body(vec![http_body::Frame::data(head)], None, Some(rest)))
}

fn prepend_frame(head: Bytes, frame: http_body::Frame<Bytes>, rest: Body) -> Body {
    let mut frames = Vec::new();
    if !head.is_empty() {
        frames.push(http_body::Frame::data(head));
    }
    frames.push(frame);
    Body::new(futures_body(frames, None, Some(rest)))
}

/// Some frames, then an error or the rest of a body.
fn futures_body(frames: Vec<http_body::Frame<Bytes>>, error: Option<tonic::Status>, rest: Option<Body>) -> Chain {
    Chain {
        frames: frames.into(),
        error,
        rest,
    }
}

struct Chain {
    frames: std::collections::VecDeque<http_body::Frame<Bytes>>,
    error: Option<tonic::Status>,
    rest: Option<Body>,
}

impl http_body::Body for Chain {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: Body) -> Bytes {
        body.collect().await.expect("body reads").to_bytes()
    }

    #[tokio::test]
    async fn a_complete_body_is_kept() {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
        match buffer_ready(body, 1024) {
            Buffered::Complete(b) => assert_eq!(b, Bytes::from_static(b"hello")),
            Buffered::Partial(_) => panic!("a full body is available at once"),
        }
    }

    #[tokio::test]
    async fn several_frames_are_joined() {
        let frames = futures_util::stream::iter(
            ["a", "b", "c"].map(|s| Ok::<_, tonic::Status>(http_body::Frame::data(Bytes::from(s)))),
        );
        let body = Body::new(http_body_util::StreamBody::new(frames));
        match buffer_ready(body, 1024) {
            Buffered::Complete(b) => assert_eq!(b, Bytes::from_static(b"abc")),
            Buffered::Partial(_) => panic!("every frame was ready"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_passes_through_intact() {
        let body = Body::new(http_body_util::Full::new(Bytes::from(vec![7u8; 100])));
        match buffer_ready(body, 10) {
            Buffered::Partial(rest) => assert_eq!(collect(rest).await, Bytes::from(vec![7u8; 100])),
            Buffered::Complete(_) => panic!("over the limit"),
        }
    }

    #[tokio::test]
    async fn a_body_still_producing_is_not_waited_for() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, tonic::Status>>(4);
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first")))).await.expect("open");
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let body = Body::new(http_body_util::StreamBody::new(stream));
        let rest = match buffer_ready(body, 1024) {
            Buffered::Partial(rest) => rest,
            Buffered::Complete(_) => panic!("the stream has not ended"),
        };
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"-second")))).await.expect("open");
        drop(tx);
        assert_eq!(collect(rest).await, Bytes::from_static(b"first-second"), "nothing lost or reordered");
    }
}
