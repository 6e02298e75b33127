//! Tower layers that wrap every service of the server once. [`CatchPanicLayer`]: a handler
//! that panics answers its caller with INTERNAL instead of taking the fleet's server down
//! (the release profile unwinds; see Cargo.toml).
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;

#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer;

impl<S> tower_layer::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for CatchPanic<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        // A panic while making the future is caught too.
        let fut = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        Box::pin(async move {
            let outcome = match fut {
                Ok(f) => AssertUnwindSafe(f).catch_unwind().await,
                Err(p) => Err(p),
            };
            match outcome {
                Ok(r) => r,
                Err(p) => {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    tracing::error!(call = %path, "request handler panicked: {what}");
                    Ok(tonic::Status::internal("internal error: the request failed on the coordinator (it keeps serving); its log has the details")
                        .into_http())
                }
            }
        })
    }
}
