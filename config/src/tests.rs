//! The config as a whole: defaults, every mistake reported at once with
//! its position, and references between listeners and clusters.

use std::path::Path;
use std::time::Duration;

use crate::cluster::*;
use crate::endpoints::{ServicePort, ServiceTarget, Source, POLL_INTERVAL};
use crate::route::HostMatch;
use crate::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "skiff.yaml", Path::new("/etc/skiff")).map_err(|d| d.to_string())
}

const GOOD: &str = "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - name: web
    listen: 127.0.0.1:8080
    routes:
      - match: { host: shop.example.com, path_prefix: /products }
        cluster: catalog
      - match: { host: '*.example.com', path: /exact }
        cluster: catalog
clusters:
  - name: catalog
    lb: round_robin
    endpoints: [127.0.0.1:9001, { address: 127.0.0.1:9002, weight: 3 }]
    timeouts: { connect: 250ms, request: 2s }
  - name: orders
    discovery: { file: orders.yaml }
  - name: payments
    discovery: { kubernetes: { namespace: shop, service: payments, port: http } }
  - name: legacy
    discovery: { kubernetes: { namespace: shop, service: legacy, port: 8080 } }
";

#[test]
fn a_good_config_reads_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listeners[0].routes.len(), 2);
    assert_eq!(
        c.listeners[0].routes[1].host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    let catalog = c.cluster("catalog").unwrap();
    assert_eq!(catalog.lb, LbPolicy::RoundRobin);
    assert_eq!(catalog.timeouts.connect, Duration::from_millis(250));
    assert_eq!(catalog.timeouts.idle, DEFAULT_POOL_IDLE_TIMEOUT);
    let orders = c.cluster("orders").unwrap();
    assert_eq!(orders.lb, LbPolicy::LeastRequest);
    assert_eq!(
        orders.source,
        Source::File {
            path: "/etc/skiff/orders.yaml".into(),
            interval: POLL_INTERVAL
        }
    );
    assert_eq!(c.shutdown.drain_delay, DEFAULT_DRAIN_DELAY);
    assert_eq!(
        c.cluster("payments").unwrap().source,
        Source::Kubernetes(ServiceTarget {
            namespace: "shop".into(),
            service: "payments".into(),
            port: ServicePort::Name("http".into()),
        })
    );
    assert!(matches!(
        &c.cluster("legacy").unwrap().source,
        Source::Kubernetes(t) if t.port == ServicePort::Number(8080)
    ));
}

#[test]
fn kubernetes_discovery_mistakes_name_the_field() {
    let err = parse(
        "\
clusters:
  - name: a
    discovery: { kubernetes: { namespace: Shop, service: web, port: 70000 } }
  - name: b
    discovery: { kubernetes: { service: web, port: http_port, colour: red } }
",
    )
    .unwrap_err();
    for expected in [
            "skiff.yaml:3:43: clusters[0].discovery.kubernetes.namespace: `Shop` is not a Kubernetes name",
            "skiff.yaml:3:69: clusters[0].discovery.kubernetes.port: 70000 is out of range",
            "clusters[1].discovery.kubernetes: missing field `namespace`",
            "skiff.yaml:5:52: clusters[1].discovery.kubernetes.port: `http_port` is neither a port number nor a Service port name",
            "clusters[1].discovery.kubernetes.colour: unknown field",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
}

#[test]
fn every_mistake_is_reported_at_once() {
    let err = parse(
        "\
listeners:
  - name: web
    listen: 127.0.0.1:1
    routes:
      - cluster: ghost
    colour: blue
  - name: web
    listen: 127.0.0.1:2
    routes: []
  - name: api
    listen: nowhere
    routes: []
clusters:
  - name: a
    endpoints: [127.0.0.1:1]
    timeouts: { connect: fast }
  - name: a
    lb: random
    endpoints: []
",
    )
    .unwrap_err();
    for expected in [
        "skiff.yaml:5:18: listeners[0].routes[0].cluster: no cluster named `ghost`",
        "skiff.yaml:6:5: listeners[0].colour: unknown field",
        "skiff.yaml:7:5: listeners[1]: duplicate listener name `web`",
        "skiff.yaml:11:13: listeners[2].listen: `nowhere` is not an address",
        "skiff.yaml:16:26: clusters[0].timeouts.connect: `fast` is not a duration",
        "skiff.yaml:17:5: clusters[1]: duplicate cluster name `a`",
        "skiff.yaml:18:9: clusters[1].lb: unknown policy `random`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn circuit_breaker_limits_default_to_envoys_and_are_checked() {
    let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
    let config = parse(base).unwrap();
    assert_eq!(
        config.clusters[0].circuit_breaker,
        CircuitBreaker::default()
    );
    assert_eq!(CircuitBreaker::default().max_requests, 1024);

    let config = parse(&format!(
        "{base}    circuit_breaker: {{ max_requests: 10 }}\n"
    ))
    .unwrap();
    assert_eq!(config.clusters[0].circuit_breaker.max_requests, 10);
    assert_eq!(config.clusters[0].circuit_breaker.max_pending, 1024);

    let err = parse(&format!(
        "{base}    circuit_breaker: {{ max_requests: 0, max_pending: lots, max_retries: 3 }}\n"
    ))
    .unwrap_err();
    for expected in [
        "clusters[0].circuit_breaker.max_requests:",
        "clusters[0].circuit_breaker.max_pending:",
        "clusters[0].circuit_breaker.max_retries: unknown field",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.starts_with("skiff.yaml:9:"), "{err}");
}

#[test]
fn retry_policy_defaults_and_bounds() {
    let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
    let retries = parse(base).unwrap().clusters[0].retries;
    assert_eq!(
        (
            retries.attempts,
            retries.budget_percent,
            retries.min_per_second
        ),
        (2, 20, 10)
    );
    assert_eq!(retries.backoff, Duration::from_millis(25));

    let config = parse(&format!(
        "{base}    retries: {{ attempts: 0, per_try_timeout: 300ms }}\n"
    ))
    .unwrap();
    assert_eq!(config.clusters[0].retries.attempts, 0);
    assert_eq!(
        config.clusters[0].retries.per_try_timeout,
        Duration::from_millis(300)
    );

    let err = parse(&format!(
        "{base}    retries: {{ attempts: 11, budget_percent: 150, backoff: soon }}\n"
    ))
    .unwrap_err();
    for expected in [
        "clusters[0].retries.attempts:",
        "clusters[0].retries.budget_percent:",
        "clusters[0].retries.backoff: `soon` is not a duration",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn outlier_detection_and_panic_threshold_are_read_and_checked() {
    let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
    let cluster = &parse(base).unwrap().clusters[0];
    assert_eq!(cluster.outlier_detection, OutlierDetection::default());
    assert_eq!(cluster.panic_threshold, 50);

    let config = parse(&format!(
            "{base}    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 1s }}\n    panic_threshold: 0\n"
        ))
        .unwrap();
    let detection = config.clusters[0].outlier_detection;
    assert_eq!(detection.consecutive_failures, 3);
    assert_eq!(detection.base_ejection_time, Duration::from_secs(1));
    assert_eq!(detection.max_ejection_percent, 10);
    assert_eq!(config.clusters[0].panic_threshold, 0);

    let err = parse(&format!(
            "{base}    outlier_detection: {{ max_ejection_percent: 101, base_ejection_time: later }}\n    panic_threshold: half\n"
        ))
        .unwrap_err();
    for expected in [
        "skiff.yaml:9:",
        "clusters[0].outlier_detection.max_ejection_percent:",
        "clusters[0].outlier_detection.base_ejection_time: `later` is not a duration",
        "skiff.yaml:10:",
        "clusters[0].panic_threshold:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn health_checks_and_slow_start_are_read_with_defaults_and_checked() {
    let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
    let cluster = &parse(base).unwrap().clusters[0];
    assert_eq!(cluster.health_check, None);
    assert!(cluster.slow_start.window.is_zero());

    let config = parse(&format!(
            "{base}    health_check: {{ http: {{ path: /healthz, expected_statuses: [200, 300-308] }}, interval: 2s, timeout: 500ms, unhealthy_threshold: 2 }}\n    slow_start: {{ window: 30s, aggression: 1.5 }}\n"
        ))
        .unwrap();
    let check = config.clusters[0].health_check.clone().unwrap();
    assert_eq!(
        check.kind,
        HealthCheckKind::Http {
            path: "/healthz".into(),
            host: None,
            expected_statuses: vec![(200, 200), (300, 308)],
        }
    );
    assert_eq!(check.interval, Duration::from_secs(2));
    assert_eq!(
        check.unhealthy_interval,
        Duration::from_secs(2),
        "defaults to interval"
    );
    assert_eq!(check.timeout, Duration::from_millis(500));
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 2));
    let slow_start = config.clusters[0].slow_start;
    assert_eq!(slow_start.window, Duration::from_secs(30));
    assert_eq!(slow_start.aggression, 1.5);
    assert_eq!(slow_start.min_weight_percent, 10);
    let tcp = parse(&format!("{base}    health_check: {{ tcp: {{}} }}\n")).unwrap();
    let tcp = tcp.clusters[0].health_check.clone().unwrap();
    assert_eq!(tcp.kind, HealthCheckKind::Tcp);
    assert_eq!(tcp.interval, DEFAULT_HEALTH_INTERVAL);

    let err = parse(&format!(
            "{base}    health_check: {{ http: {{ path: healthz, expected_statuses: [600, 299-200] }}, interval: 1ms }}\n    slow_start: {{ aggression: lots }}\n"
        ))
        .unwrap_err();
    for expected in [
        "clusters[0].health_check.http.path: `healthz` is not a request path",
        "clusters[0].health_check.http.expected_statuses[0]: `600` is not a status",
        "clusters[0].health_check.http.expected_statuses[1]: `299-200`",
        "clusters[0].health_check.interval: must be at least 10ms",
        "clusters[0].slow_start.aggression: expected a number",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let err = parse(&format!("{base}    health_check: {{ interval: 1s }}\n")).unwrap_err();
    assert!(
        err.contains("clusters[0].health_check: missing field `http`"),
        "{err}"
    );
}

#[test]
fn a_route_to_a_missing_cluster_names_it() {
    let err = parse(
            "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    routes:\n      - cluster: ghost\nclusters: []\n",
        )
        .unwrap_err();
    assert_eq!(
        err,
        "skiff.yaml:5:18: listeners[0].routes[0].cluster: no cluster named `ghost`"
    );
}

#[test]
fn syntax_errors_name_the_position() {
    let err = parse("listeners: [\n").unwrap_err();
    assert!(err.starts_with("skiff.yaml:"), "{err}");
}
