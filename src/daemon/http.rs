//! Serving the HTTP API with the limits a server facing untrusted clients
//! needs, so that slow or idle connections cannot exhaust file descriptors:
//!
//! - a request head must arrive within [`HEADER_TIMEOUT`] of the
//!   connection being ready for it (this also closes idle keep-alive
//!   connections);
//! - a request, body included, must be answered within [`REQUEST_TIMEOUT`]
//!   (408 otherwise);
//! - a response write may stay blocked for at most [`WRITE_STALL_TIMEOUT`]
//!   (a client that stops reading is dropped);
//! - at most [`MAX_CONNECTIONS`] connections are served at once; more wait
//!   in the kernel's accept queue.
//!
//! (`axum::serve` offers none of these; hyper's own HTTP/1 connection
//! builder has the header timeout.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// Time allowed for a request head, idle time between requests included.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for reading a request's body and answering it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a response write may make no progress before the connection is
/// dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long open connections may finish their responses at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// open connections finish (briefly) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(answer_in_time));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closed = closed.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection =
                builder.serve_connection(TokioIo::new(WriteStallLimit::new(stream)), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = closed.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = closing.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// A request (its body read included) answered in time, or 408.
async fn answer_in_time(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            serde_json::json!({
                "type": "about:blank",
                "title": "Request Timeout",
                "status": 408,
                "detail": format!("the request was not completed within {REQUEST_TIMEOUT:?}"),
            })
            .to_string(),
        )
            .into_response(),
    }
}

/// A stream whose writes fail with `TimedOut` once they have been blocked
/// for [`WRITE_STALL_TIMEOUT`]: hyper has no write timeout of its own.
struct WriteStallLimit<S> {
    inner: S,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStallLimit<S> {
    fn new(inner: S) -> Self {
        WriteStallLimit {
            inner,
            stalled: None,
        }
    }

    /// What to answer for a write that made `progress` (or did not).
    fn judge<T>(&mut self, cx: &mut Context<'_>, progress: Poll<T>) -> Poll<std::io::Result<T>> {
        match progress {
            Poll::Ready(done) => {
                self.stalled = None;
                Poll::Ready(Ok(done))
            }
            Poll::Pending => {
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStallLimit<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStallLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let progress = Pin::new(&mut self.inner).poll_write(cx, buf);
        flatten(self.judge(cx, progress))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let progress = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        flatten(self.judge(cx, progress))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let progress = Pin::new(&mut self.inner).poll_flush(cx);
        flatten(self.judge(cx, progress))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let progress = Pin::new(&mut self.inner).poll_shutdown(cx);
        flatten(self.judge(cx, progress))
    }
}

fn flatten<T>(poll: Poll<std::io::Result<std::io::Result<T>>>) -> Poll<std::io::Result<T>> {
    poll.map(|result| result.and_then(|inner| inner))
}
