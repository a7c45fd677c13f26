//! `skiff inject`: add the skiff sidecar to the workloads in a YAML stream.
//!
//! Every pod template (Pods, Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, ReplicationControllers, Jobs, CronJobs, and the same inside
//! a `List`) gets two init containers in front of its own: `skiff-init`,
//! which runs `skiff iptables` to capture the pod's TCP (it needs
//! `NET_ADMIN` and `NET_RAW`, nothing else), and `skiff`, a native sidecar
//! (`restartPolicy: Always`, Kubernetes 1.29+) whose startup probe on
//! `/ready` holds the app's containers back until the proxy serves. The
//! pod template's `skiff.io/injected` annotation records what was added;
//! a template that has it is left alone, so injecting twice equals
//! injecting once. Documents without a pod template are copied byte for
//! byte.
//!
//! Per-pod settings, as annotations on the pod template:
//! `skiff.io/inject: disabled` skips the pod; `skiff.io/skip-inbound-ports`,
//! `skiff.io/skip-outbound-ports` (comma-separated ports) and
//! `skiff.io/skip-outbound-cidrs` (comma-separated CIDRs) are added to the
//! capture rules' exclusions. Pods on the host network are never injected:
//! their capture rules would capture the node.

mod emit;

use skiff_config::sidecar::{ADMIN_PORT, INBOUND_PORT, MESH_DIR, OUTBOUND_PORT, PROXY_UID};
use skiff_config::yaml::{self, Node, Value};

/// The annotation that records an injection (and marks a pod as done).
pub(crate) const INJECTED_ANNOTATION: &str = "skiff.io/injected";
/// The annotation that opts a pod out (`disabled`).
pub(crate) const INJECT_ANNOTATION: &str = "skiff.io/inject";
/// The sidecar's container name.
pub(crate) const SIDECAR_NAME: &str = "skiff";
/// The capture init container's name.
pub(crate) const INIT_NAME: &str = "skiff-init";
/// The emptyDir the capture container's iptables keeps its lock in, since
/// its root filesystem is read-only.
const XTABLES_VOLUME: &str = "skiff-xtables";
/// The volume of the sidecar's ConfigMap, when one is given.
const CONFIG_VOLUME: &str = "skiff-config";
/// Where the sidecar's ConfigMap is mounted.
const CONFIG_DIR: &str = "/etc/skiff";
/// The volume of the mesh Secret, with `mesh`.
const MESH_VOLUME: &str = "skiff-mesh";
/// The mesh Secret of a pod, without `mesh_secret`: one per
/// ServiceAccount, since the certificate names the account.
pub(crate) const MESH_SECRET_PREFIX: &str = "skiff-mesh-";

/// What to inject.
#[derive(Debug, Clone)]
pub struct Options {
    /// The skiff image, for both containers.
    pub image: String,
    /// Inbound ports never captured, on top of the admin port.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks never captured.
    pub skip_outbound_cidrs: Vec<String>,
    /// A ConfigMap in the pod's namespace with the sidecar's config as
    /// `skiff.yaml`; without one the sidecar runs the built-in defaults.
    pub config_map: Option<String>,
    /// mTLS between sidecars: mount the pod's mesh Secret (`tls.crt`,
    /// `tls.key`, `ca.crt`) at [`MESH_DIR`].
    pub mesh: bool,
    /// The mesh Secret of every pod; none: `skiff-mesh-<serviceAccountName>`.
    pub mesh_secret: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            image: default_image(),
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            config_map: None,
            mesh: false,
            mesh_secret: None,
        }
    }
}

/// The image of this skiff version.
pub fn default_image() -> String {
    format!("ghcr.io/skiff-proxy/skiff:{}", env!("CARGO_PKG_VERSION"))
}

/// Why a stream could not be injected: which document, which line, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    Syntax(#[from] yaml::StreamError),
    #[error("document {index} (line {line}): {kind} `{name}`: {field}: {message}")]
    Shape {
        index: usize,
        line: usize,
        kind: String,
        name: String,
        field: String,
        message: String,
    },
}

/// The injected stream and what happened to each workload.
#[derive(Debug, Clone, Default)]
pub struct Injected {
    pub yaml: String,
    /// `Kind/name` of every workload that got the sidecar.
    pub injected: Vec<String>,
    /// `Kind/name: why` of every workload left as it was.
    pub skipped: Vec<String>,
}

/// Adds the sidecar to every workload in a multi-document YAML stream.
pub fn inject(text: &str, options: &Options) -> Result<Injected, InjectError> {
    let documents = yaml::parse_stream(text)?;
    let mut result = Injected::default();
    for (index, doc) in documents.into_iter().enumerate() {
        if !result.yaml.is_empty() && !result.yaml.ends_with('\n') {
            result.yaml.push('\n');
        }
        let Some(mut root) = doc.root else {
            result.yaml.push_str(&doc.source);
            continue;
        };
        if inject_object(&mut root, index, options, &mut result)? {
            if index > 0 || doc.source.starts_with("---") {
                result.yaml.push_str("---\n");
            }
            result.yaml.push_str(&emit::emit(&root));
            // Its `...` goes with it: the document after it may start
            // without `---`, and would otherwise run on into this one.
            if yaml::ends_with_document_end(&doc.source) {
                result.yaml.push_str("...\n");
            }
        } else {
            result.yaml.push_str(&doc.source);
        }
    }
    Ok(result)
}

/// The pod template's path inside each workload kind.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Injects one object (or each item of a `List`); true if anything changed.
fn inject_object(
    object: &mut Node,
    index: usize,
    options: &Options,
    result: &mut Injected,
) -> Result<bool, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Node::as_str)
        .unwrap_or_default()
        .to_string();
    if kind == "List" {
        let mut changed = false;
        if let Some(Node {
            value: Value::Seq(items),
            ..
        }) = object.get_mut("items")
        {
            for item in items {
                changed |= inject_object(item, index, options, result)?;
            }
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Node::as_str)
        .unwrap_or("")
        .to_string();
    let shape_error = |line: usize, field: &str, message: &str| InjectError::Shape {
        index,
        line,
        kind: kind.clone(),
        name: name.clone(),
        field: field.into(),
        message: message.into(),
    };
    if !matches!(object.value, Value::Map(_)) {
        return Err(shape_error(object.mark.line, "", "expected a mapping"));
    }
    // Walk to the template, checking each step is a mapping.
    let mut template = &mut *object;
    let mut field = String::new();
    for step in path {
        field = if field.is_empty() {
            (*step).into()
        } else {
            format!("{field}.{step}")
        };
        let line = template.mark.line;
        template = match template.get_mut(step) {
            Some(next) if matches!(next.value, Value::Map(_)) => next,
            Some(next) => return Err(shape_error(next.mark.line, &field, "expected a mapping")),
            None => return Err(shape_error(line, &field, "missing")),
        };
    }
    let prefix = |f: &str| {
        if field.is_empty() {
            f.to_string()
        } else {
            format!("{field}.{f}")
        }
    };
    let who = format!("{kind}/{name}");

    // The template's checks, before anything changes.
    let annotations = template.get("metadata").and_then(|m| m.get("annotations"));
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Node::as_str);
    if annotation(INJECTED_ANNOTATION).is_some() {
        result.skipped.push(format!("{who}: already injected"));
        return Ok(false);
    }
    if matches!(annotation(INJECT_ANNOTATION), Some("disabled" | "false")) {
        result
            .skipped
            .push(format!("{who}: {INJECT_ANNOTATION}: disabled"));
        return Ok(false);
    }
    let mut pod_options = options.clone();
    for (key, list) in [
        (
            "skiff.io/skip-inbound-ports",
            &mut pod_options.skip_inbound_ports,
        ),
        (
            "skiff.io/skip-outbound-ports",
            &mut pod_options.skip_outbound_ports,
        ),
    ] {
        if let Some(text) = annotation(key) {
            for port in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                list.push(port.parse().map_err(|_| {
                    shape_error(
                        annotations.map_or(template.mark.line, |a| a.mark.line),
                        &prefix(&format!("metadata.annotations.{key}")),
                        &format!("`{port}` is not a port number"),
                    )
                })?);
            }
        }
    }
    if let Some(text) = annotation("skiff.io/skip-outbound-cidrs") {
        for cidr in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if crate::cli::iptables::Cidr::parse(cidr).is_none() {
                return Err(shape_error(
                    annotations.map_or(template.mark.line, |a| a.mark.line),
                    &prefix("metadata.annotations.skiff.io/skip-outbound-cidrs"),
                    &format!("`{cidr}` is not a CIDR (address/prefix length)"),
                ));
            }
            pod_options.skip_outbound_cidrs.push(cidr.into());
        }
    }
    // A container already named like ours: injected by hand, or by an
    // older skiff without the annotation. Two of a name would be refused.
    let names_taken = ["initContainers", "containers"].iter().any(|list| {
        template
            .get("spec")
            .and_then(|s| s.get(list))
            .is_some_and(|l| match &l.value {
                Value::Seq(items) => items.iter().any(|c| {
                    matches!(
                        c.get("name").and_then(Node::as_str),
                        Some(SIDECAR_NAME | INIT_NAME)
                    )
                }),
                _ => false,
            })
    });
    if names_taken {
        result.skipped.push(format!(
            "{who}: has a container named {SIDECAR_NAME} or {INIT_NAME}"
        ));
        return Ok(false);
    }
    let template_line = template.mark.line;
    let spec = match template.get("spec") {
        Some(s) if matches!(s.value, Value::Map(_)) => s,
        Some(s) => {
            return Err(shape_error(
                s.mark.line,
                &prefix("spec"),
                "expected a mapping",
            ))
        }
        None => return Err(shape_error(template_line, &prefix("spec"), "missing")),
    };
    if spec.get("hostNetwork").and_then(Node::as_str) == Some("true") {
        result.skipped.push(format!("{who}: on the host network"));
        return Ok(false);
    }
    match spec.get("containers") {
        Some(Node {
            value: Value::Seq(c),
            ..
        }) if !c.is_empty() => {}
        Some(c) => {
            return Err(shape_error(
                c.mark.line,
                &prefix("spec.containers"),
                "expected a list of containers",
            ))
        }
        None => {
            return Err(shape_error(
                spec.mark.line,
                &prefix("spec.containers"),
                "missing",
            ))
        }
    }
    for list in ["initContainers", "volumes"] {
        if let Some(l) = spec.get(list).filter(|l| !l.is_null()) {
            if !matches!(l.value, Value::Seq(_)) {
                return Err(shape_error(
                    l.mark.line,
                    &prefix(&format!("spec.{list}")),
                    "expected a list",
                ));
            }
        }
    }
    if let Some(m) = template.get("metadata").filter(|m| !m.is_null()) {
        if !matches!(m.value, Value::Map(_)) {
            return Err(shape_error(
                m.mark.line,
                &prefix("metadata"),
                "expected a mapping",
            ));
        }
        if let Some(a) = m.get("annotations").filter(|a| !a.is_null()) {
            if !matches!(a.value, Value::Map(_)) {
                return Err(shape_error(
                    a.mark.line,
                    &prefix("metadata.annotations"),
                    "expected a mapping",
                ));
            }
        }
    }

    // Now change it.
    let mut volumes = vec![Node::map(vec![
        ("name", Node::string(XTABLES_VOLUME)),
        ("emptyDir", Node::map(vec![])),
    ])];
    if let Some(config_map) = &options.config_map {
        volumes.push(Node::map(vec![
            ("name", Node::string(CONFIG_VOLUME)),
            (
                "configMap",
                Node::map(vec![("name", Node::string(config_map))]),
            ),
        ]));
    }
    if options.mesh {
        let secret = options.mesh_secret.clone().unwrap_or_else(|| {
            let account = spec
                .get("serviceAccountName")
                .or_else(|| spec.get("serviceAccount"))
                .and_then(Node::as_str)
                .filter(|a| !a.is_empty())
                .unwrap_or("default");
            format!("{MESH_SECRET_PREFIX}{account}")
        });
        volumes.push(Node::map(vec![
            ("name", Node::string(MESH_VOLUME)),
            (
                "secret",
                Node::map(vec![("secretName", Node::string(&secret))]),
            ),
        ]));
    }
    let volume_names: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.get("name").and_then(Node::as_str))
        .collect();
    let status = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "image": options.image,
        "initContainers": [INIT_NAME, SIDECAR_NAME],
        "volumes": volume_names,
    })
    .to_string();
    // Each step was checked above to be a mapping or missing.
    if let Some(metadata) = entry_or(template, "metadata", Node::map(vec![])) {
        if let Some(annotations) = entry_or(metadata, "annotations", Node::map(vec![])) {
            annotations.set(INJECTED_ANNOTATION, Node::string(&status));
            // Prometheus finds the sidecar's metrics as deploy/observability
            // expects, unless the pod already points Prometheus elsewhere.
            if annotations.get("prometheus.io/scrape").is_none() {
                annotations.set("prometheus.io/scrape", Node::string("true"));
                annotations.set("prometheus.io/port", Node::string(&ADMIN_PORT.to_string()));
                annotations.set("prometheus.io/path", Node::string("/metrics"));
            }
        }
    }
    if let Some(spec) = template.get_mut("spec") {
        if let Some(Node {
            value: Value::Seq(inits),
            ..
        }) = entry_or(spec, "initContainers", Node::seq(vec![]))
        {
            inits.splice(
                0..0,
                [
                    init_container(&pod_options),
                    sidecar_container(&pod_options),
                ],
            );
        }
        if let Some(Node {
            value: Value::Seq(existing),
            ..
        }) = entry_or(spec, "volumes", Node::seq(vec![]))
        {
            existing.extend(volumes);
        }
    }
    result.injected.push(who);
    Ok(true)
}

/// The value under `key`, created as `empty` when missing or null; `None`
/// only if `node` is not a mapping.
fn entry_or<'a>(node: &'a mut Node, key: &str, empty: Node) -> Option<&'a mut Node> {
    if node.get(key).is_none_or(Node::is_null) {
        node.set(key, empty);
    }
    node.get_mut(key)
}

fn list(items: &[&str]) -> Node {
    Node::seq(items.iter().map(|s| Node::string(s)).collect())
}

fn http_probe(path: &str, period: u32, failures: u32) -> Node {
    Node::map(vec![
        (
            "httpGet",
            Node::map(vec![
                ("path", Node::string(path)),
                ("port", Node::plain(ADMIN_PORT)),
            ]),
        ),
        ("periodSeconds", Node::plain(period)),
        ("failureThreshold", Node::plain(failures)),
    ])
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// `skiff-init`: applies the capture rules once, then exits.
fn init_container(options: &Options) -> Node {
    let mut args = vec![
        "iptables".to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".into(),
        ADMIN_PORT.to_string(),
    ];
    for (flag, value) in [
        ("--skip-inbound-ports", join(&options.skip_inbound_ports)),
        ("--skip-outbound-ports", join(&options.skip_outbound_ports)),
        ("--skip-outbound-cidrs", join(&options.skip_outbound_cidrs)),
    ] {
        if !value.is_empty() {
            args.push(flag.into());
            args.push(value);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::map(vec![
        ("name", Node::string(INIT_NAME)),
        ("image", Node::string(&options.image)),
        ("imagePullPolicy", Node::string("IfNotPresent")),
        ("args", list(&args)),
        (
            "resources",
            Node::map(vec![
                (
                    "requests",
                    Node::map(vec![
                        ("cpu", Node::string("10m")),
                        ("memory", Node::string("10Mi")),
                    ]),
                ),
                (
                    "limits",
                    Node::map(vec![
                        ("cpu", Node::string("100m")),
                        ("memory", Node::string("50Mi")),
                    ]),
                ),
            ]),
        ),
        (
            "securityContext",
            Node::map(vec![
                // iptables needs uid 0 with the two capabilities; nothing more.
                ("runAsUser", Node::plain(0)),
                ("runAsNonRoot", Node::plain(false)),
                ("allowPrivilegeEscalation", Node::plain(false)),
                ("readOnlyRootFilesystem", Node::plain(true)),
                (
                    "capabilities",
                    Node::map(vec![
                        ("add", list(&["NET_ADMIN", "NET_RAW"])),
                        ("drop", list(&["ALL"])),
                    ]),
                ),
            ]),
        ),
        (
            "volumeMounts",
            Node::seq(vec![Node::map(vec![
                ("name", Node::string(XTABLES_VOLUME)),
                ("mountPath", Node::string("/run")),
            ])]),
        ),
    ])
}

fn field_env(name: &str, path: &str) -> Node {
    Node::map(vec![
        ("name", Node::string(name)),
        (
            "valueFrom",
            Node::map(vec![(
                "fieldRef",
                Node::map(vec![("fieldPath", Node::string(path))]),
            )]),
        ),
    ])
}

/// `skiff`: the proxy, as a native sidecar.
fn sidecar_container(options: &Options) -> Node {
    let mut container = Node::map(vec![
        ("name", Node::string(SIDECAR_NAME)),
        ("image", Node::string(&options.image)),
        ("imagePullPolicy", Node::string("IfNotPresent")),
        // A native sidecar: started before the app, stopped after it.
        ("restartPolicy", Node::string("Always")),
        (
            "args",
            match (&options.config_map, options.mesh) {
                // The ConfigMap's config has its own `mesh:` section.
                (Some(_), _) => list(&[
                    "run",
                    "--sidecar",
                    "--config",
                    &format!("{CONFIG_DIR}/skiff.yaml"),
                ]),
                (None, true) => list(&["run", "--sidecar", "--mesh-dir", MESH_DIR]),
                (None, false) => list(&["run", "--sidecar"]),
            },
        ),
        (
            "env",
            Node::seq(vec![
                field_env("SKIFF_POD_NAME", "metadata.name"),
                field_env("SKIFF_POD_NAMESPACE", "metadata.namespace"),
                field_env("SKIFF_POD_IP", "status.podIP"),
            ]),
        ),
        (
            "ports",
            Node::seq(vec![
                Node::map(vec![
                    ("name", Node::string("skiff-inbound")),
                    ("containerPort", Node::plain(INBOUND_PORT)),
                ]),
                Node::map(vec![
                    ("name", Node::string("skiff-admin")),
                    ("containerPort", Node::plain(ADMIN_PORT)),
                ]),
            ]),
        ),
        // Up to two minutes to become ready before the app starts.
        ("startupProbe", http_probe("/ready", 1, 120)),
        ("livenessProbe", http_probe("/live", 10, 3)),
        ("readinessProbe", http_probe("/ready", 5, 3)),
        (
            "resources",
            Node::map(vec![
                (
                    "requests",
                    Node::map(vec![
                        ("cpu", Node::string("100m")),
                        ("memory", Node::string("64Mi")),
                    ]),
                ),
                ("limits", Node::map(vec![("memory", Node::string("256Mi"))])),
            ]),
        ),
        (
            "securityContext",
            Node::map(vec![
                ("runAsUser", Node::plain(PROXY_UID)),
                ("runAsGroup", Node::plain(PROXY_UID)),
                ("runAsNonRoot", Node::plain(true)),
                ("allowPrivilegeEscalation", Node::plain(false)),
                ("readOnlyRootFilesystem", Node::plain(true)),
                ("capabilities", Node::map(vec![("drop", list(&["ALL"]))])),
                (
                    "seccompProfile",
                    Node::map(vec![("type", Node::string("RuntimeDefault"))]),
                ),
            ]),
        ),
    ]);
    let mut mounts = Vec::new();
    if options.config_map.is_some() {
        mounts.push(Node::map(vec![
            ("name", Node::string(CONFIG_VOLUME)),
            ("mountPath", Node::string(CONFIG_DIR)),
            ("readOnly", Node::plain(true)),
        ]));
    }
    if options.mesh {
        mounts.push(Node::map(vec![
            ("name", Node::string(MESH_VOLUME)),
            ("mountPath", Node::string(MESH_DIR)),
            ("readOnly", Node::plain(true)),
        ]));
    }
    if !mounts.is_empty() {
        container.set("volumeMounts", Node::seq(mounts));
    }
    container
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject_default(text: &str) -> Injected {
        inject(text, &Options::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: order
spec:
  replicas: 2
  selector:
    matchLabels: {app: order}
  template:
    metadata:
      labels: {app: order}
    spec:
      containers:
      - name: order
        image: shop/order:1
        ports:
        - containerPort: 8080
";

    #[test]
    fn mesh_mounts_the_secret_of_the_pods_service_account_and_runs_with_it() {
        let with_account = DEPLOYMENT.replace(
            "      containers:\n",
            "      serviceAccountName: order\n      containers:\n",
        );
        for (text, secret_option, secret) in [
            (with_account.as_str(), None, "skiff-mesh-order"),
            (DEPLOYMENT, None, "skiff-mesh-default"),
            (DEPLOYMENT, Some("mesh-certs"), "mesh-certs"),
        ] {
            let options = Options {
                mesh: true,
                mesh_secret: secret_option.map(String::from),
                ..Options::default()
            };
            let out = inject(text, &options).unwrap();
            assert!(
                out.yaml.contains(&format!("secretName: {secret}")),
                "{}",
                out.yaml
            );
            assert!(
                out.yaml.contains("--mesh-dir") && out.yaml.contains(MESH_DIR),
                "{}",
                out.yaml
            );
            // Injecting again changes nothing.
            assert_eq!(inject(&out.yaml, &options).unwrap().yaml, out.yaml);
        }
    }

    #[test]
    fn a_deployment_gets_the_capture_container_then_the_sidecar() {
        let out = inject_default(DEPLOYMENT);
        assert_eq!(out.injected, ["Deployment/order"]);
        let docs = yaml::parse_stream(&out.yaml).unwrap();
        let root = docs[0].root.as_ref().unwrap();
        let spec = root
            .get("spec")
            .unwrap()
            .get("template")
            .unwrap()
            .get("spec")
            .unwrap();
        let Value::Seq(inits) = &spec.get("initContainers").unwrap().value else {
            panic!("no initContainers")
        };
        let names: Vec<_> = inits
            .iter()
            .map(|c| c.get("name").unwrap().as_str().unwrap())
            .collect();
        assert_eq!(names, [INIT_NAME, SIDECAR_NAME]);
        assert_eq!(
            inits[1].get("restartPolicy").unwrap().as_str(),
            Some("Always")
        );
        assert_eq!(
            inits[1]
                .get("startupProbe")
                .unwrap()
                .get("httpGet")
                .unwrap()
                .get("path")
                .unwrap()
                .as_str(),
            Some("/ready")
        );
        // The app's fields are as they were.
        let before = yaml::parse_stream(DEPLOYMENT)
            .unwrap()
            .remove(0)
            .root
            .unwrap();
        let containers = |root: &Node| {
            strip_lines(
                root.get("spec")
                    .unwrap()
                    .get("template")
                    .unwrap()
                    .get("spec")
                    .unwrap()
                    .get("containers")
                    .unwrap(),
            )
        };
        assert_eq!(containers(root), containers(&before));
    }

    fn strip_lines(n: &Node) -> Node {
        Node {
            mark: Default::default(),
            value: match &n.value {
                Value::Scalar(s, p) => Value::Scalar(s.clone(), *p),
                Value::Seq(i) => Value::Seq(i.iter().map(strip_lines).collect()),
                Value::Map(e) => Value::Map(
                    e.iter()
                        .map(|(k, v)| (strip_lines(k), strip_lines(v)))
                        .collect(),
                ),
            },
        }
    }

    #[test]
    fn injecting_twice_equals_injecting_once() {
        let once = inject_default(DEPLOYMENT).yaml;
        let twice = inject_default(&once);
        assert_eq!(once, twice.yaml);
        assert!(twice.injected.is_empty());
    }

    /// Injects, then injects the output: it must parse, and change nothing.
    fn injects_to_a_fixed_point(text: &str) -> String {
        let once = inject_default(text).yaml;
        let twice = inject(&once, &Options::default())
            .unwrap_or_else(|e| panic!("its own output was refused: {e}\n{once}"));
        assert_eq!(twice.yaml, once, "injecting the output changed it");
        once
    }

    #[test]
    fn a_document_ended_by_dots_keeps_them_when_injected() {
        // A document after `...` may start without `---`: without its
        // `...` the injected workload would run on into it.
        let text = format!("{DEPLOYMENT}...\nnext: document\n");
        let out = injects_to_a_fixed_point(&text);
        assert!(out.ends_with("...\nnext: document\n"), "{out}");
        let text = format!("{DEPLOYMENT}... # end\n---\nnext: document\n");
        let out = injects_to_a_fixed_point(&text);
        assert!(out.ends_with("...\n---\nnext: document\n"), "{out}");
    }

    #[test]
    fn fuzz_reproducer_1_a_bare_scalar_after_dots_reparses() {
        // `fuzz/known-bugs/inject-output-does-not-reparse-1.yaml`: the
        // workload ends with `...` and a plain scalar document follows.
        injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/does-not-reparse-1.yaml"
        ));
    }

    #[test]
    fn fuzz_reproducer_2_a_folded_key_before_the_workload_reparses() {
        // `...-2.yaml`: odd plain keys (`.c: )ppyment` over two lines) in
        // front of the workload, then `...` and a scalar document.
        injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/does-not-reparse-2.yaml"
        ));
    }

    #[test]
    fn fuzz_reproducer_3_anchors_before_the_workload_reparse() {
        // `...-3.yaml`: anchored keys (`&p`) and a `$---` that is no
        // marker, then `...` and a scalar document.
        injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/does-not-reparse-3.yaml"
        ));
    }

    #[test]
    fn a_key_past_yamls_implicit_key_limit_once_quoted_is_written_explicitly() {
        // Found by the inject fuzz target once it ran in CI: a 300-byte
        // key of control characters, quoted as `\u001d` each, passed the
        // 1024 characters YAML allows before an implicit key's colon.
        let out = injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/key-longer-than-1024-when-quoted.yaml"
        ));
        assert!(out.contains("\n    ? \"i\\u001d"), "{out}");
        let long = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\nspec:\n  containers: [{{name: app}}]\n  {}: 1\n",
            "\u{1}".repeat(200)
        );
        injects_to_a_fixed_point(&long);
    }

    #[test]
    fn a_plain_key_that_starts_like_a_document_marker_is_quoted() {
        // Found by the inject fuzz target: the plain key `---  -  n ...`
        // (folded from two lines) was written at the start of a line,
        // where it ends the document.
        let out = injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/plain-key-starting-with-dashes.yaml"
        ));
        assert!(!out.lines().any(|l| l.starts_with("---  ")), "{out}");
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: app}]\n? a\n  --- b\n: 1\nc: [..., ---]\n";
        injects_to_a_fixed_point(text);
    }

    #[test]
    fn a_flow_scalar_with_a_dash_after_a_space_is_quoted() {
        // Found by the inject fuzz target: `ord0 -` inside a complex key,
        // written plain in flow style, did not parse again.
        injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/flow-scalar-ending-in-a-dash.yaml"
        ));
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: app}]\n? {a: [b c, 8080, x-y]}\n: 1\n";
        let out = injects_to_a_fixed_point(text);
        assert!(out.contains("? {a: [\"b c\", 8080, x-y]}"), "{out}");
    }

    #[test]
    fn empty_scalars_in_a_flow_key_are_written_as_null() {
        // Found by the inject fuzz target: a complex key holding empty
        // (null) values came out as `{a: [, x]}`, which does not parse.
        injects_to_a_fixed_point(include_str!(
            "../../../../fuzz/corpus/inject/empty-scalars-in-a-flow-key.yaml"
        ));
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: app}]\n? {a: [~, x], b:}\n: 1\n";
        let out = injects_to_a_fixed_point(text);
        assert!(out.contains("? {a: [~, x], b: null}"), "{out}");
    }

    #[test]
    fn other_documents_are_copied_byte_for_byte() {
        let service = "# the order service\napiVersion: v1\nkind: Service\nmetadata: {name: order}\nspec:\n  ports: [{port: 80, targetPort: 8080}]   # odd spacing kept\n";
        let text = format!("{service}---\n{DEPLOYMENT}---\n{service}");
        let out = inject_default(&text).yaml;
        assert!(out.starts_with(service), "{out}");
        assert!(out.ends_with(&format!("---\n{service}")), "{out}");
    }

    #[test]
    fn a_malformed_workload_is_named_with_its_document_and_line() {
        let text = format!("{DEPLOYMENT}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: broken}}\nspec:\n  containers: oops\n");
        let err = inject(&text, &Options::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("document 1 (line 23): Pod `broken`: spec.containers"),
            "{message}"
        );
    }

    #[test]
    fn the_items_of_a_list_are_injected() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n- {kind: Pod, metadata: {name: p}, spec: {containers: [{name: p}]}}\n";
        let out = inject_default(text);
        assert_eq!(out.injected, ["Pod/p"]);
        let root = yaml::parse_stream(&out.yaml)
            .unwrap()
            .remove(0)
            .root
            .unwrap();
        let Value::Seq(items) = &root.get("items").unwrap().value else {
            panic!("items")
        };
        assert!(items[0].get("spec").is_none());
        assert!(items[1]
            .get("spec")
            .unwrap()
            .get("initContainers")
            .is_some());
    }

    #[test]
    fn a_pod_with_a_container_named_skiff_is_left_alone() {
        let text = "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: skiff}]}\n";
        let out = inject_default(text);
        assert_eq!(out.yaml, text);
        assert!(out.skipped[0].contains("named skiff"), "{:?}", out.skipped);
    }

    #[test]
    fn host_network_and_opted_out_pods_are_left_alone() {
        let text = "kind: Pod\nmetadata: {name: a}\nspec: {hostNetwork: true, containers: [{name: a}]}\n---\nkind: Pod\nmetadata:\n  name: b\n  annotations: {skiff.io/inject: disabled}\nspec: {containers: [{name: b}]}\n";
        let out = inject_default(text);
        assert_eq!(out.yaml, text);
        assert_eq!(out.skipped.len(), 2);
    }
}
