//! [`RawBackend`]: a backend that speaks raw bytes from a script, for what a hyper server
//! would never send (ambiguous framing, a 101 nobody asked for) or never do (close a
//! connection with a request unanswered).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One step of a [`RawBackend`]'s script, run on every connection in order; after the last
/// step the backend closes the connection.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Reads one request (its head, parsed with httparse, and a body of `Content-Length`
    /// bytes) and records it. The script ends here when the connection ends first.
    Read,
    /// Writes these bytes as they are.
    Write(&'static [u8]),
    /// Writes a 200 response with `x-backend: raw` and the body `raw` (no body after a HEAD).
    Answer,
    /// Records every further byte (see [`RawBackend::after`]) until the peer closes.
    Drain,
}

/// One request as a [`RawBackend`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// The method and the target; empty for a head that is no request.
    pub method: String,
    pub target: String,
    /// The head as text, request line and fields, up to and with its blank line.
    pub head: String,
    /// The body, as many bytes as `Content-Length` said.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line without its version: `GET /path`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A backend on 127.0.0.1:0 named `raw` that runs a script of [`Step`]s on every connection.
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    records: Records,
}

/// What a [`RawBackend`]'s connections record, shared with the test.
#[derive(Clone, Default)]
struct Records {
    /// Every request read, in order.
    requests: Arc<Mutex<Vec<RawRequest>>>,
    /// What [`Step::Drain`] read, and what arrived with a request after its end.
    after: watch::Sender<Vec<u8>>,
    /// Connections closed after the whole script.
    closed: watch::Sender<usize>,
}

impl RawBackend {
    /// Starts a backend that runs `script` on every connection.
    pub async fn spawn(script: &[Step]) -> RawBackend {
        RawBackend::start(script, false).await
    }

    /// [`RawBackend::spawn`], but it stops listening after its first connection, so that later
    /// connects are refused.
    pub async fn accepting_once(script: &[Step]) -> RawBackend {
        RawBackend::start(script, true).await
    }

    async fn start(script: &[Step], once: bool) -> RawBackend {
        let script: Arc<[Step]> = script.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = RawBackend {
            addr: listener.local_addr().unwrap(),
            records: Records::default(),
        };
        let records = backend.records.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            while let Some(accepting) = &listener {
                let Ok((stream, _)) = accepting.accept().await else {
                    continue;
                };
                if once {
                    listener = None;
                }
                let (script, records) = (Arc::clone(&script), records.clone());
                tokio::spawn(async move { run(stream, &script, &records).await });
            }
        });
        backend
    }

    /// Every request it read, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.records.requests.lock().unwrap().clone()
    }

    /// The bytes that came after the requests it read (what a tunnel carried), all connections
    /// together.
    pub fn after(&self) -> Vec<u8> {
        self.records.after.borrow().clone()
    }

    /// Waits until the bytes after the requests satisfy `until`.
    pub async fn wait_after(&self, until: impl FnMut(&Vec<u8>) -> bool) {
        self.records
            .after
            .subscribe()
            .wait_for(until)
            .await
            .expect("the backend holds the sender");
    }

    /// Waits until it has closed `count` connections after their whole script (after a
    /// [`Step::Drain`], once the peer closed): their FIN is sent.
    pub async fn wait_closed(&self, count: usize) {
        self.records
            .closed
            .subscribe()
            .wait_for(|&closed| closed >= count)
            .await
            .expect("the backend holds the sender");
    }

    /// Its `[[service.backend]]` table.
    pub fn toml(&self) -> String {
        format!(
            "[[service.backend]]\nname = \"raw\"\naddress = \"{}\"\n",
            self.addr
        )
    }
}

/// Runs `script` on one connection, then closes it and counts it in `records.closed`; a
/// [`Step::Read`] that meets the end of the connection ends the script there, uncounted.
async fn run(mut stream: TcpStream, script: &[Step], records: &Records) {
    let mut buffer = Vec::new();
    let mut head_request = false;
    for step in script {
        match step {
            Step::Read => {
                let Some(request) = read_request(&mut stream, &mut buffer, records).await else {
                    return;
                };
                head_request = request.method == "HEAD";
                records.requests.lock().unwrap().push(request);
            }
            Step::Write(bytes) => {
                let _ = stream.write_all(bytes).await;
            }
            Step::Answer => {
                let body = if head_request { "" } else { "raw" };
                let response =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-backend: raw\r\n\r\n{body}");
                let _ = stream.write_all(response.as_bytes()).await;
            }
            Step::Drain => {
                records
                    .after
                    .send_modify(|after| after.extend_from_slice(&buffer));
                buffer.clear();
                let mut chunk = [0u8; 4096];
                while let Ok(read @ 1..) = stream.read(&mut chunk).await {
                    records
                        .after
                        .send_modify(|after| after.extend_from_slice(&chunk[..read]));
                }
            }
        }
    }
    let _ = stream.shutdown().await;
    drop(stream);
    records.closed.send_modify(|closed| *closed += 1);
}

/// Reads one request from `stream` after the bytes in `buffer`: its head (httparse) and a body
/// of `Content-Length` bytes; leaves what follows in `buffer`. `None` when the connection ends
/// first; also when the head is no request, which is recorded as it came (the test still sees
/// what reached the backend).
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    records: &Records,
) -> Option<RawRequest> {
    let mut chunk = [0u8; 4096];
    let (head, length, method, target) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut fields);
        let length = |request: &httparse::Request| {
            let Some(field) = request
                .headers
                .iter()
                .find(|field| field.name.eq_ignore_ascii_case("content-length"))
            else {
                return Some(0);
            };
            std::str::from_utf8(field.value).ok()?.trim().parse().ok()
        };
        match request.parse(buffer) {
            Ok(httparse::Status::Complete(head)) => match length(&request) {
                Some(length) => {
                    let method = request.method.unwrap_or_default().to_string();
                    let target = request.path.unwrap_or_default().to_string();
                    break (head, length, method, target);
                }
                None => return unreadable(buffer, records),
            },
            Ok(httparse::Status::Partial) => {}
            Err(_) => return unreadable(buffer, records),
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    };
    while buffer.len() < head + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
    let request = RawRequest {
        method,
        target,
        head: String::from_utf8_lossy(&buffer[..head]).into_owned(),
        body: buffer[head..head + length].to_vec(),
    };
    buffer.drain(..head + length);
    Some(request)
}

/// Records the bytes of a head that is no request (up to its blank line) as a request without
/// a body; `None`, to end the script.
fn unreadable(buffer: &[u8], records: &Records) -> Option<RawRequest> {
    let end = buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map_or(buffer.len(), |end| end + 4);
    records.requests.lock().unwrap().push(RawRequest {
        method: String::new(),
        target: String::new(),
        head: String::from_utf8_lossy(&buffer[..end]).into_owned(),
        body: Vec::new(),
    });
    None
}
