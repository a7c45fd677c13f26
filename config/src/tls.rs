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
//! Only paths and names live here. Whether the files hold what they should
//! is asked of a [`Files`] check, which the proxy's TLS layer answers by
//! loading them: so `skiff check` and a reload refuse a missing or broken
//! certificate with the field that names it, and the runtime objects (a
//! listener's certificate resolver, a cluster's connector) are built from
//! this config by the proxy, never kept in it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::read;
use crate::yaml::{Diagnostics, MapReader, Node};

/// What reading a config cannot check by itself: the files it names.
pub trait Files {
    /// A certificate chain and its private key: both load and belong together.
    fn cert_pair(&self, cert: &Path, key: &Path) -> Result<(), String>;
    /// A CA bundle loads and holds at least one certificate.
    fn roots(&self, ca: &Path) -> Result<(), String>;
}

/// Checks nothing: the config alone, as `skiff check --offline` and the
/// fuzz targets read it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unchecked;

impl Files for Unchecked {
    fn cert_pair(&self, _: &Path, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn roots(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
}

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

/// A certificate chain and its key given as PEM text, not files: a
/// Kubernetes Secret read from the API server (the gateway role). Never
/// read from the config file; `/config` shows where it came from, never
/// the key.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct InlineCert {
    /// Where it came from, for errors and `/config`: `Secret shop/web-tls`.
    pub source: String,
    /// The SNI names it is served for (exact or `*.suffix`); empty: the
    /// default certificate.
    pub names: Vec<String>,
    #[serde(skip)]
    pub cert: std::sync::Arc<[u8]>,
    #[serde(skip)]
    pub key: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for InlineCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineCert")
            .field("source", &self.source)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// Served when no SNI certificate matches (or the client sent no SNI).
    pub default: Option<CertFiles>,
    pub certificates: Vec<SniCert>,
    pub client_auth: Option<ClientAuth>,
    /// Certificates given as PEM (from Secrets), after the files' own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<InlineCert>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// CA bundle the endpoints' certificates are verified against;
    /// none: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the certificate; none: the
    /// endpoint's IP address.
    pub sni: Option<String>,
    /// A client certificate, for upstreams that require mTLS.
    pub client_cert: Option<CertFiles>,
}

/// Where a config is read from, and who checks the files it names.
pub(crate) struct Context<'a> {
    /// The config file's directory: relative paths are resolved against it.
    pub base: &'a Path,
    pub files: &'a dyn Files,
}

impl Context<'_> {
    /// An optional file under `name`, with its node for errors about it.
    fn optional_file<'n>(
        &self,
        map: &mut MapReader<'n>,
        name: &str,
        diags: &mut Diagnostics,
    ) -> Option<Option<(PathBuf, &'n Node)>> {
        let path = map.path_of(name);
        match map.optional(name) {
            None => Some(None),
            Some(n) => read::file(n, &path, self.base, diags).map(|p| Some((p, n))),
        }
    }

    /// A required file under `name`, with its node.
    pub(crate) fn required_file<'n>(
        &self,
        map: &mut MapReader<'n>,
        name: &str,
        diags: &mut Diagnostics,
    ) -> Option<(PathBuf, &'n Node)> {
        let path = map.path_of(name);
        let node = map.required(name, diags)?;
        read::file(node, &path, self.base, diags).map(|p| (p, node))
    }

    /// `cert` and `key` together, checked to load and to match.
    fn read_pair(
        &self,
        map: &mut MapReader<'_>,
        node: &Node,
        path: &str,
        diags: &mut Diagnostics,
    ) -> Option<Option<CertFiles>> {
        let cert = self.optional_file(map, "cert", diags);
        let key = self.optional_file(map, "key", diags);
        match (cert?, key?) {
            (None, None) => Some(None),
            (Some((cert, cert_node)), Some((key, _))) => {
                if let Err(e) = self.files.cert_pair(&cert, &key) {
                    diags.error(cert_node, &format!("{path}.cert"), e);
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

    /// A CA bundle at `path`, checked to load; the error is placed at `node`.
    pub(crate) fn check_roots(
        &self,
        ca: &Path,
        node: &Node,
        path: &str,
        diags: &mut Diagnostics,
    ) -> Option<()> {
        match self.files.roots(ca) {
            Ok(()) => Some(()),
            Err(e) => {
                diags.error(node, path, e);
                None
            }
        }
    }

    /// A certificate chain and key, checked; the error is placed at `node`.
    pub(crate) fn check_pair(
        &self,
        files: &CertFiles,
        node: &Node,
        path: &str,
        diags: &mut Diagnostics,
    ) -> Option<()> {
        match self.files.cert_pair(&files.cert, &files.key) {
            Ok(()) => Some(()),
            Err(e) => {
                diags.error(node, path, e);
                None
            }
        }
    }
}

/// Reads a listener's `tls` section.
pub(crate) fn read_listener_tls(
    node: &Node,
    path: &str,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<ListenerTls> {
    let mut map = MapReader::new(node, path, diags)?;
    let default = cx.read_pair(&mut map, node, path, diags);
    let certs_path = map.path_of("certificates");
    let certificates = match map.optional("certificates") {
        None => Some(Vec::new()),
        Some(n) => read::seq(n, &certs_path, diags).and_then(|items| {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let p = format!("{certs_path}[{i}]");
                let mut m = MapReader::new(item, &p, diags)?;
                let names_path = m.path_of("names");
                let names = match m.optional("names") {
                    Some(n) => read::string_list(n, &names_path, diags),
                    None => Some(Vec::new()),
                };
                let files = cx.read_pair(&mut m, item, &p, diags);
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
        Some(n) => read_client_auth(n, &auth_path, cx, diags).map(Some),
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
        inline: Vec::new(),
    })
}

fn read_client_auth(
    node: &Node,
    path: &str,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<ClientAuth> {
    let mut map = MapReader::new(node, path, diags)?;
    let ca_path = map.path_of("ca");
    let ca = cx
        .required_file(&mut map, "ca", diags)
        .and_then(|(file, n)| cx.check_roots(&file, n, &ca_path, diags).map(|()| file));
    let allow_path = map.path_of("allow");
    let allow = match map.optional("allow") {
        Some(n) => read::string_list(n, &allow_path, diags),
        None => Some(Vec::new()),
    };
    let header_path = map.path_of("identity_header");
    let identity_header = match map.optional("identity_header") {
        None => Some(None),
        Some(n) => read::header_name(n, &header_path, diags).map(Some),
    };
    map.finish(diags, &["ca", "allow", "identity_header"]);
    Some(ClientAuth {
        ca: ca?,
        allow: allow?,
        identity_header: identity_header?,
    })
}

/// Reads a cluster's `tls` section.
pub(crate) fn read_upstream_tls(
    node: &Node,
    path: &str,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<UpstreamTls> {
    let mut map = MapReader::new(node, path, diags)?;
    let ca_path = map.path_of("ca");
    let ca = match cx.optional_file(&mut map, "ca", diags) {
        None => None,
        Some(None) => Some(None),
        Some(Some((file, n))) => cx
            .check_roots(&file, n, &ca_path, diags)
            .map(|()| Some(file)),
    };
    let sni_path = map.path_of("sni");
    let sni = match map.optional("sni") {
        None => Some(None),
        Some(n) => read::string(n, &sni_path, diags).and_then(|s| {
            if read::is_server_name(&s) {
                Some(Some(s))
            } else {
                diags.error(
                    n,
                    &sni_path,
                    format!("`{s}` is not a DNS name or IP address"),
                );
                None
            }
        }),
    };
    let client_cert = cx.read_pair(&mut map, node, path, diags);
    map.finish(diags, &["ca", "sni", "cert", "key"]);
    Some(UpstreamTls {
        ca: ca?,
        sni: sni?,
        client_cert: client_cert?,
    })
}
