//! The raw client: requests written byte for byte (the ones no HTTP client library would
//! send), responses read back and parsed with httparse.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// How long [`RawConn::answer`] waits for the answers it wants (or for the close).
pub const ANSWER_BOUND: Duration = Duration::from_secs(3);

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The minor version of the status line: 1 for `HTTP/1.1`.
    pub version: u8,
    /// The status code.
    pub status: u16,
    /// The fields in order, names lower-cased, values as text (invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of the first field called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The values of every field called `name` (lower case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The backend that answered (`x-backend`), "" for stickyd's own responses.
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }

    /// The version and the code, as the status line starts: `HTTP/1.1 200`.
    pub fn status_line(&self) -> String {
        format!("HTTP/1.{} {}", self.version, self.status)
    }
}

/// Everything one exchange produced.
#[derive(Debug, Default)]
pub struct Answer {
    /// The complete responses, in order.
    pub replies: Vec<Reply>,
    /// The proxy closed the connection (EOF or reset) while the client read.
    pub closed: bool,
    /// The close was a reset (a read error), not an end of stream.
    pub reset: bool,
    /// Why the bytes after the last response are no response (httparse's error and the
    /// first bytes), if they are not the start of one.
    pub garbage: Option<String>,
    /// The bytes after the last complete response.
    pub trailing: Vec<u8>,
}

impl Answer {
    /// The first response.
    pub fn first(&self) -> Option<&Reply> {
        self.replies.first()
    }

    /// The status line of the first response ([`Reply::status_line`]).
    pub fn status_line(&self) -> Option<String> {
        self.first().map(Reply::status_line)
    }

    /// The status of every response, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.replies.iter().map(|reply| reply.status).collect()
    }

    /// For a report line: "400 +close", "200(b1),200(b1) open", "no response +close"...
    pub fn summary(&self) -> String {
        let mut text = if self.replies.is_empty() {
            "no response".to_string()
        } else {
            self.replies
                .iter()
                .map(|reply| match reply.backend() {
                    "" => reply.status.to_string(),
                    backend => format!("{}({backend})", reply.status),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        text.push_str(if self.closed { " +close" } else { " open" });
        if let Some(garbage) = &self.garbage {
            text.push_str(&format!(" +garbage {garbage}"));
        } else if !self.trailing.is_empty() {
            text.push_str(&format!(
                " +{} unparsed bytes {:?}",
                self.trailing.len(),
                String::from_utf8_lossy(&self.trailing[..self.trailing.len().min(40)])
            ));
        }
        text
    }
}

/// What the start of a buffer holds.
pub enum Parsed {
    /// A complete response and the bytes it took.
    Reply(Reply, usize),
    /// The start of a response: more bytes are needed.
    Partial,
    /// No response: httparse's error and the first bytes.
    Garbage(String),
}

/// Parses one response at the start of `buffer` with httparse; `eof` says no more bytes will
/// come (a response framed by the close takes the rest). 1xx, 204 and 304 responses have no
/// body (RFC 9112 §6.3); this client sends no HEAD request.
pub fn parse_reply(buffer: &[u8], eof: bool) -> Parsed {
    let garbage = |what: String| {
        Parsed::Garbage(format!(
            "{what}: {:?}",
            String::from_utf8_lossy(&buffer[..buffer.len().min(60)])
        ))
    };
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    let head = match response.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(error) => return garbage(error.to_string()),
    };
    let status = response.code.unwrap_or_default();
    let version = response.version.unwrap_or_default();
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|field| {
            (
                field.name.to_ascii_lowercase(),
                String::from_utf8_lossy(field.value).into_owned(),
            )
        })
        .collect();
    let field = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    };
    let rest = &buffer[head..];
    let (used, body) = if (100..200).contains(&status) || status == 204 || status == 304 {
        (0, Vec::new())
    } else if field("transfer-encoding")
        .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
    {
        match dechunk(rest) {
            Ok(Some(chunked)) => chunked,
            Ok(None) => return Parsed::Partial,
            Err(error) => return garbage(error),
        }
    } else if let Some(length) = field("content-length") {
        let Ok(length) = length.parse::<usize>() else {
            return garbage("invalid Content-Length".into());
        };
        if rest.len() < length {
            return Parsed::Partial;
        }
        (length, rest[..length].to_vec())
    } else if eof {
        (rest.len(), rest.to_vec())
    } else {
        return Parsed::Partial;
    };
    Parsed::Reply(
        Reply {
            version,
            status,
            headers,
            body,
        },
        head + used,
    )
}

/// The length and the data of the chunked body at the start of `rest` (httparse's chunk-size
/// and trailer parsers), `None` when incomplete.
fn dechunk(rest: &[u8]) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let (start, size) = match httparse::parse_chunk_size(&rest[at..]) {
            Ok(httparse::Status::Complete(chunk)) => chunk,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::InvalidChunkSize) => return Err("invalid chunk size".into()),
        };
        at += start;
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; 16];
            return match httparse::parse_headers(&rest[at..], &mut trailers) {
                Ok(httparse::Status::Complete((length, _))) => Ok(Some((at + length, body))),
                Ok(httparse::Status::Partial) => Ok(None),
                Err(error) => Err(format!("trailers: {error}")),
            };
        }
        let size = usize::try_from(size).map_err(|_| "a chunk over usize".to_string())?;
        if rest.len() < at + size + 2 {
            return Ok(None);
        }
        if &rest[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&rest[at..at + size]);
        at += size + 2;
    }
}

/// A client connection that writes raw bytes and reads responses, keeping what it read past
/// one for the next. Over TCP by default; any stream (TLS, a read half) for reading.
pub struct RawConn<S = TcpStream> {
    stream: S,
    /// Bytes read and not yet taken as a response.
    buffer: Vec<u8>,
    eof: bool,
    reset: bool,
}

impl RawConn {
    /// A connection to `addr`.
    pub async fn open(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect to stickyd");
        RawConn::over(stream)
    }

    /// A connection from the local address `source` (any 127.0.0.0/8 address is this host).
    pub async fn open_from(source: Ipv4Addr, addr: SocketAddr) -> RawConn {
        let socket = TcpSocket::new_v4().expect("an IPv4 socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .unwrap_or_else(|error| panic!("bind the client to {source}: {error}"));
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|error| panic!("connect from {source} to {addr}: {error}"));
        RawConn::over(stream)
    }
}

impl<S: AsyncRead + Unpin> RawConn<S> {
    /// A client on a connected `stream`.
    pub fn over(stream: S) -> RawConn<S> {
        RawConn {
            stream,
            buffer: Vec::new(),
            eof: false,
            reset: false,
        }
    }

    /// The stream, once every byte read has been taken as a response.
    pub fn into_inner(self) -> S {
        assert!(
            self.buffer.is_empty(),
            "{} bytes read and not taken",
            self.buffer.len()
        );
        self.stream
    }

    /// Reads more bytes, before `deadline` if there is one; false at EOF, on an error (a reset)
    /// or at the deadline.
    async fn read_more(&mut self, deadline: Option<Instant>) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16384];
        let read = match deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                    Ok(read) => read,
                    Err(_elapsed) => return false,
                }
            }
            None => self.stream.read(&mut chunk).await,
        };
        match read {
            Ok(0) => self.eof = true,
            Err(_) => (self.eof, self.reset) = (true, true),
            Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
        }
        !self.eof
    }

    /// Reads until `want` responses are complete, until the proxy closes, or for
    /// [`ANSWER_BOUND`]. With `linger`, it goes on reading after the `want` responses until the
    /// proxy closes, as long as bytes keep coming within `linger` (and [`ANSWER_BOUND`]).
    pub async fn answer(&mut self, want: usize, linger: Option<Duration>) -> Answer {
        self.read_answer(want, linger, Some(Instant::now() + ANSWER_BOUND))
            .await
    }

    /// Reads every response until the proxy closes, however long that takes (the test's own
    /// timeout bounds it).
    pub async fn answer_until_closed(&mut self) -> Answer {
        self.read_answer(usize::MAX, None, None).await
    }

    async fn read_answer(
        &mut self,
        want: usize,
        linger: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Answer {
        let mut answer = Answer::default();
        loop {
            match parse_reply(&self.buffer, self.eof) {
                Parsed::Reply(reply, used) => {
                    answer.replies.push(reply);
                    self.buffer.drain(..used);
                    continue;
                }
                Parsed::Garbage(garbage) => {
                    answer.garbage = Some(garbage);
                    break;
                }
                Parsed::Partial if self.eof => {
                    if !self.buffer.is_empty() {
                        answer.garbage = Some(format!(
                            "{} unparsed bytes {:?}",
                            self.buffer.len(),
                            String::from_utf8_lossy(&self.buffer[..self.buffer.len().min(60)])
                        ));
                    }
                    break;
                }
                Parsed::Partial => {}
            }
            let until = if answer.replies.len() >= want {
                let Some(linger) = linger else { break };
                let lingering = Instant::now() + linger;
                Some(deadline.map_or(lingering, |deadline| deadline.min(lingering)))
            } else {
                deadline
            };
            if !self.read_more(until).await && !self.eof {
                break;
            }
        }
        answer.closed = self.eof;
        answer.reset = self.reset;
        answer.trailing = self.buffer.clone();
        answer
    }

    /// The next whole response, however long it takes (the test's own timeout bounds it).
    /// Panics when the connection closes first or the bytes are no response.
    pub async fn response(&mut self) -> Reply {
        loop {
            match parse_reply(&self.buffer, self.eof) {
                Parsed::Reply(reply, used) => {
                    self.buffer.drain(..used);
                    return reply;
                }
                Parsed::Garbage(garbage) => panic!("no HTTP response: {garbage}"),
                Parsed::Partial if self.eof => panic!(
                    "closed before a whole response: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                ),
                Parsed::Partial => {
                    self.read_more(None).await;
                }
            }
        }
    }

    /// The code of the next status line, once its head is complete, or what happened instead,
    /// within [`ANSWER_BOUND`].
    pub async fn status(&mut self) -> Result<u16, String> {
        let deadline = Instant::now() + ANSWER_BOUND;
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut fields);
            match response.parse(&self.buffer) {
                Ok(httparse::Status::Complete(_)) => return Ok(response.code.unwrap_or_default()),
                Ok(httparse::Status::Partial) => {}
                Err(error) => {
                    return Err(format!(
                        "no HTTP response ({error}): {:?}",
                        String::from_utf8_lossy(&self.buffer[..self.buffer.len().min(60)])
                    ));
                }
            }
            if !self.read_more(Some(deadline)).await {
                return Err(if self.eof {
                    format!(
                        "closed after {} bytes and no status line",
                        self.buffer.len()
                    )
                } else {
                    format!("no status line within {ANSWER_BOUND:?}")
                });
            }
        }
    }

    /// Reads until the peer closes (EOF or reset); returns every byte not yet taken as a
    /// response and how long the close took from `since`.
    pub async fn until_closed(&mut self, since: std::time::Instant) -> (Vec<u8>, Duration) {
        while self.read_more(None).await {}
        (std::mem::take(&mut self.buffer), since.elapsed())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    /// Writes `bytes`. A proxy may answer and close before it read everything: where that is
    /// allowed, a failed write is no verdict and the caller ignores the error.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends `GET path` (HTTP/1.1, `Host: a`) and returns the response: see
    /// [`RawConn::response`].
    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("write the request");
        self.response().await
    }

    /// Sends `text` as one masked WebSocket text frame (RFC 6455 §5.2) and returns the text of
    /// the frame that comes back, within [`ANSWER_BOUND`].
    pub async fn websocket_echo(&mut self, text: &str) -> Result<String, String> {
        assert!(text.len() < 126, "one short frame");
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        // A closed tunnel shows as no frame coming back.
        let _ = self.send(&frame).await;
        let deadline = Instant::now() + ANSWER_BOUND;
        loop {
            if self.buffer.len() >= 2 {
                let length = usize::from(self.buffer[1] & 0x7f);
                if self.buffer[0] != 0x81 || self.buffer[1] & 0x80 != 0 || length >= 126 {
                    return Err(format!("not a short text frame: {:?}", self.buffer));
                }
                if self.buffer.len() >= 2 + length {
                    let echo = String::from_utf8_lossy(&self.buffer[2..2 + length]).into_owned();
                    self.buffer.drain(..2 + length);
                    return Ok(echo);
                }
            }
            if !self.read_more(Some(deadline)).await {
                return Err("no frame came back through the tunnel".into());
            }
        }
    }
}

/// Sends `bytes` in one write on a fresh connection to `addr` (a failed write is no verdict:
/// the proxy may answer and close before it read everything) and returns
/// [`RawConn::answer`]`(want, linger)`.
pub async fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    want: usize,
    linger: Option<Duration>,
) -> Answer {
    let mut conn = RawConn::open(addr).await;
    let _ = conn.send(bytes).await;
    conn.answer(want, linger).await
}
