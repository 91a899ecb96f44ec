//! Pre-authentication bounds of the agent's listeners (security review H6): a node-wide cap
//! on open connections shared by the gRPC and metrics ports (over the cap a connection is
//! closed at once), a cap on concurrent TLS handshakes, and a deadline by which a connection
//! must have started its first request (TLS handshake included) or be closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::settings::ConnSettings;

/// Limits shared by every listener of one server.
#[derive(Clone)]
pub struct ConnLimits {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    first_request: Duration,
}

impl ConnLimits {
    pub fn new(s: &ConnSettings) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(s.max_connections.max(1))),
            handshakes: Arc::new(Semaphore::new(s.max_tls_handshakes.max(1))),
            first_request: s.first_request_timeout,
        }
    }
}

/// A TCP listener that enforces [`ConnLimits`].
pub struct Listener {
    tcp: TcpListener,
    limits: ConnLimits,
    what: &'static str,
}

/// One accepted connection and its place under the connection cap.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: Slot,
}

/// Holds a connection's place under the cap and its first-request deadline.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
}

/// What ends a connection's first-request deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// The first HTTP/2 HEADERS frame (a request) from the client.
    H2Request,
    /// Nothing: the connection is closed at the deadline whatever it does (metrics: one
    /// short request per connection, keep-alive off).
    Lifetime,
}

impl Listener {
    pub fn new(tcp: TcpListener, limits: ConnLimits, what: &'static str) -> Self {
        Self { tcp, limits, what }
    }

    /// The next connection under the cap. Connections over the cap are closed at once;
    /// accept errors (EMFILE, ...) are logged and retried after a short pause.
    pub async fn accept(&self) -> Accepted {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(listener = self.what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.limits.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return Accepted {
                        stream,
                        peer,
                        slot: Slot {
                            _permit: permit,
                            deadline: Instant::now() + self.limits.first_request,
                        },
                    };
                }
                Err(_) => {
                    tracing::debug!(listener = self.what, %peer, "connection cap reached; closing");
                    drop(stream);
                }
            }
        }
    }

    /// A place under the concurrent TLS handshake cap; `None` when full (the caller closes
    /// the connection at once).
    pub fn handshake_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.limits.handshakes.clone().try_acquire_owned().ok()
    }

    /// Plaintext gRPC: every accepted connection, guarded until its first request.
    pub fn into_h2_incoming(self) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
        futures::stream::unfold(self, |l| async move {
            let a = l.accept().await;
            Some((Ok(a.slot.guard(a.stream, Watch::H2Request)), l))
        })
    }
}

impl Slot {
    /// Wraps the connection's (possibly TLS) stream; the deadline still runs from accept.
    pub fn guard<S>(self, inner: S, watch: Watch) -> Guarded<S> {
        Guarded {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(self.deadline))),
            h2: (watch == Watch::H2Request).then(H2Watch::default),
            _slot: self,
        }
    }
}

/// A stream that fails its reads and writes once the first-request deadline passed without a
/// request, so hyper closes the connection; afterwards it is a plain pass-through.
pub struct Guarded<S> {
    inner: S,
    deadline: Option<Pin<Box<Sleep>>>,
    h2: Option<H2Watch>,
    _slot: Slot,
}

impl<S> Guarded<S> {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(d) = &mut self.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the first-request timeout",
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(w)) = (&res, &mut this.h2)
            && w.feed(&buf.filled()[before..])
        {
            // A request started: from now on only HTTP/2 keep-alive and the cap apply.
            this.deadline = None;
            this.h2 = None;
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Transparent for tonic: request extensions carry the inner stream's connect info (peer
/// address, TLS peer certificates) exactly as without the guard.
impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0...`).
const H2_PREFACE_LEN: usize = 24;
const H2_FRAME_HEADER_LEN: usize = 9;
const H2_FRAME_HEADERS: u8 = 0x1;

/// Follows the HTTP/2 frame boundaries of the client's bytes until a HEADERS frame.
#[derive(Debug)]
struct H2Watch {
    preface_left: usize,
    header: [u8; H2_FRAME_HEADER_LEN],
    header_len: usize,
    skip: usize,
}

impl Default for H2Watch {
    fn default() -> Self {
        Self {
            preface_left: H2_PREFACE_LEN,
            header: [0; H2_FRAME_HEADER_LEN],
            header_len: 0,
            skip: 0,
        }
    }
}

impl H2Watch {
    /// Feeds the next bytes; `true` once a HEADERS frame header has been seen.
    fn feed(&mut self, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            if self.preface_left > 0 || self.skip > 0 {
                let left = if self.preface_left > 0 {
                    &mut self.preface_left
                } else {
                    &mut self.skip
                };
                let n = (*left).min(buf.len());
                *left -= n;
                buf = &buf[n..];
                continue;
            }
            let n = (H2_FRAME_HEADER_LEN - self.header_len).min(buf.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&buf[..n]);
            self.header_len += n;
            buf = &buf[n..];
            if self.header_len == H2_FRAME_HEADER_LEN {
                if self.header[3] == H2_FRAME_HEADERS {
                    return true;
                }
                let h = &self.header;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                self.header_len = 0;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([ty, 0, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn h2_watch_finds_the_first_headers_frame_across_reads() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, &[0; 12])); // SETTINGS
        bytes.extend(frame(0x8, &[0, 0, 0, 1])); // WINDOW_UPDATE
        // A SETTINGS payload holding the HEADERS type byte must not count.
        bytes.extend(frame(0x4, &[0, 1, 0, 0, 0, 1]));
        let settings_only = bytes.clone();
        bytes.extend(frame(H2_FRAME_HEADERS, &[0x82]));
        for chunk in [1, 2, 5, 9, 10, 1000] {
            let mut w = H2Watch::default();
            let seen = bytes.chunks(chunk).any(|c| w.feed(c));
            assert!(seen, "chunk {chunk}");
            let mut w = H2Watch::default();
            assert!(
                !settings_only.chunks(chunk).any(|c| w.feed(c)),
                "chunk {chunk}"
            );
        }
    }
}
