use super::*;
use http::HeaderValue;

/// A table whose routes lead to their cluster's name.
fn table(routes: &[(Option<HostMatch>, PathMatch, &str)]) -> Table<String> {
    let routes: Vec<RouteConfig> = routes
        .iter()
        .map(|(h, p, c)| RouteConfig {
            host: h.clone(),
            path: p.clone(),
            cluster: c.to_string(),
            rules: Default::default(),
        })
        .collect();
    Table::build(&routes, |r| Ok::<_, ()>(r.cluster.clone())).unwrap()
}

fn find<'a>(t: &'a Table<String>, host: Option<&str>, path: &str) -> Option<&'a str> {
    match t.find(host, path, &HeaderMap::new())? {
        Found::Route(cluster) => Some(cluster),
        Found::Redirect(_) => Some("redirect"),
    }
}

#[test]
fn exact_host_beats_suffix_beats_any() {
    let t = table(&[
        (None, PathMatch::Prefix("/".into()), "any"),
        (
            Some(HostMatch::Suffix(".example.com".into())),
            PathMatch::Prefix("/".into()),
            "wild",
        ),
        (
            Some(HostMatch::Exact("shop.example.com".into())),
            PathMatch::Prefix("/products".into()),
            "shop",
        ),
    ]);
    assert_eq!(
        find(&t, Some("shop.example.com"), "/products/1"),
        Some("shop")
    );
    assert_eq!(
        find(&t, Some("SHOP.example.com:8080"), "/products"),
        Some("shop")
    );
    assert_eq!(find(&t, Some("shop.example.com"), "/orders"), Some("wild"));
    assert_eq!(find(&t, Some("a.b.example.com"), "/"), Some("wild"));
    assert_eq!(find(&t, Some("example.com"), "/"), Some("any"));
    assert_eq!(find(&t, None, "/x"), Some("any"));
}

#[test]
fn exact_paths_and_prefixes_and_misses() {
    let t = table(&[
        (None, PathMatch::Exact("/healthz".into()), "health"),
        (None, PathMatch::Prefix("/api/".into()), "api"),
    ]);
    assert_eq!(find(&t, Some("h"), "/healthz"), Some("health"));
    assert_eq!(find(&t, Some("h"), "/healthz/x"), None);
    assert_eq!(find(&t, Some("h"), "/api/v1"), Some("api"));
    assert_eq!(find(&t, Some("h"), "/other"), None);
}

#[test]
fn longest_suffix_wins() {
    let t = table(&[
        (
            Some(HostMatch::Suffix(".com".into())),
            PathMatch::Prefix("/".into()),
            "com",
        ),
        (
            Some(HostMatch::Suffix(".example.com".into())),
            PathMatch::Prefix("/".into()),
            "example",
        ),
    ]);
    assert_eq!(find(&t, Some("www.example.com"), "/"), Some("example"));
    assert_eq!(find(&t, Some("www.other.com"), "/"), Some("com"));
}

#[test]
fn redirects_are_found_and_make_no_target() {
    let redirect = RouteConfig {
        host: None,
        path: PathMatch::Prefix("/old".into()),
        cluster: String::new(),
        rules: skiff_config::route::RouteRules {
            redirect: Some(Redirect {
                scheme: "https".into(),
                port: None,
                code: 301,
            }),
            ..Default::default()
        },
    };
    let plain = RouteConfig {
        path: PathMatch::Prefix("/".into()),
        cluster: "web".into(),
        rules: Default::default(),
        ..redirect.clone()
    };
    let mut made = Vec::new();
    let t = Table::build(&[redirect, plain], |r| {
        made.push(r.cluster.clone());
        Ok::<_, ()>(r.cluster.clone())
    })
    .unwrap();
    assert_eq!(made, ["web"]);
    assert!(
        matches!(t.find(None, "/old/x", &HeaderMap::new()), Some(Found::Redirect(r)) if r.code == 301)
    );
    assert_eq!(find(&t, None, "/new"), Some("web"));
    assert_eq!(t.targets().collect::<Vec<_>>(), ["web"]);
}

#[test]
fn the_first_error_ends_the_build() {
    let routes = [RouteConfig {
        host: None,
        path: PathMatch::Prefix("/".into()),
        cluster: "missing".into(),
        rules: Default::default(),
    }];
    let built = Table::<()>::build(&routes, |r| Err(format!("no cluster {}", r.cluster)));
    assert_eq!(built.unwrap_err(), "no cluster missing");
}

#[test]
fn hosts_are_normalized() {
    assert_eq!(normalize_host("Example.COM."), "example.com");
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert_eq!(normalize_host("a.b:1"), "a.b");
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
