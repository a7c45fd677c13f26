//! Gateway route rules: what an ingress route can do beyond picking a
//! cluster by host and path. Envoy's route features, by the same names
//! where it has them:
//!
//! ```yaml
//! routes:
//!   - match:
//!       path_prefix: /api/
//!       headers: [{ name: x-canary, exact: "1" }, { name: authorization, present: true }]
//!     cluster: catalog-canary
//!     rewrite: { path_prefix: /v2/ }        # Envoy's prefix_rewrite
//!     request_headers: { add: { x-gateway: skiff }, remove: [x-debug] }
//!     timeout: 5s                           # to response headers, instead of the cluster's
//!   - match: { path_prefix: / }
//!     redirect: { scheme: https, port: 8443, code: 301 }   # instead of a cluster
//! ```
//!
//! A route without any of these keeps the plain path: its rules are
//! `None`, one branch per request.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use serde::Serialize;
use skiff_discovery::yaml::{self, Diagnostics, MapReader, Node};

use crate::config::PathMatch;
use crate::forward::{local, ProxyBody};

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
    /// 301, 302, 307 or 308.
    pub code: u16,
}

/// The gateway parts of one route, as configured.
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
        serialize_with = "ser_timeout"
    )]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Largest request body forwarded (`413` past it); none: no limit.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::limits::ser_optional_size"
    )]
    pub max_request_body: Option<u64>,
}

fn ser_timeout<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::config::format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// A header condition, ready for lookups.
#[derive(Debug)]
pub struct HeaderCheck {
    name: HeaderName,
    value: ValueMatch,
}

impl HeaderCheck {
    #[inline]
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        match (&self.value, headers.get(&self.name)) {
            (ValueMatch::Present, found) => found.is_some(),
            (ValueMatch::Absent, found) => found.is_none(),
            (ValueMatch::Exact(want), Some(v)) => v.as_bytes() == want.as_bytes(),
            (ValueMatch::Prefix(want), Some(v)) => v.as_bytes().starts_with(want.as_bytes()),
            (_, None) => false,
        }
    }
}

/// Compiles header conditions (names were checked when read).
pub fn header_checks(matches: &[HeaderMatch]) -> Box<[HeaderCheck]> {
    matches
        .iter()
        .filter_map(|m| {
            Some(HeaderCheck {
                name: HeaderName::from_bytes(m.name.as_bytes()).ok()?,
                value: m.value.clone(),
            })
        })
        .collect()
}

/// What a forwarding route changes in the request before it leaves.
#[derive(Debug)]
pub struct Edits {
    /// (prefix matched, replacement).
    rewrite: Option<(String, String)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    /// The edits of a route, or none when it makes none.
    pub fn of(rules: &RouteRules, path: &PathMatch) -> Option<Box<Edits>> {
        let rewrite = rules.rewrite_prefix.as_ref().map(|to| {
            let from = match path {
                PathMatch::Prefix(p) | PathMatch::Exact(p) => p.clone(),
            };
            (from, to.clone())
        });
        let add: Vec<(HeaderName, HeaderValue)> = rules
            .add_headers
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        let remove: Vec<HeaderName> = rules
            .remove_headers
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        if rewrite.is_none() && add.is_empty() && remove.is_empty() {
            return None;
        }
        Some(Box::new(Edits {
            rewrite,
            add,
            remove,
        }))
    }

    /// Applies the edits: removals first, then additions (which replace).
    pub fn apply<B>(&self, req: &mut Request<B>) {
        let headers = req.headers_mut();
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
        if let Some((from, to)) = &self.rewrite {
            let uri = req.uri();
            if let Some(rest) = uri.path().strip_prefix(from.as_str()) {
                let mut path_and_query = String::with_capacity(to.len() + rest.len() + 16);
                path_and_query.push_str(to);
                path_and_query.push_str(rest);
                if path_and_query.is_empty() {
                    path_and_query.push('/');
                }
                if let Some(q) = uri.query() {
                    path_and_query.push('?');
                    path_and_query.push_str(q);
                }
                let mut parts = uri.clone().into_parts();
                if let Ok(pq) = path_and_query.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
    }
}

impl Redirect {
    /// The redirect for `req`: same host (without its port) and path.
    pub fn response<B>(&self, req: &Request<B>, host: Option<&str>) -> http::Response<ProxyBody> {
        let host = host.unwrap_or("");
        // Strip a port, keeping IPv6 brackets.
        let bare = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host,
        };
        let path = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let location = match self.port {
            Some(port) => format!("{}://{bare}:{port}{path}", self.scheme),
            None => format!("{}://{bare}{path}", self.scheme),
        };
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        let mut resp = local(status, format!("redirecting to {location}\n"));
        if let Ok(value) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(http::header::LOCATION, value);
        }
        resp
    }
}

/// Reads `match.headers`.
pub fn read_header_matches(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<HeaderMatch>> {
    let items = yaml::seq(node, path, diags)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut map = MapReader::new(item, &p, diags)?;
        let name_path = map.path_of("name");
        let name = map
            .required("name", diags)
            .and_then(|n| header_name(n, &name_path, diags));
        let mut values = Vec::new();
        for key in ["exact", "prefix"] {
            let kp = map.path_of(key);
            if let Some(n) = map.optional(key) {
                let text = yaml::string(n, &kp, diags)?;
                values.push(if key == "exact" {
                    ValueMatch::Exact(text)
                } else {
                    ValueMatch::Prefix(text)
                });
            }
        }
        let present_path = map.path_of("present");
        if let Some(n) = map.optional("present") {
            let present = yaml::boolean(n, &present_path, diags)?;
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

fn header_name(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    let text = yaml::string(node, path, diags)?;
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name.as_str().to_owned()),
        Err(_) => {
            diags.error(node, path, format!("`{text}` is not a header name"));
            None
        }
    }
}

/// The route fields besides `match` and `cluster`.
pub const RULE_FIELDS: [&str; 5] = [
    "rewrite",
    "request_headers",
    "timeout",
    "redirect",
    "max_request_body",
];

/// Reads a route's rule fields from its map into `rules`.
pub fn read_rules(
    map: &mut MapReader<'_>,
    rules: &mut RouteRules,
    diags: &mut Diagnostics,
) -> Option<()> {
    let mut ok = true;
    let rewrite_path = map.path_of("rewrite");
    if let Some(n) = map.optional("rewrite") {
        let mut m = MapReader::new(n, &rewrite_path, diags)?;
        let p = m.path_of("path_prefix");
        match m.required("path_prefix", diags) {
            Some(v) => match yaml::string(v, &p, diags) {
                Some(text) if text.starts_with('/') => rules.rewrite_prefix = Some(text),
                Some(text) => {
                    diags.error(v, &p, format!("`{text}` must start with `/`"));
                    ok = false;
                }
                None => ok = false,
            },
            None => ok = false,
        }
        m.finish(diags, &["path_prefix"]);
    }
    let headers_path = map.path_of("request_headers");
    if let Some(n) = map.optional("request_headers") {
        let mut m = MapReader::new(n, &headers_path, diags)?;
        let add_path = m.path_of("add");
        if let Some(add) = m.optional("add") {
            match &add.value {
                yaml::Value::Map(entries) => {
                    for (k, v) in entries {
                        let kp = format!("{add_path}.{}", k.as_str().unwrap_or("?"));
                        let name = header_name(k, &kp, diags);
                        let value = yaml::string(v, &kp, diags);
                        match (name, value) {
                            (Some(name), Some(value)) if HeaderValue::from_str(&value).is_ok() => {
                                rules.add_headers.push((name, value))
                            }
                            (Some(_), Some(value)) => {
                                diags.error(v, &kp, format!("`{value}` is not a header value"));
                                ok = false;
                            }
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
            for (i, item) in yaml::seq(remove, &remove_path, diags)?.iter().enumerate() {
                match header_name(item, &format!("{remove_path}[{i}]"), diags) {
                    Some(name) => rules.remove_headers.push(name),
                    None => ok = false,
                }
            }
        }
        m.finish(diags, &["add", "remove"]);
    }
    let timeout_path = map.path_of("timeout");
    if let Some(n) = map.optional("timeout") {
        match yaml::duration(n, &timeout_path, diags) {
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
        let mut m = MapReader::new(n, &redirect_path, diags)?;
        let scheme_path = m.path_of("scheme");
        let scheme = match m.optional("scheme") {
            None => Some("https".to_owned()),
            Some(v) => match yaml::string(v, &scheme_path, diags)?.as_str() {
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
            Some(v) => yaml::uint(v, &port_path, 1..=65535, diags).map(|p| Some(p as u16)),
        };
        let code_path = m.path_of("code");
        let code = match m.optional("code") {
            None => Some(301),
            Some(v) => match yaml::uint(v, &code_path, 300..=399, diags)? {
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
        match (scheme, port, code) {
            (Some(scheme), Some(port), Some(code)) => {
                rules.redirect = Some(Redirect { scheme, port, code })
            }
            _ => ok = false,
        }
    }
    ok.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_keeps_the_rest_and_the_query() {
        let rules = RouteRules {
            rewrite_prefix: Some("/v2/".into()),
            add_headers: vec![("x-gateway".into(), "skiff".into())],
            remove_headers: vec!["x-debug".into()],
            ..Default::default()
        };
        let edits = Edits::of(&rules, &PathMatch::Prefix("/api/".into())).unwrap();
        let mut req = Request::get("/api/items/7?color=red")
            .header("x-debug", "1")
            .body(())
            .unwrap();
        edits.apply(&mut req);
        assert_eq!(req.uri(), "/v2/items/7?color=red");
        assert_eq!(req.headers()["x-gateway"], "skiff");
        assert!(!req.headers().contains_key("x-debug"));
    }

    #[test]
    fn plain_routes_have_no_edits() {
        assert!(Edits::of(&RouteRules::default(), &PathMatch::Prefix("/".into())).is_none());
    }

    #[test]
    fn redirects_keep_host_and_path_and_drop_the_port() {
        let r = Redirect {
            scheme: "https".into(),
            port: None,
            code: 301,
        };
        let req = Request::get("/cart?id=1").body(()).unwrap();
        let resp = r.response(&req, Some("shop.example.com:8080"));
        assert_eq!(resp.status(), 301);
        assert_eq!(
            resp.headers()["location"],
            "https://shop.example.com/cart?id=1"
        );
        let r = Redirect {
            port: Some(8443),
            ..r
        };
        let resp = r.response(&req, Some("[::1]:80"));
        assert_eq!(resp.headers()["location"], "https://[::1]:8443/cart?id=1");
    }

    #[test]
    fn header_checks_match_exact_prefix_presence_and_absence() {
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("1"));
        h.insert("user-agent", HeaderValue::from_static("curl/8"));
        let check = |name: &str, value: ValueMatch| {
            header_checks(&[HeaderMatch {
                name: name.into(),
                value,
            }])[0]
                .matches(&h)
        };
        assert!(check("x-canary", ValueMatch::Exact("1".into())));
        assert!(!check("x-canary", ValueMatch::Exact("2".into())));
        assert!(check("user-agent", ValueMatch::Prefix("curl/".into())));
        assert!(check("x-canary", ValueMatch::Present));
        assert!(check("x-other", ValueMatch::Absent));
        assert!(!check("x-other", ValueMatch::Present));
    }
}
