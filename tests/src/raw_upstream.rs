//! An upstream that speaks HTTP/1.1 byte by byte: it records every request
//! skiff forwards, read with a strict parser of its own (so a request that
//! two servers could read differently is noted, not guessed at), and
//! answers in a chosen way, well-formed or not.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the upstream answers each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `200` with `content-length: 2` and `ok`.
    Ok,
    /// Bytes that are no HTTP response.
    Malformed,
    /// Says 2 bytes, sends 9, then keeps the connection open.
    Longer,
    /// Says 100 bytes, sends 2, then closes.
    Shorter,
    /// Says 100 bytes, sends 2, then resets the connection (RST).
    ResetMidBody,
    /// Answers well, then sends a second response nobody asked for on the
    /// now idle connection.
    Unprompted,
    /// Answers well as for keep-alive, then closes the connection (an
    /// upstream whose idle timeout is zero: every pooled connection skiff
    /// holds is dead by the time it is reused).
    OkThenClose,
    /// Answers as soon as it has a request's head, with the start of a
    /// chunked body it never ends, and reads (and drops) whatever comes.
    BeforeBody,
}

/// One request as the upstream read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The head as sent, lowercased names as skiff writes them.
    pub head: String,
    pub body: Vec<u8>,
}

/// A running [`Answer`]ing upstream on 127.0.0.1.
pub struct RawUpstream {
    pub address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// What the strict parser refused, with the bytes.
    violations: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicU64>,
    /// Responses sent that nobody asked for ([`Answer::Unprompted`]).
    pub unprompted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start(answer: Answer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let address = listener.local_addr().expect("upstream address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let unprompted = Arc::new(AtomicU64::new(0));
        let (r, v, c, u) = (
            received.clone(),
            violations.clone(),
            connections.clone(),
            unprompted.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Relaxed);
                tokio::spawn(serve(stream, answer, r.clone(), v.clone(), u.clone()));
            }
        });
        RawUpstream {
            address,
            received,
            violations,
            connections,
            unprompted,
            task,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().clone()
    }

    /// What the strict parser could not read one way only.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    answer: Answer,
    received: Arc<Mutex<Vec<Received>>>,
    violations: Arc<Mutex<Vec<String>>>,
    unprompted: Arc<AtomicU64>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    if answer == Answer::BeforeBody {
        answer_before_body(stream, received).await;
        return;
    }
    loop {
        let (len, request) = match read_request(&buf) {
            Parse::Partial => {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Parse::Bad(why) => {
                let text = String::from_utf8_lossy(&buf).into_owned();
                violations.lock().push(format!("{why}: {text:?}"));
                return;
            }
            Parse::Request { len, head, body } => (len, Received { head, body }),
        };
        buf.drain(..len);
        received.lock().push(request);
        let written = match answer {
            Answer::Ok => stream.write_all(OK).await,
            Answer::OkThenClose => {
                let _ = stream.write_all(OK).await;
                return;
            }
            Answer::Malformed => stream.write_all(b"HTTP/1.1 2OO NOT A STATUS\r\n\r\n").await,
            Answer::Longer => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokSMUGGLED")
                    .await
            }
            Answer::Shorter => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok")
                    .await;
                return;
            }
            Answer::ResetMidBody => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok")
                    .await;
                let _ = stream.flush().await;
                // Linger 0: close sends RST, not FIN.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                return;
            }
            // Served by `answer_before_body` instead.
            Answer::BeforeBody => return,
            Answer::Unprompted => {
                let first = stream.write_all(OK).await;
                // Likely after skiff has pooled the connection; if not, it
                // is a response longer than its length, as bad.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let second = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nUNASKED!")
                    .await;
                if second.is_ok() {
                    unprompted.fetch_add(1, Relaxed);
                }
                first
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// [`Answer::BeforeBody`]: records the head, answers, reads to the end.
async fn answer_before_body(mut stream: TcpStream, received: Arc<Mutex<Vec<Received>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    received.lock().push(Received {
        head,
        body: Vec::new(),
    });
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
    if stream.write_all(answer).await.is_err() {
        return;
    }
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

/// The well-formed answer.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

enum Parse {
    Partial,
    Bad(String),
    Request {
        len: usize,
        head: String,
        body: Vec<u8>,
    },
}

/// One whole request at the start of `buf`, by RFC 9112's rules, refusing
/// anything two servers could read differently.
fn read_request(buf: &[u8]) -> Parse {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(e) => return Parse::Bad(format!("unparseable head ({e})")),
    };
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Parse::Bad("two content-length fields".into());
            }
            let value = std::str::from_utf8(f.value).unwrap_or("");
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Parse::Bad("content-length is not one number".into());
            }
            match value.parse() {
                Ok(n) => length = Some(n),
                Err(_) => return Parse::Bad("content-length overflows".into()),
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !f.value.eq_ignore_ascii_case(b"chunked") {
                return Parse::Bad("transfer-encoding other than one chunked".into());
            }
            chunked = true;
        }
    }
    if chunked && length.is_some() {
        return Parse::Bad("content-length with transfer-encoding".into());
    }
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let rest = &buf[head_len..];
    let (body, used) = if chunked {
        match dechunk(rest) {
            Ok(Some(found)) => found,
            Ok(None) => return Parse::Partial,
            Err(why) => return Parse::Bad(why.into()),
        }
    } else {
        let n = length.unwrap_or(0);
        if rest.len() < n {
            return Parse::Partial;
        }
        (rest[..n].to_vec(), n)
    };
    Parse::Request {
        len: head_len + used,
        head,
        body,
    }
}

/// A whole chunked body at the start of `buf`: (data, bytes used).
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, &'static str> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let digits = buf[at..at + line_end]
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or("bad chunk size line")?;
        at += line_end + 2;
        if size == 0 {
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((data, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF");
        }
        data.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
