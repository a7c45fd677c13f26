//! Reading a route from the config file; every mistake is reported with
//! where it is, and a route with one is left out whole.

use super::{
    Action, Backend, Cors, HeaderEdits, HeaderMatch, HostMatch, Mirror, PathMatch, PathRewrite,
    QueryMatch, Redirect, Rewrite, RouteConfig, RouteRetries, RouteRules, ValueMatch,
};
use crate::read;
use crate::yaml::{Diagnostics, MapReader, Node, Value};

/// The route fields besides `name`, `match`, `cluster`, `backends` and
/// `redirect`.
const RULE_FIELDS: [&str; 9] = [
    "cors",
    "mirror",
    "rewrite",
    "request_headers",
    "response_headers",
    "timeout",
    "per_try_timeout",
    "retries",
    "max_request_body",
];

/// What `match` says.
struct Matched {
    hosts: Vec<HostMatch>,
    path: PathMatch,
    method: Option<String>,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

pub(crate) fn read_route(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<RouteConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let name_path = map.path_of("name");
    let name = map
        .optional("name")
        .map(|n| read::string(n, &name_path, diags));
    let match_path = map.path_of("match");
    let matched = match map.optional("match") {
        Some(n) => read_match(n, &match_path, diags),
        None => Some(Matched {
            hosts: Vec::new(),
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }),
    };
    let action = read_action(&mut map, node, path, diags);
    let rules = read_rules(&mut map, diags);
    let mut fields = vec!["name", "match", "cluster", "backends", "redirect"];
    fields.extend(RULE_FIELDS);
    map.finish(diags, &fields);
    let (matched, action, rules) = (matched?, action?, rules?);
    let name = match name {
        Some(n) => Some(n?),
        None => None,
    };
    if !rewrite_fits(&rules, &action, &matched.path) {
        diags.error(
            node,
            path,
            "a `path_prefix` rewrite needs a `path_prefix` or `path_separated_prefix` match",
        );
        return None;
    }
    Some(RouteConfig {
        name,
        hosts: matched.hosts,
        listener_host: None,
        path: matched.path,
        method: matched.method,
        headers: matched.headers,
        query: matched.query,
        action,
        rules,
    })
}

/// A prefix rewrite (of the request or of a redirect) replaces what a
/// prefix matched, so the route must match by prefix.
fn rewrite_fits(rules: &RouteRules, action: &Action, path: &PathMatch) -> bool {
    let rewrite = rules.rewrite.as_ref().and_then(|r| r.path.as_ref());
    let redirect = match action {
        Action::Redirect(r) => r.path.as_ref(),
        Action::Forward(_) => None,
    };
    let by_prefix = matches!(path, PathMatch::Prefix(_) | PathMatch::SeparatedPrefix(_));
    by_prefix
        || ![rewrite, redirect]
            .iter()
            .any(|p| matches!(p, Some(PathRewrite::Prefix(_))))
}

/// `cluster`, `backends` or `redirect`: exactly one.
fn read_action(
    map: &mut MapReader<'_>,
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Action> {
    let cluster_path = map.path_of("cluster");
    let backends_path = map.path_of("backends");
    let redirect_path = map.path_of("redirect");
    let cluster = map.optional("cluster");
    let backends = map.optional("backends");
    let redirect = map.optional("redirect");
    match (cluster, backends, redirect) {
        (Some(n), None, None) => {
            let name = read::string(n, &cluster_path, diags)?;
            Some(Action::Forward(vec![Backend::cluster(&name)]))
        }
        (None, Some(n), None) => read_backends(n, &backends_path, diags).map(Action::Forward),
        (None, None, Some(n)) => read_redirect(n, &redirect_path, diags).map(Action::Redirect),
        (None, None, None) => {
            diags.error(
                node,
                path,
                "missing field `cluster` (or `backends`, or `redirect`)",
            );
            None
        }
        _ => {
            diags.error(
                node,
                path,
                "give one of `cluster`, `backends` or `redirect`",
            );
            None
        }
    }
}

/// `backends: [{ cluster, weight, request_headers, response_headers }]`.
fn read_backends(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Vec<Backend>> {
    let items = read::seq(node, path, diags)?;
    if items.is_empty() {
        diags.error(node, path, "name at least one backend");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match read_backend(item, &p, diags) {
            Some(b) => out.push(b),
            None => ok = false,
        }
    }
    if ok && out.iter().all(|b| b.weight == 0) {
        diags.error(
            node,
            path,
            "every weight is 0: nothing would be sent anywhere",
        );
        return None;
    }
    ok.then_some(out)
}

fn read_backend(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Backend> {
    let mut m = MapReader::new(node, path, diags)?;
    let cluster_path = m.path_of("cluster");
    let cluster = m
        .required("cluster", diags)
        .and_then(|n| read::string(n, &cluster_path, diags));
    let weight = m.uint_or("weight", 0..=1_000_000, 1, diags);
    let request = header_edits_field(&mut m, "request_headers", diags);
    let response = header_edits_field(&mut m, "response_headers", diags);
    m.finish(
        diags,
        &["cluster", "weight", "request_headers", "response_headers"],
    );
    Some(Backend {
        cluster: Some(cluster?),
        weight: weight?,
        request_headers: request?,
        response_headers: response?,
    })
}

fn read_match(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Matched> {
    let mut map = MapReader::new(node, path, diags)?;
    let host_path = map.path_of("host");
    let hosts = match map.optional("host") {
        None => Some(Vec::new()),
        Some(n) => read_hosts(n, &host_path, diags),
    };
    let path_match = read_path_match(&mut map, node, path, diags);
    let method_path = map.path_of("method");
    let method = match map.optional("method") {
        None => Some(None),
        Some(n) => read_method(n, &method_path, diags).map(Some),
    };
    let headers_path = map.path_of("headers");
    let headers = match map.optional("headers") {
        Some(n) => read_value_matches(n, &headers_path, diags, read::header_name),
        None => Some(Vec::new()),
    };
    let query_path = map.path_of("query");
    let query = match map.optional("query") {
        Some(n) => read_value_matches(n, &query_path, diags, |name, p, diags| {
            let text = read::string(name, p, diags)?;
            if text.is_empty() {
                diags.error(name, p, "a query parameter name cannot be empty");
                return None;
            }
            Some(text)
        }),
        None => Some(Vec::new()),
    };
    map.finish(
        diags,
        &[
            "host",
            "path_prefix",
            "path_separated_prefix",
            "path",
            "path_regex",
            "method",
            "headers",
            "query",
        ],
    );
    Some(Matched {
        hosts: hosts?,
        path: path_match?,
        method: method?,
        headers: headers?
            .into_iter()
            .map(|(name, value)| HeaderMatch { name, value })
            .collect(),
        query: query?
            .into_iter()
            .map(|(name, value)| QueryMatch { name, value })
            .collect(),
    })
}

/// One of `path_prefix`, `path_separated_prefix`, `path`, `path_regex`;
/// none: every path.
fn read_path_match(
    map: &mut MapReader<'_>,
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<PathMatch> {
    type Make = fn(String) -> PathMatch;
    let kinds: [(&str, Make); 4] = [
        ("path_prefix", PathMatch::Prefix),
        ("path_separated_prefix", PathMatch::SeparatedPrefix),
        ("path", PathMatch::Exact),
        ("path_regex", PathMatch::Regex),
    ];
    let mut found = Vec::new();
    for (key, make) in kinds {
        let p = map.path_of(key);
        let Some(n) = map.optional(key) else {
            continue;
        };
        let Some(text) = read::string(n, &p, diags) else {
            found.push(None);
            continue;
        };
        let valid = if key == "path_regex" {
            regex_ok(&text, n, &p, diags)
        } else if !text.starts_with('/') {
            diags.error(n, &p, format!("`{text}` must start with `/`"));
            false
        } else {
            true
        };
        found.push(valid.then(|| make(text)));
    }
    match found.len() {
        0 => Some(PathMatch::Prefix("/".into())),
        1 => found.pop().flatten(),
        _ => {
            diags.error(
                node,
                path,
                "give one of `path_prefix`, `path_separated_prefix`, `path` or `path_regex`",
            );
            None
        }
    }
}

/// Whether `pattern` compiles; says why not.
fn regex_ok(pattern: &str, node: &Node, path: &str, diags: &mut Diagnostics) -> bool {
    match regex::Regex::new(pattern) {
        Ok(_) => true,
        Err(e) => {
            let why = e.to_string();
            let last = why.lines().last().unwrap_or("invalid").trim();
            diags.error(
                node,
                path,
                format!("`{pattern}` is not a regular expression: {last}"),
            );
            false
        }
    }
}

/// An HTTP method token, upper case as the Gateway API writes them.
fn read_method(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    let text = read::string(node, path, diags)?;
    let token = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        diags.error(node, path, format!("`{text}` is not an HTTP method"));
        return None;
    }
    Some(text)
}

/// `host: a.example.com` or `host: [a.example.com, "*.example.com"]`.
fn read_hosts(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Vec<HostMatch>> {
    match &node.value {
        Value::Seq(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match read_host(item, &format!("{path}[{i}]"), diags) {
                    Some(h) => out.push(h),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        _ => read_host(node, path, diags).map(|h| vec![h]),
    }
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

/// Reads a list of `{ name, exact | prefix | regex | present }` (header
/// or query conditions); `name` reads and checks the name.
fn read_value_matches(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
    name: impl Fn(&Node, &str, &mut Diagnostics) -> Option<String>,
) -> Option<Vec<(String, ValueMatch)>> {
    let items = read::seq(node, path, diags)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(mut map) = MapReader::new(item, &p, diags) else {
            ok = false;
            continue;
        };
        let name_path = map.path_of("name");
        let read_name = map
            .required("name", diags)
            .and_then(|n| name(n, &name_path, diags));
        let mut values = Vec::new();
        for key in ["exact", "prefix", "regex"] {
            let kp = map.path_of(key);
            let Some(n) = map.optional(key) else {
                continue;
            };
            let Some(text) = read::string(n, &kp, diags) else {
                ok = false;
                continue;
            };
            values.push(match key {
                "exact" => ValueMatch::Exact(text),
                "prefix" => ValueMatch::Prefix(text),
                _ if regex_ok(&text, n, &kp, diags) => ValueMatch::Regex(text),
                _ => {
                    ok = false;
                    continue;
                }
            });
        }
        let present_path = map.path_of("present");
        if let Some(n) = map.optional("present") {
            match read::boolean(n, &present_path, diags) {
                Some(true) => values.push(ValueMatch::Present),
                Some(false) => values.push(ValueMatch::Absent),
                None => ok = false,
            }
        }
        map.finish(diags, &["name", "exact", "prefix", "regex", "present"]);
        if values.len() != 1 {
            if ok {
                diags.error(
                    item,
                    &p,
                    "give one of `exact`, `prefix`, `regex` or `present`",
                );
            }
            ok = false;
            continue;
        }
        match read_name {
            Some(n) => out.push((n, values.remove(0))),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Reads a route's rule fields from its map.
fn read_rules(map: &mut MapReader<'_>, diags: &mut Diagnostics) -> Option<RouteRules> {
    let mut ok = true;
    let mut rules = RouteRules::default();
    let rewrite_path = map.path_of("rewrite");
    if let Some(n) = map.optional("rewrite") {
        match read_rewrite(n, &rewrite_path, diags) {
            Some(r) => rules.rewrite = Some(r),
            None => ok = false,
        }
    }
    match header_edits_field(map, "request_headers", diags) {
        Some(e) => rules.request_headers = e,
        None => ok = false,
    }
    match header_edits_field(map, "response_headers", diags) {
        Some(e) => rules.response_headers = e,
        None => ok = false,
    }
    let timeout_path = map.path_of("timeout");
    if let Some(n) = map.optional("timeout") {
        match read::duration(n, &timeout_path, diags) {
            Some(d) => rules.timeout = Some(d),
            None => ok = false,
        }
    }
    let per_try_path = map.path_of("per_try_timeout");
    if let Some(n) = map.optional("per_try_timeout") {
        match read::duration(n, &per_try_path, diags) {
            Some(d) if d.is_zero() => {
                diags.error(n, &per_try_path, "give a duration above zero");
                ok = false;
            }
            Some(d) => rules.per_try_timeout = Some(d),
            None => ok = false,
        }
    }
    let retries_path = map.path_of("retries");
    if let Some(n) = map.optional("retries") {
        match read_route_retries(n, &retries_path, diags) {
            Some(r) => rules.retries = Some(r),
            None => ok = false,
        }
    }
    let cors_path = map.path_of("cors");
    if let Some(n) = map.optional("cors") {
        match read_cors(n, &cors_path, diags) {
            Some(c) => rules.cors = Some(c),
            None => ok = false,
        }
    }
    let mirror_path = map.path_of("mirror");
    if let Some(n) = map.optional("mirror") {
        match read_mirrors(n, &mirror_path, diags) {
            Some(m) => rules.mirrors = m,
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
    ok.then_some(rules)
}

/// `cors: { allow_origins: [https://shop.example.com], allow_methods: [GET],
/// allow_headers: [x-client], expose_headers: [x-trace], allow_credentials: true,
/// max_age: 1h }`.
fn read_cors(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Cors> {
    let mut m = MapReader::new(node, path, diags)?;
    let token = |t: &str| {
        t == "*"
            || (!t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    };
    let origins = cors_list(
        &mut m,
        "allow_origins",
        Cors::valid_origin,
        "`*` or scheme://host[:port]",
        diags,
    );
    let methods = cors_list(&mut m, "allow_methods", token, "a method or `*`", diags);
    let headers = cors_list(
        &mut m,
        "allow_headers",
        token,
        "a header name or `*`",
        diags,
    );
    let expose = cors_list(
        &mut m,
        "expose_headers",
        token,
        "a header name or `*`",
        diags,
    );
    let credentials_path = m.path_of("allow_credentials");
    let credentials = match m.optional("allow_credentials") {
        None => Some(false),
        Some(n) => read::boolean(n, &credentials_path, diags),
    };
    let max_age = m.duration_or("max_age", std::time::Duration::from_secs(5), diags);
    m.finish(
        diags,
        &[
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "allow_credentials",
            "max_age",
        ],
    );
    Some(Cors {
        allow_origins: origins?,
        allow_methods: methods?,
        allow_headers: headers?,
        expose_headers: expose?,
        allow_credentials: credentials?,
        max_age: max_age?,
    })
}

/// A list of a `cors` section, each item checked.
fn cors_list(
    m: &mut MapReader<'_>,
    name: &str,
    check: impl Fn(&str) -> bool,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<String>> {
    let at = m.path_of(name);
    let Some(n) = m.optional(name) else {
        return Some(Vec::new());
    };
    let items = read::string_list(n, &at, diags)?;
    if let Some(bad) = items.iter().find(|i| !check(i)) {
        diags.error(n, &at, format!("`{bad}` is not {what}"));
        return None;
    }
    Some(items)
}

/// `mirror: [{ cluster: shadow, percent: 10 }]` (`percent` may have
/// decimals; 100 by default).
fn read_mirrors(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Vec<Mirror>> {
    let items = read::seq(node, path, diags)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(mut m) = MapReader::new(item, &at, diags) else {
            ok = false;
            continue;
        };
        let cluster_path = m.path_of("cluster");
        let cluster = m
            .required("cluster", diags)
            .and_then(|n| read::string(n, &cluster_path, diags));
        let percent_path = m.path_of("percent");
        let percent = match m.optional("percent") {
            None => Some(100.0),
            Some(n) => {
                read::string(n, &percent_path, diags).and_then(|t| match t.trim().parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => Some(p),
                    _ => {
                        diags.error(
                            n,
                            &percent_path,
                            format!("`{t}` is not a percentage (0 to 100)"),
                        );
                        None
                    }
                })
            }
        };
        m.finish(diags, &["cluster", "percent"]);
        match (cluster, percent) {
            (Some(cluster), Some(percent)) => out.push(Mirror {
                cluster,
                per_million: (percent * 10_000.0).round() as u32,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// `retries: { attempts: 3, status_codes: [500, 503], backoff: 100ms }`.
fn read_route_retries(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<RouteRetries> {
    let mut m = MapReader::new(node, path, diags)?;
    let attempts = m.uint_or("attempts", 0..=10, 2, diags);
    let codes_path = m.path_of("status_codes");
    let status_codes = match m.optional("status_codes") {
        None => Some(Vec::new()),
        Some(list) => read::seq(list, &codes_path, diags).and_then(|items| {
            let codes: Vec<Option<u16>> = (items.iter().enumerate())
                .map(|(i, n)| {
                    let at = format!("{codes_path}[{i}]");
                    read::uint(n, &at, 400..=599, diags).map(|c| c as u16)
                })
                .collect();
            codes.into_iter().collect()
        }),
    };
    let backoff_path = m.path_of("backoff");
    let backoff = match m.optional("backoff") {
        None => Some(None),
        Some(n) => read::duration(n, &backoff_path, diags).map(Some),
    };
    m.finish(diags, &["attempts", "status_codes", "backoff"]);
    Some(RouteRetries {
        attempts: attempts?,
        status_codes: status_codes?,
        backoff: backoff?,
    })
}

/// `rewrite: { path_prefix: /v2/ | path: /full, host: name }`.
fn read_rewrite(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Rewrite> {
    let mut m = MapReader::new(node, path, diags)?;
    let new_path = read_path_rewrite(&mut m, node, path, diags);
    let host_path = m.path_of("host");
    let host = match m.optional("host") {
        None => Some(None),
        Some(n) => read_host_name(n, &host_path, diags).map(Some),
    };
    m.finish(diags, &["path_prefix", "path", "host"]);
    let rewrite = Rewrite {
        host: host?,
        path: new_path?,
    };
    if rewrite == Rewrite::default() {
        diags.error(node, path, "give `path_prefix`, `path` or `host`");
        return None;
    }
    Some(rewrite)
}

/// `path_prefix` or `path` (not both) in a rewrite or a redirect.
fn read_path_rewrite(
    m: &mut MapReader<'_>,
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Option<PathRewrite>> {
    let mut found = Vec::new();
    for key in ["path_prefix", "path"] {
        let p = m.path_of(key);
        let Some(n) = m.optional(key) else {
            continue;
        };
        let text = read::string(n, &p, diags);
        let valid = text.filter(|t| {
            let ok = t.starts_with('/');
            if !ok {
                diags.error(n, &p, format!("`{t}` must start with `/`"));
            }
            ok
        });
        found.push(valid.map(|t| {
            if key == "path" {
                PathRewrite::Full(t)
            } else {
                PathRewrite::Prefix(t)
            }
        }));
    }
    match found.len() {
        0 => Some(None),
        1 => found.pop().flatten().map(Some),
        _ => {
            diags.error(node, path, "give `path_prefix` or `path`, not both");
            None
        }
    }
}

/// A host name to send or redirect to (no wildcard, no port).
fn read_host_name(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    match read_host(node, path, diags)? {
        HostMatch::Exact(h) => Some(h),
        HostMatch::Suffix(_) => {
            diags.error(node, path, "a wildcard names no one host");
            None
        }
    }
}

/// An optional `request_headers` / `response_headers` field of `m`.
fn header_edits_field(
    m: &mut MapReader<'_>,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<HeaderEdits> {
    let p = m.path_of(key);
    match m.optional(key) {
        None => Some(HeaderEdits::default()),
        Some(n) => read_header_edits(n, &p, diags),
    }
}

/// `{ set: { name: value }, add: { name: value }, remove: [name] }`; a
/// name may appear under one of them only.
fn read_header_edits(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<HeaderEdits> {
    let mut ok = true;
    let mut edits = HeaderEdits::default();
    let mut m = MapReader::new(node, path, diags)?;
    for key in ["set", "add"] {
        let kp = m.path_of(key);
        let Some(pairs) = m.optional(key) else {
            continue;
        };
        let Value::Map(entries) = &pairs.value else {
            diags.error(pairs, &kp, "expected a mapping of header names to values");
            ok = false;
            continue;
        };
        for (k, v) in entries {
            let ep = format!("{kp}.{}", k.as_str().unwrap_or("?"));
            match (
                read::header_name(k, &ep, diags),
                read::header_value(v, &ep, diags),
            ) {
                (Some(name), Some(value)) if key == "set" => edits.set.push((name, value)),
                (Some(name), Some(value)) => edits.add.push((name, value)),
                _ => ok = false,
            }
        }
    }
    let remove_path = m.path_of("remove");
    if let Some(remove) = m.optional("remove") {
        for (i, item) in read::seq(remove, &remove_path, diags)?.iter().enumerate() {
            match read::header_name(item, &format!("{remove_path}[{i}]"), diags) {
                Some(name) => edits.remove.push(name),
                None => ok = false,
            }
        }
    }
    m.finish(diags, &["set", "add", "remove"]);
    let mut names: Vec<&str> = (edits.set.iter().map(|(n, _)| n.as_str()))
        .chain(edits.add.iter().map(|(n, _)| n.as_str()))
        .chain(edits.remove.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        diags.error(node, path, format!("`{}` is edited twice", w[0]));
        ok = false;
    }
    ok.then_some(edits)
}

/// `redirect: { scheme, host, port, path | path_prefix, code }`.
fn read_redirect(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Redirect> {
    let mut m = MapReader::new(node, path, diags)?;
    let scheme_path = m.path_of("scheme");
    let scheme = match m.optional("scheme") {
        // skiff's own default: a redirect route is most often to HTTPS.
        None => Some("https".to_owned()),
        Some(v) => match read::string(v, &scheme_path, diags)?.as_str() {
            s @ ("http" | "https") => Some(s.to_owned()),
            other => {
                diags.error(v, &scheme_path, format!("`{other}` is not http or https"));
                None
            }
        },
    };
    let host_path = m.path_of("host");
    let host = match m.optional("host") {
        None => Some(None),
        Some(n) => read_host_name(n, &host_path, diags).map(Some),
    };
    let port_path = m.path_of("port");
    let port = match m.optional("port") {
        None => Some(None),
        Some(v) => read::uint(v, &port_path, 1..=65535, diags).map(|p| Some(p as u16)),
    };
    let new_path = read_path_rewrite(&mut m, node, path, diags);
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
    m.finish(
        diags,
        &["scheme", "host", "port", "path", "path_prefix", "code"],
    );
    Some(Redirect {
        scheme: Some(scheme?),
        host: host?,
        port: port?,
        path: new_path?,
        code: code?,
    })
}
