//! Route matching: arbitrary routes (written as config, so validation
//! runs) and arbitrary lookups. `skiff_route::Table::find` must agree with a plain
//! reading of the rules in `route/src/lib.rs` (exact host, then `*.suffix` longest
//! first, then host-less routes; first path match in config order), and a
//! host's case, port or trailing dot must not change the answer.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skiff_config::route::{HostMatch, PathMatch, RouteConfig};
use skiff_config::Config;
use skiff_route::Lookup;

/// The input, one item a line (readable seeds and reproducers):
///
/// ```text
/// route <host | -> <path_prefix | =path | +separated_prefix> <cluster 0-3>
/// find <host | -> <path>
/// ```
#[derive(Debug, Default)]
struct Input {
    routes: Vec<RouteSpec>,
    lookups: Vec<(Option<String>, String)>,
}

#[derive(Debug)]
struct RouteSpec {
    host: Option<String>,
    path: String,
    /// `path_prefix`, `path` or `path_separated_prefix`.
    kind: &'static str,
    cluster: u8,
}

fn read_input(text: &str) -> Input {
    let mut input = Input::default();
    let host = |h: &str| (h != "-").then(|| h.to_string());
    for line in text.lines() {
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("route"), Some(h), Some(p), c) => {
                let (path, kind) = if let Some(p) = p.strip_prefix('=') {
                    (p.to_string(), "path")
                } else if let Some(p) = p.strip_prefix('+') {
                    (p.to_string(), "path_separated_prefix")
                } else {
                    (p.to_string(), "path_prefix")
                };
                let cluster = c.and_then(|c| c.parse().ok()).unwrap_or(0);
                input.routes.push(RouteSpec {
                    host: host(h),
                    path,
                    kind,
                    cluster,
                });
            }
            (Some("find"), Some(h), Some(p), None) => input.lookups.push((host(h), p.to_string())),
            _ => {}
        }
    }
    input
}

fn config_text(routes: &[RouteSpec]) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut text = String::from(
        "admin: { listen: 127.0.0.1:0 }\nlisteners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n",
    );
    for r in routes {
        let host = r
            .host
            .as_deref()
            .map(|h| format!("host: {}, ", q(h)))
            .unwrap_or_default();
        let key = r.kind;
        text.push_str(&format!(
            "      - match: {{ {host}{key}: {} }}\n        cluster: c{}\n",
            q(&r.path),
            r.cluster % 4
        ));
    }
    text.push_str("clusters:\n");
    for i in 0..4 {
        text.push_str(&format!("  - name: c{i}\n    endpoints: []\n"));
    }
    text
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Exact(p) => path == p,
        // Whole segments: the prefix without its trailing `/`, then the
        // end of the path or a `/`.
        PathMatch::SeparatedPrefix(p) => {
            let p = p.strip_suffix('/').unwrap_or(p);
            path == p || path.starts_with(&format!("{p}/"))
        }
        PathMatch::Regex(_) => unreachable!("the input writes no expressions"),
    }
}

/// The rules, read plainly: which route (by index) a lookup should find.
fn reference(routes: &[RouteConfig], host: Option<&str>, path: &str) -> Option<usize> {
    let first = |pick: &dyn Fn(&RouteConfig) -> bool| {
        routes
            .iter()
            .position(|r| pick(r) && path_matches(&r.path, path))
    };
    if let Some(host) = host {
        let host = normalize(host);
        if let Some(i) = first(&|r| r.hosts.iter().any(|m| matches!(m, HostMatch::Exact(h) if *h == host))) {
            return Some(i);
        }
        // Distinct suffixes, longest first; equal lengths in config order.
        let mut suffixes: Vec<&str> = Vec::new();
        for r in routes {
            for m in &r.hosts {
                if let HostMatch::Suffix(s) = m {
                    if !suffixes.contains(&s.as_str()) {
                        suffixes.push(s);
                    }
                }
            }
        }
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for suffix in suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix) {
                let hit = first(&|r| r.hosts.iter().any(|m| matches!(m, HostMatch::Suffix(s) if s == suffix)));
                if hit.is_some() {
                    return hit;
                }
            }
        }
    }
    first(&|r| r.hosts.is_empty())
}

fn normalize(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rfind(':').map_or(host, |colon| &host[..colon])
    };
    without_port
        .strip_suffix('.')
        .unwrap_or(without_port)
        .to_ascii_lowercase()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = read_input(text);
    let text = config_text(&input.routes);
    let Ok(config) = Config::parse(&text, "fuzz.yaml", Path::new("/nonexistent")) else {
        return;
    };
    let listener = &config.listeners[0];
    // Each route leads to its own index, as the proxy's lead to clusters.
    let mut next = 0;
    let table = skiff_route::from_config(&listener.routes, |_| {
        next += 1;
        Ok::<_, skiff_route::BadPattern>(next - 1)
    })
    .expect("no target fails");
    // The generated routes have no header matches and no redirects.
    let index_of = |host: Option<&str>, path: &str| {
        let req = http::Request::get("/").body(()).expect("a request");
        let lookup = Lookup {
            path,
            ..Lookup::of(&req, host)
        };
        table.find(&lookup).copied()
    };
    for (host, path) in &input.lookups {
        let found = index_of(host.as_deref(), path);
        let expected = reference(&listener.routes, host.as_deref(), path);
        assert_eq!(found, expected, "host {host:?} path {path:?} in\n{text}");
        if let Some(i) = found {
            assert!(path_matches(&listener.routes[i].path, path));
        }
        // A plain host name reads the same in any case, with a port or
        // with a trailing dot.
        if let Some(h) = host.as_deref().filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && !h.ends_with('.')
        }) {
            for variant in [h.to_ascii_uppercase(), format!("{h}:8080"), format!("{h}.")] {
                let again = index_of(Some(&variant), path);
                assert_eq!(again, found, "{variant:?} differs from {h:?} for {path:?}");
            }
        }
    }
});
