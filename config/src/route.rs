//! A listener's routes: which requests go where, and what a route does
//! beyond picking a cluster by host and path. Envoy's route features, by
//! the same names where it has them:
//!
//! ```yaml
//! routes:
//!   - match:
//!       host: shop.example.com                # or *.example.com
//!       path_prefix: /api/                    # or path: /exact
//!       headers: [{ name: x-canary, exact: "1" }, { name: authorization, present: true }]
//!     cluster: catalog-canary
//!     rewrite: { path_prefix: /v2/ }          # Envoy's prefix_rewrite
//!     request_headers: { add: { x-gateway: skiff }, remove: [x-debug] }
//!     timeout: 5s                             # to response headers, instead of the cluster's
//!     max_request_body: 10MiB                 # 413 past it
//!   - match: { path_prefix: / }
//!     redirect: { scheme: https, port: 8443, code: 301 }   # instead of a cluster
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::read;
use crate::units::{ser_optional_duration, ser_optional_size};
use crate::yaml::{Diagnostics, MapReader, Node, Value};

/// One route: requests whose host and path match go to `cluster`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Empty for a redirect route.
    pub cluster: String,
    /// Header matches, rewrites, header edits, timeout, redirect.
    #[serde(flatten)]
    pub rules: RouteRules,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    /// `shop.example.com` (lowercase, no port).
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored as `.example.com`).
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lowercase header name.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    /// The header is there, whatever its value.
    Present,
    /// The header is not there.
    Absent,
}

/// Where a redirect route sends clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub scheme: String,
    /// None: the scheme's default port (no port in the URL).
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
}

/// The parts of one route beyond its host, path and cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RouteRules {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Replaces the matched path prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add_headers: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// To response headers, instead of the cluster's request timeout.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Largest request body forwarded (`413` past it); none: no limit.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_size"
    )]
    pub max_request_body: Option<u64>,
}

/// The route fields besides `match` and `cluster`.
const RULE_FIELDS: [&str; 5] = [
    "rewrite",
    "request_headers",
    "timeout",
    "redirect",
    "max_request_body",
];

pub(crate) fn read_route(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<RouteConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let match_path = map.path_of("match");
    let mut rules = RouteRules::default();
    let matched = match map.optional("match") {
        Some(n) => read_match(n, &match_path, &mut rules, diags),
        None => Some((None, PathMatch::Prefix("/".into()))),
    };
    let rules_ok = read_rules(&mut map, &mut rules, diags);
    let cluster_path = map.path_of("cluster");
    let cluster = match (map.optional("cluster"), &rules.redirect) {
        (Some(_), Some(_)) => {
            diags.error(node, path, "give `cluster` or `redirect`, not both");
            None
        }
        (Some(n), None) => read::string(n, &cluster_path, diags),
        (None, Some(_)) => Some(String::new()),
        (None, None) => {
            diags.error(node, path, "missing field `cluster` (or `redirect`)");
            None
        }
    };
    let mut fields = vec!["match", "cluster"];
    fields.extend(RULE_FIELDS);
    map.finish(diags, &fields);
    let (host, path) = matched?;
    rules_ok?;
    Some(RouteConfig {
        host,
        path,
        cluster: cluster?,
        rules,
    })
}

fn read_match(
    node: &Node,
    path: &str,
    rules: &mut RouteRules,
    diags: &mut Diagnostics,
) -> Option<(Option<HostMatch>, PathMatch)> {
    let mut map = MapReader::new(node, path, diags)?;
    let host_path = map.path_of("host");
    let host = map
        .optional("host")
        .map(|n| read_host(n, &host_path, diags));
    let mut read_path = |name: &str, diags: &mut Diagnostics| -> Option<Option<String>> {
        let p = map.path_of(name);
        let n = map.optional(name)?;
        let text = read::string(n, &p, diags)?;
        if !text.starts_with('/') {
            diags.error(n, &p, format!("`{text}` must start with `/`"));
            return Some(None);
        }
        Some(Some(text))
    };
    let prefix = read_path("path_prefix", diags);
    let exact = read_path("path", diags);
    let path_match = match (prefix, exact) {
        (Some(_), Some(_)) => {
            diags.error(node, path, "give `path_prefix` or `path`, not both");
            None
        }
        (Some(p), None) => p.map(PathMatch::Prefix),
        (None, Some(p)) => p.map(PathMatch::Exact),
        (None, None) => Some(PathMatch::Prefix("/".into())),
    };
    let headers_path = map.path_of("headers");
    let headers = match map.optional("headers") {
        Some(n) => read_header_matches(n, &headers_path, diags),
        None => Some(Vec::new()),
    };
    map.finish(diags, &["host", "path_prefix", "path", "headers"]);
    rules.headers = headers?;
    let host = match host {
        Some(h) => Some(h?),
        None => None,
    };
    Some((host, path_match?))
}

/// `shop.example.com` or `*.example.com`, lowercased.
fn read_host(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<HostMatch> {
    let text = read::string(node, path, diags)?.to_ascii_lowercase();
    let (is_suffix, body) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        diags.error(
            node,
            path,
            format!("`{text}` is not a host name or `*.suffix` (no port, no scheme)"),
        );
        return None;
    }
    Some(if is_suffix {
        HostMatch::Suffix(format!(".{body}"))
    } else {
        HostMatch::Exact(body.to_string())
    })
}

/// Reads `match.headers`.
fn read_header_matches(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<HeaderMatch>> {
    let items = read::seq(node, path, diags)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut map = MapReader::new(item, &p, diags)?;
        let name_path = map.path_of("name");
        let name = map
            .required("name", diags)
            .and_then(|n| read::header_name(n, &name_path, diags));
        let mut values = Vec::new();
        for key in ["exact", "prefix"] {
            let kp = map.path_of(key);
            if let Some(n) = map.optional(key) {
                let text = read::string(n, &kp, diags)?;
                values.push(if key == "exact" {
                    ValueMatch::Exact(text)
                } else {
                    ValueMatch::Prefix(text)
                });
            }
        }
        let present_path = map.path_of("present");
        if let Some(n) = map.optional("present") {
            let present = read::boolean(n, &present_path, diags)?;
            values.push(if present {
                ValueMatch::Present
            } else {
                ValueMatch::Absent
            });
        }
        map.finish(diags, &["name", "exact", "prefix", "present"]);
        if values.len() != 1 {
            diags.error(item, &p, "give one of `exact`, `prefix` or `present`");
            continue;
        }
        out.push(HeaderMatch {
            name: name?,
            value: values.remove(0),
        });
    }
    Some(out)
}

/// Reads a route's rule fields from its map into `rules`.
fn read_rules(
    map: &mut MapReader<'_>,
    rules: &mut RouteRules,
    diags: &mut Diagnostics,
) -> Option<()> {
    let mut ok = true;
    let rewrite_path = map.path_of("rewrite");
    if let Some(n) = map.optional("rewrite") {
        match read_rewrite(n, &rewrite_path, diags) {
            Some(prefix) => rules.rewrite_prefix = Some(prefix),
            None => ok = false,
        }
    }
    let headers_path = map.path_of("request_headers");
    if let Some(n) = map.optional("request_headers") {
        ok &= read_header_edits(n, &headers_path, rules, diags).is_some();
    }
    let timeout_path = map.path_of("timeout");
    if let Some(n) = map.optional("timeout") {
        match read::duration(n, &timeout_path, diags) {
            Some(d) => rules.timeout = Some(d),
            None => ok = false,
        }
    }
    let body_path = map.path_of("max_request_body");
    if let Some(n) = map.optional("max_request_body") {
        match crate::limits::read_max_request_body(n, &body_path, diags) {
            Some(limit) => rules.max_request_body = Some(limit),
            None => ok = false,
        }
    }
    let redirect_path = map.path_of("redirect");
    if let Some(n) = map.optional("redirect") {
        match read_redirect(n, &redirect_path, diags) {
            Some(redirect) => rules.redirect = Some(redirect),
            None => ok = false,
        }
    }
    ok.then_some(())
}

/// `rewrite: { path_prefix: /v2/ }`.
fn read_rewrite(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    let mut m = MapReader::new(node, path, diags)?;
    let p = m.path_of("path_prefix");
    let prefix = m.required("path_prefix", diags).and_then(|v| {
        let text = read::string(v, &p, diags)?;
        if !text.starts_with('/') {
            diags.error(v, &p, format!("`{text}` must start with `/`"));
            return None;
        }
        Some(text)
    });
    m.finish(diags, &["path_prefix"]);
    prefix
}

/// `request_headers: { add: { name: value }, remove: [name] }`.
fn read_header_edits(
    node: &Node,
    path: &str,
    rules: &mut RouteRules,
    diags: &mut Diagnostics,
) -> Option<()> {
    let mut ok = true;
    let mut m = MapReader::new(node, path, diags)?;
    let add_path = m.path_of("add");
    if let Some(add) = m.optional("add") {
        match &add.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let kp = format!("{add_path}.{}", k.as_str().unwrap_or("?"));
                    let name = read::header_name(k, &kp, diags);
                    let value = read::header_value(v, &kp, diags);
                    match (name, value) {
                        (Some(name), Some(value)) => rules.add_headers.push((name, value)),
                        _ => ok = false,
                    }
                }
            }
            _ => {
                diags.error(
                    add,
                    &add_path,
                    "expected a mapping of header names to values",
                );
                ok = false;
            }
        }
    }
    let remove_path = m.path_of("remove");
    if let Some(remove) = m.optional("remove") {
        for (i, item) in read::seq(remove, &remove_path, diags)?.iter().enumerate() {
            match read::header_name(item, &format!("{remove_path}[{i}]"), diags) {
                Some(name) => rules.remove_headers.push(name),
                None => ok = false,
            }
        }
    }
    m.finish(diags, &["add", "remove"]);
    ok.then_some(())
}

/// `redirect: { scheme, port, code }`.
fn read_redirect(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Redirect> {
    let mut m = MapReader::new(node, path, diags)?;
    let scheme_path = m.path_of("scheme");
    let scheme = match m.optional("scheme") {
        None => Some("https".to_owned()),
        Some(v) => match read::string(v, &scheme_path, diags)?.as_str() {
            s @ ("http" | "https") => Some(s.to_owned()),
            other => {
                diags.error(v, &scheme_path, format!("`{other}` is not http or https"));
                None
            }
        },
    };
    let port_path = m.path_of("port");
    let port = match m.optional("port") {
        None => Some(None),
        Some(v) => read::uint(v, &port_path, 1..=65535, diags).map(|p| Some(p as u16)),
    };
    let code_path = m.path_of("code");
    let code = match m.optional("code") {
        None => Some(301),
        Some(v) => match read::uint(v, &code_path, 300..=399, diags)? {
            c @ (301 | 302 | 303 | 307 | 308) => Some(c as u16),
            other => {
                diags.error(
                    v,
                    &code_path,
                    format!("{other} is not 301, 302, 303, 307 or 308"),
                );
                None
            }
        },
    };
    m.finish(diags, &["scheme", "port", "code"]);
    Some(Redirect {
        scheme: scheme?,
        port: port?,
        code: code?,
    })
}
