//! skiff's own HTTP/1.x server, spoken to byte by byte over raw TCP:
//! pipelining, chunked bodies, `Expect: 100-continue`, HTTP/1.0, framing
//! that could be read two ways, and clients that leave mid-request; and
//! skiff's own upstream client: connection reuse, bodies sent whole, and
//! upstreams that close pooled connections.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use skiff_tests::{start_proxy, wait_for, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn config(backend: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [{backend}]\n"
    )
}

/// Sends `raw` and reads until the server closes the connection.
async fn exchange(address: SocketAddr, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(raw).await.expect("write");
    read_to_close(&mut conn).await
}

async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, conn.read_to_end(&mut out))
        .await
        .expect("server closed the connection in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `marker` has arrived.
async fn read_until(conn: &mut TcpStream, marker: &str) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        while !String::from_utf8_lossy(&out).contains(marker) {
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before {marker:?}: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("marker arrived in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    let text = exchange(
        address,
        b"GET /first HTTP/1.1\r\nHost: shop\r\n\r\n\
          POST /sink HTTP/1.1\r\nHost: shop\r\nContent-Length: 11\r\n\r\nhello world\
          GET /headers HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    let sink = text.find("\r\n\r\n11").expect("the POST's body length");
    let headers = text
        .find("\"x-uri\":\"/headers\"")
        .expect("the third response");
    assert!(sink < headers, "responses out of order: {text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn chunked_request_bodies_reach_the_upstream_whole() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    let text = exchange(
        address,
        b"POST /echo HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n7;note=x\r\n, world\r\n0\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    // Streamed back chunked (the echo has no length), in one piece or several.
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("head") + 4..];
    let mut decoded = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size, 16).expect("hex size");
        if size == 0 {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    assert_eq!(decoded, "hello, world");
}

#[tokio::test]
async fn requests_that_could_be_read_two_ways_never_reach_the_upstream() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    let cases: [(&str, &[u8]); 7] = [
        (
            "400",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "400",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "501",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "400",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("400", b"GET / HTTP/1.1\r\n\r\n"),
        ("400", b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad : 1\r\n\r\n"),
        ("400", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n"),
    ];
    for (status, raw) in cases {
        let text = exchange(address, raw).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} got {text}",
            String::from_utf8_lossy(raw)
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
    assert_eq!(backend.requests(), 0, "a refused request was forwarded");
}

#[tokio::test]
async fn malformed_chunked_body_ends_the_exchange_without_a_second_request() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    // A chunk longer than its size line, with a request smuggled after it.
    let _ = exchange(
        address,
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabcGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(backend.requests() <= 1, "the upstream saw a second request");
}

#[tokio::test]
async fn expect_continue_gets_a_go_ahead_before_the_body() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(b"PUT /sink HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .expect("write head");
    let interim = read_until(&mut conn, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    conn.write_all(b"abcde").await.expect("write body");
    let text = read_to_close(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n5"), "{text}");
}

#[tokio::test]
async fn http10_clients_are_answered_and_closed() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    // A body of unknown length ends with the connection.
    let text = exchange(address, b"GET /trailers HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        !text.contains("transfer-encoding"),
        "no chunking for HTTP/1.0: {text}"
    );
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nwith trailers"), "{text}");

    // Keep-alive when asked for, said in the response.
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(b"GET /bytes/3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .expect("write");
    let text = read_until(&mut conn, "\r\n\r\n").await;
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(b"GET /slow/60000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let control = backend.control.clone();
    wait_for("the upstream to get the request", LIMIT, || {
        control.in_flight.load(Relaxed) == 1
    })
    .await;
    drop(conn);
    wait_for("the upstream request to be cancelled", LIMIT, || {
        control.in_flight.load(Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn idle_keep_alive_connections_serve_many_requests() {
    let backend = Backend::start("b").await;
    let (_proxy, address) = start_proxy(&config(backend.address)).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    for i in 0..20 {
        conn.write_all(format!("GET /bytes/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let text = read_until(&mut conn, &format!("content-length: {i}\r\n")).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        // The whole body, so the next response starts on its own.
        let body_start = text.find("\r\n\r\n").expect("head") + 4;
        let mut have = text.len() - body_start;
        let mut rest = vec![0u8; i];
        while have < i {
            let n = conn.read(&mut rest[..i - have]).await.expect("read body");
            assert!(n > 0);
            have += n;
        }
    }
    assert_eq!(backend.requests(), 20);
}

/// Reads one response with a `content-length` body from a kept connection.
async fn read_response(conn: &mut TcpStream) -> String {
    let text = read_until(conn, "\r\n\r\n").await;
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let body_start = text.find("\r\n\r\n").expect("head") + 4;
    let mut out = text.into_bytes();
    let mut chunk = [0u8; 4096];
    while out.len() < body_start + length {
        let n = conn.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "closed mid-body");
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn upstream_connections_are_reused_and_bodies_arrive_whole() {
    let upstream =
        skiff_tests::raw_upstream::RawUpstream::start(skiff_tests::raw_upstream::Answer::Ok).await;
    let (_proxy, address) = start_proxy(&config(upstream.address)).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    for i in 0..30 {
        let raw = match i % 3 {
            0 => format!("GET /get/{i} HTTP/1.1\r\nHost: a\r\n\r\n"),
            // Small bodies arrive with their head and go out with it.
            1 => format!(
                "POST /post/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nbody{}",
                i % 10
            ),
            // An empty POST says so.
            _ => format!("POST /empty/{i} HTTP/1.1\r\nHost: a\r\n\r\n"),
        };
        conn.write_all(raw.as_bytes()).await.expect("write");
        let text = read_response(&mut conn).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("ok"), "{text}");
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 30);
    assert!(
        upstream.violations().is_empty(),
        "{:?}",
        upstream.violations()
    );
    for (i, r) in requests.iter().enumerate() {
        match i % 3 {
            0 => assert!(r.body.is_empty(), "{}", r.head),
            1 => {
                assert_eq!(r.body, format!("body{}", i % 10).as_bytes());
                assert!(r.head.contains("content-length: 5\r\n"), "{}", r.head);
            }
            _ => assert!(r.head.contains("content-length: 0\r\n"), "{}", r.head),
        }
    }
    assert_eq!(
        upstream.connections.load(Relaxed),
        1,
        "one kept upstream connection carried every request"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_kept_connections_fails_no_request() {
    let upstream = skiff_tests::raw_upstream::RawUpstream::start(
        skiff_tests::raw_upstream::Answer::OkThenClose,
    )
    .await;
    let (_proxy, address) = start_proxy(&config(upstream.address)).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    for i in 0..50 {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        conn.write_all(format!("{method} /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let text = read_response(&mut conn).await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "request {i}: {text}"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        50,
        "each request reached the upstream once"
    );
    assert!(upstream.connections.load(Relaxed) >= 50);
}
