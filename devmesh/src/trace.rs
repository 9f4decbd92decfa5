//! Trace propagation: keep the `traceparent` of the request a service is
//! handling, and put it on the requests it makes meanwhile, so the
//! inspector links each call to the request that caused it exactly; and
//! its `baggage`, in which a developer's route travels (`crate::route`),
//! so that a call made for a developer's request reaches their copies.
//!
//! Without it the inspector still links a call by inference, but only when
//! that is unambiguous (one request in flight to the caller); with several
//! requests in flight at once, a call is shown unlinked rather than in a
//! trace that may be wrong.
//!
//! ```no_run
//! # async fn demo() {
//! // Around each request a service handles (the `tower` feature gives a
//! // layer that does this for axum, hyper and tonic servers):
//! let incoming: Option<String> = None; // the request's `traceparent`
//! devmesh::trace::scope(incoming, async {
//!     // Any client: put the header on outgoing requests.
//!     if let Some(traceparent) = devmesh::trace::current() {
//!         // request.header(devmesh::trace::HEADER, traceparent)
//!     }
//! })
//! .await;
//! # }
//! ```
//!
//! The context belongs to the request's task: work moved to another task
//! with `tokio::spawn` takes it along only if wrapped in [`scope`] again
//! (with [`current`]'s value).

use std::future::Future;

/// The W3C trace context header.
pub const HEADER: &str = "traceparent";

/// What a request came with that the requests made while handling it
/// carry on: its headers' values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}

tokio::task_local! {
    static CURRENT: Carried;
}

/// Runs `work` as the handling of a request that came with `traceparent`
/// (its header's value, if it had one).
pub async fn scope<F: Future>(traceparent: Option<String>, work: F) -> F::Output {
    let carried = Carried {
        traceparent,
        baggage: None,
    };
    CURRENT.scope(carried, work).await
}

/// Runs `work` as the handling of a request that came with `carried`.
pub async fn scope_carrying<F: Future>(carried: Carried, work: F) -> F::Output {
    CURRENT.scope(carried, work).await
}

/// The `traceparent` of the request being handled, to send on the requests
/// made while handling it; `None` outside [`scope`] or without one.
pub fn current() -> Option<String> {
    CURRENT.try_with(|c| c.traceparent.clone()).ok().flatten()
}

/// The `baggage` of the request being handled, to send on the requests
/// made while handling it; `None` outside [`scope_carrying`] or without one.
pub fn baggage() -> Option<String> {
    CURRENT.try_with(|c| c.baggage.clone()).ok().flatten()
}

#[cfg(feature = "tower")]
pub use layer::{TraceLayer, Traced, inject};

#[cfg(feature = "tower")]
mod layer {
    use std::task::{Context, Poll};

    use tokio::task::futures::TaskLocalFuture;

    use super::{CURRENT, Carried, HEADER, baggage, current};
    use crate::route::HEADER as BAGGAGE;

    /// A tower layer for servers (axum, hyper, tonic): each request is
    /// handled in the [`scope`](super::scope_carrying) of its `traceparent`
    /// and `baggage`.
    ///
    /// ```ignore
    /// let app = axum::Router::new().route("/", get(handler)).layer(devmesh::trace::TraceLayer);
    /// ```
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TraceLayer;

    impl<S> tower_layer::Layer<S> for TraceLayer {
        type Service = Traced<S>;

        fn layer(&self, inner: S) -> Traced<S> {
            Traced { inner }
        }
    }

    /// A service whose requests are handled in their trace's scope.
    #[derive(Debug, Clone)]
    pub struct Traced<S> {
        inner: S,
    }

    impl<S, B> tower_service::Service<http::Request<B>> for Traced<S>
    where
        S: tower_service::Service<http::Request<B>>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = TaskLocalFuture<Carried, S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, request: http::Request<B>) -> Self::Future {
            let header = |name| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let carried = Carried {
                traceparent: header(HEADER),
                baggage: header(BAGGAGE),
            };
            CURRENT.scope(carried, self.inner.call(request))
        }
    }

    /// Adds the current `traceparent` and `baggage` to an outgoing
    /// request's headers (reqwest: `RequestBuilder::headers`, hyper:
    /// `Request::headers_mut`), each unless it has one.
    pub fn inject(headers: &mut http::HeaderMap) {
        for (name, value) in [(HEADER, current()), (BAGGAGE, baggage())] {
            if headers.contains_key(name) {
                continue;
            }
            if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                headers.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_is_the_requests_own_even_when_they_interleave() {
        let handle = |id: &'static str| {
            scope(Some(id.to_owned()), async move {
                let before = current();
                tokio::task::yield_now().await;
                (before, current())
            })
        };
        let (a, b) = tokio::join!(handle("a"), handle("b"));
        assert_eq!(a, (Some("a".to_owned()), Some("a".to_owned())));
        assert_eq!(b, (Some("b".to_owned()), Some("b".to_owned())));
        assert_eq!(current(), None);
    }

    #[cfg(feature = "tower")]
    #[tokio::test]
    async fn the_layer_scopes_each_request_and_inject_adds_the_header() {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        use tower_layer::Layer;
        use tower_service::Service;

        /// A server that makes one outgoing request's headers while handling.
        struct Handler;
        impl Service<http::Request<()>> for Handler {
            type Response = http::HeaderMap;
            type Error = std::convert::Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<http::HeaderMap, Self::Error>> + Send>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                // Handlers do their work when polled, as axum's do.
                Box::pin(async {
                    let mut outgoing = http::HeaderMap::new();
                    inject(&mut outgoing);
                    Ok(outgoing)
                })
            }
        }
        let mut service = TraceLayer.layer(Handler);
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let request = http::Request::builder()
            .header(HEADER, value)
            .header(crate::route::HEADER, "devmesh-route=dev-a")
            .body(())
            .unwrap();
        let outgoing = service.call(request).await.unwrap();
        assert_eq!(outgoing[HEADER], value);
        // A developer's route goes on with the trace.
        assert_eq!(outgoing[crate::route::HEADER], "devmesh-route=dev-a");
        let outgoing = service.call(http::Request::new(())).await.unwrap();
        assert!(outgoing.get(HEADER).is_none() && outgoing.get(crate::route::HEADER).is_none());
    }
}
