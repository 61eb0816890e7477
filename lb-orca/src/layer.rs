//! [`OrcaLayer`]: attaches a load report to every response a server sends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, HeaderName, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::recorder::{CallRecorder, Recorder};

/// Wraps a server's service so every response carries a load report; see the
/// [crate docs](crate). Holds configuration only.
#[derive(Clone, Debug)]
pub struct OrcaLayer {
    recorder: Recorder,
}

impl OrcaLayer {
    /// Reports what `recorder` holds (plus each call's own values).
    pub fn new(recorder: Recorder) -> Self {
        OrcaLayer { recorder }
    }
}

impl<S> Layer<S> for OrcaLayer {
    type Service = Orca<S>;

    fn layer(&self, inner: S) -> Orca<S> {
        Orca {
            inner,
            recorder: self.recorder.clone(),
        }
    }
}

/// The service [`OrcaLayer`] builds.
#[derive(Clone, Debug)]
pub struct Orca<S> {
    inner: S,
    recorder: Recorder,
}

impl<S> Orca<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Orca<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<OrcaBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        self.recorder.on_request();
        let call = CallRecorder::default();
        req.extensions_mut().insert(call.clone());
        let trailers = req.version() >= Version::HTTP_2;
        ResponseFuture {
            inner: self.inner.call(req),
            report: Some(Pending {
                recorder: self.recorder.clone(),
                call,
            }),
            trailers,
        }
    }
}

/// What a response owes: its report, made when it is sent.
struct Pending {
    recorder: Recorder,
    call: CallRecorder,
}

impl Pending {
    /// Counts the response (an error when `failed`) and writes its report into `headers`.
    fn write(self, headers: &mut HeaderMap, failed: bool) {
        if failed {
            self.recorder.on_error();
        }
        let report = self.call.merge_into(self.recorder.report());
        headers.insert(HeaderName::from_static(crate::HEADER), crate::encode(&report));
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pending")
    }
}

/// A gRPC status other than OK, or an HTTP server error: counted in the error rate.
fn failed(status: Option<http::StatusCode>, headers: &HeaderMap) -> bool {
    if status.is_some_and(|s| s.is_server_error()) {
        return true;
    }
    headers.get("grpc-status").is_some_and(|v| v.as_bytes() != b"0")
}

pin_project! {
    /// The future of an [`Orca`] call.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        report: Option<Pending>,
        trailers: bool,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("trailers", &self.trailers).finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<OrcaBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        let pending = this.report.take();
        // A trailers-only gRPC answer (its status already in the headers) and any HTTP/1.1
        // response carry the report as a header: trailers after a trailers-only answer would be
        // a second trailers block, and HTTP/1.1 trailers need chunked encoding and `TE: trailers`.
        let in_headers = !*this.trailers || rsp.headers().contains_key("grpc-status");
        let owed = match pending {
            Some(p) if in_headers => {
                let failed = failed(Some(rsp.status()), rsp.headers());
                p.write(rsp.headers_mut(), failed);
                None
            }
            other => {
                if rsp.status().is_server_error() {
                    // An HTTP/2 server error: counted now, reported at the end of its body.
                    if let Some(p) = &other {
                        p.recorder.on_error();
                    }
                }
                other
            }
        };
        Poll::Ready(Ok(rsp.map(|inner| OrcaBody { inner, owed })))
    }
}

pin_project! {
    /// A response body that ends with the report in its trailers (adding a trailers frame when
    /// the body had none).
    pub struct OrcaBody<B> {
        #[pin]
        inner: B,
        owed: Option<Pending>,
    }
}

impl<B> fmt::Debug for OrcaBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrcaBody").field("owed", &self.owed.is_some()).finish()
    }
}

impl<B: Body> Body for OrcaBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if this.owed.is_none() {
            return this.inner.poll_frame(cx);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(p) = this.owed.take() {
                        let failed = failed(None, &trailers);
                        p.write(&mut trailers, failed);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => {
                // The stream failed: nothing more will be sent, the report included.
                this.owed.take();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                let mut trailers = HeaderMap::new();
                if let Some(p) = this.owed.take() {
                    p.write(&mut trailers, false);
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.owed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if self.owed.is_some() {
            // Trailers add no data, but the body is not over when the data is.
            hint.set_upper(u64::MAX);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    fn server(
        status: u16,
        grpc_status: Option<&'static str>,
    ) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = std::convert::Infallible> + Clone {
        tower::service_fn(move |req: Request<()>| async move {
            if let Some(call) = req.extensions().get::<CallRecorder>() {
                call.record_request_cost("rows", 3.0);
            }
            let mut rsp = Response::new(Full::new(Bytes::from_static(b"hello")));
            *rsp.status_mut() = http::StatusCode::from_u16(status).expect("valid");
            if let Some(g) = grpc_status {
                rsp.headers_mut().insert("grpc-status", http::HeaderValue::from_static(g));
            }
            Ok(rsp)
        })
    }

    fn request(version: Version) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        r
    }

    #[tokio::test]
    async fn http2_responses_end_with_the_report_in_their_trailers() {
        let recorder = Recorder::new();
        recorder.set_application_utilization(0.5);
        let svc = OrcaLayer::new(recorder).layer(server(200, None));
        let rsp = svc.oneshot(request(Version::HTTP_2)).await.expect("answered");
        assert!(!rsp.headers().contains_key(crate::HEADER));
        let collected = rsp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("a trailers frame was added");
        let report = crate::decode(&trailers[crate::HEADER]).expect("decodes");
        assert_eq!(report.application_utilization, 0.5);
        assert_eq!(report.request_cost.get("rows"), Some(&3.0), "the call's own cost");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"), "the data is untouched");
    }

    #[tokio::test]
    async fn trailers_only_and_http1_answers_carry_it_in_their_headers() {
        let recorder = Recorder::new();
        let svc = OrcaLayer::new(recorder.clone()).layer(server(200, Some("14")));
        let rsp = svc.clone().oneshot(request(Version::HTTP_2)).await.expect("answered");
        assert!(rsp.headers().contains_key(crate::HEADER), "trailers-only: in the headers");
        assert!(rsp.into_body().collect().await.expect("body").trailers().is_none(), "no second trailers block");

        let svc = OrcaLayer::new(recorder.clone()).layer(server(503, None));
        let rsp = svc.oneshot(request(Version::HTTP_11)).await.expect("answered");
        let report = crate::decode(&rsp.headers()[crate::HEADER]).expect("decodes");
        assert_eq!(report.request_cost.get("rows"), Some(&3.0));
        assert_eq!(recorder.counted(), (2, 2), "two calls, both failed (UNAVAILABLE, then a 503)");
    }
}
