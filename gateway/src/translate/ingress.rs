//! Ingress objects of one class, translated as ingress-nginx serves them,
//! so a plain Ingress moves over unchanged: every rule of every Ingress of
//! the class is served on the HTTP port and, where a `tls` entry gives a
//! certificate, on the HTTPS port too (its certificate chosen by SNI);
//! plain HTTP to a host with TLS is redirected to HTTPS (308) unless the
//! Ingress says `ssl-redirect: "false"`.
//!
//! - Which Ingresses: `spec.ingressClassName` naming the class, else the
//!   legacy `kubernetes.io/ingress.class` annotation, else none when the
//!   class's IngressClass is marked the cluster's default. The
//!   IngressClass, when it exists, must name skiff's controller.
//! - Paths: `Exact`; `Prefix` by whole segments; `ImplementationSpecific`
//!   as a plain prefix (nginx's `location /path`). The longest path wins,
//!   `Exact` before `Prefix` on a tie, then the older Ingress, then
//!   `namespace/name`, then the order written. Rules with a host come
//!   before those without; `*.example.com` takes any name under it.
//! - `defaultBackend` (the oldest Ingress's) takes what no rule matches.
//! - Backends are Services of the Ingress's namespace, by port number or
//!   name; one that does not resolve is answered 500 and named in the
//!   warnings.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use skiff_config::cluster::ClusterConfig;
use skiff_config::route::{Action, Backend, PathMatch, Redirect, RouteConfig};
use skiff_route::HostPattern;

use super::backend::{self, Reference};
use super::listener::{host_matches, Certificate};
use super::{Port, Translation};
use crate::objects::{Ingress, IngressBackend, Meta};
use crate::world::World;

/// skiff's `spec.controller` in an IngressClass.
pub const INGRESS_CONTROLLER: &str = "skiff.io/ingress-controller";

/// The ports an Ingress class is served on (before any offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressPorts {
    pub http: u16,
    pub https: u16,
}

impl Default for IngressPorts {
    fn default() -> IngressPorts {
        IngressPorts {
            http: 80,
            https: 443,
        }
    }
}

const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
const SSL_REDIRECT: [&str; 2] = [
    "skiff.io/ssl-redirect",
    "nginx.ingress.kubernetes.io/ssl-redirect",
];

/// One route entry, with its place in precedence.
struct Entry {
    key: Key,
    route: RouteConfig,
    /// Its host has a certificate: served on HTTPS too, and redirected
    /// there from HTTP unless the Ingress says not to.
    tls: bool,
    redirect: bool,
}

/// Longest path first, `Exact` before a prefix of the same length, then
/// the older Ingress, `namespace/name`, rule, path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    length: Reverse<usize>,
    prefix: bool,
    ingress: usize,
    rule: usize,
    path: usize,
}

/// Serves the Ingresses of `class`: the ports, the clusters, the
/// Ingresses served (whose status gets the address) and what is wrong
/// with them, in `warnings`.
pub fn translate_ingress(world: &World, class: &str, ports: IngressPorts) -> Translation {
    let ingress_class = world.ingress_classes.get(class);
    if let Some(c) = ingress_class.filter(|c| c.spec.controller != INGRESS_CONTROLLER) {
        return Translation {
            problem: Some(format!(
                "IngressClass `{class}` belongs to `{}`, not `{INGRESS_CONTROLLER}`",
                c.spec.controller
            )),
            ..Translation::default()
        };
    }
    let default = ingress_class.is_some_and(|c| {
        c.metadata
            .annotations
            .get(DEFAULT_CLASS)
            .map(String::as_str)
            == Some("true")
    });
    let mut ingresses: Vec<&Ingress> = (world.ingresses.values())
        .filter(|i| served(i, class, default))
        .collect();
    ingresses.sort_by_key(|i| {
        let m = &i.metadata;
        let created = m.creation_timestamp.as_deref();
        (created.is_none(), created, &m.namespace, &m.name)
    });
    let mut t = Translation::default();
    let mut clusters = BTreeMap::new();
    let mut entries = Vec::new();
    let mut certificates: Vec<Certificate> = Vec::new();
    let mut default_backend = None;
    // TLS is a host's, whichever Ingress gives it (as ingress-nginx
    // merges them): every Ingress's rules for a host with a certificate
    // are served on HTTPS.
    let tls_hosts: Vec<Option<HostPattern>> = (ingresses.iter())
        .flat_map(|ingress| tls(world, ingress, &mut certificates, &mut t.warnings))
        .collect();
    for (rank, ingress) in ingresses.iter().enumerate() {
        let meta = &ingress.metadata;
        let what = format!("Ingress {}", meta.key());
        let redirect = !SSL_REDIRECT
            .iter()
            .any(|a| meta.annotations.get(*a).map(String::as_str) == Some("false"));
        for (r, rule) in ingress.spec.rules.iter().enumerate() {
            let host = rule.host.as_deref().filter(|h| !h.is_empty());
            let host = host.map(|h| HostPattern::parse(&h.to_ascii_lowercase()));
            let covered = tls_hosts.iter().any(|t| match (t, &host) {
                (None, _) => true,
                (Some(t), Some(h @ HostPattern::Exact(name))) => t == h || t.matches(name),
                (Some(t), Some(h)) => t == h,
                (Some(_), None) => false,
            });
            let paths = rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or(&[]);
            for (p, path) in paths.iter().enumerate() {
                let at = format!("{what}: rules[{r}].http.paths[{p}]");
                let (condition, length, prefix) = match path_match(path) {
                    Ok(found) => found,
                    Err(why) => {
                        t.warnings.push(format!("{at}: {why}; not served"));
                        continue;
                    }
                };
                let cluster = resolve(world, meta, &path.backend, &mut clusters, &at, &mut t);
                let mut route = RouteConfig::to_cluster(condition, "");
                route.name = Some(format!("Ingress/{}/rule/{r}/path/{p}", meta.key()));
                route.hosts = host_matches(&host.iter().cloned().collect::<Vec<_>>());
                route.action = forward(cluster);
                entries.push(Entry {
                    key: Key {
                        length: Reverse(length),
                        prefix,
                        ingress: rank,
                        rule: r,
                        path: p,
                    },
                    route,
                    tls: covered,
                    redirect: covered && redirect,
                });
            }
        }
        if let (Some(backend), None) = (&ingress.spec.default_backend, &default_backend) {
            let at = format!("{what}: defaultBackend");
            let cluster = resolve(world, meta, backend, &mut clusters, &at, &mut t);
            let mut route = RouteConfig::to_cluster(PathMatch::Prefix("/".into()), "");
            route.name = Some(format!("Ingress/{}/defaultBackend", meta.key()));
            route.action = forward(cluster);
            default_backend = Some(route);
        } else if ingress.spec.default_backend.is_some() {
            t.warnings.push(format!(
                "{what}: defaultBackend: an older Ingress's default backend is served"
            ));
        }
        t.ingresses
            .push((meta.namespace.clone(), meta.name.clone()));
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let mut http = Vec::new();
    let mut https = Vec::new();
    for e in &entries {
        if e.tls {
            https.push(e.route.clone());
        }
        if e.redirect {
            http.push(RouteConfig {
                action: Action::Redirect(Redirect {
                    scheme: Some("https".into()),
                    host: None,
                    port: (ports.https != 443).then_some(ports.https),
                    path: None,
                    code: 308,
                }),
                ..e.route.clone()
            });
        } else {
            http.push(e.route.clone());
        }
    }
    if let Some(route) = default_backend {
        https.push(route.clone());
        http.push(route);
    }
    if !ingresses.is_empty() {
        t.ports.push(Port {
            port: ports.http,
            tls: false,
            routes: http,
            certificates: Vec::new(),
        });
    }
    if !certificates.is_empty() {
        t.ports.push(Port {
            port: ports.https,
            tls: true,
            routes: https,
            certificates,
        });
    }
    t.clusters = clusters.into_values().collect();
    t
}

/// Whether an Ingress belongs to `class`.
fn served(ingress: &Ingress, class: &str, default: bool) -> bool {
    match (
        ingress.spec.ingress_class_name.as_deref(),
        ingress.metadata.annotations.get(LEGACY_CLASS),
    ) {
        (Some(name), _) => name == class,
        (None, Some(legacy)) => legacy == class,
        (None, None) => default,
    }
}

/// The hosts an Ingress's `tls` entries cover (None: every host, for an
/// entry without hosts), adding their certificates; a Secret that is
/// missing or does not load is a warning, and its hosts stay plain HTTP.
fn tls(
    world: &World,
    ingress: &Ingress,
    certificates: &mut Vec<Certificate>,
    warnings: &mut Vec<String>,
) -> Vec<Option<HostPattern>> {
    let meta = &ingress.metadata;
    let mut covered = Vec::new();
    for (i, entry) in ingress.spec.tls.iter().enumerate() {
        let at = format!("Ingress {}: tls[{i}]", meta.key());
        let Some(secret) = entry.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            warnings.push(format!(
                "{at}: no secretName; its hosts are served on HTTP only"
            ));
            continue;
        };
        let name = format!("{}/{secret}", meta.namespace);
        let info = world
            .secrets
            .get(&(meta.namespace.clone(), secret.to_string()));
        let pem = match info {
            None => {
                warnings.push(format!("{at}: Secret {name} does not exist"));
                continue;
            }
            Some(s) if !s.tls => {
                warnings.push(format!(
                    "{at}: Secret {name} is not of type kubernetes.io/tls with tls.crt and tls.key"
                ));
                continue;
            }
            Some(s) => {
                if let Some(problem) = &s.problem {
                    let served = match s.pem {
                        Some(_) => "its last valid certificate is served",
                        None => "its hosts are served on HTTP only",
                    };
                    warnings.push(format!("{at}: Secret {name}: {problem}; {served}"));
                }
                match &s.pem {
                    Some(pem) => pem.clone(),
                    None => continue,
                }
            }
        };
        let hosts: Vec<Option<String>> = match entry.hosts.as_slice() {
            [] => vec![None],
            hosts => hosts.iter().map(|h| Some(h.to_ascii_lowercase())).collect(),
        };
        for host in hosts {
            covered.push(host.as_deref().map(HostPattern::parse));
            certificates.push(Certificate {
                listener: meta.key(),
                hostname: host,
                namespace: meta.namespace.clone(),
                secret: secret.to_string(),
                pem: pem.clone(),
            });
        }
    }
    covered
}

/// A path's condition, its length and whether it is a prefix.
fn path_match(path: &crate::objects::IngressPath) -> Result<(PathMatch, usize, bool), String> {
    let kind = path
        .path_type
        .as_deref()
        .unwrap_or("ImplementationSpecific");
    let value = path.path.clone().unwrap_or_else(|| "/".into());
    if !value.starts_with('/') {
        return Err(format!("path `{value}` does not start with `/`"));
    }
    let length = value.len();
    match kind {
        "Exact" => Ok((PathMatch::Exact(value), length, false)),
        "Prefix" => Ok((PathMatch::SeparatedPrefix(value), length, true)),
        "ImplementationSpecific" => Ok((PathMatch::Prefix(value), length, true)),
        other => Err(format!("pathType `{other}`")),
    }
}

/// A backend's cluster, or none (answered 500) with a warning.
fn resolve(
    world: &World,
    meta: &Meta,
    backend: &IngressBackend,
    clusters: &mut BTreeMap<String, ClusterConfig>,
    at: &str,
    t: &mut Translation,
) -> Option<String> {
    let Some(service) = &backend.service else {
        let why = match backend.resource {
            Some(_) => "a resource backend, which skiff does not serve",
            None => "no service",
        };
        t.warnings.push(format!("{at}: {why}; answered 500"));
        return None;
    };
    // A port by name is the Service's port of that name.
    let number = match (&service.port.number, &service.port.name) {
        (Some(n), _) => Some(*n),
        (None, Some(name)) => world
            .services
            .get(&(meta.namespace.clone(), service.name.clone()))
            .and_then(|s| s.spec.ports.iter().find(|p| p.name.as_ref() == Some(name)))
            .map(|p| p.port),
        (None, None) => None,
    };
    let reference = Reference {
        group: None,
        kind: None,
        name: &service.name,
        namespace: None,
        port: number,
    };
    let known = BTreeMap::new();
    match backend::resolve(
        world,
        ("Ingress", meta),
        &reference,
        (&known, clusters),
        Default::default(),
    ) {
        Ok(cluster) => Some(cluster),
        Err((_, why)) => {
            let why = match (number, &service.port.name) {
                (None, Some(name)) => {
                    format!("Service {} has no port named `{name}`", service.name)
                }
                _ => why,
            };
            t.warnings.push(format!("{at}: {why}; answered 500"));
            None
        }
    }
}

fn forward(cluster: Option<String>) -> Action {
    Action::Forward(vec![Backend {
        cluster,
        ..Backend::cluster("")
    }])
}
