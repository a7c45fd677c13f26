//! Protocols through skiff: HTTP/1.1 and HTTP/2 on both sides, headers,
//! trailers, gRPC (grpcio), WebSocket (websockets), and local errors.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use skiff_tests::{full, start_proxy, Backend, Client};

fn config(protocol: &str, endpoints: &str, extra: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - match: {{ path_prefix: /missing-cluster }}\n        cluster: empty\n      - match: {{ host: only.example.com }}\n        cluster: app\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n  - name: app\n    protocol: {protocol}\n    endpoints: {endpoints}\n{extra}\n  - name: empty\n    endpoints: []\n"
    )
}

async fn client(h2: bool, address: std::net::SocketAddr) -> Client {
    if h2 {
        Client::h2(address).await.expect("connect h2")
    } else {
        Client::h1(address).await.expect("connect h1")
    }
}

async fn check_protocol_pair(client_h2: bool, upstream: &str) {
    let backend = Backend::start("b").await;
    let (_proxy, address) =
        start_proxy(&config(upstream, &format!("[{}]", backend.address), "")).await;
    let mut c = client(client_h2, address).await;

    // Plain request.
    let (status, name, _) = c.get("/hello").await.expect("get");
    assert_eq!((status.as_u16(), name.as_str()), (200, "b"));

    // Headers the upstream sees.
    let req = Request::get("/headers?q=1")
        .header("connection", if client_h2 { "" } else { "x-hop" })
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-request-id", "req-42")
        .body(skiff_tests::empty())
        .expect("req");
    let req = if client_h2 {
        let (mut parts, body) = req.into_parts();
        parts.headers.remove("connection");
        parts.headers.remove("keep-alive");
        Request::from_parts(parts, body)
    } else {
        req
    };
    let resp = c.send(req).await.expect("headers");
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-request-id"], "req-42");
    assert!(seen.get("keep-alive").is_none(), "{seen}");
    if !client_h2 {
        assert!(
            seen.get("x-hop").is_none(),
            "header named by Connection leaked: {seen}"
        );
    }
    let want_version = if upstream == "http2" {
        "HTTP/2.0"
    } else {
        "HTTP/1.1"
    };
    assert_eq!(seen["x-version"], want_version);
    if upstream == "http1" {
        assert_eq!(seen["host"], "test.local", "{seen}");
        assert_eq!(seen["x-uri"], "/headers?q=1");
    } else {
        assert_eq!(seen["x-uri"], "http://test.local/headers?q=1");
    }

    // A generated request id when none is sent.
    let resp = c
        .send(
            Request::get("/headers")
                .body(skiff_tests::empty())
                .expect("req"),
        )
        .await
        .expect("headers");
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(
        seen["x-request-id"].as_str().map(str::len),
        Some(36),
        "{seen}"
    );

    // A streamed body both ways.
    let payload = vec![7u8; 3 * 1024 * 1024 + 17];
    let resp = c
        .send(
            Request::post("/echo")
                .body(full(payload.clone()))
                .expect("req"),
        )
        .await
        .expect("echo");
    assert_eq!(resp.status(), 200);
    let back = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(back.len(), payload.len());
    assert!(back.iter().all(|b| *b == 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_http1_upstream() {
    check_protocol_pair(false, "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_http2_upstream() {
    check_protocol_pair(false, "http2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_to_http1_upstream() {
    check_protocol_pair(true, "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_to_http2_upstream() {
    check_protocol_pair(true, "http2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_on_http2() {
    let backend = Backend::start("b").await;
    let (_proxy, address) =
        start_proxy(&config("http2", &format!("[{}]", backend.address), "")).await;
    let mut c = Client::h2(address).await.expect("connect");
    let resp = c
        .send(
            Request::post("/trailers")
                .header("te", "trailers")
                .body(full("12345"))
                .expect("req"),
        )
        .await
        .expect("response");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["x-checksum"], "ok");
    assert_eq!(trailers["x-request-bytes"], "5");
    assert_eq!(&collected.to_bytes()[..], b"with trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_work_through_skiff() {
    skiff_tests::require_python_module("grpc", "grpcio");
    let server = skiff_tests::PyPeer::server("grpc_echo.py");
    let (proxy, address) = start_proxy(&config(
        "http2",
        &format!("[127.0.0.1:{}]", server.port),
        "",
    ))
    .await;
    let (ok, output) = skiff_tests::py_client("grpc_echo.py", &[&address.to_string()]).await;
    assert!(ok, "grpc client failed through skiff:\n{output}");
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    let served = skiff_tests::metric_value(
        &metrics,
        "skiff_requests_total",
        &[("cluster", "app"), ("code_class", "2xx")],
    );
    assert!(served.unwrap_or(0.0) >= 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    skiff_tests::require_python_module("websockets", "websockets");
    let server = skiff_tests::PyPeer::server("ws_echo.py");
    let (proxy, address) = start_proxy(&config(
        "http1",
        &format!("[127.0.0.1:{}]", server.port),
        "",
    ))
    .await;
    let url = format!("ws://{address}/chat");
    let (ok, output) = skiff_tests::py_client("ws_echo.py", &[&url]).await;
    assert!(ok, "websocket client failed through skiff:\n{output}");
    let cluster = proxy
        .clusters()
        .iter()
        .find(|c| &*c.name == "app")
        .cloned()
        .expect("app");
    skiff_tests::wait_for("tunnel closed", Duration::from_secs(5), || {
        cluster.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_errors_say_what_happened() {
    // A port nobody listens on, and a backend that answers too slowly.
    let (_refusing, closed) = skiff_tests::refusing_port();
    let slow = Backend::start("slow").await;
    slow.control
        .delay_ms
        .store(2000, std::sync::atomic::Ordering::Relaxed);
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - match: {{ path_prefix: /refused }}\n        cluster: refused\n\
         \x20     - match: {{ path_prefix: /slow }}\n        cluster: slow\n\
         \x20     - match: {{ path_prefix: /none }}\n        cluster: none\n\
         clusters:\n\
         \x20 - name: refused\n    endpoints: [127.0.0.1:{closed}]\n\
         \x20 - name: slow\n    endpoints: [{}]\n    timeouts: {{ request: 200ms }}\n\
         \x20 - name: none\n    endpoints: []\n",
        slow.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let mut c = Client::h1(address).await.expect("connect");
    let (status, _, body) = c.get("/nowhere-routed-at-all").await.expect("404");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no route"));
    let (status, _, body) = c.get("/refused").await.expect("502");
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("connect error"),
        "{body:?}"
    );
    let (status, _, body) = c.get("/slow").await.expect("504");
    assert_eq!(status, 504);
    assert!(
        String::from_utf8_lossy(&body).contains("request timeout"),
        "{body:?}"
    );
    let (status, _, body) = c.get("/none").await.expect("503");
    assert_eq!(status, 503);
    assert!(
        String::from_utf8_lossy(&body).contains("no endpoints"),
        "{body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_and_fall_through() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - match: {{ host: shop.example.com, path_prefix: /products }}\n        cluster: a\n\
         \x20     - match: {{ host: '*.example.com', path: /exact }}\n        cluster: b\n\
         clusters:\n  - name: a\n    endpoints: [{}]\n  - name: b\n    endpoints: [{}]\n",
        a.address, b.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let mut c = Client::h1(address).await.expect("connect");
    let get = |host: &'static str, path: &'static str| {
        Request::get(path)
            .header("host", host)
            .body(skiff_tests::empty())
            .expect("req")
    };
    let resp = c
        .send(get("shop.example.com:8080", "/products/7"))
        .await
        .expect("a");
    assert_eq!(resp.headers()["x-backend"], "a");
    let _ = resp.into_body().collect().await;
    let resp = c.send(get("api.example.com", "/exact")).await.expect("b");
    assert_eq!(resp.headers()["x-backend"], "b");
    let _ = resp.into_body().collect().await;
    let resp = c
        .send(get("api.example.com", "/exact/more"))
        .await
        .expect("404");
    assert_eq!(resp.status(), 404);
    let _ = resp.into_body().collect().await;
    let resp = c.send(get("other.org", "/products")).await.expect("404");
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_answers_504() {
    // One try (no retries), so one timeout is counted.
    let (address, _held) = skiff_tests::unanswered_listener().await;
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [{address}]\n    timeouts: {{ connect: 150ms }}\n    retries: {{ attempts: 0 }}\n"
    );
    let (proxy, listen) = start_proxy(&yaml).await;
    let mut c = Client::h1(listen).await.expect("connect");
    let (status, _, body) = c.get("/").await.expect("response");
    assert_eq!(status, 504, "{body:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("connect timeout"),
        "{body:?}"
    );
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    assert_eq!(
        skiff_tests::metric_value(
            &metrics,
            "skiff_upstream_errors_total",
            &[("cluster", "app"), ("kind", "connect_timeout")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_http2_upstream_connection() {
    let backend = Backend::start("b").await;
    backend
        .control
        .delay_ms
        .store(20, std::sync::atomic::Ordering::Relaxed);
    let (_proxy, address) =
        start_proxy(&config("http2", &format!("[{}]", backend.address), "")).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::h1(address).await.expect("connect");
            c.get("/").await.expect("request").0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(
        backend
            .control
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The response to `req`, a request without a body, sent on `client`.
async fn h2_answer(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    req: Request<()>,
) -> http::Response<h2::RecvStream> {
    let (response, _) = client.send_request(req, true).expect("send");
    tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered in time")
        .expect("response")
}

/// skiff's own HTTP/2 server at the edges a browser or gRPC library
/// reaches: a 1,000-byte stream window (every response byte waits for a
/// WINDOW_UPDATE), a header block split into CONTINUATION frames, frames
/// larger than the default, a PING, and a stream cancelled mid-response.
#[tokio::test]
async fn http2_flow_control_continuation_and_cancelled_streams() {
    let backend = Backend::start("b").await;
    let (_proxy, address) =
        start_proxy(&config("http1", &format!("[{}]", backend.address), "")).await;
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (mut client, mut conn) = h2::client::Builder::new()
        .initial_window_size(1000)
        .max_frame_size(1 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let ping = conn.ping_pong().expect("ping handle");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let limit = Duration::from_secs(10);

    // 200 KiB echoed through a 1,000-byte window.
    let payload: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let req = Request::post("http://test.local/echo")
        .body(())
        .expect("req");
    let (response, mut send) = client.send_request(req, false).expect("send");
    send.send_data(payload.clone().into(), true).expect("body");
    let response = tokio::time::timeout(limit, response)
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut back = Vec::new();
    while let Some(chunk) = tokio::time::timeout(limit, body.data())
        .await
        .expect("in time")
    {
        let chunk = chunk.expect("chunk");
        assert!(chunk.len() <= 1000, "a frame past the window");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
        back.extend_from_slice(&chunk);
    }
    assert_eq!(back, payload);

    // A 40 KiB field: HEADERS and CONTINUATION frames, forwarded whole.
    let big = "v".repeat(40 * 1024);
    let req = Request::get("http://test.local/headers")
        .header("x-big", big.as_str())
        .body(())
        .expect("req");
    let response = h2_answer(&mut client, req).await;
    let mut body = response.into_body();
    let mut json = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
        json.extend_from_slice(&chunk);
    }
    let seen: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(seen["x-big"].as_str().map(str::len), Some(40 * 1024));

    // A PING is answered.
    let mut ping = ping;
    tokio::time::timeout(limit, ping.ping(h2::Ping::opaque()))
        .await
        .expect("pong in time")
        .expect("pong");

    // A stream cancelled mid-response: the others carry on.
    let req = Request::get("http://test.local/bytes/10000000")
        .body(())
        .expect("req");
    let response = h2_answer(&mut client, req).await;
    let mut body = response.into_body();
    let first = body.data().await.expect("a chunk").expect("chunk");
    assert!(!first.is_empty());
    drop(body);
    let req = Request::get("http://test.local/hello")
        .body(())
        .expect("req");
    let response = h2_answer(&mut client, req).await;
    assert_eq!(response.headers()["x-backend"], "b");
    assert!(response.headers().contains_key("date"));
    assert_eq!(response.headers()["content-length"], "1");
    drop(client);
}
