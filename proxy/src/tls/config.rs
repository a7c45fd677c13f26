//! The `tls` sections of the config file: a listener's certificates and
//! client authentication, and a cluster's upstream TLS.
//!
//! ```yaml
//! listeners:
//!   - name: web
//!     tls:
//!       cert: /etc/skiff/tls/tls.crt          # the default certificate
//!       key: /etc/skiff/tls/tls.key
//!       certificates:                         # more, chosen by SNI
//!         - { cert: shop.crt, key: shop.key }  # names: the certificate's own
//!         - { cert: api.crt, key: api.key, names: [api.example.com, "*.api.example.com"] }
//!       client_auth:                          # inbound mTLS
//!         ca: /etc/skiff/ca.crt
//!         allow: [spiffe://cluster.local/ns/shop/sa/order, order.shop.svc]
//!         identity_header: x-client-identity
//! clusters:
//!   - name: payments
//!     tls: { ca: ca.crt, sni: payments.shop.svc, cert: me.crt, key: me.key }
//! ```
//!
//! Files are read here too, so `skiff check` and a reload refuse a
//! missing or broken certificate with the field that names it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use skiff_discovery::yaml::{self, Diagnostics, MapReader, Node};

use super::certs;

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate served to clients asking for one of `names` (SNI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SniCert {
    /// Exact names and `*.suffix` wildcards; empty: the certificate's DNS names.
    pub names: Vec<String>,
    #[serde(flatten)]
    pub files: CertFiles,
}

/// Inbound mTLS: clients must present a certificate from `ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAuth {
    pub ca: PathBuf,
    /// Identities allowed in (SAN URIs or DNS names); empty: any from `ca`.
    pub allow: Vec<String>,
    /// The request header that carries the client's identity upstream.
    pub identity_header: Option<String>,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// Served when no SNI certificate matches (or the client sent no SNI).
    pub default: Option<CertFiles>,
    pub certificates: Vec<SniCert>,
    pub client_auth: Option<ClientAuth>,
}

impl ListenerTls {
    /// Every file the listener reads, to watch for changes.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = Vec::new();
        for pair in self
            .default
            .iter()
            .chain(self.certificates.iter().map(|c| &c.files))
        {
            files.push(pair.cert.as_path());
            files.push(pair.key.as_path());
        }
        if let Some(auth) = &self.client_auth {
            files.push(auth.ca.as_path());
        }
        files
    }
}

/// TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTls {
    /// CA bundle the endpoints' certificates are verified against;
    /// none: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the certificate; none: the
    /// endpoint's IP address.
    pub sni: Option<String>,
    /// A client certificate, for upstreams that require mTLS.
    pub client_cert: Option<CertFiles>,
    /// Built from the fields above when the config is read.
    #[serde(skip)]
    pub connector: super::client::Connector,
}

/// Resolves `text` against the config file's directory.
fn file_path(node: &Node, path: &str, base: &Path, diags: &mut Diagnostics) -> Option<PathBuf> {
    let text = yaml::string(node, path, diags)?;
    if text.is_empty() {
        diags.error(node, path, "a file path is required");
        return None;
    }
    Some(base.join(text))
}

fn optional_file<'a>(
    map: &mut MapReader<'a>,
    name: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<Option<(PathBuf, &'a Node)>> {
    let path = map.path_of(name);
    match map.optional(name) {
        None => Some(None),
        Some(n) => file_path(n, &path, base, diags).map(|p| Some((p, n))),
    }
}

/// `cert` and `key` together, checked to load and to match.
fn read_pair(
    map: &mut MapReader<'_>,
    node: &Node,
    path: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<Option<CertFiles>> {
    let cert = optional_file(map, "cert", base, diags);
    let key = optional_file(map, "key", base, diags);
    match (cert?, key?) {
        (None, None) => Some(None),
        (Some((cert, cert_node)), Some((key, _))) => {
            if let Err(e) = certs::load_pair(&cert, &key) {
                diags.error(cert_node, &format!("{path}.cert"), e.to_string());
                return None;
            }
            Some(Some(CertFiles { cert, key }))
        }
        (Some(_), None) => {
            diags.error(node, path, "`cert` needs its `key`");
            None
        }
        (None, Some(_)) => {
            diags.error(node, path, "`key` needs its `cert`");
            None
        }
    }
}

fn string_list(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Vec<String>> {
    let items = yaml::seq(node, path, diags)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        out.push(yaml::string(item, &format!("{path}[{i}]"), diags)?);
    }
    Some(out)
}

/// Reads a listener's `tls` section.
pub fn read_listener_tls(
    node: &Node,
    path: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<ListenerTls> {
    let mut map = MapReader::new(node, path, diags)?;
    let default = read_pair(&mut map, node, path, base, diags);
    let certs_path = map.path_of("certificates");
    let certificates = match map.optional("certificates") {
        None => Some(Vec::new()),
        Some(n) => yaml::seq(n, &certs_path, diags).and_then(|items| {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let p = format!("{certs_path}[{i}]");
                let mut m = MapReader::new(item, &p, diags)?;
                let names_path = m.path_of("names");
                let names = match m.optional("names") {
                    Some(n) => string_list(n, &names_path, diags),
                    None => Some(Vec::new()),
                };
                let files = read_pair(&mut m, item, &p, base, diags);
                m.finish(diags, &["cert", "key", "names"]);
                let Some(files) = files? else {
                    diags.error(item, &p, "missing field `cert` (and `key`)");
                    return None;
                };
                out.push(SniCert {
                    names: names?.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
                    files,
                });
            }
            Some(out)
        }),
    };
    let auth_path = map.path_of("client_auth");
    let client_auth = match map.optional("client_auth") {
        None => Some(None),
        Some(n) => read_client_auth(n, &auth_path, base, diags).map(Some),
    };
    map.finish(diags, &["cert", "key", "certificates", "client_auth"]);
    let (default, certificates) = (default?, certificates?);
    if default.is_none() && certificates.is_empty() {
        diags.error(
            node,
            path,
            "give a certificate: `cert` and `key`, or `certificates`",
        );
        return None;
    }
    Some(ListenerTls {
        default,
        certificates,
        client_auth: client_auth?,
    })
}

fn read_client_auth(
    node: &Node,
    path: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<ClientAuth> {
    let mut map = MapReader::new(node, path, diags)?;
    let ca_path = map.path_of("ca");
    let ca = map.required("ca", diags).and_then(|n| {
        let file = file_path(n, &ca_path, base, diags)?;
        if let Err(e) = certs::load_roots(&file) {
            diags.error(n, &ca_path, e.to_string());
            return None;
        }
        Some(file)
    });
    let allow_path = map.path_of("allow");
    let allow = match map.optional("allow") {
        Some(n) => string_list(n, &allow_path, diags),
        None => Some(Vec::new()),
    };
    let header_path = map.path_of("identity_header");
    let identity_header = match map.optional("identity_header") {
        None => Some(None),
        Some(n) => yaml::string(n, &header_path, diags).and_then(|h| {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Some(Some(name.as_str().to_owned())),
                Err(_) => {
                    diags.error(n, &header_path, format!("`{h}` is not a header name"));
                    None
                }
            }
        }),
    };
    map.finish(diags, &["ca", "allow", "identity_header"]);
    Some(ClientAuth {
        ca: ca?,
        allow: allow?,
        identity_header: identity_header?,
    })
}

/// Reads a cluster's `tls` section and builds its connector.
pub fn read_upstream_tls(
    node: &Node,
    path: &str,
    base: &Path,
    http2: bool,
    diags: &mut Diagnostics,
) -> Option<UpstreamTls> {
    let mut map = MapReader::new(node, path, diags)?;
    let ca = optional_file(&mut map, "ca", base, diags);
    let sni_path = map.path_of("sni");
    let sni = match map.optional("sni") {
        None => Some(None),
        Some(n) => yaml::string(n, &sni_path, diags).and_then(|s| {
            match rustls::pki_types::ServerName::try_from(s.as_str()) {
                Ok(_) => Some(Some(s)),
                Err(_) => {
                    diags.error(
                        n,
                        &sni_path,
                        format!("`{s}` is not a DNS name or IP address"),
                    );
                    None
                }
            }
        }),
    };
    let client_cert = read_pair(&mut map, node, path, base, diags);
    map.finish(diags, &["ca", "sni", "cert", "key"]);
    let (ca, sni, client_cert) = (ca?, sni?, client_cert?);
    let ca_file = ca.as_ref().map(|(p, _)| p.clone());
    let connector = match super::client::Connector::build(
        ca_file.as_deref(),
        client_cert.as_ref(),
        sni.as_deref(),
        http2,
    ) {
        Ok(c) => c,
        Err(e) => {
            let (at, field) = match &ca {
                Some((_, n)) => (*n, format!("{path}.ca")),
                None => (node, path.to_owned()),
            };
            diags.error(at, &field, e.to_string());
            return None;
        }
    };
    Some(UpstreamTls {
        ca: ca_file,
        sni,
        client_cert,
        connector,
    })
}
