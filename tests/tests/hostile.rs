//! Hostile input, end to end over raw TCP: every request smuggling trick
//! of issue 9 (item 4) against skiff's HTTP/1 server, and upstreams that
//! misbehave (item 5). The upstream is a raw recorder with a strict parser
//! of its own, so "forwarded" means forwarded in one form only, and its
//! request count shows whether a request became two.
//!
//! `SECURITY.md` lists every case here with what skiff does with it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use skiff_tests::raw_upstream::{Answer, RawUpstream};
use skiff_tests::{start_proxy, wait_for, Backend, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn config(upstream: SocketAddr, other: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - match: {{ path_prefix: /other }}\n        cluster: other\n\
         \x20     - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n\
         \x20 - name: app\n    endpoints: [{upstream}]\n    retries: {{ attempts: 0 }}\n\
         \x20   outlier_detection: {{ consecutive_failures: 3, max_ejection_percent: 100 }}\n\
         \x20 - name: other\n    endpoints: [{other}]\n"
    )
}

/// Sent after every input, so skiff closes when it has answered all: a
/// request that went unanswered would show, and the connection ends
/// without the client closing first (a client that leaves cancels).
const SENTINEL: &[u8] = b"GET /sentinel HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// Sends `raw` and the [`SENTINEL`], and reads until skiff closes.
async fn exchange(address: SocketAddr, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(address).await.expect("connect");
    // skiff may refuse and close before reading everything: not an error.
    let _ = conn.write_all(raw).await;
    let _ = conn.write_all(SENTINEL).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(LIMIT, conn.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "skiff did not close the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// What skiff must do with a request.
#[derive(Debug)]
enum Expect {
    /// Refused with this status; nothing reaches the upstream.
    Refused(u16),
    /// Forwarded: the upstream gets exactly this many requests, the
    /// sentinel included when the connection is still open for it.
    Forwarded(usize),
}

struct Case {
    name: &'static str,
    raw: &'static [u8],
    expect: Expect,
}

const fn refused(name: &'static str, status: u16, raw: &'static [u8]) -> Case {
    Case {
        name,
        raw,
        expect: Expect::Refused(status),
    }
}

const fn forwarded(name: &'static str, requests: usize, raw: &'static [u8]) -> Case {
    Case {
        name,
        raw,
        expect: Expect::Forwarded(requests),
    }
}

/// Every smuggling vector of issue 9, item 4 (SECURITY.md's table).
const SMUGGLING: &[Case] = &[
    refused("cl_and_te", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    refused("te_and_cl", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    refused("conflicting_content_lengths", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    refused("conflicting_content_length_list", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 40\r\n\r\nabcd"),
    refused("content_length_with_sign", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd"),
    refused("content_length_overflow", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
    refused("te_gzip_then_chunked", 501, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    refused("te_chunked_not_last", 501, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    refused("te_chunked_twice", 501, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    refused("te_unknown", 501, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    refused("te_empty", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n"),
    refused("obs_fold", 400, b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n"),
    refused("obs_fold_of_transfer_encoding", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n ,chunked\r\n\r\n0\r\n\r\n"),
    refused("bare_cr", 400, b"GET / HTTP/1.1\rHost: a\r\n\r\n"),
    refused("bare_cr_in_value", 400, b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rGET /s HTTP/1.1\r\n\r\n"),
    refused("whitespace_before_colon", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello"),
    refused("tab_before_colon", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"),
    refused("invalid_char_in_name", 400, b"GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n"),
    refused("nul_in_value", 400, b"GET / HTTP/1.1\r\nHost: a\r\nX-Y: a\x00b\r\n\r\n"),
    refused("space_in_target", 400, b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
    refused("authority_form_connect", 405, b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n"),
    refused("authority_form_get", 400, b"GET internal:22 HTTP/1.1\r\nHost: a\r\n\r\n"),
    refused("expect_other_than_continue", 417, b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx"),
    refused("http10_chunked", 400, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    refused("http2_version_in_http1", 400, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
    refused("missing_host", 400, b"GET / HTTP/1.1\r\n\r\n"),
    refused("two_hosts", 400, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    forwarded("agreeing_content_lengths", 2, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\nabcd"),
    forwarded("bare_lf", 3, b"POST / HTTP/1.1\nHost: a\nContent-Length: 5\n\nhelloGET /x HTTP/1.1\nHost: a\n\n"),
    forwarded("absolute_form", 2, b"GET http://shop.example/path?q=1 HTTP/1.1\r\nHost: elsewhere\r\n\r\n"),
    forwarded("expect_continue", 2, b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nabcde"),
    forwarded("chunked_uppercase", 2, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    forwarded("pipelined", 4, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: a\r\n\r\n"),
    forwarded("request_in_a_body", 2, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    refused("chunk_shorter_than_its_size", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n0\r\n\r\n"),
    refused("chunk_size_overflow", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    refused("chunk_extension_with_crlf", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"x\r\ny\"\r\nhello\r\n0\r\n\r\n"),
    refused("chunk_lines_with_bare_lf", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
    forwarded("http10_keep_alive_pipelined", 2, b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\nGET /3 HTTP/1.0\r\n\r\n"),
    forwarded("hop_by_hop_headers", 2, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\n\r\n"),
];

#[tokio::test]
async fn smuggling_attempts_are_refused_or_forwarded_once_in_one_form() {
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (_proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    let mut wrong = Vec::new();
    for case in SMUGGLING {
        let before = upstream.requests().len();
        let text = exchange(address, case.raw).await;
        let got = &upstream.requests()[before..];
        let status_line = text
            .lines()
            .find(|l| !l.starts_with("HTTP/1.1 100 "))
            .unwrap_or("");
        match case.expect {
            Expect::Refused(status) => {
                if !text.starts_with(&format!("HTTP/1.1 {status} ")) || !got.is_empty() {
                    wrong.push(format!(
                        "{}: wanted {status} and nothing upstream, got {status_line:?} and {} upstream",
                        case.name,
                        got.len()
                    ));
                }
            }
            Expect::Forwarded(n) => {
                let answered = text.matches("HTTP/1.1 200 OK\r\n").count();
                if got.len() != n || answered != n {
                    wrong.push(format!(
                        "{}: wanted {n} forwarded and answered, got {} upstream and {answered} answers: {text:?}",
                        case.name,
                        got.len()
                    ));
                }
                for r in got {
                    if r.head.contains("smuggled")
                        || r.head
                            .split("\r\n")
                            .any(|l| l.contains('\n') || l.contains('\r'))
                    {
                        wrong.push(format!("{}: forwarded as {:?}", case.name, r.head));
                    }
                }
            }
        }
    }
    let violations = upstream.violations();
    assert!(
        violations.is_empty(),
        "forwarded in a form read two ways: {violations:?}"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The head the upstream got for `raw`, which must be forwarded once.
async fn forwarded_head(raw: &[u8]) -> (String, Vec<u8>) {
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (_proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    let text = exchange(address, raw).await;
    let got = upstream.requests();
    assert_eq!(got.len(), 2, "the request and the sentinel: {text}");
    (got[0].head.to_ascii_lowercase(), got[0].body.clone())
}

#[tokio::test]
async fn agreeing_content_lengths_are_forwarded_as_one() {
    let (head, body) = forwarded_head(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .await;
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
    assert!(head.contains("content-length: 4\r\n"), "{head}");
    assert_eq!(body, b"abcd");
}

#[tokio::test]
async fn absolute_form_is_forwarded_in_origin_form_with_its_own_host() {
    let (head, _) = forwarded_head(
        b"GET http://shop.example:8080/path?q=1 HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("get /path?q=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("host: shop.example:8080\r\n"), "{head}");
    assert!(
        !head.contains("elsewhere"),
        "the Host the route did not read went along: {head}"
    );
}

#[tokio::test]
async fn expect_continue_is_answered_by_skiff_and_not_forwarded() {
    let (head, body) = forwarded_head(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(!head.contains("expect"), "{head}");
    assert_eq!(body, b"abcde");
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_the_client_connection() {
    let (head, _) = forwarded_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\n\r\n",
    )
    .await;
    for name in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(!head.contains(name), "{name} was forwarded: {head}");
    }
}

#[tokio::test]
async fn oversized_heads_get_431_and_never_reach_the_upstream() {
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (_proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let text = exchange(address, &many).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    let mut large = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    large.resize(70 * 1024, b'a');
    let text = exchange(address, &large).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert!(upstream.requests().is_empty());
}

// Upstream misbehaviour (issue 9, item 5).

/// Starts skiff in front of an upstream answering `answer`, with a good
/// second cluster under `/other`.
async fn misbehaving(answer: Answer) -> (RawUpstream, Backend, skiff::Proxy, SocketAddr) {
    let upstream = RawUpstream::start(answer).await;
    let other = Backend::start("other").await;
    let (proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    (upstream, other, proxy, address)
}

fn app(proxy: &skiff::Proxy) -> std::sync::Arc<skiff::cluster::Cluster> {
    proxy
        .clusters()
        .iter()
        .find(|c| &*c.name == "app")
        .expect("cluster app")
        .clone()
}

/// The other cluster still answers, on a fresh connection.
async fn others_unaffected(address: SocketAddr) {
    let mut client = Client::h1(address).await.expect("connect");
    let (status, backend, _) = client.get("/other/x").await.expect("other answers");
    assert_eq!((status.as_u16(), backend.as_str()), (200, "other"));
}

#[tokio::test]
async fn a_malformed_response_is_a_502_and_counts_against_the_endpoint() {
    let (_upstream, _other, proxy, address) = misbehaving(Answer::Malformed).await;
    for _ in 0..3 {
        let text = exchange(address, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    }
    let cluster = app(&proxy);
    assert!(cluster.stats.errors.reset.load(Relaxed) >= 3);
    assert!(
        cluster.snapshot().members[0].is_ejected(),
        "three failures in a row eject"
    );
    others_unaffected(address).await;
}

#[tokio::test]
async fn a_response_longer_than_its_length_never_reaches_another_request() {
    let (_upstream, _other, _proxy, address) = misbehaving(Answer::Longer).await;
    for _ in 0..3 {
        let text = exchange(
            address,
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert!(
            !text.contains("SMUGGLED"),
            "the extra bytes reached the client: {text}"
        );
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    }
    others_unaffected(address).await;
}

#[tokio::test]
async fn an_unprompted_response_is_never_handed_to_the_next_request() {
    let (upstream, _other, _proxy, address) = misbehaving(Answer::Unprompted).await;
    for round in 1..=3 {
        let text = exchange(
            address,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            !text.contains("UNASKED"),
            "a response nobody asked for was delivered: {text}"
        );
        let unprompted = upstream.unprompted.clone();
        wait_for("the unprompted response", LIMIT, || {
            unprompted.load(Relaxed) >= round
        })
        .await;
    }
    let text = exchange(
        address,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !text.contains("UNASKED"),
        "a response nobody asked for was delivered: {text}"
    );
    others_unaffected(address).await;
}

/// A response cut short: the client sees its connection close before the
/// promised length (skiff cannot send a 502 once the head is out), and the
/// endpoint is counted as failing.
async fn cut_short(answer: Answer) {
    let (_upstream, _other, proxy, address) = misbehaving(answer).await;
    for _ in 0..3 {
        let text = exchange(address, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.len())
            .unwrap_or(0);
        assert!(
            text.starts_with("HTTP/1.1 502 ") || (text.starts_with("HTTP/1.1 200 ") && body < 100),
            "{text}"
        );
    }
    let cluster = app(&proxy);
    let members = cluster.snapshot().members.clone();
    assert!(
        members[0].is_ejected() || members[0].ejection().1 > 0,
        "a body cut short did not count against the endpoint"
    );
    others_unaffected(address).await;
}

#[tokio::test]
async fn a_response_shorter_than_its_length_closes_the_client_connection() {
    cut_short(Answer::Shorter).await;
}

#[tokio::test]
async fn an_upstream_reset_mid_body_closes_the_client_connection() {
    cut_short(Answer::ResetMidBody).await;
}

/// An HTTP/2 upstream that answers each connection's first stream with a
/// head and part of a body, then sends GOAWAY and closes.
async fn going_away_h2_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                let Some(Ok((_req, mut respond))) = conn.accept().await else {
                    return;
                };
                let head = http::Response::builder()
                    .status(200)
                    .body(())
                    .expect("response");
                // Held open (not ended, not reset) while the GOAWAY goes out.
                let mut sending = respond.send_response(head, false).ok();
                if let Some(s) = sending.as_mut() {
                    let _ = s.send_data(bytes::Bytes::from_static(b"partial"), false);
                }
                conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                while let Some(Ok(_)) = conn.accept().await {}
                drop(sending);
            });
        }
    });
    address
}

#[tokio::test]
async fn an_http2_upstream_going_away_mid_stream_gets_a_502_or_a_reset_stream() {
    use http_body_util::BodyExt;
    let upstream = going_away_h2_server().await;
    let other = Backend::start("other").await;
    let yaml = config(upstream, other.address).replacen(
        "    retries: { attempts: 0 }\n",
        "    protocol: http2\n    retries: { attempts: 0 }\n",
        1,
    );
    let (proxy, address) = start_proxy(&yaml).await;
    let mut client = Client::h2(address).await.expect("connect");
    let req = http::Request::get("/stream")
        .body(skiff_tests::empty())
        .expect("request");
    let resp = client.send(req).await.expect("a response head");
    // Before skiff has the head: 502. After: the stream is reset, so the
    // body never ends as if whole.
    if resp.status() != 502 {
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
            .await
            .expect("the stream ended in time");
        assert!(body.is_err(), "a body cut by GOAWAY ended as if whole");
    }
    // The client's connection and the other cluster carry on.
    let (status, backend, _) = client.get("/other/x").await.expect("same connection");
    assert_eq!((status.as_u16(), backend.as_str()), (200, "other"));
    assert!(app(&proxy).stats.errors.reset.load(Relaxed) >= 1);
    others_unaffected(address).await;
}

// Attacks on the listener while others use it (issue 9, "Tests").

#[tokio::test]
async fn a_normal_client_is_served_while_a_thousand_slow_heads_trickle_in() {
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (_proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    // Slowloris: each connection sends part of a head and never ends it.
    let mut slow = Vec::new();
    for i in 0..1000 {
        let mut conn = TcpStream::connect(address)
            .await
            .expect("connect a slow client");
        conn.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: a\r\nX-Wait: ").as_bytes())
            .await
            .expect("write part of a head");
        slow.push(conn);
    }
    let mut client = Client::h1(address).await.expect("connect");
    for _ in 0..20 {
        let (status, _, body) = client.get("/normal").await.expect("served");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    others_unaffected(address).await;
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| !r.head.contains("/slow/")),
        "an unfinished head was forwarded"
    );
    drop(slow);
}

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn a_normal_client_is_served_during_an_http2_reset_flood() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const END_HEADERS: u8 = 0x4;
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (_proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    // Rapid reset (CVE-2023-44487): open a stream, cancel it, again and again.
    // HPACK: GET, http, /, then :authority "a".
    let get = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        flood.extend(h2_frame(HEADERS, END_HEADERS, stream, &get));
        flood.extend(h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    // skiff may send GOAWAY and close before it has read everything.
    let _ = attacker.write_all(&flood).await;

    let mut client = Client::h2(address).await.expect("connect");
    for _ in 0..20 {
        let (status, _, body) = client.get("/normal").await.expect("served");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    others_unaffected(address).await;
    assert!(
        upstream.requests().len() <= 2000 + 20,
        "more requests upstream than were sent"
    );
    drop(attacker);
}

#[tokio::test]
async fn an_http2_field_name_that_is_no_http1_token_is_refused() {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (_proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    // Found by the h2 fuzz target: HPACK lets `"` into a name, HTTP/1.1
    // does not. GET / for "a", then the literal field `x-a": 1`.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    block.extend_from_slice(&[0x00, 0x04, b'x', b'-', b'a', b'"', 0x01, b'1']);
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend(h2_frame(SETTINGS, 0, 0, &[]));
    raw.extend(h2_frame(HEADERS, END_STREAM_AND_HEADERS, 1, &block));
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(&raw).await.expect("write");
    // Read frames until the response head of stream 1.
    let mut got = Vec::new();
    let status = tokio::time::timeout(LIMIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            let mut at = 0;
            while got.len() >= at + 9 {
                let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
                let stream =
                    u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
                if got.len() < at + 9 + len {
                    break;
                }
                if got[at + 3] == HEADERS && stream == 1 {
                    // HPACK static table: 0x8c is `:status 400`.
                    return got[at + 9];
                }
                at += 9 + len;
            }
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("answered in time");
    assert_eq!(status, 0x8c, "not a 400");
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream.requests()
    );
    assert!(
        upstream.violations().is_empty(),
        "{:?}",
        upstream.violations()
    );
}
