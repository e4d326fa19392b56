//! The bytes of an upgraded connection (WebSocket), copied both ways between client and backend.
//!
//! Each direction reads into a per-thread scratch buffer and writes straight on; only when the
//! other side cannot take everything does the rest move into a buffer of the tunnel's own,
//! held until it is written. So an idle tunnel holds no buffer, where
//! `tokio::io::copy_bidirectional` holds two for the tunnel's whole life. Reading from a side
//! stops while its bytes wait to be written: the slow side slows the fast one, as TCP does.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes read per poll.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// Borrowed only within one poll, never across an await.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// One direction of the tunnel.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written, and how many of them are written.
    pending: Option<(Box<[u8]>, usize)>,
    /// The reading side closed: the writing side gets a shutdown.
    eof: bool,
    /// The writing side was shut down: this direction is over.
    done: bool,
    /// Something was written since the last flush.
    unflushed: bool,
}

impl Direction {
    /// Moves bytes from `from` to `to` until neither can make progress; `moved` says whether
    /// any byte crossed. Ready once `from` has ended and `to` is shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some((bytes, written)) = &mut self.pending {
                let count = ready!(to.as_mut().poll_write(cx, &bytes[*written..]))?;
                if count == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *moved = true;
                self.unflushed = true;
                *written += count;
                if *written == bytes.len() {
                    self.pending = None;
                }
                continue;
            }
            if self.unflushed {
                ready!(to.as_mut().poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                ready!(to.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buffer = ReadBuf::new(&mut scratch[..]);
                ready!(from.as_mut().poll_read(cx, &mut buffer))?;
                let read = buffer.filled();
                if read.is_empty() {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                *moved = true;
                let written = match to.as_mut().poll_write(cx, read) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(count)) => count,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => 0,
                };
                self.unflushed |= written > 0;
                if written < read.len() {
                    self.pending = Some((read[written..].into(), 0));
                }
                Poll::Ready(Ok(()))
            });
            ready!(step)?;
        }
    }
}

/// Copies bytes between `client` and `backend` until both directions have ended, one side
/// fails, `idle` passes without a byte in either direction (HAProxy `timeout tunnel`), or
/// `kill` is cancelled.
///
/// # Errors
/// The first I/O error of either side, or `TimedOut` after `idle`.
pub async fn run<A, B>(
    mut client: A,
    mut backend: B,
    idle: Duration,
    kill: &CancellationToken,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut upstream, mut downstream) = (Direction::default(), Direction::default());
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let copy = std::future::poll_fn(|cx| {
        let mut moved = false;
        let up = upstream.poll_copy(
            cx,
            Pin::new(&mut client),
            Pin::new(&mut backend),
            &mut moved,
        )?;
        let down = downstream.poll_copy(
            cx,
            Pin::new(&mut backend),
            Pin::new(&mut client),
            &mut moved,
        )?;
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(()));
        }
        if moved {
            timer.as_mut().reset(Instant::now() + idle);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no byte either way for {idle:?}"),
            )));
        }
        Poll::Pending
    });
    tokio::select! {
        () = kill.cancelled() => Ok(()),
        result = copy => result,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_close_ends_the_tunnel() {
        let (client, mut client_far) = duplex(64);
        let (backend, mut backend_far) = duplex(64);
        let kill = CancellationToken::new();
        let tunnel =
            tokio::spawn(async move { run(client, backend, Duration::from_secs(30), &kill).await });
        // More than the duplex capacity, so writes block and the pending buffer is used.
        let message = vec![7u8; 100_000];
        let sent = message.clone();
        let writer = tokio::spawn(async move {
            client_far.write_all(&sent).await.unwrap();
            client_far.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client_far.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = vec![0u8; message.len()];
        backend_far.read_exact(&mut received).await.unwrap();
        assert_eq!(received, message);
        let mut rest = Vec::new();
        backend_far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the client's close reached the backend");
        backend_far.write_all(b"bye").await.unwrap();
        backend_far.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        tunnel.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_idle_tunnel_times_out_and_traffic_keeps_it_open() {
        let (client, mut client_far) = duplex(64);
        let (backend, mut backend_far) = duplex(64);
        let kill = CancellationToken::new();
        let started = Instant::now();
        let tunnel =
            tokio::spawn(
                async move { run(client, backend, Duration::from_millis(300), &kill).await },
            );
        // Traffic every 100 ms for 600 ms keeps it open past its idle time.
        let mut byte = [0u8; 1];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client_far.write_all(b"x").await.unwrap();
            backend_far.read_exact(&mut byte).await.unwrap();
        }
        let error = tunnel.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(850));
    }
}
