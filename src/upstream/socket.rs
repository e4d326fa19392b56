//! The TCP socket of one backend connection, shared between hyper, which does the connection's
//! IO through a [`BackendIo`], and the pool, which looks at the socket itself before it reuses
//! an idle connection ([`Socket::reuse`]) and after a failed exchange
//! ([`Socket::received_any`]).
//!
//! Looking at the kernel's socket rather than at what hyper's connection has seen makes the check
//! independent of when, or whether, hyper's side is polled: a backend's close is known as soon as
//! its FIN has arrived.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A connected TCP stream to a backend, with what the pool needs to know about it.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    /// Whether any byte came from the backend since [`Socket::reuse`].
    received: AtomicBool,
}

impl Socket {
    /// Wraps a connected `stream`; returns the socket for the pool and the IO for hyper.
    pub fn new(stream: TcpStream) -> (Arc<Socket>, BackendIo) {
        let socket = Arc::new(Socket {
            stream,
            received: AtomicBool::new(false),
        });
        let io = BackendIo(Arc::clone(&socket));
        (socket, io)
    }

    /// Readies an idle connection for another request: returns whether it can take one, that is
    /// whether the backend has neither closed it (FIN or RST) nor sent anything unasked; and
    /// [`Socket::received_any`] counts from now.
    ///
    /// One `recv(MSG_PEEK)` of one byte on the socket, which tokio made non-blocking, so it is a
    /// `MSG_DONTWAIT` peek: no data yet (would block) means open; end of stream, an error or an
    /// unexpected byte means the connection is of no further use. It registers no waker, so it
    /// takes no read readiness from hyper's connection task.
    pub fn reuse(&self) -> bool {
        self.received.store(false, Ordering::Relaxed);
        let mut byte = [MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(&self.stream).peek(&mut byte) {
            Err(error) => error.kind() == io::ErrorKind::WouldBlock,
            Ok(_end_or_unexpected) => false,
        }
    }

    /// Whether the backend sent any byte since [`Socket::reuse`]: after a failed exchange on a
    /// reused connection, `false` means it ended before any byte of a response.
    pub fn received_any(&self) -> bool {
        self.received.load(Ordering::Relaxed)
    }
}

/// hyper's IO for a backend connection (through `hyper_util::rt::TokioIo`): reads and writes
/// a shared [`Socket`] with tokio's `&self` calls (`poll_read_ready` then `try_read_buf`, and the
/// same for writes), as `TcpStream`'s own `AsyncRead` / `AsyncWrite` do, its short-read
/// readiness clearing included. Only the task that drives hyper's connection polls it, so the
/// socket's wakers stay that task's.
#[derive(Debug)]
pub struct BackendIo(Arc<Socket>);

impl AsyncRead for BackendIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &*self.0;
        loop {
            ready!(socket.stream.poll_read_ready(cx))?;
            let room = buf.remaining();
            let mut short = None;
            // A read shorter than the room drained the socket: its readiness is cleared (with
            // the readiness seen before the read, so nothing that arrived since is lost), as
            // tokio's own `TcpStream` reads do on epoll, and the next read waits for epoll
            // rather than making a `recv` that would block.
            let read = match socket.stream.try_io(Interest::READABLE, || {
                let read = socket.stream.try_read_buf(buf)?;
                if 0 < read && read < room {
                    short = Some(read);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(read)
            }) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => match short {
                    Some(read) => read,
                    None => continue,
                },
                Err(error) => return Poll::Ready(Err(error)),
            };
            if read > 0 {
                // The channel that carries hyper's result to the request orders this store
                // before the pool's load.
                socket.received.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP keeps no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // As `TcpStream::poll_shutdown`: send FIN; the descriptor closes when the last `Arc` goes.
        Poll::Ready(socket2::SockRef::from(&self.0.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Arc<Socket>, BackendIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ours, theirs) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (socket, io) = Socket::new(ours.unwrap());
        (socket, io, theirs.unwrap().0)
    }

    #[tokio::test]
    async fn an_idle_connection_is_open_until_the_peer_closes_or_speaks() {
        let (socket, _io, mut peer) = pair().await;
        assert!(socket.reuse(), "a fresh connection looks closed");
        peer.shutdown().await.unwrap();
        drop(peer);
        assert!(!socket.reuse(), "the peer's FIN went unnoticed");

        let (socket, _io, mut peer) = pair().await;
        peer.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        assert!(!socket.reuse(), "unasked bytes went unnoticed");
    }

    #[tokio::test]
    async fn reads_and_writes_go_through_and_count_as_received() {
        let (socket, mut io, mut peer) = pair().await;
        assert!(socket.reuse());
        io.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(!socket.received_any(), "a write counted as received");
        peer.write_all(b"pong").await.unwrap();
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        assert!(socket.received_any());
        // Bytes already read leave the connection quiet, and the count starts afresh.
        assert!(socket.reuse());
        assert!(!socket.received_any());
        io.shutdown().await.unwrap();
        assert_eq!(
            peer.read(&mut got).await.unwrap(),
            0,
            "no FIN after shutdown"
        );
    }

    #[tokio::test]
    async fn a_short_read_leaves_the_socket_waiting_for_more_and_misses_none() {
        let (_socket, mut io, mut peer) = pair().await;
        peer.write_all(b"first").await.unwrap();
        let mut got = [0; 64];
        assert_eq!(io.read(&mut got).await.unwrap(), 5);
        // The short read cleared readiness: the next read waits, and bytes sent later, then the
        // FIN, still reach it.
        let reader = tokio::spawn(async move {
            let mut rest = Vec::new();
            io.read_to_end(&mut rest).await.unwrap();
            rest
        });
        peer.write_all(b"second").await.unwrap();
        drop(peer);
        assert_eq!(reader.await.unwrap(), b"second");
    }
}
