//! The load generator against real servers on 127.0.0.1: every protocol
//! completes a short run cleanly, open loop charges a stall to the requests
//! queued behind it while closed loop shows it once, errors are counted by
//! kind, and the reports of real runs parse and draw.
//!
//! Runs are short (a few hundred milliseconds); each test bounds itself by
//! the spec's duration and timeout, never by sleeping.

mod support;

use std::time::Duration;

use skiff_bench::load::{self, LoadResult, LoadSpec, Protocol};
use skiff_bench::report;
use skiff_tests::Backend;
use support::{Behaviour, Identity, Server, ANSWER};

/// A latency no local response takes unless the server stalled it.
const SLOW: Duration = Duration::from_millis(100);
/// How long the stalling server holds its one slow response.
const STALL: Duration = Duration::from_millis(300);

fn short(url: http::Uri, protocol: Protocol) -> LoadSpec {
    let mut spec = LoadSpec::new(url, protocol);
    spec.connections = 2;
    spec.warmup = Duration::from_millis(100);
    spec.duration = Duration::from_millis(400);
    spec.timeout = Duration::from_secs(5);
    spec
}

fn assert_clean(result: &LoadResult) {
    assert!(result.requests > 0, "{}: no requests", result.label);
    assert_eq!(
        result.errors(),
        0,
        "{}: {:?}",
        result.label,
        result.first_transport_error
    );
    assert_eq!(result.latencies.count(), result.requests);
    assert!(result.percentile(50.0) <= result.percentile(99.0));
    assert!(result.percentile(99.0) <= result.max());
    assert!(result.elapsed >= result.spec.duration);
}

fn slow_requests(result: &LoadResult) -> u64 {
    let slow_us = SLOW.as_micros() as u64;
    result
        .latencies
        .histogram()
        .count_between(slow_us, u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_run_counts_every_response_and_byte() {
    let server = Server::plain(Behaviour::default()).await;
    let result = load::run(&short(server.url("http"), Protocol::Http1))
        .await
        .expect("run");
    assert_clean(&result);
    assert_eq!(result.bytes_received, result.requests * ANSWER.len() as u64);
    assert_eq!(
        server
            .seen
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_run_multiplexes_streams_over_few_connections() {
    let server = Server::plain(Behaviour {
        delay: Duration::from_millis(1),
        ..Behaviour::default()
    })
    .await;
    let mut spec = short(server.url("http"), Protocol::H2);
    spec.streams = 8;
    let result = load::run(&spec).await.expect("run");
    assert_clean(&result);
    let seen = &server.seen;
    assert_eq!(
        seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    let max_in_flight = seen.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        max_in_flight > 2,
        "at most {max_in_flight} requests in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_run_trusts_the_ca_it_is_given() {
    let identity = Identity::new();
    let server = Server::https(Behaviour::default(), &identity).await;
    let mut spec = short(server.url("https"), Protocol::Https);
    spec.tls.ca_cert = Some(identity.ca_file.clone());
    let result = load::run(&spec).await.expect("run");
    assert_clean(&result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_run_refuses_a_certificate_it_cannot_trust_unless_insecure() {
    let server = Server::https(Behaviour::default(), &Identity::new()).await;
    let stranger = Identity::new();
    let mut spec = short(server.url("https"), Protocol::Https);
    spec.tls.ca_cert = Some(stranger.ca_file.clone());
    let error = load::run(&spec).await.expect_err("untrusted").to_string();
    let expected = format!(
        "TLS handshake with {}: invalid peer certificate",
        server.address
    );
    assert!(error.starts_with(&expected), "{error}");

    spec.tls = load::TlsOptions {
        insecure: true,
        ca_cert: None,
    };
    spec.duration = Duration::from_millis(200);
    assert_clean(&load::run(&spec).await.expect("insecure run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_open_one_connection_and_handshake_per_request() {
    let identity = Identity::new();
    let server = Server::https(Behaviour::default(), &identity).await;
    let mut spec = short(server.url("https"), Protocol::Https);
    spec.tls.ca_cert = Some(identity.ca_file.clone());
    spec.new_connections = true;
    spec.warmup = Duration::ZERO;
    let result = load::run(&spec).await.expect("run");
    assert_clean(&result);
    let connections = server
        .seen
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    // The two opened before the clock, then one for each later request.
    assert!(
        connections >= result.requests && connections <= result.requests + 2,
        "{connections} connections for {} requests",
        result.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_charges_a_stall_to_the_requests_queued_behind_it() {
    // 200 requests/s on one connection: while request 10 is held for 300 ms,
    // some 60 more fall due and wait behind it.
    let server = Server::plain(Behaviour {
        stall: Some((10, STALL)),
        ..Behaviour::default()
    })
    .await;
    let mut spec = short(server.url("http"), Protocol::Http1);
    spec.connections = 1;
    spec.warmup = Duration::ZERO;
    spec.duration = Duration::from_millis(600);
    spec.rate = Some(200.0);
    let result = load::run(&spec).await.expect("run");
    assert_eq!(result.errors(), 0, "{:?}", result.first_transport_error);
    assert_eq!(result.requests, 120, "every request due in 600 ms at 200/s");
    assert!(result.max() >= STALL, "max {:?}", result.max());
    assert!(
        result.percentile(99.0) >= SLOW,
        "p99 {:?}",
        result.percentile(99.0)
    );
    assert!(
        slow_requests(&result) > 10,
        "{} slow requests",
        slow_requests(&result)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_shows_the_same_stall_as_one_slow_request() {
    let server = Server::plain(Behaviour {
        stall: Some((10, STALL)),
        ..Behaviour::default()
    })
    .await;
    let mut spec = short(server.url("http"), Protocol::Http1);
    spec.connections = 1;
    spec.warmup = Duration::ZERO;
    spec.duration = Duration::from_millis(600);
    let result = load::run(&spec).await.expect("run");
    assert_clean(&result);
    assert!(result.max() >= STALL, "max {:?}", result.max());
    assert_eq!(slow_requests(&result), 1);
    assert!(
        result.percentile(50.0) < SLOW,
        "p50 {:?}",
        result.percentile(50.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_open_loop_gives_up_on_requests_unsent_for_a_timeout() {
    // One connection, 50 ms per answer: 20/s against a rate of 1000/s.
    let server = Server::plain(Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await;
    let mut spec = short(server.url("http"), Protocol::Http1);
    spec.connections = 1;
    spec.warmup = Duration::ZERO;
    spec.duration = Duration::from_millis(300);
    spec.rate = Some(1000.0);
    spec.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let result = load::run(&spec).await.expect("run");
    let took = started.elapsed();
    // Every request due in the window is either answered or given up on...
    assert_eq!(result.requests + result.transport_errors, 300, "{result:?}");
    assert!(result.requests > 0);
    let first = result.first_transport_error.as_deref().unwrap_or_default();
    assert!(first.starts_with("not sent within 200ms"), "{first}");
    // ...so the run ends about a timeout after its window, not when the
    // last of 300 requests could have been answered (15 s).
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_whose_target_goes_away_ends_and_counts_every_request_due() {
    // The first request kills the only connection, and no other is accepted.
    let server = Server::plain(Behaviour {
        drop_every: Some(1),
        last_connection: Some(1),
        ..Behaviour::default()
    })
    .await;
    let mut spec = short(server.url("http"), Protocol::Http1);
    spec.connections = 1;
    spec.warmup = Duration::ZERO;
    spec.duration = Duration::from_millis(300);
    spec.rate = Some(100.0);
    spec.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let result = load::run(&spec).await.expect("run");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(result.requests, 0);
    // 30 due: the one sent and dropped, the rest never sent; failed
    // reconnects come on top.
    assert!(result.transport_errors > 30, "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_requests_are_sent_but_not_recorded() {
    let server = Server::plain(Behaviour::default()).await;
    let mut spec = short(server.url("http"), Protocol::Http1);
    spec.warmup = Duration::from_millis(200);
    spec.duration = Duration::from_millis(300);
    spec.rate = Some(100.0);
    let result = load::run(&spec).await.expect("run");
    assert_clean(&result);
    // Due every 10 ms: 20 in the warmup, 30 measured.
    assert_eq!(result.requests, 30);
    assert_eq!(
        server
            .seen
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_2xx_answers_and_dropped_connections_are_counted_apart() {
    let unavailable = Server::plain(Behaviour {
        status: http::StatusCode::SERVICE_UNAVAILABLE,
        ..Behaviour::default()
    })
    .await;
    let result = load::run(&short(unavailable.url("http"), Protocol::Http1))
        .await
        .expect("run");
    assert!(result.requests > 0);
    assert_eq!(result.status_errors, result.requests);
    assert_eq!(result.transport_errors, 0);

    let flaky = Server::plain(Behaviour {
        drop_every: Some(10),
        ..Behaviour::default()
    })
    .await;
    let result = load::run(&short(flaky.url("http"), Protocol::Http1))
        .await
        .expect("run");
    assert!(result.requests > 0, "reconnected and went on");
    assert_eq!(result.status_errors, 0);
    assert!(result.transport_errors > 0);
    assert!(result.transport_errors <= result.requests / 5, "{result:?}");
    assert!(result.first_transport_error.is_some());
    let reconnects = flaky
        .seen
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(reconnects > 2, "{reconnects} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_target() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let url = format!("http://{address}/").parse().expect("URL");
    let error = load::run(&short(url, Protocol::Http1))
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.starts_with(&format!("connect to {address}: ")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_real_runs_parse_and_draw_one_curve_per_target() {
    let backend = Backend::start("bench").await;
    let url: http::Uri = format!("http://{}/", backend.address).parse().expect("URL");
    let mut h1 = short(url.clone(), Protocol::Http1);
    h1.label = "h1".into();
    let mut h2 = short(url, Protocol::H2);
    h2.label = "h2c".into();
    h2.streams = 4;
    let mut results = Vec::new();
    for spec in [&h1, &h2] {
        let result = load::run(spec).await.expect("run");
        assert_clean(&result);
        results.push(result);
    }

    let text = serde_json::to_string(&report::json(&results)).expect("serialise");
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("parse");
    let entries = parsed.as_array().expect("an array");
    assert_eq!(entries.len(), 2);
    for (entry, result) in entries.iter().zip(&results) {
        assert_eq!(entry["label"], result.label.as_str());
        assert_eq!(entry["spec"]["protocol"], result.spec.protocol.name());
        assert_eq!(entry["requests"], result.requests);
        assert_eq!(entry["errors"], 0);
        assert!(entry["requests_per_second"].as_f64().expect("rps") > 0.0);
        assert!(entry["bytes_received"].as_u64().expect("bytes") > 0);
        for key in ["p50", "p90", "p99", "p99_9", "max", "mean"] {
            assert!(entry["latency_us"][key].is_number(), "latency_us.{key}");
        }
        let curve = entry["curve"].as_array().expect("curve");
        assert!(curve.len() > 1);
        assert!(curve
            .iter()
            .all(|p| p["percentile"].is_f64() && p["latency_us"].is_u64()));
    }

    let svg = report::svg(&results).expect("chart");
    assert!(svg.starts_with("<svg"));
    // A curve and a legend sample per target: the only 2-pixel lines.
    assert_eq!(svg.matches("stroke-width=\"2\"").count(), 2 * results.len());

    let table = report::table(&results);
    assert_eq!(table.lines().count(), 3, "{table}");
}
