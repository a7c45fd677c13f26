//! What operators see: `/metrics` checked by promtool and scraped by a real
//! Prometheus server, bounded series, the access log, the runtime log
//! level, trace context, and the dashboard rendered in headless Chromium.
//!
//! promtool, prometheus (Debian's `prometheus` package) and chromium are
//! installed by `.ci/run`; without them these tests fail and say so.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use skiff_tests::{
    admin_get, free_port, metric_value, start_proxy, wait_for, wait_for_async, Backend, Client,
    Load, SkiffProcess, TempDir,
};

const LIMIT: Duration = Duration::from_secs(30);

fn require(tool: &str, package: &str) -> std::path::PathBuf {
    let path = Path::new("/usr/bin").join(tool);
    assert!(
        path.exists(),
        "{tool} is needed for this test: apt-get install {package} (.ci/run does)"
    );
    path
}

fn config(endpoints: &[SocketAddr], listener_extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n{listener_extra}    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [{}]\n",
        list.join(", ")
    )
}

async fn metrics_text(proxy: &skiff::Proxy) -> String {
    let admin = proxy.admin_address().expect("admin");
    let (status, body) = admin_get(admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn metrics_pass_promtool_under_load() {
    let promtool = require("promtool", "prometheus");
    let backends = [Backend::start("a").await, Backend::start("b").await];
    let (proxy, address) =
        start_proxy(&config(&[backends[0].address, backends[1].address], "")).await;
    let load = Load::start(address, "/", 4, false);
    wait_for("traffic", LIMIT, || load.ok.load(Relaxed) > 200).await;
    let text = metrics_text(&proxy).await;
    let (_, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "{errors:?}");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}\n---\n{text}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool found problems:\n{report}"
    );
    for family in [
        "skiff_requests_total",
        "skiff_request_duration_seconds",
        "skiff_requests_in_flight",
        "skiff_endpoint_requests_total",
        "skiff_endpoints",
        "skiff_health_checks_total",
        "skiff_retries_total",
        "skiff_overflow_total",
        "skiff_connections_active",
        "skiff_discovery_updates_total",
        "skiff_discovery_errors_total",
        "skiff_config_reloads_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from /metrics"
        );
    }
}

/// Scheduling policies of this process's threads named `name` (field 41
/// of `/proc/self/task/*/stat`; 5 is `SCHED_IDLE`).
fn thread_policies(name: &str) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let policy: Option<u32> = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(41 - 3))
            .and_then(|p| p.parse().ok());
        policies.extend(policy);
    }
    policies
}

#[tokio::test]
async fn metrics_render_on_an_idle_priority_thread_so_requests_preempt_it() {
    const SCHED_IDLE: u32 = 5;
    let backend = Backend::start("a").await;
    let (proxy, _) = start_proxy(&config(&[backend.address], "")).await;
    let text = metrics_text(&proxy).await;
    assert!(
        text.contains("# TYPE skiff_requests_total counter"),
        "{text}"
    );
    let policies = thread_policies("skiff-metrics");
    assert!(!policies.is_empty(), "no skiff-metrics thread");
    assert!(
        policies.iter().all(|&p| p == SCHED_IDLE),
        "skiff-metrics threads' policies: {policies:?}, want SCHED_IDLE ({SCHED_IDLE})"
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_request_count() {
    let prometheus = require("prometheus", "prometheus");
    let dir = TempDir::new("prometheus");
    let backend = Backend::start("a").await;
    let (proxy, address) = start_proxy(&config(&[backend.address], "")).await;
    let admin = proxy.admin_address().expect("admin");
    let mut c = Client::h1(address).await.expect("connect");
    let sent = 137;
    for _ in 0..sent {
        let (status, _, _) = c.get("/").await.expect("response");
        assert_eq!(status, 200);
    }
    dir.write(
        "prometheus.yml",
        &format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: skiff\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    );
    let port = free_port();
    let mut server = tokio::process::Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let query = "/api/v1/query?query=sum(skiff_requests_total%7Bcluster%3D%22app%22%7D)";
    wait_for_async(
        "Prometheus to have scraped the count",
        LIMIT,
        || async move {
            let Ok((_, body)) = admin_get(api, query).await else {
                return false;
            };
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            json["data"]["result"][0]["value"][1].as_str() == Some(sent.to_string().as_str())
        },
    )
    .await;
    let _ = server.kill().await;
}

#[tokio::test]
async fn series_are_bounded_by_endpoints_not_by_request_paths() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = TempDir::new("bounded");
    dir.write(
        "endpoints.yaml",
        &format!("- {}\n- {}\n", a.address, b.address),
    );
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    discovery: {{ file: {} }}\n",
        dir.path("endpoints.yaml").display()
    );
    let (proxy, address) = start_proxy(&yaml).await;
    wait_for("ready", LIMIT, || proxy.is_ready()).await;
    let mut c = Client::h1(address).await.expect("connect");
    for i in 0..10 {
        c.get(&format!("/warm/{i}")).await.expect("response");
    }
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&metrics_text(&proxy).await);
    for i in 0..1000 {
        let (status, _, _) = c
            .get(&format!("/products/{i}?q={i}"))
            .await
            .expect("response");
        assert_eq!(status, 200);
    }
    let text = metrics_text(&proxy).await;
    assert_eq!(series(&text), before, "1,000 distinct paths added series");
    assert!(
        !text.contains("/products/"),
        "a request path leaked into a label"
    );
    let leaving = b.address.to_string();
    assert!(text.contains(&format!("endpoint=\"{leaving}\"")));

    // The endpoint leaves: its series go with it.
    dir.write("endpoints.yaml", &format!("- {}\n", a.address));
    let cluster = proxy.clusters()[0].clone();
    wait_for("the endpoint to leave", LIMIT, || {
        cluster.snapshot().members.len() == 1 && cluster.endpoint_counts().draining == 0
    })
    .await;
    let text = metrics_text(&proxy).await;
    assert!(
        !text.contains(&format!("endpoint=\"{leaving}\"")),
        "series of the removed endpoint remain:\n{text}"
    );
    assert!(
        metric_value(
            &text,
            "skiff_endpoints",
            &[("cluster", "app"), ("state", "healthy")]
        ) == Some(1.0)
    );
}

#[tokio::test]
async fn trace_context_passes_through_and_a_request_id_is_set() {
    let backend = Backend::start("a").await;
    let (_proxy, address) = start_proxy(&config(&[backend.address], "")).await;
    let mut c = Client::h1(address).await.expect("connect");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get("/headers")
        .header("traceparent", traceparent)
        .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        .body(skiff_tests::empty())
        .expect("request");
    let resp = c.send(req).await.expect("response");
    let body = skiff_tests::collect_body(resp.into_body()).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["traceparent"], traceparent);
    assert_eq!(
        seen["tracestate"],
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    assert_eq!(
        seen["x-request-id"].as_str().map(str::len),
        Some(36),
        "{seen}"
    );
    let req = http::Request::get("/headers")
        .header("x-request-id", "client-chosen-id")
        .body(skiff_tests::empty())
        .expect("request");
    let resp = c.send(req).await.expect("response");
    let body = skiff_tests::collect_body(resp.into_body()).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["x-request-id"], "client-chosen-id");
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

#[tokio::test]
async fn the_access_log_has_a_json_line_per_request_and_the_level_changes_at_runtime() {
    let backend = Backend::start("a").await;
    let backend_address = backend.address;
    let dir = TempDir::new("access-log");
    let (listen, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let path = dir.write(
        "skiff.yaml",
        &format!(
            "admin: {{ listen: {admin} }}\n\
             listeners:\n  - name: web\n    listen: {listen}\n    access_log: {{ sample: 1.0 }}\n    routes:\n      - match: {{ path_prefix: /api }}\n        cluster: app\n\
             clusters:\n  - name: app\n    endpoints: [{}]\n",
            backend.address
        ),
    );
    let skiff = SkiffProcess::start_with_args(&path, admin, &["--log-format", "json"]).await;
    skiff.wait_ready().await;
    let mut c = Client::h1(listen).await.expect("connect");
    let req = http::Request::post("/api/orders?id=7")
        .header("host", "shop.example.com")
        .header("x-request-id", "order-7")
        .body(skiff_tests::full("hello"))
        .expect("request");
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    skiff_tests::collect_body(resp.into_body()).await;
    let (status, _, _) = c.get("/nowhere").await.expect("response");
    assert_eq!(status, 404);

    let mut access = Vec::new();
    wait_for("two access log lines", LIMIT, || {
        access = json_lines(&skiff.log_text())
            .into_iter()
            .filter(|l| l["target"] == "skiff::access")
            .collect();
        access.len() >= 2
    })
    .await;
    let line = &access[0];
    for (field, value) in [
        ("listener", serde_json::json!("web")),
        ("method", "POST".into()),
        ("authority", "shop.example.com".into()),
        ("path", "/api/orders".into()),
        ("status", 200.into()),
        ("cluster", "app".into()),
        ("endpoint", backend_address.to_string().into()),
        ("bytes_in", 5.into()),
        ("bytes_out", 1.into()),
        ("retries", 0.into()),
        ("request_id", "order-7".into()),
    ] {
        assert_eq!(line[field], value, "{field} in {line}");
    }
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{line}"
    );
    assert!(line["timestamp"].is_string(), "{line}");
    assert_eq!(access[1]["status"], 404);
    assert_eq!(access[1]["cluster"], "-");

    // The level is changed while running, and a bad one is refused.
    let debug_lines = |text: &str| {
        json_lines(text)
            .iter()
            .filter(|l| l["level"] == "DEBUG")
            .count()
    };
    assert_eq!(debug_lines(&skiff.log_text()), 0);
    let (status, body) = skiff_tests::admin_post(admin, "/logging?level=debug")
        .await
        .expect("post");
    assert_eq!(status, 200, "{body}");
    let (_, level) = admin_get(admin, "/logging").await.expect("get level");
    assert_eq!(level.trim(), "debug");
    // An upstream failure is logged at debug level.
    drop(backend);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fresh = Client::h1(listen).await.expect("connect");
    let (status, _, _) = fresh.get("/api/x").await.expect("response");
    assert_eq!(status, 502);
    wait_for("debug lines", LIMIT, || debug_lines(&skiff.log_text()) > 0).await;
    let (status, body) = skiff_tests::admin_post(admin, "/logging?level=nonsense[")
        .await
        .expect("post");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad log level"), "{body}");
}

#[tokio::test]
async fn the_dashboard_shows_endpoints_and_updates_in_headless_chromium() {
    let chromium = require("chromium", "chromium");
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let (proxy, address) = start_proxy(&config(&addresses, "")).await;
    let admin = proxy.admin_address().expect("admin");
    let load = Load::start(address, "/", 3, false);
    wait_for("traffic", LIMIT, || load.ok.load(Relaxed) > 100).await;

    let dir = TempDir::new("dashboard");
    let chrome = |extra: &[String]| {
        let mut cmd = tokio::process::Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", dir.path("profile").display()))
        // Virtual time: the page's one-second polls run, its fetches are real.
        .arg("--virtual-time-budget=4500")
        .args(extra)
        .arg(format!("http://{admin}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(LIMIT, chrome(&["--dump-dom".into()]).output())
        .await
        .expect("chromium in time")
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    // A screenshot, kept as the test's artifact.
    let shot = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("dashboard.png");
    let out = tokio::time::timeout(
        LIMIT,
        chrome(&[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,720".into(),
        ])
        .output(),
    )
    .await
    .expect("chromium in time")
    .expect("run chromium");
    assert!(out.status.success());
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "a real picture"
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    let (_, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "{errors:?}");
    for b in &backends {
        assert!(
            dom.contains(&format!("data-endpoint=\"{}\"", b.address)),
            "endpoint {} missing from the dashboard:\n{dom}",
            b.address
        );
    }
    let updates: u32 = dom
        .split("data-updates=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        updates >= 2,
        "the page polled and re-rendered: {updates} updates\n{dom}"
    );
    // With traffic, rates above zero and a p99 are shown.
    let rates: Vec<f64> = dom
        .split("class=\"rate\">")
        .skip(1)
        .filter_map(|r| r.split('<').next()?.parse().ok())
        .collect();
    assert_eq!(rates.len(), 3, "{dom}");
    assert!(rates.iter().all(|&r| r > 0.0), "rates {rates:?}");
    assert!(
        dom.contains("class=\"p99\">") && !dom.contains("class=\"p99\">–"),
        "{dom}"
    );
}

/// The PromQL of the Grafana dashboard and of the Prometheus Adapter
/// rules, with their template variables filled in.
fn deploy_queries(dir: &Path) -> Vec<String> {
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("grafana-dashboard.json")).expect("dashboard json"),
    )
    .expect("the Grafana dashboard is JSON");
    let mut queries: Vec<String> = grafana["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    let adapter =
        std::fs::read_to_string(dir.join("prometheus-adapter-rules.yaml")).expect("rules");
    for line in adapter.lines() {
        if let Some(q) = line.trim().strip_prefix("metricsQuery: ") {
            queries.push(
                q.trim_matches('\'')
                    .replace("<<.Series>>", "skiff_requests_total")
                    .replace("<<.LabelMatchers>>", "namespace=\"shop\"")
                    .replace("<<.GroupBy>>", "pod"),
            );
        }
    }
    queries
        .into_iter()
        .map(|q| {
            q.replace("$__rate_interval", "1m")
                .replace("$namespace", ".*")
                .replace("$cluster", ".*")
        })
        .collect()
}

#[tokio::test]
async fn the_deploy_observability_files_are_valid_and_name_real_metrics() {
    let promtool = require("promtool", "prometheus");
    skiff_tests::require_python_module("kubernetes_validate", "kubernetes-validate");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
    let manifests: Vec<std::path::PathBuf> =
        ["prometheus-scrape.yaml", "prometheus-adapter-rules.yaml"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The scrape config, as Prometheus itself reads it.
    let tmp = TempDir::new("deploy-observability");
    let scrape = std::fs::read_to_string(&manifests[0]).expect("scrape");
    let body: String = scrape
        .split_once("skiff-scrape.yml: |\n")
        .expect("embedded scrape config")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    // Debian builds Prometheus without Kubernetes discovery: the pod role
    // is swapped for a static target; the relabelling is what is checked.
    let body = body.replace(
        "kubernetes_sd_configs:\n      - role: pod",
        "static_configs:\n      - targets: ['127.0.0.1:9901']",
    );
    assert!(body.contains("static_configs"), "{body}");
    let scrape_file = tmp.write("prometheus.yml", &body);
    let out = std::process::Command::new(&promtool)
        .args(["check", "config"])
        .arg(&scrape_file)
        .output()
        .expect("promtool check config");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every query parses (as a recording rule) and names families skiff exports.
    let queries = deploy_queries(&dir);
    assert!(queries.len() >= 10, "{queries:?}");
    let rules: String = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("      - record: skiff:query_{i}\n        expr: '{q}'\n"))
        .collect();
    let file = tmp.write(
        "rules.yml",
        &format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    );
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool check rules");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let backend = Backend::start("a").await;
    let (proxy, _) = start_proxy(&config(&[backend.address], "")).await;
    let text = metrics_text(&proxy).await;
    for q in &queries {
        for name in q
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("skiff_") || w.starts_with("process_"))
        {
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "`{name}` in {q:?} is not a metric skiff exports"
            );
        }
    }
}
