//! The sidecar role: `skiff inject` on real manifests (checked with
//! kubernetes-validate), and `skiff iptables` with real iptables in
//! network namespaces.
//!
//! The namespace tests need root, `ip netns`, iptables and setpriv; where
//! those are missing they fail saying so, unless SKIFF_SKIP_ROOT_TESTS=1
//! skips them (SKIPPED ...). CI runs as root and has them.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use skiff_config::yaml::{self, Node, Value};
use skiff_tests::netns::{require_netns, Netns, Network};
use skiff_tests::{skiff_bin, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SOON: Duration = Duration::from_secs(10);

/// One of each workload kind, plus documents inject must leave alone.
const WORKLOADS: &str = r#"# The shop's order service.
apiVersion: v1
kind: Service
metadata:
  name: order   # the name others call
spec:
  selector: {app: order}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: order-config}
data:
  port: "8080"
  settings.yaml: |
    retries: 3
    verbose: true
---
apiVersion: v1
kind: Pod
metadata: {name: debug}
spec:
  containers:
  - {name: shell, image: busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: order
  labels: {app: order}
spec:
  replicas: 2
  selector:
    matchLabels: {app: order}
  template:
    metadata:
      labels: {app: order}
      annotations:
        skiff.io/skip-outbound-ports: "5432"
    spec:
      initContainers:
      - {name: migrate, image: shop/order:1, args: [migrate]}
      containers:
      - name: order
        image: shop/order:1
        ports:
        - containerPort: 8080
        env:
        - {name: GREETING, value: "yes"}
        - {name: PORT, value: "8080"}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres:16}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: shop/agent:1}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: legacy}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: legacy, image: shop/legacy:1}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: report}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: report, image: shop/report:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: nightly, image: shop/report:1}]
"#;

fn skiff_inject(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(skiff_bin())
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skiff inject");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("skiff inject output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubernetes_validate(path: &std::path::Path) {
    skiff_tests::require_python_module("kubernetes_validate", "kubernetes-validate");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(path)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Follows `path` of mapping keys (numbers index lists).
fn at<'a>(node: &'a Node, path: &str) -> &'a Node {
    let mut n = node;
    for step in path.split('.') {
        n = match (&n.value, step.parse::<usize>()) {
            (Value::Seq(items), Ok(i)) => items.get(i),
            _ => n.get(step),
        }
        .unwrap_or_else(|| panic!("no `{step}` in `{path}`"));
    }
    n
}

fn text(node: &Node, path: &str) -> String {
    at(node, path).as_str().unwrap_or_default().to_string()
}

fn len(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => items.len(),
        _ => 0,
    }
}

#[test]
fn inject_gives_every_workload_kind_the_capture_container_and_a_native_sidecar() {
    let dir = TempDir::new("inject");
    let input = dir.write("shop.yaml", WORKLOADS);
    let (ok, out, err) = skiff_inject(&["-f", input.to_str().expect("path")], None);
    assert!(ok, "{err}");
    for kind in [
        "Pod/debug",
        "Deployment/order",
        "StatefulSet/db",
        "DaemonSet/agent",
        "ReplicaSet/legacy",
        "Job/report",
        "CronJob/nightly",
    ] {
        assert!(
            err.contains(&format!("{kind}: injected")),
            "{kind} not injected:\n{err}"
        );
    }
    let output = dir.write("injected.yaml", &out);
    kubernetes_validate(&output);

    let docs = yaml::parse_stream(&out).expect("output parses");
    let templates = [
        (2, ""),
        (3, "spec.template."),
        (4, "spec.template."),
        (5, "spec.template."),
        (6, "spec.template."),
        (7, "spec.template."),
        (8, "spec.jobTemplate.spec.template."),
    ];
    for (index, prefix) in templates {
        let root = docs[index].root.as_ref().expect("a document");
        let spec = at(root, &format!("{prefix}spec"));
        let init = at(spec, "initContainers.0");
        let sidecar = at(spec, "initContainers.1");
        assert_eq!(text(init, "name"), "skiff-init");
        assert_eq!(text(init, "args.0"), "iptables");
        let caps = at(init, "securityContext.capabilities.add");
        assert_eq!([text(caps, "0"), text(caps, "1")], ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(text(sidecar, "name"), "skiff");
        assert_eq!(text(sidecar, "restartPolicy"), "Always");
        assert_eq!(text(sidecar, "startupProbe.httpGet.path"), "/ready");
        assert_eq!(text(sidecar, "livenessProbe.httpGet.port"), "9901");
        assert_eq!(text(sidecar, "readinessProbe.httpGet.path"), "/ready");
        assert_eq!(
            text(sidecar, "securityContext.readOnlyRootFilesystem"),
            "true"
        );
        assert_eq!(text(sidecar, "securityContext.runAsNonRoot"), "true");
        assert_ne!(text(sidecar, "securityContext.runAsUser"), "0");
        assert!(!text(sidecar, "resources.requests.cpu").is_empty());
        let env: Vec<String> = (0..3)
            .map(|i| text(sidecar, &format!("env.{i}.valueFrom.fieldRef.fieldPath")))
            .collect();
        assert_eq!(env, ["metadata.name", "metadata.namespace", "status.podIP"]);
        let annotations = at(root, &format!("{prefix}metadata.annotations"));
        let recorded: serde_json::Value = serde_json::from_str(
            annotations
                .get("skiff.io/injected")
                .and_then(Node::as_str)
                .expect("the injected annotation"),
        )
        .expect("the annotation is JSON");
        assert_eq!(
            recorded["initContainers"],
            serde_json::json!(["skiff-init", "skiff"])
        );
        // Prometheus scrapes the sidecar's admin port.
        assert_eq!(
            annotations.get("prometheus.io/port").and_then(Node::as_str),
            Some("9901")
        );
    }
    // The app's own init container still runs, after skiff is up.
    let order = docs[3].root.as_ref().expect("deployment");
    assert_eq!(len(at(order, "spec.template.spec.initContainers")), 3);
    assert_eq!(
        text(order, "spec.template.spec.initContainers.2.name"),
        "migrate"
    );
    // Its fields keep their types: quoted numbers and words stay strings.
    assert_eq!(
        at(order, "spec.template.spec.containers.0.env.1.value").value,
        Value::Scalar("8080".into(), false)
    );
    assert_eq!(
        at(order, "spec.template.spec.containers.0.env.0.value").value,
        Value::Scalar("yes".into(), false)
    );
    // The pod's annotation reaches the capture rules.
    let init_args: Vec<String> = match &at(order, "spec.template.spec.initContainers.0.args").value
    {
        Value::Seq(items) => items
            .iter()
            .map(|a| a.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => Vec::new(),
    };
    assert!(
        init_args
            .windows(2)
            .any(|w| w == ["--skip-outbound-ports", "5432"]),
        "{init_args:?}"
    );

    // Documents without workloads come out byte for byte, comments and all.
    let service_and_config = WORKLOADS
        .split("---\napiVersion: v1\nkind: Pod")
        .next()
        .expect("head");
    assert!(out.starts_with(service_and_config), "{out}");
}

#[test]
fn injecting_twice_from_stdin_equals_injecting_once() {
    let (ok, once, err) = skiff_inject(&[], Some(WORKLOADS));
    assert!(ok, "{err}");
    let (ok, twice, err) = skiff_inject(&["-f", "-"], Some(&once));
    assert!(ok, "{err}");
    assert_eq!(once, twice);
    assert!(err.contains("already injected"), "{err}");
    assert!(!err.contains(": injected"), "{err}");
}

#[test]
fn a_malformed_document_is_refused_naming_its_index_and_line() {
    let broken = format!("{WORKLOADS}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers: [{{name: x}}\n");
    let (ok, out, err) = skiff_inject(&[], Some(&broken));
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    let line = WORKLOADS.lines().count() + 6;
    assert!(err.contains("<stdin>: document 9 (line"), "{err}");
    assert!(
        err.contains(&format!("line {line}")) || err.contains(&format!("line {}", line + 1)),
        "line {line}: {err}"
    );

    let wrong_shape = format!("{WORKLOADS}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: y}}\nspec:\n  template:\n    spec:\n      containers: {{name: y}}\n");
    let (ok, _, err) = skiff_inject(&[], Some(&wrong_shape));
    assert!(!ok);
    let line = WORKLOADS.lines().count() + 8;
    assert!(
        err.contains(&format!("document 9 (line {line}): Deployment `y`: spec.template.spec.containers: expected a list")),
        "line {line}: {err}"
    );
}

// --- iptables, in network namespaces ---

fn nat_rules(ns: &Netns) -> String {
    ns.exec_ok("iptables", &["-t", "nat", "-S"])
}

fn skiff_iptables(ns: &Netns, args: &[&str]) -> String {
    let out = ns
        .command(skiff_bin().to_str().expect("path"))
        .arg("iptables")
        .args(["--ipv6", "off"])
        .args(args)
        .output()
        .expect("run skiff iptables");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn iptables_applied_twice_equals_once_and_remove_restores_the_table() {
    if !require_netns("iptables_applied_twice_equals_once_and_remove_restores_the_table") {
        return;
    }
    let ns = Netns::new("rules");
    let before = nat_rules(&ns);
    let printed = skiff_iptables(
        &ns,
        &["--dry-run", "--skip-outbound-cidrs", "198.18.5.0/24"],
    );
    assert_eq!(nat_rules(&ns), before, "--dry-run changed the rules");
    assert!(
        printed.contains("-A SKIFF_OUTBOUND -d 198.18.5.0/24 -j RETURN"),
        "{printed}"
    );

    skiff_iptables(
        &ns,
        &[
            "--skip-outbound-cidrs",
            "198.18.5.0/24",
            "--skip-inbound-ports",
            "22",
        ],
    );
    let once = nat_rules(&ns);
    skiff_iptables(
        &ns,
        &[
            "--skip-outbound-cidrs",
            "198.18.5.0/24",
            "--skip-inbound-ports",
            "22",
        ],
    );
    assert_eq!(nat_rules(&ns), once);
    for rule in [
        "-A PREROUTING -p tcp -j SKIFF_INBOUND",
        "-A OUTPUT -p tcp -j SKIFF_OUTBOUND",
        "-A SKIFF_INBOUND -p tcp -m tcp --dport 9901 -j RETURN",
        "-A SKIFF_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A SKIFF_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A SKIFF_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A SKIFF_OUTBOUND -o lo -j RETURN",
        "-A SKIFF_OUTBOUND -d 198.18.5.0/24 -j RETURN",
        "-A SKIFF_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert!(once.contains(rule), "no `{rule}` in\n{once}");
    }
    skiff_iptables(&ns, &["--remove"]);
    assert_eq!(nat_rules(&ns), before);
    // Removing what is not there is fine too.
    skiff_iptables(&ns, &["--remove"]);
}

async fn accept_one(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    tokio::time::timeout(SOON, listener.accept())
        .await
        .expect("a connection within the deadline")
        .expect("accept")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_connections_keep_their_original_destination_and_skiffs_own_are_not_captured() {
    if !require_netns(
        "captured_connections_keep_their_original_destination_and_skiffs_own_are_not_captured",
    ) {
        return;
    }
    let net = Network::new(&["198.18.0.10", "198.18.0.20"]);
    let (client, server) = (&net.pods[0], &net.pods[1]);
    skiff_iptables(client, &[]);
    let outbound = client.listen(SocketAddr::from(([0, 0, 0, 0], 4140)));
    let server_socket: SocketAddr = "198.18.0.20:8080".parse().expect("address");
    let app = server.listen(server_socket);

    // The app's connection (any uid but skiff's) lands on the outbound
    // port, which reads where it was going.
    let service: SocketAddr = "198.19.0.1:80".parse().expect("address");
    let mut conn = client
        .connect(service)
        .await
        .expect("connect through the capture");
    conn.write_all(b"hello").await.expect("write");
    let captured = accept_one(&outbound).await;
    assert_eq!(
        skiff::io::original_dst::original_destination(&captured).expect("SO_ORIGINAL_DST"),
        service
    );
    let conn2 = client.connect(server_socket).await.expect("connect");
    let captured2 = accept_one(&outbound).await;
    assert_eq!(
        skiff::io::original_dst::original_destination(&captured2).expect("SO_ORIGINAL_DST"),
        server_socket
    );
    drop((conn2, captured2));

    // Connections by skiff's uid go where they were sent.
    let status = client
        .command("setpriv")
        .args([
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/198.18.0.20/8080 && echo -n skiff >&3",
        ])
        .status()
        .expect("run bash as uid 2102");
    assert!(status.success());
    let mut direct = accept_one(&app).await;
    let mut got = String::new();
    direct.read_to_string(&mut got).await.expect("read");
    assert_eq!(got, "skiff");

    // Inbound: a connection to the server pod's app port, with the rules
    // applied there, lands on the inbound port; the admin port is not captured.
    skiff_iptables(server, &[]);
    let inbound = server.listen(SocketAddr::from(([0, 0, 0, 0], 4143)));
    let admin = server.listen("198.18.0.20:9901".parse().expect("address"));
    let _c = client
        .command("setpriv")
        .args([
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/198.18.0.20/8080",
        ])
        .status()
        .expect("connect to the app port");
    let captured = accept_one(&inbound).await;
    assert_eq!(
        skiff::io::original_dst::original_destination(&captured).expect("SO_ORIGINAL_DST"),
        server_socket
    );
    let _a = client
        .command("setpriv")
        .args([
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/198.18.0.20/9901",
        ])
        .status()
        .expect("connect to the admin port");
    accept_one(&admin).await;
    drop(conn);
}

// --- the sidecar end to end: a client pod, three server pods ---

use skiff_tests::fake_kube::{endpoint_slice, ready_pod, service, FakeKube};
use skiff_tests::netns::SkiffInNetns;
use skiff_tests::{metric_value, wait_for_async, Backend};

const CLIENT_IP: &str = "198.18.0.10";
const POD_IPS: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
/// The Services' ClusterIPs, in the range the pods route through eth0.
const CATALOG: &str = "198.19.0.10:80";
const ECHO: &str = "198.19.0.20:9000";
const ADMIN: &str = "127.0.0.1:9901";
const READY_WITHIN: Duration = Duration::from_secs(30);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn catalog_slice(ips: &[&str]) -> serde_json::Value {
    let pods: Vec<_> = ips.iter().map(|ip| ready_pod(ip)).collect();
    endpoint_slice("catalog-x1", "catalog", &[("http", 8080)], &pods)
}

/// A TCP server whose server speaks first: it greets with its name, then
/// echoes what it reads.
fn echo_server(name: String, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// The shop: the app's pod (client) with skiff as sidecar and capture
/// rules, and three catalog pods; pod-1 also has skiff with inbound capture.
struct Shop {
    net: Network,
    fake: FakeKube,
    pods: Vec<Backend>,
    client_skiff: SkiffInNetns,
    server_skiff: SkiffInNetns,
    _echo: Vec<tokio::task::JoinHandle<()>>,
    dir: TempDir,
}

impl Shop {
    async fn start(test: &str) -> Option<Shop> {
        Shop::start_with(test, None, "shop").await
    }

    /// The shop with the client's sidecar run with `client_config` (the
    /// `--sidecar` defaults when none) in the Kubernetes namespace
    /// `client_namespace`.
    async fn start_with(
        test: &str,
        client_config: Option<&str>,
        client_namespace: &str,
    ) -> Option<Shop> {
        if !require_netns(test) {
            return None;
        }
        let dir = TempDir::new("shop");
        let mut ips = vec![CLIENT_IP];
        ips.extend(POD_IPS);
        let net = Network::new(&ips);
        let mut pods = Vec::new();
        let mut echo = Vec::new();
        for (i, ip) in POD_IPS.iter().enumerate() {
            let ns = &net.pods[i + 1];
            let name = format!("pod-{}", i + 1);
            pods.push(Backend::serve(
                &name,
                ns.listen(addr(&format!("{ip}:8080"))),
            ));
            echo.push(echo_server(name, ns.listen(addr(&format!("{ip}:9000")))));
        }
        let client = &net.pods[0];
        let fake = FakeKube::unstarted();
        fake.serve(client.listen(fake.address));
        fake.apply_service(
            "shop",
            service("catalog", "198.19.0.10", &[("http", 80, 8080)]),
        );
        fake.apply_service(
            "shop",
            service("echo", "198.19.0.20", &[("tcp", 9000, 9000)]),
        );
        fake.apply("shop", catalog_slice(&POD_IPS));
        let echo_pods: Vec<_> = POD_IPS.iter().map(|ip| ready_pod(ip)).collect();
        fake.apply(
            "shop",
            endpoint_slice("echo-x1", "echo", &[("tcp", 9000)], &echo_pods),
        );
        // gRPC servers are started by the test that needs them.
        fake.apply_service(
            "shop",
            service("grpc", "198.19.0.30", &[("grpc", 50051, 50051)]),
        );
        fake.apply(
            "shop",
            endpoint_slice("grpc-x1", "grpc", &[("grpc", 50051)], &echo_pods),
        );
        let kubeconfig = fake.write_kubeconfig(&dir.0);

        skiff_iptables(client, &[]);
        let client_config = client_config.map(|text| dir.write("client.yaml", text));
        let args = match &client_config {
            None => vec!["run", "--sidecar"],
            Some(path) => vec!["run", "-c", path.to_str().expect("path")],
        };
        let client_skiff = client.skiff(
            skiff_config::sidecar::PROXY_UID,
            &[
                ("KUBECONFIG", kubeconfig.to_str().expect("path")),
                ("SKIFF_POD_NAMESPACE", client_namespace),
            ],
            &args,
            &dir.path("client-skiff.log"),
        );
        // pod-1's sidecar captures inbound only (it calls no Service).
        let server = &net.pods[1];
        skiff_iptables(server, &[]);
        let config = dir.write(
            "server.yaml",
            "admin: { listen: 0.0.0.0:9901 }\nlisteners:\n  - name: inbound\n    listen: 0.0.0.0:4143\n    capture: { direction: inbound }\n",
        );
        let server_skiff = server.skiff(
            skiff_config::sidecar::PROXY_UID,
            &[],
            &["run", "-c", config.to_str().expect("path")],
            &dir.path("server-skiff.log"),
        );
        let shop = Shop {
            net,
            fake,
            pods,
            client_skiff,
            server_skiff,
            _echo: echo,
            dir,
        };
        for (ns, skiff) in [
            (&shop.net.pods[0], &shop.client_skiff),
            (&shop.net.pods[1], &shop.server_skiff),
        ] {
            wait_for_async("skiff ready", READY_WITHIN, || async {
                matches!(ns.get(addr(ADMIN), "/ready").await, Ok((s, _)) if s == 200)
            })
            .await;
            let _ = skiff;
        }
        Some(shop)
    }

    fn client(&self) -> &Netns {
        &self.net.pods[0]
    }

    fn served(&self) -> Vec<u64> {
        self.pods.iter().map(Backend::requests).collect()
    }

    async fn metrics(&self, ns: &Netns) -> String {
        ns.get(addr(ADMIN), "/metrics").await.expect("/metrics").1
    }

    fn logs(&self) -> String {
        format!(
            "client skiff:\n{}\nserver skiff:\n{}",
            self.client_skiff.log_text(),
            self.server_skiff.log_text()
        )
    }
}

/// Sends `n` GETs on one connection; returns the backends that answered.
async fn spread(client: &mut skiff_tests::Client, n: usize, shop: &Shop) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (status, backend, body) = client
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("request: {e}\n{}", shop.logs()));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        seen.push(backend);
    }
    seen
}

fn distinct(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

/// GETs `path` from the client pod to the catalog's ClusterIP: the pod
/// that answered and the `x-route` header the mesh's route set.
async fn routed(shop: &Shop, path: &str) -> (String, String) {
    let mut client = shop.client().h1(addr(CATALOG)).await.expect("connect");
    let req = http::Request::get(path)
        .header("host", "catalog.shop")
        .body(skiff_tests::empty())
        .unwrap();
    let resp = client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("request: {e}\n{}", shop.logs()));
    let header = |n: &str| {
        (resp.headers().get(n))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let seen = (header("x-backend"), header("x-route"));
    skiff_tests::collect_body(resp.into_body()).await;
    seen
}

/// The Gateway API's mesh (GAMMA) in the sidecar: a producer route (in
/// the Service's namespace) shapes every client's calls to the catalog
/// (a path to another Service, a response header), a consumer route in
/// the client's own namespace takes its place for that client, and
/// removing it puts the producer's back: all live, on one pod's sidecar
/// reached through its real capture rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_routes_producer_and_consumer_shape_a_services_calls() {
    let config = "admin: { listen: 0.0.0.0:9901 }\n\
        listeners:\n\
        \x20 - name: inbound\n    listen: 0.0.0.0:4143\n    capture: { direction: inbound }\n\
        \x20 - name: outbound\n    listen: 127.0.0.1:4140\n    capture: { direction: outbound, namespaces: [shop], routes: true }\n";
    let test = "mesh_routes_producer_and_consumer_shape_a_services_calls";
    let Some(shop) = Shop::start_with(test, Some(config), "frontend").await else {
        return;
    };
    // catalog-v2: the third pod alone, never called by its own address.
    shop.fake.apply_service(
        "shop",
        service("catalog-v2", "198.19.0.11", &[("http", 80, 8080)]),
    );
    shop.fake.apply(
        "shop",
        endpoint_slice(
            "catalog-v2-x1",
            "catalog-v2",
            &[("http", 8080)],
            &[ready_pod(POD_IPS[2])],
        ),
    );
    let set = |value: &str| {
        serde_json::json!([{ "type": "ResponseHeaderModifier",
            "responseHeaderModifier": { "set": [{ "name": "x-route", "value": value }] } }])
    };
    let parent = serde_json::json!([{ "group": "", "kind": "Service", "name": "catalog", "namespace": "shop", "port": 80 }]);
    shop.fake.apply_object(serde_json::json!({
        "kind": "HTTPRoute",
        "metadata": { "name": "catalog-producer", "namespace": "shop", "generation": 1 },
        "spec": { "parentRefs": parent, "rules": [
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/v2" } }],
              "filters": set("producer-v2"),
              "backendRefs": [{ "name": "catalog-v2", "port": 80 }] },
            { "filters": set("producer"), "backendRefs": [{ "name": "catalog", "port": 80 }] }
        ] }
    }));
    wait_for_async("the producer route", READY_WITHIN, || async {
        routed(&shop, "/v2/item").await.1 == "producer-v2"
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            routed(&shop, "/v2/item").await,
            ("pod-3".to_string(), "producer-v2".to_string()),
            "/v2 goes to catalog-v2 (pod-3 alone)"
        );
    }
    let mut pods = Vec::new();
    for _ in 0..30 {
        let (pod, route) = routed(&shop, "/other").await;
        assert_eq!(route, "producer");
        pods.push(pod);
    }
    assert_eq!(distinct(pods), ["pod-1", "pod-2", "pod-3"]);

    // A consumer route in the client's namespace replaces the producer's
    // for this client: no /v2 rule any more.
    shop.fake.apply_object(serde_json::json!({
        "kind": "HTTPRoute",
        "metadata": { "name": "catalog-consumer", "namespace": "frontend", "generation": 1 },
        "spec": { "parentRefs": parent, "rules": [
            { "filters": set("consumer"), "backendRefs": [{ "name": "catalog", "namespace": "shop", "port": 80 }] }
        ] }
    }));
    wait_for_async("the consumer route", READY_WITHIN, || async {
        routed(&shop, "/v2/item").await.1 == "consumer"
    })
    .await;
    let mut pods = Vec::new();
    for _ in 0..30 {
        let (pod, route) = routed(&shop, "/v2/item").await;
        assert_eq!(route, "consumer", "{}", shop.logs());
        pods.push(pod);
    }
    assert_eq!(distinct(pods), ["pod-1", "pod-2", "pod-3"]);

    shop.fake
        .delete_object("HTTPRoute", "frontend", "catalog-consumer");
    wait_for_async("the producer route again", READY_WITHIN, || async {
        routed(&shop, "/v2/item").await.1 == "producer-v2"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_to_a_service_ip_are_spread_across_its_pods() {
    let Some(shop) = Shop::start("http1_requests_to_a_service_ip_are_spread_across_its_pods").await
    else {
        return;
    };
    let mut client = shop
        .client()
        .h1(addr(CATALOG))
        .await
        .expect("connect to the ClusterIP");
    let seen = spread(&mut client, 60, &shop).await;
    assert_eq!(distinct(seen), ["pod-1", "pod-2", "pod-3"]);
    // Each request went out once: skiff's own upstream connections were
    // not captured again (no loop).
    let metrics = shop.metrics(shop.client()).await;
    let counted = metric_value(
        &metrics,
        "skiff_requests_total",
        &[
            ("listener", "outbound"),
            ("cluster", "catalog.shop.http"),
            ("code_class", "2xx"),
        ],
    );
    assert_eq!(counted, Some(60.0), "{metrics}");
    assert_eq!(shop.served().iter().sum::<u64>(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connections_requests_are_spread_across_all_three_pods() {
    let Some(shop) =
        Shop::start("one_http2_connections_requests_are_spread_across_all_three_pods").await
    else {
        return;
    };
    let mut client = shop
        .client()
        .h2(addr(CATALOG))
        .await
        .expect("connect to the ClusterIP");
    let seen = spread(&mut client, 60, &shop).await;
    assert_eq!(
        distinct(seen),
        ["pod-1", "pod-2", "pod-3"],
        "{:?}",
        shop.served()
    );
    assert!(shop.served().iter().all(|&n| n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_to_a_service_works_when_the_server_speaks_first() {
    let Some(shop) =
        Shop::start("opaque_tcp_to_a_service_works_when_the_server_speaks_first").await
    else {
        return;
    };
    let mut greeted = Vec::new();
    for _ in 0..12 {
        let mut conn = shop
            .client()
            .connect(addr(ECHO))
            .await
            .expect("connect to the ClusterIP");
        // The client says nothing first: detection times out to opaque.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            let n = tokio::time::timeout(SOON, conn.read(&mut byte))
                .await
                .expect("greeting in time")
                .expect("read");
            assert_eq!(n, 1, "closed before the greeting\n{}", shop.logs());
            line.push(byte[0]);
        }
        greeted.push(String::from_utf8_lossy(&line).trim().to_string());
        conn.write_all(b"\x00\x01binary\xff").await.expect("write");
        let mut back = [0u8; 9];
        tokio::time::timeout(SOON, conn.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(&back, b"\x00\x01binary\xff");
    }
    // Per connection balancing: more than one pod took connections.
    assert!(distinct(greeted.clone()).len() > 1, "{greeted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_is_not_a_service_passes_through() {
    let Some(shop) = Shop::start("a_destination_that_is_not_a_service_passes_through").await else {
        return;
    };
    let pod2 = addr(&format!("{}:8080", POD_IPS[1]));
    let mut client = shop.client().h1(pod2).await.expect("connect to pod-2");
    let seen = spread(&mut client, 5, &shop).await;
    assert_eq!(distinct(seen), ["pod-2"]);
    assert_eq!(shop.served(), [0, 5, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_capture_counts_the_requests_in_the_servers_metrics() {
    let Some(shop) =
        Shop::start("inbound_capture_counts_the_requests_in_the_servers_metrics").await
    else {
        return;
    };
    let mut client = shop
        .client()
        .h1(addr(CATALOG))
        .await
        .expect("connect to the ClusterIP");
    spread(&mut client, 30, &shop).await;
    let served_by_pod1 = shop.served()[0];
    assert!(served_by_pod1 > 0);
    let server = &shop.net.pods[1];
    let metrics = shop.metrics(server).await;
    let counted = metric_value(
        &metrics,
        "skiff_requests_total",
        &[
            ("listener", "inbound"),
            ("cluster", "inbound.8080"),
            ("code_class", "2xx"),
        ],
    );
    assert_eq!(counted, Some(served_by_pod1 as f64), "{metrics}");

    // Its admin server answers probes and scrapes from anywhere, but no
    // other pod may drain it.
    let admin = addr(&format!("{}:9901", POD_IPS[0]));
    let mut from_client = shop
        .client()
        .h1(admin)
        .await
        .expect("connect to pod-1's admin");
    let drain = http::Request::post("/drain")
        .header("host", "pod-1")
        .body(skiff_tests::empty())
        .expect("request");
    let response = from_client.send(drain).await.expect("POST /drain");
    assert_eq!(response.status(), 403);
    let (status, _) = shop.client().get(admin, "/ready").await.expect("/ready");
    assert_eq!(status, 200);

    // A reload keeps the destinations' series (they are in no route list).
    let config = shop.dir.path("server.yaml");
    let text = std::fs::read_to_string(&config).expect("server config");
    shop.dir
        .write("server.yaml", &format!("# reloaded\n{text}"));
    wait_for_async("the server's skiff reloaded", SOON, || async {
        let metrics = shop.metrics(server).await;
        metric_value(
            &metrics,
            "skiff_config_reloads_total",
            &[("result", "success")],
        ) == Some(1.0)
    })
    .await;
    let metrics = shop.metrics(server).await;
    let counted = metric_value(
        &metrics,
        "skiff_requests_total",
        &[
            ("listener", "inbound"),
            ("cluster", "inbound.8080"),
            ("code_class", "2xx"),
        ],
    );
    assert_eq!(counted, Some(served_by_pod1 as f64), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pods_endpoint_under_load_loses_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    let Some(shop) = Shop::start("removing_a_pods_endpoint_under_load_loses_no_request").await
    else {
        return;
    };
    let shop = Arc::new(shop);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for h2 in [true, true, false, false] {
        let (shop, stop, ok, failed, errors) = (
            shop.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
        );
        load.push(tokio::spawn(async move {
            let connect = || async {
                if h2 {
                    shop.client().h2(addr(CATALOG)).await
                } else {
                    shop.client().h1(addr(CATALOG)).await
                }
            };
            let mut client = connect().await.expect("connect");
            while !stop.load(Relaxed) {
                match client.get("/").await {
                    Ok((s, _, _)) if s == 200 => ok.fetch_add(1, Relaxed),
                    Ok((s, _, body)) => {
                        errors
                            .lock()
                            .push(format!("{s}: {}", String::from_utf8_lossy(&body)));
                        failed.fetch_add(1, Relaxed)
                    }
                    Err(e) => {
                        errors.lock().push(e.to_string());
                        client = connect().await.expect("reconnect");
                        failed.fetch_add(1, Relaxed)
                    }
                };
            }
        }));
    }
    wait_for("every pod serving", SOON, || {
        shop.served().iter().all(|&n| n > 0)
    })
    .await;
    // pod-3 leaves the Service (its pod keeps serving what it has, as a
    // terminating pod does).
    shop.fake.apply("shop", catalog_slice(&POD_IPS[..2]));
    let pod3 = format!("{}:8080", POD_IPS[2]);
    wait_for_async("pod-3 out of the client's clusters", SOON, || async {
        let clusters = shop
            .client()
            .get(addr(ADMIN), "/clusters")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        clusters.contains("catalog.shop.http") && !clusters.contains(&pod3)
    })
    .await;
    let pod3_after = shop.served()[2];
    let at = ok.load(Relaxed);
    wait_for("200 more requests", SOON, || ok.load(Relaxed) >= at + 200).await;
    stop.store(true, Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let errors = errors.lock().clone();
    assert_eq!(failed.load(Relaxed), 0, "{errors:?}");
    assert_eq!(
        shop.served()[2],
        pod3_after,
        "pod-3 took requests after it left"
    );
}

async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, check: F) {
    skiff_tests::wait_for(what, limit, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_dual_stack_connections_keep_their_original_destination() {
    if !require_netns("ipv6_and_dual_stack_connections_keep_their_original_destination") {
        return;
    }
    let net = Network::new(&["198.18.0.10", "198.18.0.20"]);
    let client = &net.pods[0];
    // IPv6's benchmarking prefix (RFC 5180), as 198.18.0.0/15 is IPv4's.
    client.ip(&["addr", "add", "2001:2::10/64", "dev", "eth0", "nodad"]);
    let out = client
        .command(skiff_bin().to_str().expect("path"))
        .args(["iptables", "--ipv6", "on"])
        .output()
        .expect("skiff iptables");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One dual-stack socket takes both families, as `skiff run --sidecar`'s
    // inbound one does.
    let outbound_v6 = client.listen(addr("[::1]:4140"));
    let outbound_v4 = client.listen(addr("127.0.0.1:4140"));

    let v6: SocketAddr = addr("[2001:2::20]:8080");
    let _c6 = client.connect(v6).await.expect("connect over IPv6");
    let captured = accept_one(&outbound_v6).await;
    assert_eq!(
        skiff::io::original_dst::original_destination(&captured).expect("IP6T_SO_ORIGINAL_DST"),
        v6
    );
    let v4 = addr("198.19.0.1:80");
    let _c4 = client.connect(v4).await.expect("connect over IPv4");
    let captured = accept_one(&outbound_v4).await;
    assert_eq!(
        skiff::io::original_dst::original_destination(&captured).expect("SO_ORIGINAL_DST"),
        v4
    );

    // Inbound on a dual-stack listener: an IPv4 connection arrives v4-mapped.
    let server = &net.pods[1];
    let out = server
        .command(skiff_bin().to_str().expect("path"))
        .args(["iptables", "--ipv6", "on"])
        .output()
        .expect("skiff iptables");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inbound = server.listen(addr("[::]:4143"));
    let app = addr("198.18.0.20:8080");
    let _c = client
        .command("setpriv")
        .args([
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/198.18.0.20/8080",
        ])
        .status()
        .expect("connect to the app port");
    let captured = accept_one(&inbound).await;
    assert!(captured.local_addr().expect("local").is_ipv6());
    assert_eq!(
        skiff::io::original_dst::original_destination(&captured).expect("SO_ORIGINAL_DST"),
        app
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_list_of_services_and_says_so() {
    use skiff_tests::{admin_get, free_port, SkiffProcess};
    let dir = TempDir::new("sidecar-ready");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let outbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.write(
        "skiff.yaml",
        &format!(
            "admin: {{ listen: {admin} }}\nlisteners:\n  - name: outbound\n    listen: {outbound}\n    capture: {{ direction: outbound, namespaces: [shop] }}\n"
        ),
    );
    // No API server at all: the Services are never listed.
    let missing = dir.path("no-kubeconfig");
    let skiff = SkiffProcess::start_with_env(
        &config,
        admin,
        &[],
        &[("KUBECONFIG", &missing), ("HOME", &dir.0)],
    )
    .await;
    let (status, body) = admin_get(admin, "/ready").await.expect("/ready");
    assert_eq!(status, 503);
    assert!(
        body.contains("waiting for the Services of namespace shop"),
        "{body}"
    );
    // Not run as the sidecar's uid: it warns that the rules must exclude its own.
    let log = skiff.log_text();
    assert!(
        log.contains("outbound capture while running as uid"),
        "{log}"
    );

    // With the API server, it becomes ready.
    let fake = FakeKube::start_new().await;
    fake.apply_service(
        "shop",
        service("catalog", "198.19.0.10", &[("http", 80, 8080)]),
    );
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    drop(skiff);
    let _skiff =
        SkiffProcess::start_with_env(&config, admin, &[], &[("KUBECONFIG", &kubeconfig)]).await;
    wait_for_async("ready", SOON, || async {
        matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200)
    })
    .await;
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_channel_through_the_sidecar_keeps_streams_trailers_and_statuses() {
    use std::io::BufRead;
    let Some(shop) =
        Shop::start("a_grpc_channel_through_the_sidecar_keeps_streams_trailers_and_statuses").await
    else {
        return;
    };
    skiff_tests::require_python_module("grpc", "grpcio");
    let script = skiff_tests::py_script("grpc_echo.py");
    let mut servers = Vec::new();
    for (i, ip) in POD_IPS.iter().enumerate() {
        let mut child = shop.net.pods[i + 1]
            .command("python3")
            .arg(&script)
            .args(["server", &format!("{ip}:50051")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a gRPC server");
        let stdout = child.stdout.take().expect("stdout");
        servers.push(Killed(child));
        // It prints its port once it serves.
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's port");
        assert_eq!(line.trim(), "50051");
    }
    // The real grpcio client, in the app's pod: its one channel to the
    // Service's ClusterIP is captured and detected as HTTP/2.
    let out = shop
        .client()
        .command("python3")
        .arg(&script)
        .args(["client", "198.19.0.30:50051"])
        .output()
        .expect("run the gRPC client");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        shop.logs()
    );
    let metrics = shop.metrics(shop.client()).await;
    let answered: f64 = ["2xx"]
        .iter()
        .filter_map(|class| {
            metric_value(
                &metrics,
                "skiff_requests_total",
                &[
                    ("listener", "outbound"),
                    ("cluster", "grpc.shop.grpc.h2"),
                    ("code_class", class),
                ],
            )
        })
        .sum();
    // Say, Count and Missing: three requests, balanced one by one.
    assert_eq!(answered, 3.0, "{metrics}");
    drop(servers);
}

#[test]
fn every_truncation_of_a_stream_is_injected_or_refused_by_document_and_line() {
    // Cut anywhere (mid-scalar, mid-flow, mid-document): never a panic;
    // either a result that injecting again leaves as it is, or an error
    // naming the document and line.
    let options = skiff::cli::inject::Options::default();
    let mut refused = 0;
    for end in (0..=WORKLOADS.len()).filter(|&i| WORKLOADS.is_char_boundary(i)) {
        match skiff::cli::inject::inject(&WORKLOADS[..end], &options) {
            Ok(done) => {
                let again = skiff::cli::inject::inject(&done.yaml, &options).unwrap_or_else(|e| {
                    panic!(
                        "output of a {end}-byte prefix does not parse: {e}\n{}",
                        done.yaml
                    )
                });
                assert_eq!(again.yaml, done.yaml, "prefix of {end} bytes");
            }
            Err(e) => {
                refused += 1;
                let message = e.to_string();
                assert!(message.starts_with("document "), "{message}");
                assert!(message.contains("(line "), "{message}");
            }
        }
    }
    assert!(refused > 0, "some cuts must be malformed");
}

#[test]
fn a_stream_with_a_character_changed_is_injected_or_refused_never_garbled() {
    // One character replaced by YAML punctuation, everywhere: the output,
    // when there is one, must read back the same (the emitter quotes what
    // needs quoting), and errors name the document and line.
    let options = skiff::cli::inject::Options::default();
    for (i, _) in WORKLOADS.char_indices().step_by(3) {
        for c in ['"', ':', '{', '\n'] {
            let mut text = WORKLOADS.to_string();
            let width = text[i..].chars().next().map_or(1, char::len_utf8);
            text.replace_range(i..i + width, &c.to_string());
            match skiff::cli::inject::inject(&text, &options) {
                Ok(done) => {
                    let again =
                        skiff::cli::inject::inject(&done.yaml, &options).unwrap_or_else(|e| {
                            panic!("output for {c:?} at {i} does not parse: {e}\n{}", done.yaml)
                        });
                    assert_eq!(again.yaml, done.yaml, "{c:?} at {i}");
                }
                Err(e) => assert!(e.to_string().starts_with("document "), "{e}"),
            }
        }
    }
}

// --- mTLS between sidecars: client pods and server pods with real iptables ---

use skiff_tests::tls::{Ca, Subject};

const FRONTEND: usize = 0;
const INTRUDER: usize = 1;
const OUTSIDER: usize = 2;
const CATALOG_POD: usize = 3;
const LEDGER_POD: usize = 4;
const PLAIN_POD: usize = 5;
/// frontend, intruder, outsider (no sidecar), catalog (permissive, allows
/// frontend only), ledger (strict), plain (no sidecar).
const MESH_IPS: [&str; 6] = [
    "198.18.0.10",
    "198.18.0.30",
    "198.18.0.40",
    "198.18.0.11",
    "198.18.0.12",
    "198.18.0.13",
];
const LEDGER: &str = "198.19.0.40:80";
const PLAIN: &str = "198.19.0.50:80";
/// Sent by the apps in every request: a packet with it on the way into a
/// server pod was plaintext on the wire.
const CANARY: &str = "plaintext-canary-7f3a";

fn spiffe(account: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{account}")
}

/// Counts packets arriving at `ns` from the network (before capture;
/// not the sidecar's own to the app) that carry [`CANARY`].
fn watch_for_canary(ns: &Netns) {
    ns.exec_ok(
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "eth0",
            "-p",
            "tcp",
            "-m",
            "string",
            "--string",
            CANARY,
            "--algo",
            "bm",
            "-j",
            "ACCEPT",
        ],
    );
}

fn canary_packets(ns: &Netns) -> u64 {
    let out = ns.exec_ok(
        "iptables",
        &["-t", "mangle", "-L", "PREROUTING", "-v", "-n", "-x"],
    );
    out.lines()
        .find(|l| l.contains(CANARY))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A shop whose sidecars speak mTLS to each other.
struct MeshShop {
    net: Network,
    _fake: FakeKube,
    apps: Vec<Backend>,
    skiffs: Vec<SkiffInNetns>,
    _echo: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl MeshShop {
    async fn start(test: &str) -> Option<MeshShop> {
        if !require_netns(test) {
            return None;
        }
        let dir = TempDir::new("mesh");
        let net = Network::new(&MESH_IPS);
        let ca = Ca::new("skiff mesh CA");
        // Each pod's mounted Secret: tls.crt, tls.key, ca.crt.
        let secret = |name: &str, account: &str| {
            let folder = dir.0.join(name);
            std::fs::create_dir_all(&folder).expect("secret folder");
            let issued = ca.issue(Subject {
                uris: &[&spiffe(account)],
                ..Subject::default()
            });
            std::fs::write(folder.join("tls.crt"), &issued.cert).expect("tls.crt");
            std::fs::write(folder.join("tls.key"), &issued.key).expect("tls.key");
            std::fs::write(folder.join("ca.crt"), &ca.pem).expect("ca.crt");
            folder
        };
        let mut apps = Vec::new();
        for (pod, name) in [
            (CATALOG_POD, "catalog"),
            (LEDGER_POD, "ledger"),
            (PLAIN_POD, "plain"),
        ] {
            let ip = MESH_IPS[pod];
            apps.push(Backend::serve(
                name,
                net.pods[pod].listen(addr(&format!("{ip}:8080"))),
            ));
        }
        let echo = echo_server(
            "catalog".into(),
            net.pods[CATALOG_POD].listen(addr(&format!("{}:9000", MESH_IPS[CATALOG_POD]))),
        );

        let fake = FakeKube::unstarted();
        let annotated = |mut svc: serde_json::Value, key: &str, value: &str| {
            svc["metadata"]["annotations"] = serde_json::json!({ key: value });
            svc
        };
        let one_pod = |slice: &str, service: &str, port: (&str, u16), pod: usize| {
            endpoint_slice(slice, service, &[port], &[ready_pod(MESH_IPS[pod])])
        };
        fake.apply_service(
            "shop",
            service("catalog", "198.19.0.10", &[("http", 80, 8080)]),
        );
        fake.apply(
            "shop",
            one_pod("catalog-x1", "catalog", ("http", 8080), CATALOG_POD),
        );
        // The echo server runs in the catalog's pods, as its account.
        fake.apply_service(
            "shop",
            annotated(
                service("echo", "198.19.0.20", &[("tcp", 9000, 9000)]),
                skiff_config::sidecar::SERVICE_ACCOUNT_ANNOTATION,
                "catalog",
            ),
        );
        fake.apply(
            "shop",
            one_pod("echo-x1", "echo", ("tcp", 9000), CATALOG_POD),
        );
        fake.apply_service(
            "shop",
            annotated(
                service("ledger", "198.19.0.40", &[("http", 80, 8080)]),
                skiff_config::sidecar::SERVICE_ACCOUNT_ANNOTATION,
                "ledger-sa",
            ),
        );
        fake.apply(
            "shop",
            one_pod("ledger-x1", "ledger", ("http", 8080), LEDGER_POD),
        );
        fake.apply_service(
            "shop",
            annotated(
                service("plain", "198.19.0.50", &[("http", 80, 8080)]),
                skiff_config::sidecar::MTLS_ANNOTATION,
                "disabled",
            ),
        );
        fake.apply(
            "shop",
            one_pod("plain-x1", "plain", ("http", 8080), PLAIN_POD),
        );
        // Says the catalog pod runs as `payments`: its sidecar cannot prove it.
        fake.apply_service(
            "shop",
            annotated(
                service("impostor", "198.19.0.60", &[("http", 80, 8080)]),
                skiff_config::sidecar::SERVICE_ACCOUNT_ANNOTATION,
                "payments",
            ),
        );
        fake.apply(
            "shop",
            one_pod("impostor-x1", "impostor", ("http", 8080), CATALOG_POD),
        );
        let kubeconfig = fake.write_kubeconfig(&dir.0);

        let mut skiffs = Vec::new();
        for (pod, name, account) in [
            (FRONTEND, "frontend", "frontend"),
            (INTRUDER, "intruder", "intruder"),
        ] {
            let ns = &net.pods[pod];
            fake.serve(ns.listen(fake.address));
            skiff_iptables(ns, &[]);
            let secret = secret(name, account);
            skiffs.push(ns.skiff(
                skiff_config::sidecar::PROXY_UID,
                &[
                    ("KUBECONFIG", kubeconfig.to_str().expect("path")),
                    ("SKIFF_POD_NAMESPACE", "shop"),
                ],
                &[
                    "run",
                    "--sidecar",
                    "--mesh-dir",
                    secret.to_str().expect("path"),
                ],
                &dir.path(&format!("{name}-skiff.log")),
            ));
        }
        for (pod, name, account, extra) in [
            (
                CATALOG_POD,
                "catalog",
                "catalog",
                format!("  allow: [\"{}\"]\n", spiffe("frontend")),
            ),
            (
                LEDGER_POD,
                "ledger",
                "ledger-sa",
                "  mode: strict\n".to_string(),
            ),
        ] {
            let ns = &net.pods[pod];
            skiff_iptables(ns, &[]);
            watch_for_canary(ns);
            secret(name, account);
            let config = dir.write(
                &format!("{name}.yaml"),
                &format!(
                    "admin: {{ listen: 0.0.0.0:9901 }}\n\
                     listeners:\n  - name: inbound\n    listen: 0.0.0.0:4143\n    capture: {{ direction: inbound }}\n\
                     mesh:\n  cert: {name}/tls.crt\n  key: {name}/tls.key\n  ca: {name}/ca.crt\n{extra}"
                ),
            );
            skiffs.push(ns.skiff(
                skiff_config::sidecar::PROXY_UID,
                &[],
                &["run", "-c", config.to_str().expect("path")],
                &dir.path(&format!("{name}-skiff.log")),
            ));
        }
        let shop = MeshShop {
            net,
            _fake: fake,
            apps,
            skiffs,
            _echo: echo,
            _dir: dir,
        };
        for pod in [FRONTEND, INTRUDER, CATALOG_POD, LEDGER_POD] {
            let ns = &shop.net.pods[pod];
            wait_for_async("skiff ready", READY_WITHIN, || async {
                matches!(ns.get(addr(ADMIN), "/ready").await, Ok((s, _)) if s == 200)
            })
            .await;
        }
        Some(shop)
    }

    fn pod(&self, i: usize) -> &Netns {
        &self.net.pods[i]
    }

    async fn metrics(&self, pod: usize) -> String {
        self.pod(pod)
            .get(addr(ADMIN), "/metrics")
            .await
            .expect("/metrics")
            .1
    }

    fn logs(&self) -> String {
        self.skiffs
            .iter()
            .map(|s| format!("{}:\n{}\n", s.log.display(), s.log_text()))
            .collect()
    }

    /// GETs `/headers` from `pod` to `address`, claiming to be `admin`
    /// and carrying the canary: status and the headers the app saw (or
    /// the body as a string when it is not the app's answer).
    async fn headers(
        &self,
        pod: usize,
        address: &str,
        h2: bool,
    ) -> Result<(http::StatusCode, serde_json::Value), String> {
        let ns = self.pod(pod);
        let mut client = if h2 {
            ns.h2(addr(address)).await
        } else {
            ns.h1(addr(address)).await
        }
        .map_err(|e| e.to_string())?;
        let req = http::Request::get("/headers")
            .header("x-client-identity", spiffe("admin"))
            .header("x-canary", CANARY)
            .body(skiff_tests::empty())
            .expect("request");
        let resp = client.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = skiff_tests::collect_body(resp.into_body()).await;
        let seen = serde_json::from_slice(&body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into());
        Ok((status, seen))
    }
}

fn tls_metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(metrics, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_speak_mtls_to_each_other_and_the_app_sees_the_callers_identity() {
    let Some(shop) =
        MeshShop::start("sidecars_speak_mtls_to_each_other_and_the_app_sees_the_callers_identity")
            .await
    else {
        return;
    };
    for h2 in [false, true] {
        let (status, seen) = shop
            .headers(FRONTEND, CATALOG, h2)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", shop.logs()));
        assert_eq!(status, 200, "{seen}\n{}", shop.logs());
        // The identity the client's certificate proves, not the one it claimed.
        assert_eq!(seen["x-client-identity"], spiffe("frontend"), "{seen}");
        assert_eq!(seen["x-canary"], CANARY);
    }
    // Opaque TCP (the server speaks first) goes over mTLS too.
    let mut conn = shop
        .pod(FRONTEND)
        .connect(addr(ECHO))
        .await
        .expect("connect to the echo Service");
    let mut greeting = [0u8; 8];
    tokio::time::timeout(SOON, conn.read_exact(&mut greeting))
        .await
        .expect("greeting in time")
        .unwrap_or_else(|e| panic!("read: {e}\n{}", shop.logs()));
    assert_eq!(&greeting, b"catalog\n");
    conn.write_all(CANARY.as_bytes()).await.expect("write");
    let mut back = vec![0u8; CANARY.len()];
    tokio::time::timeout(SOON, conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(back, CANARY.as_bytes());
    drop(conn);

    // None of it crossed the wire in plaintext, and the server's sidecar
    // counted the handshakes and the requests.
    let pod = shop.pod(CATALOG_POD);
    assert_eq!(canary_packets(pod), 0, "plaintext reached the catalog pod");
    let metrics = shop.metrics(CATALOG_POD).await;
    let handshakes = tls_metric(
        &metrics,
        "skiff_tls_handshakes_total",
        &[("listener", "inbound")],
    );
    assert!(handshakes >= 3.0, "{metrics}");
    for cluster in ["inbound.8080", "inbound.8080.h2"] {
        let served = metric_value(
            &metrics,
            "skiff_requests_total",
            &[
                ("listener", "inbound"),
                ("cluster", cluster),
                ("code_class", "2xx"),
            ],
        );
        assert_eq!(served, Some(1.0), "{cluster}\n{metrics}");
    }

    // Strict, and the account named by the Service's annotation.
    let (status, seen) = shop.headers(FRONTEND, LEDGER, false).await.expect("ledger");
    assert_eq!(status, 200, "{seen}\n{}", shop.logs());
    assert_eq!(seen["x-client-identity"], spiffe("frontend"));
    assert_eq!(canary_packets(shop.pod(LEDGER_POD)), 0);
    // A Service whose pods have no sidecar is called in plaintext.
    let (status, seen) = shop.headers(FRONTEND, PLAIN, false).await.expect("plain");
    assert_eq!(status, 200, "{seen}\n{}", shop.logs());
    assert_eq!(shop.apps[2].requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_not_allowed_are_refused_both_ways() {
    let Some(shop) = MeshShop::start("identities_not_allowed_are_refused_both_ways").await else {
        return;
    };
    // A client from the mesh's CA, but not on the catalog's allow list.
    let (status, _) = shop
        .headers(INTRUDER, CATALOG, false)
        .await
        .expect("a response");
    assert_eq!(status, 502, "{}", shop.logs());
    assert_eq!(shop.apps[0].requests(), 0);
    let metrics = shop.metrics(CATALOG_POD).await;
    let refused = tls_metric(
        &metrics,
        "skiff_tls_errors_total",
        &[("listener", "inbound"), ("reason", "client_cert")],
    );
    assert!(refused >= 1.0, "{metrics}");
    let log = shop.skiffs[2].log_text();
    assert!(
        log.contains(&format!(
            "client identity {} is not in client_auth.allow",
            spiffe("intruder")
        )),
        "{log}"
    );
    // The same client where no allow list is set: it is the list that refused.
    let (status, seen) = shop.headers(INTRUDER, LEDGER, false).await.expect("ledger");
    assert_eq!(status, 200, "{}", shop.logs());
    assert_eq!(seen["x-client-identity"], spiffe("intruder"));

    // A server that cannot prove the identity its Service names.
    let (status, body) = shop
        .headers(FRONTEND, "198.19.0.60:80", false)
        .await
        .expect("a response");
    assert_eq!(status, 502);
    assert_eq!(shop.apps[0].requests(), 0);
    let why = body.as_str().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "the server's identity is {}, expected {}",
            spiffe("catalog"),
            spiffe("payments")
        )),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_served_when_permissive_and_refused_when_strict() {
    let Some(shop) =
        MeshShop::start("plaintext_clients_are_served_when_permissive_and_refused_when_strict")
            .await
    else {
        return;
    };
    // The outsider has no sidecar: it calls the pods directly.
    let catalog = format!("{}:8080", MESH_IPS[CATALOG_POD]);
    let (status, seen) = shop
        .headers(OUTSIDER, &catalog, false)
        .await
        .expect("catalog");
    assert_eq!(status, 200, "{}", shop.logs());
    // Its claim to an identity is dropped, not passed on.
    assert_eq!(seen.get("x-client-identity"), None, "{seen}");
    // The canary rule sees plaintext when there is some.
    assert!(canary_packets(shop.pod(CATALOG_POD)) > 0);

    let ledger = format!("{}:8080", MESH_IPS[LEDGER_POD]);
    let refused = shop.headers(OUTSIDER, &ledger, false).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(shop.apps[1].requests(), 0);
    let metrics = shop.metrics(LEDGER_POD).await;
    let counted = tls_metric(
        &metrics,
        "skiff_tls_errors_total",
        &[("listener", "inbound"), ("reason", "plaintext")],
    );
    assert!(counted >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_watch_stops_when_idle_and_the_next_call_starts_it() {
    if !require_netns("the_service_watch_stops_when_idle_and_the_next_call_starts_it") {
        return;
    }
    let dir = TempDir::new("idle-watch");
    let net = Network::new(&[CLIENT_IP, POD_IPS[0]]);
    let (client, server) = (&net.pods[0], &net.pods[1]);
    let app = Backend::serve(
        "pod-1",
        server.listen(addr(&format!("{}:8080", POD_IPS[0]))),
    );
    let fake = FakeKube::unstarted();
    fake.serve(client.listen(fake.address));
    fake.apply_service(
        "shop",
        service("catalog", "198.19.0.10", &[("http", 80, 8080)]),
    );
    fake.apply("shop", catalog_slice(&POD_IPS[..1]));
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    skiff_iptables(client, &[]);
    let config = dir.write(
        "client.yaml",
        "admin: { listen: 127.0.0.1:9901 }\nlisteners:\n  - name: outbound\n    listen: 127.0.0.1:4140\n    capture: { direction: outbound, namespaces: [shop], watch_idle_timeout: 2s }\n",
    );
    let skiff = client.skiff(
        skiff_config::sidecar::PROXY_UID,
        &[("KUBECONFIG", kubeconfig.to_str().expect("path"))],
        &["run", "-c", config.to_str().expect("path")],
        &dir.path("client-skiff.log"),
    );
    wait_for_async("skiff ready", READY_WITHIN, || async {
        matches!(client.get(addr(ADMIN), "/ready").await, Ok((s, _)) if s == 200)
    })
    .await;
    wait_for("the Service watch", SOON, || {
        fake.open_service_watches("shop") == 1
    })
    .await;
    assert_eq!(fake.service_watch_requests("shop"), 1);
    // No call for the idle time: the watch request ends.
    wait_for("the idle Service watch closed", SOON, || {
        fake.open_service_watches("shop") == 0
    })
    .await;
    let (status, _) = client.get(addr(ADMIN), "/ready").await.expect("/ready");
    assert_eq!(status, 200, "an idle stop is no reason to be unready");

    // The next call starts it again, waits for the list and is balanced.
    let (status, body) = client
        .get(addr(CATALOG), "/")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", skiff.log_text()));
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "pod-1"),
        "{}",
        skiff.log_text()
    );
    assert_eq!(app.requests(), 1);
    wait_for("the Service watch again", SOON, || {
        fake.service_watch_requests("shop") == 2 && fake.open_service_watches("shop") == 1
    })
    .await;
    let log = skiff.log_text();
    assert!(log.contains("Service watches stopped"), "{log}");
}
