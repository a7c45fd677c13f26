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
    let (proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
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
    // Each refusal is counted once: a 400 as malformed (heads and chunked
    // bodies alike), 405, 417 and 501 as unsupported.
    let refused = |wanted: fn(u16) -> bool| {
        let statuses = SMUGGLING.iter().filter_map(|c| match c.expect {
            Expect::Refused(status) => Some(status),
            Expect::Forwarded(_) => None,
        });
        statuses.filter(|&s| wanted(s)).count() as f64
    };
    let malformed = protocol_errors(&proxy, "http1", "malformed").await;
    assert_eq!(malformed, refused(|s| s == 400));
    let unsupported = protocol_errors(&proxy, "http1", "unsupported").await;
    assert_eq!(unsupported, refused(|s| s != 400));
}

/// `skiff_client_protocol_errors_total` for the listener `web`.
async fn protocol_errors(proxy: &skiff::Proxy, protocol: &str, reason: &str) -> f64 {
    let admin = proxy.admin_address().expect("admin address");
    let (_, metrics) = skiff_tests::admin_get(admin, "/metrics")
        .await
        .expect("metrics");
    let labels = [
        ("listener", "web"),
        ("protocol", protocol),
        ("reason", reason),
    ];
    skiff_tests::metric_value(&metrics, "skiff_client_protocol_errors_total", &labels)
        .unwrap_or_else(|| panic!("no series for {protocol} {reason}: {metrics}"))
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
    let (proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
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
                    // HPACK static table: 0x8c is `:status 400`, after
                    // any dynamic table size updates (001xxxxx, one byte
                    // for sizes below 31).
                    let block = &got[at + 9..at + 9 + len];
                    let first = block.iter().find(|b| *b & 0xe0 != 0x20);
                    return first.copied().unwrap_or_default();
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
    assert_eq!(protocol_errors(&proxy, "http2", "malformed").await, 1.0);
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

// Limits (issue 9, item 3): each configured small and hit.

/// [`config`] with `limits` on the listener and `route` (indented fields)
/// on the route to `app`.
fn limited(upstream: SocketAddr, other: SocketAddr, limits: &str, route: &str) -> String {
    config(upstream, other)
        .replacen(
            "    routes:\n",
            &format!("    limits: {limits}\n    routes:\n"),
            1,
        )
        .replacen(
            "        cluster: app\n",
            &format!("        cluster: app\n{route}"),
            1,
        )
}

async fn limited_proxy(
    answer: Answer,
    limits: &str,
    route: &str,
) -> (RawUpstream, Backend, skiff::Proxy, SocketAddr) {
    let upstream = RawUpstream::start(answer).await;
    let other = Backend::start("other").await;
    let yaml = limited(upstream.address, other.address, limits, route);
    let (proxy, address) = start_proxy(&yaml).await;
    (upstream, other, proxy, address)
}

/// A GET with `fields` header fields in all (`Host` one of them), each
/// value `value_len` bytes long.
fn head_with(fields: usize, value_len: usize) -> Vec<u8> {
    let mut head = b"GET /limits HTTP/1.1\r\nHost: a\r\n".to_vec();
    let value = "v".repeat(value_len);
    for i in 1..fields {
        head.extend_from_slice(format!("X-{i}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// An HTTP/2 connection over a plain socket, with the h2 crate's client.
async fn h2_client(address: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (client, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(conn);
    client
}

/// The status of a bodiless HTTP/2 GET carrying `headers`.
async fn h2_status(address: SocketAddr, headers: &[(String, String)]) -> u16 {
    let mut client = h2_client(address).await;
    let mut req = http::Request::get("http://a/limits");
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let (response, _) = client
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    let response = tokio::time::timeout(LIMIT, response)
        .await
        .expect("answered in time")
        .expect("a response");
    response.status().as_u16()
}

#[tokio::test]
async fn heads_past_the_listeners_limits_get_431_and_never_reach_the_upstream() {
    let (upstream, _other, proxy, address) = limited_proxy(
        Answer::Ok,
        "{ max_header_bytes: 1KiB, max_headers: 10 }",
        "",
    )
    .await;
    // HTTP/1: at the limits, forwarded; one past them, 431.
    let text = exchange(address, &head_with(10, 1)).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let text = exchange(address, &head_with(11, 1)).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    let text = exchange(address, &head_with(2, 900)).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let text = exchange(address, &head_with(2, 1100)).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    let forwarded = upstream.requests().len();
    assert_eq!(
        forwarded, 4,
        "the two heads within the limits and their sentinels"
    );

    // HTTP/2: the same limits, as a field count and a header list size.
    let fields = |n: usize, len: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("x-{i}"), "v".repeat(len)))
            .collect()
    };
    assert_eq!(h2_status(address, &fields(10, 1)).await, 200);
    assert_eq!(h2_status(address, &fields(11, 1)).await, 431);
    assert_eq!(h2_status(address, &fields(1, 2048)).await, 431);
    assert_eq!(upstream.requests().len(), forwarded + 1);
    assert_eq!(protocol_errors(&proxy, "http1", "too_large").await, 2.0);
    assert_eq!(protocol_errors(&proxy, "http2", "too_large").await, 2.0);
}

#[tokio::test]
async fn the_default_limits_let_a_100_field_60_kib_head_through() {
    let (upstream, _other, _proxy, address) = limited_proxy(Answer::Ok, "{}", "").await;
    let text = exchange(address, &head_with(100, 8)).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let text = exchange(address, &head_with(2, 60 * 1024)).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(upstream.requests().len(), 4);
}

#[tokio::test]
async fn a_head_slower_than_request_head_timeout_gets_408_and_is_closed() {
    let (upstream, _other, proxy, address) =
        limited_proxy(Answer::Ok, "{ request_head_timeout: 300ms }", "").await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Wait: ")
        .await
        .expect("write part of a head");
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, conn.read_to_end(&mut out))
        .await
        .expect("skiff closed the connection in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(upstream.requests().is_empty());
    assert_eq!(protocol_errors(&proxy, "http1", "timeout").await, 1.0);
    assert_eq!(protocol_errors(&proxy, "http1", "malformed").await, 0.0);
}

#[tokio::test]
async fn a_connection_idle_past_idle_timeout_is_closed() {
    let (_upstream, _other, _proxy, address) =
        limited_proxy(Answer::Ok, "{ idle_timeout: 300ms }", "").await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, conn.read_to_end(&mut out))
        .await
        .expect("the idle connection was closed in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nok"),
        "one response, then the close: {text}"
    );
}

#[tokio::test]
async fn an_http2_connection_without_streams_past_idle_timeout_gets_goaway() {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    let (_upstream, _other, _proxy, address) =
        limited_proxy(Answer::Ok, "{ idle_timeout: 300ms }", "").await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend(h2_frame(SETTINGS, 0, 0, &[]));
    // GET / for "a", answered; then nothing.
    let get = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    raw.extend(h2_frame(HEADERS, END_STREAM_AND_HEADERS, 1, &get));
    conn.write_all(&raw).await.expect("write");
    read_frame_until(&mut conn, |f| f.kind == HEADERS && f.stream == 1)
        .await
        .expect("the response");
    let goaway = read_frame_until(&mut conn, |f| f.kind == GOAWAY)
        .await
        .expect("GOAWAY once idle");
    // NO_ERROR, and stream 1 was processed.
    assert_eq!(goaway.payload[4..8], [0, 0, 0, 0]);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, conn.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the idle connection stayed open after GOAWAY"
    );
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let (_upstream, _other, proxy, address) =
        limited_proxy(Answer::Ok, "{ max_connections: 3 }", "").await;
    let admin = proxy.admin_address().expect("admin address");
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut client = Client::h1(address).await.expect("connect");
        let (status, _, _) = client.get("/").await.expect("served");
        assert_eq!(status, 200);
        open.push(client);
    }
    for _ in 0..2 {
        let mut refused = TcpStream::connect(address).await.expect("connect");
        // The kernel accepted it; skiff closes it unread.
        let _ = refused
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(LIMIT, refused.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "a connection past the cap was kept open");
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
    let (_, metrics) = skiff_tests::admin_get(admin, "/metrics")
        .await
        .expect("metrics");
    let refused = skiff_tests::metric_value(
        &metrics,
        "skiff_connections_refused_total",
        &[("listener", "web"), ("reason", "limit")],
    );
    assert_eq!(refused, Some(2.0), "{metrics}");
    assert!(metrics.contains("# TYPE skiff_connections_refused_total counter"));
    let active =
        skiff_tests::metric_value(&metrics, "skiff_connections_active", &[("listener", "web")]);
    assert_eq!(active, Some(3.0), "{metrics}");

    // A place frees up when a connection closes.
    drop(open.pop());
    skiff_tests::wait_for_async("a place under the cap", LIMIT, || async move {
        match Client::h1(address).await {
            Ok(mut client) => client.get("/").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn bodies_past_a_routes_max_request_body_get_413_and_are_not_forwarded() {
    let (upstream, _other, _proxy, address) =
        limited_proxy(Answer::Ok, "{}", "        max_request_body: 1KiB\n").await;
    // A length that says too much: refused before the body is read.
    let text = exchange(
        address,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    // Waiting for a go-ahead: none comes, the 413 does.
    let text = exchange(
        address,
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    // A chunked body that grows past it: cut, and the upstream never
    // gets a whole request.
    let mut chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("258\r\n{}\r\n", "c".repeat(600)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let text = exchange(address, &chunked).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    // Within the limit, both ways, forwarded whole.
    let mut exact = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\n\r\n".to_vec();
    exact.resize(exact.len() + 1024, b'x');
    let text = exchange(address, &exact).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let text = exchange(
        address,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let got = upstream.requests();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].body.len(), 1024);

    // HTTP/2: a declared length and a streamed body.
    let mut client = Client::h2(address).await.expect("connect");
    for body in [
        skiff_tests::full(vec![b'x'; 2000]),
        skiff_tests::generated(2000),
    ] {
        let req = http::Request::post("/").body(body).expect("request");
        let resp = client.send(req).await.expect("a response");
        assert_eq!(resp.status(), 413);
    }
    let (status, _, _) = client.get("/").await.expect("the connection goes on");
    assert_eq!(status, 200);
    assert_eq!(upstream.requests().len(), 5);
    others_unaffected(address).await;
}

#[tokio::test]
async fn a_body_past_the_limit_after_the_response_began_closes_the_connection() {
    let (upstream, _other, _proxy, address) =
        limited_proxy(Answer::BeforeBody, "{}", "        max_request_body: 1KiB\n").await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .await
    .expect("write the head and a chunk");
    // The upstream answers before the body ends.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        while !got.ends_with(b"2\r\nok\r\n") {
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the response began");
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the response began in time");
    // Then the body goes past the limit: too late for a 413.
    let _ = conn
        .write_all(format!("800\r\n{}\r\n", "x".repeat(2048)).as_bytes())
        .await;
    let read = tokio::time::timeout(LIMIT, conn.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "skiff did not close the connection in time");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the response ended as if whole: {text}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// One HTTP/2 frame as read from skiff.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const GOAWAY: u8 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Reads frames from `conn` until `found` holds for one, which is
/// returned; `None` if skiff closed first.
async fn read_frame_until(conn: &mut TcpStream, found: impl Fn(&Frame) -> bool) -> Option<Frame> {
    let mut frames = FrameReader::default();
    loop {
        let frame = frames.next(conn).await?;
        if found(&frame) {
            return Some(frame);
        }
    }
}

#[tokio::test]
async fn http2_settings_carry_the_listeners_limits_and_extra_streams_are_refused() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const END_HEADERS: u8 = 0x4;
    const REFUSED_STREAM: u32 = 0x7;
    let (_upstream, _other, proxy, address) = limited_proxy(
        Answer::Ok,
        "{ max_header_bytes: 32KiB, http2: { max_concurrent_streams: 2 } }",
        "",
    )
    .await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend(h2_frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&raw).await.expect("write");
    let settings = read_frame_until(&mut conn, |f| f.kind == SETTINGS && f.flags & 1 == 0)
        .await
        .expect("skiff's SETTINGS");
    let values: Vec<(u16, u32)> = settings
        .payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (3), SETTINGS_MAX_HEADER_LIST_SIZE (6).
    assert!(values.contains(&(3, 2)), "{values:?}");
    assert!(values.contains(&(6, 32 * 1024)), "{values:?}");

    // Two streams left open (a POST whose body never comes), then a third.
    // HPACK: POST, http, /, :authority "a".
    let post = [0x83, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut raw = Vec::new();
    for stream in [1, 3, 5] {
        raw.extend(h2_frame(HEADERS, END_HEADERS, stream, &post));
    }
    conn.write_all(&raw).await.expect("write");
    let reset = read_frame_until(&mut conn, |f| f.kind == RST_STREAM)
        .await
        .expect("a reset stream");
    assert_eq!(reset.stream, 5);
    assert_eq!(reset.payload, REFUSED_STREAM.to_be_bytes());
    assert_eq!(
        protocol_errors(&proxy, "http2", "refused_stream").await,
        1.0
    );
}

#[tokio::test]
async fn http2_stream_and_connection_errors_are_answered_and_counted() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;
    const END_HEADERS: u8 = 0x4;
    const PROTOCOL_ERROR: u32 = 0x1;
    let upstream = RawUpstream::start(Answer::Ok).await;
    let other = Backend::start("other").await;
    let (proxy, address) = start_proxy(&config(upstream.address, other.address)).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    // A POST left open, then a WINDOW_UPDATE of 0 for it: a stream error
    // (RFC 9113 §6.9). HPACK: POST, http, /, :authority "a".
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend(h2_frame(SETTINGS, 0, 0, &[]));
    raw.extend(h2_frame(
        HEADERS,
        END_HEADERS,
        1,
        &[0x83, 0x86, 0x84, 0x41, 0x01, b'a'],
    ));
    raw.extend(h2_frame(WINDOW_UPDATE, 0, 1, &0u32.to_be_bytes()));
    conn.write_all(&raw).await.expect("write");
    let reset = read_frame_until(&mut conn, |f| f.kind == RST_STREAM)
        .await
        .expect("a reset stream");
    assert_eq!(
        (reset.stream, reset.payload),
        (1, PROTOCOL_ERROR.to_be_bytes().to_vec())
    );
    // A PING on a stream: a connection error (RFC 9113 §6.7).
    conn.write_all(&h2_frame(PING, 0, 3, &[0; 8]))
        .await
        .expect("write");
    let goaway = read_frame_until(&mut conn, |f| f.kind == GOAWAY)
        .await
        .expect("GOAWAY");
    assert_eq!(goaway.payload[4..8], PROTOCOL_ERROR.to_be_bytes());
    assert_eq!(protocol_errors(&proxy, "http2", "stream_error").await, 1.0);
    assert_eq!(
        protocol_errors(&proxy, "http2", "connection_error").await,
        1.0
    );
    assert_eq!(protocol_errors(&proxy, "http2", "malformed").await, 0.0);
}

#[tokio::test]
async fn http2_streams_reset_for_errors_past_the_limit_are_one_flood() {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    let (upstream, _other, proxy, address) = limited_proxy(
        Answer::Ok,
        "{ http2: { max_local_error_reset_streams: 2 } }",
        "",
    )
    .await;
    // Three GETs with an uppercase field name, malformed (RFC 9113
    // §8.2.1): two are reset, the third passes the limit.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    hpack_literal(&mut block, b"X-Upper", b"1");
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for stream in [1, 3, 5] {
        raw.extend(h2_frame(HEADERS, END_STREAM_AND_HEADERS, stream, &block));
    }
    let mut conn = TcpStream::connect(address).await.expect("connect");
    conn.write_all(&raw).await.expect("write");
    let goaway = read_frame_until(&mut conn, |f| f.kind == GOAWAY)
        .await
        .expect("GOAWAY");
    assert_eq!(goaway.payload[4..8], ENHANCE_YOUR_CALM.to_be_bytes());
    assert!(upstream.requests().is_empty());
    // Each client mistake is counted once: the third as the flood only.
    assert_eq!(protocol_errors(&proxy, "http2", "malformed").await, 2.0);
    assert_eq!(protocol_errors(&proxy, "http2", "flood").await, 1.0);
}

/// Rapid reset frames: `streams` streams, each opened and cancelled.
fn reset_flood(streams: u32) -> Vec<u8> {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const END_HEADERS: u8 = 0x4;
    // HPACK: GET, http, /, then :authority "a".
    let get = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for i in 0..streams {
        let stream = 2 * i + 1;
        flood.extend(h2_frame(HEADERS, END_HEADERS, stream, &get));
        flood.extend(h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    flood
}

#[tokio::test]
async fn an_http2_reset_flood_past_the_limit_gets_goaway() {
    let (upstream, _other, proxy, address) = limited_proxy(
        Answer::Ok,
        "{ http2: { max_pending_accept_reset_streams: 5 } }",
        "",
    )
    .await;
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    let _ = attacker.write_all(&reset_flood(500)).await;
    let goaway = read_frame_until(&mut attacker, |f| f.kind == GOAWAY)
        .await
        .expect("GOAWAY before the connection closed");
    let code = u32::from_be_bytes([
        goaway.payload[4],
        goaway.payload[5],
        goaway.payload[6],
        goaway.payload[7],
    ]);
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert!(upstream.requests().len() < 500);
    assert_eq!(protocol_errors(&proxy, "http2", "flood").await, 1.0);
    assert_eq!(
        protocol_errors(&proxy, "http2", "connection_error").await,
        0.0
    );
    let mut client = Client::h2(address).await.expect("connect");
    let (status, _, _) = client.get("/normal").await.expect("served");
    assert_eq!(status, 200);
}

// Memory after an attack: RSS of a real skiff process, from /proc.

/// A `skiff run` process in front of `upstream` with `limits`; returns it
/// with its listener's address (it is killed on drop, with its directory).
async fn skiff_process(
    upstream: SocketAddr,
    limits: &str,
) -> (skiff_tests::SkiffProcess, SocketAddr, skiff_tests::TempDir) {
    let other = upstream;
    let admin = SocketAddr::from(([127, 0, 0, 1], skiff_tests::free_port()));
    let listen = SocketAddr::from(([127, 0, 0, 1], skiff_tests::free_port()));
    let yaml = limited(upstream, other, limits, "")
        .replacen("listen: 127.0.0.1:0 }", &format!("listen: {admin} }}"), 1)
        .replacen("listen: 127.0.0.1:0\n", &format!("listen: {listen}\n"), 1);
    let dir = skiff_tests::TempDir::new("hostile");
    let path = dir.write("skiff.yaml", &yaml);
    let skiff = skiff_tests::SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;
    (skiff, listen, dir)
}

/// Serves `n` requests on each of an HTTP/1.1 and an HTTP/2 connection.
async fn normal_traffic(address: SocketAddr, n: usize) {
    for mut client in [
        Client::h1(address).await.expect("connect"),
        Client::h2(address).await.expect("connect"),
    ] {
        for _ in 0..n {
            let (status, _, body) = client.get("/normal").await.expect("served");
            assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
        }
    }
}

/// How long RSS may take to come back once the attackers have gone.
const SETTLE: Duration = Duration::from_secs(30);

/// Waits until skiff's RSS is back within 10% of `baseline` (KiB).
async fn memory_returns(skiff: &skiff_tests::SkiffProcess, baseline: u64, attack: &str) {
    let pid = skiff.pid();
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut rss = skiff_tests::rss_kib(pid);
    while rss * 10 > baseline * 11 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {attack}, RSS stayed at {rss} KiB, more than 10% over the {baseline} KiB before it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = skiff_tests::rss_kib(pid);
    }
    eprintln!("after {attack}: RSS {rss} KiB, {baseline} KiB before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_heads_get_408_while_others_are_served_and_memory_returns() {
    const SLOW: usize = 1000;
    let upstream = RawUpstream::start(Answer::Ok).await;
    let (skiff, address, _dir) =
        skiff_process(upstream.address, "{ request_head_timeout: 3s }").await;
    normal_traffic(address, 200).await;
    let baseline = skiff.rss_kib();

    // Slowloris: each connection sends part of a head and never ends it.
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let mut conn = TcpStream::connect(address)
            .await
            .expect("connect a slow client");
        conn.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: a\r\nX-Wait: ").as_bytes())
            .await
            .expect("write part of a head");
        slow.push(conn);
    }
    let peak = skiff.rss_kib();
    normal_traffic(address, 20).await;
    // Each slow head is answered 408 and closed.
    let answers = slow.into_iter().map(|mut conn| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            let read = tokio::time::timeout(LIMIT, conn.read_to_end(&mut out)).await;
            read.is_ok() && out.starts_with(b"HTTP/1.1 408 ")
        })
    });
    let mut timed_out = 0;
    for answer in answers.collect::<Vec<_>>() {
        if !answer.await.expect("reader") {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 0, "slow heads not answered 408 and closed");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| !r.head.contains("/slow/")),
        "an unfinished head was forwarded"
    );
    memory_returns(
        &skiff,
        baseline,
        &format!("{SLOW} slow heads (peak {peak} KiB)"),
    )
    .await;
    normal_traffic(address, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_served_during_http2_reset_floods_and_memory_returns() {
    const ATTACKERS: usize = 20;
    let upstream = RawUpstream::start(Answer::Ok).await;
    let (skiff, address, _dir) = skiff_process(upstream.address, "{}").await;
    normal_traffic(address, 200).await;
    let baseline = skiff.rss_kib();

    let flood = std::sync::Arc::new(reset_flood(2000));
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let flood = flood.clone();
        attackers.push(tokio::spawn(async move {
            let mut attacker = TcpStream::connect(address).await.expect("connect");
            // skiff may send GOAWAY and close before it has read everything.
            let _ = attacker.write_all(&flood).await;
            read_frame_until(&mut attacker, |f| f.kind == GOAWAY).await
        }));
    }
    normal_traffic(address, 20).await;
    for attacker in attackers {
        let goaway = attacker.await.expect("attacker");
        assert!(goaway.is_some(), "an attacker was not sent GOAWAY");
    }
    assert!(
        upstream.requests().len() <= ATTACKERS * 2000 + 440,
        "more requests upstream than were sent"
    );
    memory_returns(
        &skiff,
        baseline,
        &format!("{ATTACKERS} HTTP/2 reset floods"),
    )
    .await;
    normal_traffic(address, 20).await;
}

/// HPACK: a literal field with a new name, neither Huffman-coded.
fn hpack_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    fn int(block: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            block.push(n as u8);
            return;
        }
        block.push(127);
        n -= 127;
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
    }
    block.push(0);
    int(block, name.len());
    block.extend_from_slice(name);
    int(block, value.len());
    block.extend_from_slice(value);
}

/// Request bytes skiff never forwards (here: bodies of requests it
/// answers itself with 431) still come back to the connection's
/// flow-control window. A client that keeps to the window, as this one
/// does, would otherwise stall for good once a megabyte went that way.
#[tokio::test]
async fn http2_bodies_of_refused_requests_are_given_back_to_the_connections_window() {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let (upstream, _other, _proxy, address) =
        limited_proxy(Answer::Ok, "{ max_header_bytes: 1KiB }", "").await;
    let mut conn = TcpStream::connect(address).await.expect("connect");
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend(h2_frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&raw).await.expect("write");
    // POST, http, /, :authority "a", and a 2 KiB field: past the limit.
    let mut block = vec![0x83, 0x86, 0x84, 0x41, 0x01, b'a'];
    hpack_literal(&mut block, b"x-big", &[b'v'; 2048]);
    let body = vec![7u8; 16 * 1024];
    let mut window: i64 = 65_535;
    let mut frames = FrameReader::default();
    for i in 0..80u32 {
        let stream = 2 * i + 1;
        // 64 KiB a request, 5 MiB in all: past the 1 MiB window, so
        // skiff must give the refused bodies back to go on.
        while window < 4 * body.len() as i64 {
            let frame = frames.next(&mut conn).await;
            let frame = frame.unwrap_or_else(|| panic!("closed before request {i}"));
            if frame.kind == WINDOW_UPDATE && frame.stream == 0 {
                let n = u32::from_be_bytes(frame.payload[..4].try_into().expect("4 bytes"));
                window += i64::from(n & 0x7fff_ffff);
            }
        }
        let mut raw = h2_frame(HEADERS, END_HEADERS, stream, &block);
        for k in 0..4 {
            let flags = if k == 3 { END_STREAM } else { 0 };
            raw.extend(h2_frame(DATA, flags, stream, &body));
        }
        conn.write_all(&raw).await.expect("write");
        window -= 4 * body.len() as i64;
        let head = loop {
            let frame = frames.next(&mut conn).await.expect("an answer");
            if frame.kind == WINDOW_UPDATE && frame.stream == 0 {
                let n = u32::from_be_bytes(frame.payload[..4].try_into().expect("4 bytes"));
                window += i64::from(n & 0x7fff_ffff);
            }
            if frame.kind == HEADERS && frame.stream == stream {
                break frame;
            }
        };
        // :status 431 is no static entry: a literal with name index 8.
        assert!(head.payload.windows(3).any(|w| w == b"431"), "{head:?}");
    }
    assert!(upstream.requests().is_empty());
}

/// Reads frames one at a time, keeping what arrived past the last one.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame; `None` once skiff closed. Panics after `LIMIT`.
    async fn next(&mut self, conn: &mut TcpStream) -> Option<Frame> {
        let mut chunk = [0u8; 16 * 1024];
        tokio::time::timeout(LIMIT, async {
            loop {
                if self.buf.len() >= 9 {
                    let b = &self.buf;
                    let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
                    if b.len() >= 9 + len {
                        let frame = Frame {
                            kind: b[3],
                            flags: b[4],
                            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
                            payload: b[9..9 + len].to_vec(),
                        };
                        self.buf.drain(..9 + len);
                        return Some(frame);
                    }
                }
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("skiff answered in time")
    }
}
