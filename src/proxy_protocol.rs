//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2) that an L4
//! balancer in front of stickyd sends at the start of each connection to name the real
//! client. Parsing is the `ppp` crate's; this module reads the header off the socket and
//! hands the bytes read past it back to the HTTP server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest header accepted: a v2 header with 64 KiB of TLVs.
pub const MAX_HEADER_BYTES: usize = 16 + 65_535;

/// Why a connection's PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection ended or failed before a complete header.
    #[error("connection ended before a complete PROXY header: {0}")]
    Io(#[from] io::Error),
    /// No complete header within the listener's `handshake_timeout`.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The bytes are not a PROXY v1 or v2 header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads the PROXY header at the start of `stream`, within `timeout` (the listener's
/// `handshake_timeout`). Returns the client address it names (`None` for `UNKNOWN`, `LOCAL`
/// health checks and non-IP families, where the peer address stands) and the bytes read past
/// the header, which belong to the HTTP request (or the TLS handshake).
///
/// # Errors
/// [`ProxyHeaderError`] when the header is missing, malformed, incomplete or too slow.
pub async fn read(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Bytes), ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

async fn read_header(
    stream: &mut TcpStream,
) -> Result<(Option<SocketAddr>, Bytes), ProxyHeaderError> {
    let mut buffer = BytesMut::with_capacity(256);
    loop {
        if stream.read_buf(&mut buffer).await? == 0 {
            return Err(ProxyHeaderError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let parsed = HeaderResult::parse(&buffer);
        if parsed.is_incomplete() && buffer.len() < MAX_HEADER_BYTES {
            continue;
        }
        let (length, source) = match parsed {
            HeaderResult::V1(Ok(header)) => (header.header.len(), v1_source(&header.addresses)),
            HeaderResult::V2(Ok(header)) => (header.len(), v2_source(&header)),
            HeaderResult::V1(Err(error)) => {
                return Err(ProxyHeaderError::Malformed(format!("{error:?}")));
            }
            HeaderResult::V2(Err(error)) => {
                return Err(ProxyHeaderError::Malformed(format!("{error:?}")));
            }
        };
        buffer.advance(length);
        return Ok((source, buffer.freeze()));
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Tcp6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v2::Addresses::IPv6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// A stream that first yields bytes already read from it (past a PROXY header), then reads on.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` to be read first.
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }

    /// Whether bytes are waiting in the prefix (the stream is readable without the socket).
    pub fn buffered(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The unread prefix and the stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, out);
        }
        let count = self.prefix.len().min(out.remaining());
        out.put_slice(&self.prefix.split_to(count));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Sends `bytes` over a loopback connection and reads the PROXY header on the other end.
    async fn received(bytes: Vec<u8>) -> Result<(Option<SocketAddr>, Bytes), ProxyHeaderError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(&bytes).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let result = read(&mut stream, Duration::from_secs(5)).await;
        sender.await.unwrap();
        result
    }

    #[tokio::test]
    async fn a_v1_header_names_the_client_and_leaves_the_request() {
        let bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 80\r\nGET / HTTP/1.1\r\n".to_vec();
        let (source, rest) = received(bytes).await.unwrap();
        assert_eq!(source, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_local_names_none() {
        let addresses = v2::IPv6::new(
            "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap(),
            "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
            4711,
            443,
        );
        let proxied = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap();
        let (source, rest) = received([proxied, b"GET".to_vec()].concat()).await.unwrap();
        assert_eq!(source, Some("[2001:db8::7]:4711".parse().unwrap()));
        assert_eq!(rest, "GET");
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(received(local).await.unwrap().0, None);
    }

    #[tokio::test]
    async fn missing_garbled_or_cut_headers_are_refused() {
        assert!(matches!(
            received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            received(b"PROXY TCP4 999.0.0.1 192.0.2.1 1 2\r\n".to_vec()).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            received(b"PROXY TCP4 203.0.113.7".to_vec()).await,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}
