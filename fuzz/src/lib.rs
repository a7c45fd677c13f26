//! What the request-path targets share: a skiff [`Proxy`] running in this
//! process on loopback, in front of a recording upstream that reads what
//! skiff forwards with its own strict parser.
//!
//! Each input is sent on a fresh connection from its own loopback address
//! (127.x.y.z), which skiff passes on in `x-forwarded-for`; the upstream
//! counts requests by that address, so a request that reaches it late is
//! still charged to the input that sent it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use skiff::Proxy;
use skiff_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;

/// How long skiff may take to finish with an input once it is all sent.
/// Far above what any input needs; past it the input hangs skiff.
const FINISH: Duration = Duration::from_secs(10);
/// Inputs whose upstream counts are still checked for late arrivals.
const REMEMBERED: usize = 256;

/// The running proxy, its upstream's records, and the runtime they run on.
pub struct Harness {
    pub runtime: Runtime,
    pub proxy: Proxy,
    pub listener: SocketAddr,
    pub records: Arc<Records>,
    next_client: AtomicU32,
}

/// What the upstream saw.
#[derive(Default)]
pub struct Records {
    /// Requests by the client address in `x-forwarded-for`.
    by_client: Mutex<HashMap<IpAddr, u64>>,
    /// What the upstream could not read unambiguously.
    violations: Mutex<Vec<(Option<IpAddr>, String)>>,
    /// (client address, most requests it may cause, its input), newest last.
    expected: Mutex<VecDeque<(IpAddr, u64, Vec<u8>)>>,
}

impl Records {
    fn violation(&self, client: Option<IpAddr>, what: String) {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((client, what));
    }

    /// The input a client address sent, saved to a file when it is not the
    /// one running now (its request reached the upstream late), so the
    /// panic names the input that caused it.
    fn input_of(&self, client: IpAddr) -> String {
        let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        let newest = expected.back().map(|(ip, _, _)| *ip);
        match expected.iter().find(|(ip, _, _)| *ip == client) {
            Some(_) if newest == Some(client) => "this input".into(),
            Some((_, _, data)) => {
                let path = format!("late-input-{client}");
                match std::fs::write(&path, data) {
                    Ok(()) => format!("an earlier input, saved as {path}"),
                    Err(e) => format!("an earlier input ({e} saving it)"),
                }
            }
            None => format!("an input from {client}, no longer remembered"),
        }
    }

    fn count(&self, client: IpAddr) {
        *self
            .by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(client)
            .or_default() += 1;
    }

    /// Panics with what went wrong, if anything did, for any input still
    /// remembered.
    fn check(&self) {
        let violations =
            std::mem::take(&mut *self.violations.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some((client, what)) = violations.first() {
            let from = client.map_or("an unknown input".into(), |c| self.input_of(c));
            panic!("the upstream got an ambiguous request from {from}: {what}");
        }
        let over: Option<(IpAddr, u64, u64)> = {
            let counts = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
            let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
            expected.iter().find_map(|(client, most, _)| {
                let got = counts.get(client).copied().unwrap_or(0);
                (got > *most).then_some((*client, got, *most))
            })
        };
        if let Some((client, got, most)) = over {
            panic!(
                "the upstream saw {got} requests from {}, which sent at most {most}",
                self.input_of(client)
            );
        }
    }
}

/// The proxy in front of the recording upstream, started once per process.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let records = Arc::new(Records::default());
        let (proxy, listener) = runtime.block_on(async {
            let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind the upstream");
            let address = upstream.local_addr().expect("upstream address");
            tokio::spawn(upstream_accept(upstream, records.clone()));
            // No retries, no outlier detection: each request is sent once,
            // whatever the upstream does.
            let text = format!(
                "admin: {{ listen: 127.0.0.1:0 }}\n\
                 listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
                 clusters:\n  - name: app\n    endpoints: [{address}]\n    retries: {{ attempts: 0 }}\n    \
                 outlier_detection: {{ consecutive_failures: 0 }}\n    timeouts: {{ request: 5s }}\n"
            );
            let config = Config::parse(&text, "fuzz.yaml", std::path::Path::new("."))
                .unwrap_or_else(|e| panic!("the harness config is invalid: {e}"));
            let proxy = Proxy::start(config, None).await.expect("skiff starts");
            let listener = proxy.listener_address("web").expect("the listener");
            (proxy, listener)
        });
        Harness {
            runtime,
            proxy,
            listener,
            records,
            next_client: AtomicU32::new(0),
        }
    })
}

impl Harness {
    /// Sends `data` on a new connection, closes the sending side, reads
    /// what skiff answers until it closes, and checks the upstream's
    /// records. `most` is how many requests `data` may cause upstream.
    pub fn run(&self, data: &[u8], most: u64) -> Vec<u8> {
        let n = self.next_client.fetch_add(1, Relaxed);
        // 127.1.0.0 and up: never 127.0.0.1, which other tests use.
        let client = Ipv4Addr::new(127, 1 + ((n >> 16) % 250) as u8, (n >> 8) as u8, n as u8);
        {
            let mut expected = self
                .records
                .expected
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            expected.push_back((IpAddr::V4(client), most, data.to_vec()));
            if expected.len() > REMEMBERED {
                if let Some((old, _, _)) = expected.pop_front() {
                    self.records
                        .by_client
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&old);
                }
            }
        }
        let answer = self.runtime.block_on(async {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(IpAddr::V4(client), 0))
                .expect("bind a loopback client address");
            let stream = socket
                .connect(self.listener)
                .await
                .expect("connect to skiff");
            let answer = tokio::time::timeout(FINISH, exchange(stream, data)).await;
            let answer = answer.unwrap_or_else(|_| {
                panic!("skiff kept the connection open {FINISH:?} after the input ended")
            });
            // Requests end (and so reach the upstream or fail) before the
            // cluster's in-flight count is back at zero.
            let deadline = Instant::now() + FINISH;
            while self
                .proxy
                .clusters()
                .iter()
                .map(|c| c.in_flight())
                .sum::<u64>()
                > 0
            {
                assert!(Instant::now() < deadline, "a request stayed in flight");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            answer
        });
        self.records.check();
        answer
    }
}

async fn exchange(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.into_split();
    let data = data.to_vec();
    // Written while reading, so a large answer cannot block the input.
    let writer = tokio::spawn(async move {
        // skiff may close early (a refused request): errors are expected.
        let _ = write.write_all(&data).await;
        let _ = write.shutdown().await;
        write
    });
    let mut answer = Vec::new();
    let _ = read.read_to_end(&mut answer).await;
    let _ = writer.await;
    answer
}

async fn upstream_accept(listener: TcpListener, records: Arc<Records>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(upstream_connection(stream, records.clone()));
        }
    }
}

/// Reads requests off one connection from skiff and answers each with
/// `200 ok`, counting them by client. Anything that a strict server could
/// read another way is a violation.
async fn upstream_connection(mut stream: TcpStream, records: Arc<Records>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match read_request(&buf) {
            Parse::Partial => {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Parse::Bad(why) => {
                let client = forwarded_for(&buf);
                records.violation(
                    client,
                    format!("{why}: {:?}", String::from_utf8_lossy(&buf)),
                );
                return;
            }
            Parse::Request { len, client, head } => {
                if let Some(client) = client {
                    records.count(client);
                }
                buf.drain(..len);
                let answer: &[u8] = if head {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    }
}

enum Parse {
    Partial,
    Bad(String),
    Request {
        len: usize,
        client: Option<IpAddr>,
        head: bool,
    },
}

/// One whole request at the start of `buf`, read by RFC 9112's rules and
/// refusing anything two servers could read differently.
fn read_request(buf: &[u8]) -> Parse {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(e) => return Parse::Bad(format!("unparseable head ({e})")),
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut client = None;
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Parse::Bad("two content-length fields".into());
            }
            match std::str::from_utf8(f.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            {
                Some(v) => match v.parse() {
                    Ok(n) => length = Some(n),
                    Err(_) => return Parse::Bad("content-length overflows".into()),
                },
                None => return Parse::Bad("content-length is not a number".into()),
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !f.value.eq_ignore_ascii_case(b"chunked") {
                return Parse::Bad("transfer-encoding other than one chunked".into());
            }
            chunked = true;
        } else if f.name.eq_ignore_ascii_case("x-forwarded-for") {
            // The last hop is skiff's peer: the fuzz client.
            client = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse().ok());
        }
    }
    if chunked && length.is_some() {
        return Parse::Bad("content-length with transfer-encoding".into());
    }
    let head = req.method == Some("HEAD");
    let body_len = if chunked {
        match chunked_len(&buf[head_len..]) {
            Ok(Some(n)) => n,
            Ok(None) => return Parse::Partial,
            Err(why) => return Parse::Bad(why.into()),
        }
    } else {
        match usize::try_from(length.unwrap_or(0)) {
            Ok(n) if buf.len() - head_len >= n => n,
            Ok(_) => return Parse::Partial,
            Err(_) => return Parse::Bad("content-length too large".into()),
        }
    };
    Parse::Request {
        len: head_len + body_len,
        client,
        head,
    }
}

/// The length of a whole chunked body at the start of `buf`, trailers
/// included; `Ok(None)` when more bytes are needed.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = &buf[at..at + line_end];
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or("bad chunk size line")?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF");
        }
        at += size + 2;
    }
}

/// The client address in the `x-forwarded-for` field of a head that may
/// not parse.
fn forwarded_for(buf: &[u8]) -> Option<IpAddr> {
    let text = String::from_utf8_lossy(buf).to_ascii_lowercase();
    let at = text.find("\nx-forwarded-for:")? + "\nx-forwarded-for:".len();
    let line = text[at..].split(['\r', '\n']).next()?;
    line.rsplit(',').next()?.trim().parse().ok()
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
