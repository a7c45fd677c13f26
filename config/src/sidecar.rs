//! The sidecar role's config: a listener's `capture:` block, which makes
//! it serve the connections `skiff iptables` redirects, the top-level
//! `mesh:` section (mTLS between sidecars, as linkerd2-proxy does it), and
//! the config `skiff run --sidecar` runs without a file.
//!
//! ```yaml
//! listeners:
//!   - name: outbound            # the app's calls, redirected to 127.0.0.1:4140
//!     listen: 127.0.0.1:4140
//!     capture: { direction: outbound, namespaces: [shop], watch_idle_timeout: 5m }
//!   - name: inbound             # calls to the app, redirected to 4143
//!     listen: 0.0.0.0:4143
//!     capture: { direction: inbound, opaque_ports: [5432] }
//! mesh:
//!   cert: /var/run/skiff/mesh/tls.crt     # this pod's identity (a mounted Secret)
//!   key: /var/run/skiff/mesh/tls.key
//!   ca: /var/run/skiff/mesh/ca.crt        # the mesh's trust anchor
//!   trust_domain: cluster.local           # the default
//!   mode: permissive                      # inbound: strict refuses all but mesh TLS
//!   allow: [spiffe://cluster.local/ns/shop/sa/frontend]   # inbound; empty: any from `ca`
//!   identity_header: x-client-identity    # the client's identity, for the app
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::read;
use crate::tls::{CertFiles, ClientAuth, Context, ListenerTls};
use crate::units::ser_duration;
use crate::yaml::{self, Diagnostics, MapReader, Node};

/// Where captured outbound connections (the app's calls) are redirected.
pub const OUTBOUND_PORT: u16 = 4140;
/// Where captured inbound connections (calls to the app) are redirected.
pub const INBOUND_PORT: u16 = 4143;
/// The sidecar's admin server: probes and metrics; never captured. skiff's
/// usual admin port, so the Prometheus annotations and scrape config in
/// deploy/observability hold for sidecars too.
pub const ADMIN_PORT: u16 = 9901;
/// The uid the sidecar runs as; its own connections are never captured.
/// (This and the two traffic ports are linkerd2-proxy's numbers.)
pub const PROXY_UID: u32 = 2102;
/// How long a captured connection may stay silent before it is taken for
/// a protocol where the server speaks first (MySQL, SMTP) and passed on
/// as opaque TCP. Clients of HTTP send their request at once.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);
/// The environment variable with the pod's namespace (downward API, set by
/// `skiff inject`): the namespace whose Services are watched by default.
pub const NAMESPACE_ENV: &str = "SKIFF_POD_NAMESPACE";
/// How long the Service watches may go without a lookup, by default: as
/// long as the sidecar keeps an unused destination.
pub const DEFAULT_WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The trust domain of a cluster that did not choose another.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The header the app finds the client's identity in.
pub const DEFAULT_IDENTITY_HEADER: &str = "x-client-identity";
/// Where `skiff inject --mesh` mounts the mesh Secret (`tls.crt`,
/// `tls.key`, `ca.crt`: cert-manager's layout).
pub const MESH_DIR: &str = "/var/run/skiff/mesh";
/// A Service annotation: the ServiceAccount its pods run as.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "skiff.io/service-account";
/// A Service annotation: `disabled` sends plaintext to its pods.
pub const MTLS_ANNOTATION: &str = "skiff.io/mtls";

/// Which way a capture listener's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Calls to the pod's app.
    Inbound,
    /// Calls the pod's app makes.
    Outbound,
}

/// A capture listener's settings (`capture:` on a listener).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureConfig {
    pub direction: Direction,
    /// Silence this long means opaque TCP.
    #[serde(serialize_with = "ser_duration")]
    pub detect_timeout: Duration,
    /// Destination ports proxied as opaque TCP without detection.
    pub opaque_ports: Vec<u16>,
    /// Namespaces whose Services outbound destinations are matched against;
    /// empty: the pod's own (`$SKIFF_POD_NAMESPACE`, else `default`).
    pub namespaces: Vec<String>,
    /// Outbound: the Service watches stop after this long without a
    /// lookup (a new connection); the next starts them again.
    #[serde(serialize_with = "ser_duration")]
    pub watch_idle_timeout: Duration,
    /// Outbound: HTTPRoutes and GRPCRoutes whose parent is a Service
    /// (the Gateway API's mesh, GAMMA) shape the traffic to it; they are
    /// read cluster-wide, which the sidecar's RBAC must allow.
    pub routes: bool,
}

impl CaptureConfig {
    /// The namespaces to watch Services in, with the default applied.
    pub fn service_namespaces(&self) -> Vec<String> {
        if !self.namespaces.is_empty() {
            return self.namespaces.clone();
        }
        let own = std::env::var(NAMESPACE_ENV)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        vec![own]
    }
}

const CAPTURE_FIELDS: &[&str] = &[
    "direction",
    "detect_timeout",
    "opaque_ports",
    "namespaces",
    "watch_idle_timeout",
    "routes",
];

/// Reads a listener's `capture:` mapping.
pub(crate) fn read_capture(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<CaptureConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let direction_path = map.path_of("direction");
    let direction = match map.required("direction", diags) {
        Some(n) => match read::string(n, &direction_path, diags)?.as_str() {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            other => {
                diags.error(
                    n,
                    &direction_path,
                    format!("unknown direction `{other}` (expected inbound or outbound)"),
                );
                None
            }
        },
        None => None,
    };
    let detect_timeout = map.duration_or("detect_timeout", DEFAULT_DETECT_TIMEOUT, diags);
    let ports_path = map.path_of("opaque_ports");
    let mut opaque_ports = Vec::new();
    if let Some(n) = map.optional("opaque_ports") {
        for (i, item) in read::seq(n, &ports_path, diags)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if let Some(p) = read::uint(item, &format!("{ports_path}[{i}]"), 1..=65535, diags) {
                opaque_ports.push(p as u16);
            }
        }
    }
    let ns_path = map.path_of("namespaces");
    let namespaces = match map.optional("namespaces") {
        Some(n) => read::string_list(n, &ns_path, diags).unwrap_or_default(),
        None => Vec::new(),
    };
    let watch_idle_timeout =
        map.duration_or("watch_idle_timeout", DEFAULT_WATCH_IDLE_TIMEOUT, diags);
    let routes_path = map.path_of("routes");
    let routes = match map.optional("routes") {
        None => Some(false),
        Some(n) => read::boolean(n, &routes_path, diags),
    };
    map.finish(diags, CAPTURE_FIELDS);
    Some(CaptureConfig {
        routes: routes?,
        direction: direction?,
        detect_timeout: detect_timeout?,
        opaque_ports,
        namespaces,
        watch_idle_timeout: watch_idle_timeout?,
    })
}

/// The config `skiff run --sidecar` runs without a file: the admin server
/// on the pod's address (for kubelet's probes) and the two capture
/// listeners on the ports `skiff iptables` redirects to. With IPv6 (as
/// `skiff iptables` decides it), the admin and inbound sockets are dual
/// stack and outbound listens on `::1` too, where ip6tables redirects.
pub fn default_config_text(ipv6: bool) -> String {
    let any = if ipv6 { "[::]" } else { "0.0.0.0" };
    let mut text = format!(
        "admin: {{ listen: \"{any}:{ADMIN_PORT}\" }}\n\
         listeners:\n\
         \x20 - name: inbound\n    listen: \"{any}:{INBOUND_PORT}\"\n    capture: {{ direction: inbound }}\n\
         \x20 - name: outbound\n    listen: 127.0.0.1:{OUTBOUND_PORT}\n    capture: {{ direction: outbound }}\n"
    );
    if ipv6 {
        text.push_str(&format!(
            "  - name: outbound6\n    listen: \"[::1]:{OUTBOUND_PORT}\"\n    capture: {{ direction: outbound }}\n"
        ));
    }
    text
}

/// What an inbound listener does with connections that are not mesh TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshMode {
    /// Served as before the mesh (clients without a sidecar keep working).
    Permissive,
    /// Refused.
    Strict,
}

/// The `mesh:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshConfig {
    #[serde(flatten)]
    pub files: CertFiles,
    pub ca: PathBuf,
    pub trust_domain: String,
    pub mode: MeshMode,
    /// Client identities let in; empty: any with a certificate from `ca`.
    pub allow: Vec<String>,
    pub identity_header: String,
}

impl MeshConfig {
    /// The inbound side's TLS, as a listener with `client_auth` has it.
    pub fn listener_tls(&self) -> ListenerTls {
        ListenerTls {
            default: Some(self.files.clone()),
            certificates: Vec::new(),
            client_auth: Some(ClientAuth {
                ca: self.ca.clone(),
                allow: self.allow.clone(),
                identity_header: Some(self.identity_header.clone()),
            }),
            inline: Vec::new(),
        }
    }
}

const MESH_FIELDS: &[&str] = &[
    "cert",
    "key",
    "ca",
    "trust_domain",
    "mode",
    "allow",
    "identity_header",
];

/// Reads the `mesh:` section; the files are checked as a listener's are.
pub(crate) fn read_mesh(
    node: &Node,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<MeshConfig> {
    let path = "mesh";
    let mut map = MapReader::new(node, path, diags)?;
    let cert = cx.required_file(&mut map, "cert", diags);
    let key = cx.required_file(&mut map, "key", diags);
    let ca = cx.required_file(&mut map, "ca", diags);
    let td_path = map.path_of("trust_domain");
    let trust_domain = match map.optional("trust_domain") {
        None => Some(DEFAULT_TRUST_DOMAIN.to_string()),
        Some(n) => read::string(n, &td_path, diags).and_then(|td| {
            let sni = format!("x.serviceaccount.identity.{td}");
            if td.is_empty() || !read::is_server_name(&sni) {
                diags.error(n, &td_path, format!("`{td}` is not a DNS name"));
                None
            } else {
                Some(td)
            }
        }),
    };
    let mode_path = map.path_of("mode");
    let mode = match map.optional("mode") {
        None => Some(MeshMode::Permissive),
        Some(n) => match read::string(n, &mode_path, diags)?.as_str() {
            "permissive" => Some(MeshMode::Permissive),
            "strict" => Some(MeshMode::Strict),
            other => {
                diags.error(
                    n,
                    &mode_path,
                    format!("unknown mode `{other}` (expected permissive or strict)"),
                );
                None
            }
        },
    };
    let allow_path = map.path_of("allow");
    let allow = match map.optional("allow") {
        None => Some(Vec::new()),
        Some(n) => read::string_list(n, &allow_path, diags),
    };
    let header_path = map.path_of("identity_header");
    let identity_header = match map.optional("identity_header") {
        None => Some(DEFAULT_IDENTITY_HEADER.to_string()),
        Some(n) => read::header_name(n, &header_path, diags),
    };
    map.finish(diags, MESH_FIELDS);
    let ((cert, cert_node), (key, _), (ca, ca_node)) = (cert?, key?, ca?);
    let files = CertFiles { cert, key };
    cx.check_pair(&files, cert_node, "mesh.cert", diags)?;
    cx.check_roots(&ca, ca_node, "mesh.ca", diags)?;
    Some(MeshConfig {
        files,
        ca,
        trust_domain: trust_domain?,
        mode: mode?,
        allow: allow?,
        identity_header: identity_header?,
    })
}

/// The `mesh:` section for a mounted mesh Secret in `dir` (`tls.crt`,
/// `tls.key`, `ca.crt`), with the other settings at their defaults.
pub fn mesh_config_text(dir: &Path) -> String {
    let file = |name: &str| yaml::quote(&dir.join(name).display().to_string());
    format!(
        "mesh:\n  cert: {}\n  key: {}\n  ca: {}\n",
        file("tls.crt"),
        file("tls.key"),
        file("ca.crt")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "s.yaml", Path::new(".")).map_err(|d| d.to_string())
    }

    #[test]
    fn the_ipv6_default_listens_dual_stack_and_on_the_v6_loopback() {
        let config = parse(&default_config_text(true)).unwrap_or_else(|d| panic!("{d}"));
        let listens: Vec<String> = config
            .listeners
            .iter()
            .map(|l| l.listen.to_string())
            .collect();
        assert_eq!(listens, ["[::]:4143", "127.0.0.1:4140", "[::1]:4140"]);
        assert_eq!(config.admin.listen.to_string(), "[::]:9901");
    }

    #[test]
    fn the_default_sidecar_config_is_valid_and_captures_both_ways() {
        let config = parse(&default_config_text(false)).unwrap_or_else(|d| panic!("{d}"));
        let directions: Vec<_> = config
            .listeners
            .iter()
            .map(|l| l.capture.as_ref().map(|c| c.direction))
            .collect();
        assert_eq!(
            directions,
            [Some(Direction::Inbound), Some(Direction::Outbound)]
        );
        assert_eq!(config.admin.listen.port(), ADMIN_PORT);
    }

    #[test]
    fn a_capture_listener_cannot_terminate_tls() {
        let text = "listeners:\n  - name: out\n    listen: 127.0.0.1:4140\n    capture: { direction: outbound }\n    tls: { cert: a.crt, key: a.key }\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.contains("listeners[0].tls: a capture listener passes"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_capture_is_named_with_its_field() {
        let text = "listeners:\n  - name: out\n    listen: 127.0.0.1:4140\n    capture: { direction: sideways, opaque_ports: [0] }\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.contains(
                "s.yaml:4:27: listeners[0].capture.direction: unknown direction `sideways`"
            ),
            "{err}"
        );
        assert!(
            err.contains("listeners[0].capture.opaque_ports[0]: 0 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn the_mesh_section_reads_with_defaults_and_names_its_mistakes() {
        let dir = Path::new("/var/run/skiff/mesh with space");
        let text = format!("{}listeners: []\n", mesh_config_text(dir));
        let config = parse(&text).unwrap_or_else(|d| panic!("{d}"));
        let mesh = config.mesh.expect("the mesh section");
        assert_eq!(mesh.files.cert, dir.join("tls.crt"));
        assert_eq!(mesh.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(mesh.mode, MeshMode::Permissive);
        assert_eq!(mesh.identity_header, DEFAULT_IDENTITY_HEADER);
        assert!(mesh.allow.is_empty());

        let bad = "mesh:\n  cert: tls.crt\n  ca: ca.crt\n  mode: lax\n  identity_header: \"a b\"\n  trust_domain: \"a b\"\n";
        let err = parse(bad).unwrap_err();
        assert!(err.contains("mesh: missing field `key`"), "{err}");
        assert!(err.contains("mesh.mode: unknown mode `lax`"), "{err}");
        assert!(
            err.contains("mesh.identity_header: `a b` is not a header name"),
            "{err}"
        );
        assert!(
            err.contains("mesh.trust_domain: `a b` is not a DNS name"),
            "{err}"
        );
    }
}
