//! deploy/: the Dockerfile, the kustomize base and the e-commerce example.
//!
//! The kustomizations are built with `kubectl kustomize` and the result
//! checked with `kubernetes-validate --strict`. Where kubectl is missing
//! (it has no current Debian package), the test says so and validates the
//! manifests file by file instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use skiff_config::yaml;
use skiff_tests::{skiff_bin, TempDir};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn validate(files: &[PathBuf]) {
    skiff_tests::require_python_module("kubernetes_validate", "kubernetes-validate");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kind/name` of every object in a YAML stream.
fn objects(text: &str) -> Vec<String> {
    yaml::parse_stream(text)
        .expect("valid YAML")
        .iter()
        .filter_map(|d| d.root.as_ref())
        .map(|r| {
            let get = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let name = r
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("");
            format!("{}/{name}", get("kind"))
        })
        .collect()
}

#[test]
fn the_shop_builds_with_kustomize_and_validates() {
    let dirs = ["kustomize/shop"];
    if !kubectl_available() {
        eprintln!(
            "SKIPPED kubectl kustomize: kubectl not found; validating the manifests file by file"
        );
        let files: Vec<PathBuf> = [
            "kustomize/skiff/rbac.yaml",
            "kustomize/shop/namespace.yaml",
            "kustomize/shop/config.yaml",
            "kustomize/shop/services.yaml",
            "kustomize/shop/workloads.yaml",
            "kustomize/shop/autoscaling.yaml",
        ]
        .iter()
        .map(|f| deploy(f))
        .collect();
        validate(&files);
        return;
    }
    let dir = TempDir::new("kustomize");
    let mut built = Vec::new();
    for d in dirs {
        let out = Command::new("kubectl")
            .args(["kustomize"])
            .arg(deploy(d))
            .output()
            .expect("run kubectl kustomize");
        assert!(
            out.status.success(),
            "{d}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        built.push(dir.write(&format!("{}.yaml", d.replace('/', "-")), &text));
    }
    validate(&built);

    let shop = std::fs::read_to_string(&built[0]).expect("built shop");
    let mut kinds = objects(&shop);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap/shop-config",
            "ConfigMap/skiff-sidecar",
            "Deployment/order",
            "Deployment/product-catalog",
            "Deployment/user-auth",
            "HorizontalPodAutoscaler/order",
            "HorizontalPodAutoscaler/product-catalog",
            "Namespace/shop",
            "Role/skiff-sidecar",
            "RoleBinding/skiff-sidecar",
            "Secret/shop-secrets",
            "Service/order",
            "Service/product-catalog",
            "Service/user-auth",
            "ServiceAccount/skiff",
        ]
    );
    // Every workload runs skiff, in the shop's namespace.
    for doc in yaml::parse_stream(&shop).expect("yaml") {
        let Some(root) = doc.root else { continue };
        if root.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
            continue;
        }
        let ns = root
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str());
        assert_eq!(ns, Some("shop"));
        let spec = root
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .expect("pod spec");
        let inits = match &spec.get("initContainers").expect("init containers").value {
            yaml::Value::Seq(items) => items
                .iter()
                .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
                .map(String::from)
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        assert_eq!(inits, ["skiff-init", "skiff"]);
    }
    // The order HPA's metric is one the Prometheus Adapter rules serve.
    let rules = std::fs::read_to_string(deploy("observability/prometheus-adapter-rules.yaml"))
        .expect("the adapter rules");
    assert!(shop.contains("name: skiff_requests_per_second"), "{shop}");
    assert!(
        rules.contains("as: \"skiff_requests_per_second\""),
        "{rules}"
    );
}

#[test]
fn the_example_workloads_are_their_source_injected() {
    let out = Command::new(skiff_bin())
        .args(["inject", "--config-map", "skiff-sidecar", "-f"])
        .arg(deploy("kustomize/shop/workloads.source.yaml"))
        .output()
        .expect("run skiff inject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(deploy("kustomize/shop/workloads.yaml")).expect("workloads.yaml");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        committed,
        "workloads.yaml is stale: skiff inject --config-map skiff-sidecar -f workloads.source.yaml > workloads.yaml"
    );
}

#[test]
fn the_sidecar_config_in_the_base_passes_skiff_check() {
    let out = Command::new(skiff_bin())
        .args(["check", "-c"])
        .arg(deploy("kustomize/skiff/skiff.yaml"))
        .output()
        .expect("run skiff check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_is_built_in_stages_and_runs_as_the_sidecar_uid() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).expect("Dockerfile");
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(
        stages >= 2,
        "a multi-stage build keeps the toolchain out of the image"
    );
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_eq!(
        user.trim(),
        format!("{0}:{0}", skiff_config::sidecar::PROXY_UID)
    );
    assert!(
        text.contains("iptables"),
        "skiff-init runs `skiff iptables` from this image"
    );
}

/// The skiff container's mounts and the pod's volumes of every Deployment
/// in `text`, as `name=mountPath` and `name=secretName` (Secrets only).
fn mesh_mounts(text: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for doc in yaml::parse_stream(text).expect("yaml") {
        let Some(root) = doc.root else { continue };
        if root.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
            continue;
        }
        let name = root
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let spec = root
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .expect("pod spec");
        let items = |node: Option<&yaml::Node>| match node.map(|n| &n.value) {
            Some(yaml::Value::Seq(items)) => items.clone(),
            _ => Vec::new(),
        };
        let text =
            |n: &yaml::Node, k: &str| n.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let skiff = items(spec.get("initContainers"))
            .into_iter()
            .find(|c| c.get("name").and_then(|n| n.as_str()) == Some("skiff"))
            .expect("the skiff container");
        let mounts = items(skiff.get("volumeMounts"))
            .iter()
            .map(|m| format!("{}={}", text(m, "name"), text(m, "mountPath")))
            .collect();
        let secrets = items(spec.get("volumes"))
            .iter()
            .filter_map(|v| {
                let secret = v.get("secret")?;
                Some(format!(
                    "{}={}",
                    text(v, "name"),
                    text(secret, "secretName")
                ))
            })
            .collect();
        out.push((name, mounts, secrets));
    }
    out.sort();
    out
}

#[test]
fn the_mesh_shop_mounts_the_secret_as_inject_mesh_does_and_validates() {
    // What `skiff inject --mesh` adds, for the shop's pods.
    let out = Command::new(skiff_bin())
        .args(["inject", "--config-map", "skiff-sidecar", "--mesh", "-f"])
        .arg(deploy("kustomize/shop/workloads.source.yaml"))
        .output()
        .expect("run skiff inject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = mesh_mounts(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(injected.len(), 3);
    for (name, mounts, secrets) in &injected {
        assert!(
            mounts.contains(&"skiff-mesh=/var/run/skiff/mesh".to_string()),
            "{name}: {mounts:?}"
        );
        // The shop's pods run as ServiceAccount `skiff`.
        assert_eq!(secrets, &["skiff-mesh=skiff-mesh-skiff"], "{name}");
    }
    if !kubectl_available() {
        eprintln!("SKIPPED kubectl kustomize of kustomize/shop-mesh: kubectl not found");
        return;
    }
    let built = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy("kustomize/shop-mesh"))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let text = String::from_utf8_lossy(&built.stdout).into_owned();
    let dir = TempDir::new("shop-mesh");
    validate(&[dir.write("shop-mesh.yaml", &text)]);
    // The overlay's patch adds what inject --mesh adds.
    assert_eq!(mesh_mounts(&text), injected);
    assert_eq!(text.matches("skiff.io/service-account: skiff").count(), 3);
    assert!(
        text.contains("mesh:"),
        "the sidecar config has its mesh section"
    );
}

#[test]
fn the_mesh_sidecar_config_passes_skiff_check_with_its_secret_mounted() {
    use skiff_tests::tls::{Ca, Subject};
    let dir = TempDir::new("mesh-check");
    let ca = Ca::new("mesh");
    let issued = ca.issue(Subject {
        uris: &["spiffe://cluster.local/ns/shop/sa/skiff"],
        ..Subject::default()
    });
    dir.write("tls.crt", &issued.cert);
    dir.write("tls.key", &issued.key);
    dir.write("ca.crt", &ca.pem);
    let config = std::fs::read_to_string(deploy("kustomize/shop-mesh/skiff.yaml"))
        .expect("the mesh sidecar config")
        .replace("/var/run/skiff/mesh", &dir.0.display().to_string());
    let path = dir.write("skiff.yaml", &config);
    let out = Command::new(skiff_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run skiff check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
