//! A tiny HTTP/1.1 server for `GET /metrics` (everything else is 404). Bounded before anything
//! else (H6): the shared connection cap, one request per connection (no keep-alive), headers
//! within 5 s and 8 KiB, and every connection closed at the first-request timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Metrics;
use super::text;
use crate::listen::{Listener, Watch};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A scraper sends its request at once; a client that does not is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's smallest read buffer: request headers beyond it are refused.
const MAX_BUF: usize = 8192;

/// Serves until the task is aborted; `before_scrape` refreshes gauges owned elsewhere.
pub async fn serve(
    listener: Listener,
    metrics: Arc<Metrics>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
) {
    loop {
        let conn = listener.accept().await;
        let stream = conn.slot.guard(conn.stream, Watch::Lifetime);
        let metrics = metrics.clone();
        let before = before_scrape.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let before = before.clone();
                async move {
                    let resp =
                        if req.uri().path() == "/metrics" && req.method() == http::Method::GET {
                            before();
                            let om = text::wants_openmetrics(
                                req.headers()
                                    .get(http::header::ACCEPT)
                                    .and_then(|v| v.to_str().ok()),
                            );
                            let body = metrics.encode();
                            let (ctype, body) = if om {
                                (OPENMETRICS, body)
                            } else {
                                (PROMETHEUS_TEXT, text::to_prometheus(&body))
                            };
                            http::Response::builder()
                                .header(http::header::CONTENT_TYPE, ctype)
                                .body(Full::new(Bytes::from(body)))
                        } else {
                            http::Response::builder()
                                .status(http::StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found\n")))
                        };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
