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
        c.listeners[0].routes[1].hosts,
        [HostMatch::Suffix(".example.com".into())]
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

#[test]
fn gateway_style_routes_read_every_condition_and_action() {
    use crate::route::*;
    let c = parse(
        "\
listeners:
  - name: web
    listen: 127.0.0.1:8080
    routes:
      - name: catalog-canary
        match:
          host: [shop.example.com, '*.shop.example.com']
          path_separated_prefix: /api
          method: POST
          headers: [{ name: X-Version, regex: 'v[12]' }]
          query: [{ name: color, exact: red }, { name: debug, present: true }]
        backends:
          - { cluster: a, weight: 90 }
          - { cluster: b, weight: 10, request_headers: { set: { x-version: '2' } } }
        rewrite: { path_prefix: /v2, host: catalog.internal }
        request_headers: { set: { x-gateway: skiff }, add: { via: skiff }, remove: [x-debug] }
        response_headers: { set: { cache-control: no-store } }
      - match: { path_regex: '/old/[0-9]+' }
        redirect: { host: new.example.com, path: /new, code: 308 }
clusters:
  - name: a
    endpoints: [127.0.0.1:1]
  - name: b
    endpoints: [127.0.0.1:2]
",
    )
    .unwrap();
    let routes = &c.listeners[0].routes;
    let canary = &routes[0];
    assert_eq!(canary.name.as_deref(), Some("catalog-canary"));
    assert_eq!(
        canary.hosts,
        [
            HostMatch::Exact("shop.example.com".into()),
            HostMatch::Suffix(".shop.example.com".into())
        ]
    );
    assert_eq!(canary.path, PathMatch::SeparatedPrefix("/api".into()));
    assert_eq!(canary.method.as_deref(), Some("POST"));
    assert_eq!(canary.headers[0].name, "x-version");
    assert_eq!(canary.query.len(), 2);
    assert_eq!(canary.query[1].value, ValueMatch::Present);
    let Action::Forward(backends) = &canary.action else {
        panic!("backends");
    };
    assert_eq!(
        backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    assert_eq!(backends[1].request_headers.set[0].1, "2");
    assert_eq!(canary.clusters().collect::<Vec<_>>(), ["a", "b"]);
    let rewrite = canary.rules.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.host.as_deref(), Some("catalog.internal"));
    assert_eq!(canary.rules.request_headers.add[0].0, "via");
    assert_eq!(canary.rules.response_headers.set.len(), 1);
    let Action::Redirect(redirect) = &routes[1].action else {
        panic!("a redirect");
    };
    assert_eq!(redirect.host.as_deref(), Some("new.example.com"));
    assert_eq!(redirect.path, Some(PathRewrite::Full("/new".into())));
    assert_eq!(redirect.scheme.as_deref(), Some("https"), "skiff's default");
    assert_eq!(redirect.code, 308);
}

#[test]
fn gateway_style_route_mistakes_name_the_field() {
    let err = parse(
        "\
listeners:
  - name: web
    listen: 127.0.0.1:8080
    routes:
      - match: { path_regex: '/v[0-9' }
        cluster: a
      - match: { path: /exact }
        rewrite: { path_prefix: /v2 }
        cluster: a
      - backends: [{ cluster: a, weight: 0 }]
      - cluster: a
        backends: [{ cluster: a }]
      - cluster: a
        request_headers: { set: { x-a: '1' }, remove: [x-a] }
      - match: { method: 'GE T', query: [{ name: q }] }
        backends: [{ cluster: ghost }]
clusters:
  - name: a
    endpoints: [127.0.0.1:1]
",
    )
    .unwrap_err();
    for expected in [
        "skiff.yaml:5:30: listeners[0].routes[0].match.path_regex: `/v[0-9` is not a regular expression",
        "skiff.yaml:7:9: listeners[0].routes[1]: a `path_prefix` rewrite needs a `path_prefix` or `path_separated_prefix` match",
        "listeners[0].routes[2].backends: every weight is 0",
        "listeners[0].routes[3]: give one of `cluster`, `backends` or `redirect`",
        "listeners[0].routes[4].request_headers: `x-a` is edited twice",
        "listeners[0].routes[5].match.method: `GE T` is not an HTTP method",
        "listeners[0].routes[5].match.query[0]: give one of `exact`, `prefix`, `regex` or `present`",
        "listeners[0].routes[5].backends[0].cluster: no cluster named `ghost`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_route_overrides_the_clusters_retries_and_per_try_timeout() {
    let with = |rules: &str| {
        format!(
            "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\n        {rules}\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n"
        )
    };
    let c = parse(&with(
        "retries: { attempts: 3, status_codes: [500, 503], backoff: 50ms }\n        per_try_timeout: 1s",
    ))
    .unwrap();
    let rules = &c.listeners[0].routes[0].rules;
    let retries = rules.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.status_codes, [500, 503]);
    assert_eq!(retries.backoff, Some(Duration::from_millis(50)));
    assert_eq!(rules.per_try_timeout, Some(Duration::from_secs(1)));
    let err = parse(&with("retries: { status_codes: [200] }")).unwrap_err();
    assert!(
        err.contains("listeners[0].routes[0].retries.status_codes[0]: 200 is out of range"),
        "{err}"
    );
    let c = parse(&with(
        "mirror: [{ cluster: a, percent: 12.5 }, { cluster: a }]",
    ))
    .unwrap();
    let mirrors = &c.listeners[0].routes[0].rules.mirrors;
    assert_eq!(
        mirrors.iter().map(|m| m.per_million).collect::<Vec<_>>(),
        [125_000, 1_000_000]
    );
    let err = parse(&with("mirror: [{ cluster: ghost }]")).unwrap_err();
    assert!(
        err.contains("routes[0].mirror[0].cluster: no cluster named `ghost`"),
        "{err}"
    );
    let c = parse(&with(
        "cors: { allow_origins: [\"https://*.example.com\", \"*\"], allow_methods: [GET], allow_credentials: true }",
    ))
    .unwrap();
    let cors = c.listeners[0].routes[0].rules.cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins, ["https://*.example.com", "*"]);
    assert!(cors.allow_credentials);
    assert_eq!(cors.max_age, Duration::from_secs(5));
    let err = parse(&with("cors: { allow_origins: [example.com] }")).unwrap_err();
    assert!(
        err.contains("cors.allow_origins: `example.com` is not `*` or scheme://host[:port]"),
        "{err}"
    );
    let err = parse(&with("per_try_timeout: 0s")).unwrap_err();
    assert!(
        err.contains("per_try_timeout: give a duration above zero"),
        "{err}"
    );
}
