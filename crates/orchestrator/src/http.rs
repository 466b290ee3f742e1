//! The main port's HTTP server: our own accept loop on hyper rather than
//! `axum::serve`, for three things it does not do:
//! - a connection must send its first byte and then finish its request
//!   headers, each within [`HEADER_READ_TIMEOUT`]: one that connects and says
//!   nothing, or dribbles its headers (slowloris), is dropped instead of
//!   holding a task for ever;
//! - HTTPS/WSS (`transport.websocket.tls`): each connection's TLS handshake
//!   runs in its own task, bounded in time, so a slow, silent or plain-text
//!   client holds up nobody else;
//! - connections are counted and capped while they have not yet sent a request.
//!
//! Each request carries its peer address as axum's `ConnectInfo`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// Request headers must be in by then (after the TLS handshake, if any).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still in their handshake at once; past it new connections
/// are closed at once (a flood of half-open connections costs a socket each
/// for a moment, not a task each for ever).
const MAX_HANDSHAKES: usize = 256;

/// Serves `app` on `listener` (over TLS when `tls` is set) until `stop`,
/// then lets open HTTP exchanges finish; upgraded connections (WebSocket
/// sessions) are the sessions' to end.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    // The protocol is known before the first byte (plain text: HTTP/1.1, as
    // browsers speak it; TLS: what ALPN agreed), so hyper never waits on a
    // silent client to guess it, a wait the header deadline does not cover.
    let http1 = Arc::new(builder.clone().http1_only());
    let http2 = Arc::new(builder.http2_only());
    let graceful = GracefulShutdown::new();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Audio frames are small writes 20 ms apart: without TCP_NODELAY, Nagle
        // holds each behind the previous one's (delayed) ACK for up to 40 ms.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app,
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let handshake = match &tls {
            None => None,
            Some(acceptor) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in flight; connection closed");
                    continue;
                };
                Some((acceptor.clone(), permit))
            }
        };
        let (watcher, http1, http2) = (graceful.watcher(), http1.clone(), http2.clone());
        tokio::spawn(async move {
            let (io, builder) = match handshake {
                None => (Either::Left(tcp), http1),
                Some((acceptor, permit)) => {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    drop(permit);
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    (Either::Right(stream), if h2 { http2 } else { http1 })
                }
            };
            let io = TokioIo::new(FirstByte::new(io));
            let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection that must send its first byte within [`HEADER_READ_TIMEOUT`]
/// (hyper's header deadline starts only at the first byte): a read still
/// waiting then fails with `TimedOut`, which ends the connection.
struct FirstByte<T> {
    inner: T,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstByte<T> {
    fn new(inner: T) -> Self {
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT))) }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstByte<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() && buf.filled().len() > before {
            self.deadline = None;
        } else if let (true, Some(deadline)) = (polled.is_pending(), self.deadline.as_mut())
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstByte<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
