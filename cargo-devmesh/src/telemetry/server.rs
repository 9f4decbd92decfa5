//! The OTLP endpoint: OTLP/HTTP (`POST /v1/traces`, `/v1/logs`,
//! `/v1/metrics`, protobuf or JSON, gzip or not) and OTLP/gRPC (the three
//! collector services' `Export`) on one port, HTTP/1 and HTTP/2 alike.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use super::Telemetry;
use super::otlp::{self, DecodeError, Encoding, MAX_BODY};

/// Serves OTLP on `listener` into `telemetry` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, say: the next accept may do.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let telemetry = Arc::clone(&telemetry);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let telemetry = Arc::clone(&telemetry);
                async move { Ok::<_, Infallible>(handle(request, &telemetry).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// Which signal a request exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    fn of_path(path: &str) -> Option<(Signal, bool)> {
        Some(match path {
            "/v1/traces" => (Signal::Traces, false),
            "/v1/logs" => (Signal::Logs, false),
            "/v1/metrics" => (Signal::Metrics, false),
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => (Signal::Traces, true),
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => (Signal::Logs, true),
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => (Signal::Metrics, true),
            _ => return None,
        })
    }
}

/// Why an export was not taken.
enum Refusal {
    /// The body could not be read.
    Bad(String),
    /// The service sends faster than the store takes: try later.
    Slow,
}

type Answer = Response<OtlpBody>;

async fn handle(request: Request<Incoming>, telemetry: &Telemetry) -> Answer {
    let Some((signal, grpc)) = Signal::of_path(request.uri().path()).filter(|_| request.method() == Method::POST)
    else {
        let message = "devmesh OTLP endpoint: POST /v1/traces, /v1/logs or /v1/metrics (or OTLP/gRPC)\n";
        return plain(StatusCode::NOT_FOUND, message);
    };
    let headers = request.headers().clone();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return refused(grpc, Refusal::Bad(format!("its body could not be read: {e}"))),
    };
    let json = !grpc && header_is(&headers, header::CONTENT_TYPE, "application/json");
    let taken = match grpc {
        true => grpc_message(&body, &headers)
            .and_then(|(message, gzip)| take(signal, telemetry, &message, gzip, Encoding::Protobuf)),
        false => {
            let encoding = if json { Encoding::Json } else { Encoding::Protobuf };
            let gzip = header_is(&headers, header::CONTENT_ENCODING, "gzip");
            take(signal, telemetry, &body, gzip, encoding)
        }
    };
    match (taken, grpc) {
        (Err(refusal), _) => refused(grpc, refusal),
        (Ok(()), true) => grpc_answer(0, ""),
        // An empty Export*ServiceResponse: no partial success to report.
        (Ok(()), false) if json => respond(StatusCode::OK, "application/json", Bytes::from_static(b"{}")),
        (Ok(()), false) => respond(StatusCode::OK, "application/x-protobuf", Bytes::new()),
    }
}

/// Decodes an export and keeps what it holds.
fn take(signal: Signal, telemetry: &Telemetry, body: &[u8], gzip: bool, encoding: Encoding) -> Result<(), Refusal> {
    let export = Export {
        telemetry,
        body,
        gzip,
        encoding,
    };
    match signal {
        Signal::Traces => export.keep(otlp::spans, |s| &s.service, Telemetry::add_spans),
        Signal::Logs => export.keep(otlp::log_records, |r| &r.service, Telemetry::add_logs),
        Signal::Metrics => export.keep(otlp::metric_points, |m| &m.service, Telemetry::add_metrics),
    }
}

/// One export's bytes, on their way to the store.
struct Export<'a> {
    telemetry: &'a Telemetry,
    body: &'a [u8],
    gzip: bool,
    encoding: Encoding,
}

impl Export<'_> {
    /// Decodes the export as `M`, and keeps its `items` unless their service
    /// ([`Telemetry::admit`]) sends too fast.
    fn keep<M, T>(
        self,
        items: fn(M) -> Vec<T>,
        service: fn(&T) -> &String,
        add: fn(&Telemetry, Vec<T>),
    ) -> Result<(), Refusal>
    where
        M: prost::Message + Default + serde::de::DeserializeOwned,
    {
        let (request, size): (M, usize) =
            otlp::decode(self.body, self.gzip, self.encoding).map_err(|e: DecodeError| Refusal::Bad(e.to_string()))?;
        let items = items(request);
        let service = items.first().map_or("", |item| service(item).as_str());
        if !self.telemetry.admit(service, size) {
            return Err(Refusal::Slow);
        }
        add(self.telemetry, items);
        Ok(())
    }
}

/// The one message of a unary gRPC request: its bytes, and whether they
/// are compressed (gzip, the one encoding OTLP exporters use).
fn grpc_message(body: &[u8], headers: &HeaderMap) -> Result<(Vec<u8>, bool), Refusal> {
    let bad = |why: &str| Refusal::Bad(format!("the gRPC message {why}"));
    let (&[flag, a, b, c, d], rest) = body.split_first_chunk::<5>().ok_or_else(|| bad("has no frame"))?;
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    let message = rest
        .get(..length)
        .ok_or_else(|| bad("is shorter than its frame says"))?;
    let compressed = flag == 1;
    if compressed && !header_is(headers, "grpc-encoding", "gzip") {
        return Err(bad("is compressed with an encoding other than gzip"));
    }
    Ok((message.to_vec(), compressed))
}

fn header_is(headers: &HeaderMap, name: impl header::AsHeaderName, value: &str) -> bool {
    headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
    })
}

fn refused(grpc: bool, refusal: Refusal) -> Answer {
    match (grpc, refusal) {
        // INVALID_ARGUMENT; RESOURCE_EXHAUSTED, which exporters retry.
        (true, Refusal::Bad(why)) => grpc_answer(3, &why),
        (true, Refusal::Slow) => grpc_answer(8, "devmesh: slow down: this service sends faster than devmesh keeps"),
        (false, Refusal::Bad(why)) => plain(StatusCode::BAD_REQUEST, &format!("devmesh OTLP endpoint: {why}\n")),
        (false, Refusal::Slow) => {
            let mut answer = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "devmesh OTLP endpoint: slow down: this service sends faster than devmesh keeps\n",
            );
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            answer
        }
    }
}

fn plain(status: StatusCode, message: &str) -> Answer {
    respond(status, "text/plain; charset=utf-8", Bytes::from(message.to_owned()))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Answer {
    let mut response = Response::new(OtlpBody {
        data: Some(body),
        trailers: None,
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// A unary gRPC answer: an empty message when `status` is OK, then the
/// status in trailers.
fn grpc_answer(status: u32, message: &str) -> Answer {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", header::HeaderValue::from(status));
    if let Ok(message) =
        header::HeaderValue::from_str(&message.replace(|c: char| !c.is_ascii_graphic() && c != ' ', "_"))
    {
        trailers.insert("grpc-message", message);
    }
    let data = (status == 0).then(|| Bytes::from_static(&[0, 0, 0, 0, 0]));
    let mut response = Response::new(OtlpBody {
        data,
        trailers: Some(trailers),
    });
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A body of at most one piece of data, then trailers.
#[derive(Debug)]
pub struct OtlpBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for OtlpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.data, &self.trailers) {
            (Some(data), None) => hyper::body::SizeHint::with_exact(data.len() as u64),
            (None, None) => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }
}
