use super::*;
use http::{HeaderMap, HeaderValue, Method};
use skiff_config::route::{
    Action, HeaderMatch, HostMatch, PathMatch, QueryMatch, Redirect, RouteConfig, ValueMatch,
};

impl From<BadPattern> for String {
    fn from(e: BadPattern) -> String {
        e.to_string()
    }
}

/// The first cluster a config route names, or `redirect`.
fn first_cluster(r: &RouteConfig) -> Result<String, String> {
    Ok(r.clusters().next().unwrap_or("redirect").to_string())
}

/// A table whose routes lead to their cluster's name.
fn table(routes: &[(Option<HostMatch>, PathMatch, &str)]) -> Table<String> {
    let routes: Vec<RouteConfig> = routes
        .iter()
        .map(|(h, p, c)| RouteConfig {
            hosts: h.iter().cloned().collect(),
            ..RouteConfig::to_cluster(p.clone(), c)
        })
        .collect();
    from_config(&routes, first_cluster).unwrap()
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(path).body(()).unwrap()
}

fn find<'a>(t: &'a Table<String>, host: Option<&str>, path: &str) -> Option<&'a str> {
    let req = get(path);
    t.find(&Lookup::of(&req, host)).map(String::as_str)
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
fn every_config_route_makes_a_target_in_order() {
    let redirect = RouteConfig {
        action: Action::Redirect(Redirect {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: None,
            code: 301,
        }),
        ..RouteConfig::to_cluster(PathMatch::Prefix("/old".into()), "")
    };
    let plain = RouteConfig::to_cluster(PathMatch::Prefix("/".into()), "web");
    let t = from_config(&[redirect, plain], |r| {
        Ok::<_, String>(match &r.action {
            Action::Redirect(redirect) => format!("redirect {}", redirect.code),
            Action::Forward(_) => first_cluster(r)?,
        })
    })
    .unwrap();
    assert_eq!(find(&t, None, "/old/x"), Some("redirect 301"));
    assert_eq!(find(&t, None, "/new"), Some("web"));
    assert_eq!(t.targets().collect::<Vec<_>>(), ["redirect 301", "web"]);
}

#[test]
fn the_first_error_ends_the_build() {
    let routes = [RouteConfig::to_cluster(
        PathMatch::Prefix("/".into()),
        "missing",
    )];
    let built = from_config::<(), String>(&routes, |r| {
        Err(format!("no cluster {}", first_cluster(r)?))
    });
    assert_eq!(built.unwrap_err(), "no cluster missing");
    let bad = [RouteConfig::to_cluster(
        PathMatch::Regex("(unclosed".into()),
        "x",
    )];
    let built = from_config::<(), String>(&bad, |_| Ok(()));
    assert!(built.unwrap_err().contains("(unclosed"));
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
        }])
        .unwrap()[0]
            .matches(&h)
    };
    assert!(check("x-canary", ValueMatch::Exact("1".into())));
    assert!(!check("x-canary", ValueMatch::Exact("2".into())));
    assert!(check("user-agent", ValueMatch::Prefix("curl/".into())));
    assert!(check("x-canary", ValueMatch::Present));
    assert!(check("x-other", ValueMatch::Absent));
    assert!(!check("x-other", ValueMatch::Present));
}

/// Conformance's HTTPRouteMatching / HTTPRouteExactPathMatching cases:
/// `PathPrefix` goes by whole segments and ignores its trailing `/`;
/// `Exact` is byte for byte.
#[test]
fn segment_prefixes_and_exact_paths() {
    let p = PathCondition::segments;
    assert!(p("/abc").matches("/abc"));
    assert!(p("/abc").matches("/abc/"));
    assert!(p("/abc").matches("/abc/def"));
    assert!(!p("/abc").matches("/abcd"));
    assert!(p("/match/").matches("/match"));
    assert!(p("/v2").matches("/v2/example"));
    assert!(!p("/v2").matches("/v2example"));
    assert!(p("/").matches("/anything"));
    assert!(p("/").matches("/"));
    let exact = PathCondition::Exact("/two".into());
    assert!(exact.matches("/two"));
    assert!(!exact.matches("/two/"));
    assert!(!exact.matches("/Two"));
    // skiff's own `path_prefix` is a string prefix, as it always was.
    assert!(PathCondition::Prefix("/abc".into()).matches("/abcd"));
}

#[test]
fn regular_expressions_match_whole_values() {
    let re = Whole::new("/v[0-9]+/.*").unwrap();
    assert!(re.matches("/v1/items"));
    assert!(!re.matches("/api/v1/items"), "anchored at the start");
    let alt = Whole::new("a|b").unwrap();
    assert!(alt.matches("a") && alt.matches("b"));
    assert!(!alt.matches("ab"), "anchored around the whole alternation");
    let err = Whole::new("(unclosed").unwrap_err();
    assert!(err.to_string().contains("unclosed"), "{err}");
}

fn lookup_with<'a>(req: &'a http::Request<()>) -> Lookup<'a> {
    Lookup::of(req, Some("example.com"))
}

/// Conformance's HTTPRouteQueryParamMatching and HTTPRouteMethodMatching:
/// query names are case-sensitive, the first value counts, the method is
/// exact (HEAD is not GET).
#[test]
fn query_parameters_and_methods() {
    let check = |name: &str, value: ValueCheck, uri: &str| {
        let req = get(uri);
        QueryCheck {
            name: name.into(),
            value,
        }
        .matches(lookup_with(&req).query)
    };
    let exact = |v: &str| ValueCheck::Exact(v.into());
    assert!(check("animal", exact("whale"), "/?animal=whale"));
    assert!(!check("animal", exact("whale"), "/?ANIMAL=whale"));
    assert!(check(
        "animal",
        exact("whale"),
        "/?color=blue&animal=whale&animal=dolphin"
    ));
    assert!(!check(
        "animal",
        exact("dolphin"),
        "/?animal=whale&animal=dolphin"
    ));
    assert!(check("q", exact("a b/c"), "/?q=a+b%2Fc"));
    assert!(!check("animal", exact("whale"), "/"));
    assert!(check("flag", exact(""), "/?flag"));
    assert!(check(
        "id",
        ValueCheck::Regex(Whole::new("[0-9]+").unwrap()),
        "/?id=42"
    ));
    assert!(!check(
        "id",
        ValueCheck::Regex(Whole::new("[0-9]+").unwrap()),
        "/?id=42x"
    ));

    let conditions = Conditions {
        method: Some(Method::GET),
        ..Conditions::path(PathCondition::segments("/"))
    };
    let head = http::Request::head("/").body(()).unwrap();
    assert!(conditions.matches(&lookup_with(&get("/"))));
    assert!(!conditions.matches(&lookup_with(&head)));
}

#[test]
fn header_regular_expressions_read_the_first_value() {
    let mut req = get("/");
    req.headers_mut()
        .append("version", HeaderValue::from_static("two"));
    req.headers_mut()
        .append("version", HeaderValue::from_static("three"));
    let check = |pattern: &str| {
        HeaderCheck {
            name: http::header::HeaderName::from_static("version"),
            value: ValueCheck::Regex(Whole::new(pattern).unwrap()),
        }
        .matches(req.headers())
    };
    assert!(check("t.o"));
    assert!(!check("three"));
}

/// Conformance's HTTPRouteHostnameIntersection, with the spec's examples.
#[test]
fn listener_and_route_hostnames_intersect() {
    let h = HostPattern::parse;
    let i = |l: Option<&str>, r: &str| {
        intersect(l.map(h).as_ref(), &h(r)).map(|p| p.text().into_owned())
    };
    assert_eq!(i(None, "*.example.com").as_deref(), Some("*.example.com"));
    assert_eq!(
        i(Some("very.specific.com"), "very.specific.com").as_deref(),
        Some("very.specific.com")
    );
    assert_eq!(
        i(Some("very.specific.com"), "*.specific.com").as_deref(),
        Some("very.specific.com")
    );
    assert_eq!(
        i(Some("*.wildcard.io"), "foo.bar.wildcard.io").as_deref(),
        Some("foo.bar.wildcard.io")
    );
    assert_eq!(i(Some("*.wildcard.io"), "wildcard.io"), None);
    assert_eq!(
        i(Some("*.foo.example.com"), "*.example.com").as_deref(),
        Some("*.foo.example.com")
    );
    assert_eq!(
        i(Some("*.example.com"), "*.foo.example.com").as_deref(),
        Some("*.foo.example.com")
    );
    assert_eq!(i(Some("*.a.com"), "*.b.com"), None);
    assert_eq!(i(Some("*.example.com"), "*.barexample.com"), None);
    assert_eq!(i(Some("a.com"), "b.com"), None);
    assert_eq!(i(Some("a.com"), "A.COM").as_deref(), Some("a.com"));
}

/// Entries are tried in the order given within the most specific host
/// that has a match; a wildcard needs at least one label in front.
#[test]
fn entries_keep_their_order_within_a_host() {
    let mut b = Builder::default();
    let first = b.target("first");
    let second = b.target("second");
    let other = b.target("other");
    let wild = [HostPattern::parse("*.example.com")];
    b.entry(
        &wild,
        Conditions::path(PathCondition::Exact("/x".into())),
        first,
    );
    b.entry(
        &wild,
        Conditions::path(PathCondition::segments("/")),
        second,
    );
    b.entry(&[], Conditions::path(PathCondition::segments("/")), other);
    let t = b.build();
    let find = |host: &str, path: &str| {
        let req = get(path);
        t.find(&Lookup::of(&req, Some(host))).copied()
    };
    assert_eq!(find("a.example.com", "/x"), Some("first"));
    assert_eq!(find("a.b.example.com:8080", "/y"), Some("second"));
    assert_eq!(find("example.com", "/x"), Some("other"));
    assert_eq!(t.len(), 3);
}

/// A config route says all of path, method, headers and query, and any of
/// its hosts; each must hold.
#[test]
fn config_routes_carry_every_condition() {
    let route = RouteConfig {
        hosts: vec![
            HostMatch::Exact("a.example.com".into()),
            HostMatch::Suffix(".b.example.com".into()),
        ],
        method: Some("POST".into()),
        headers: vec![HeaderMatch {
            name: "x-version".into(),
            value: ValueMatch::Regex("v[12]".into()),
        }],
        query: vec![QueryMatch {
            name: "color".into(),
            value: ValueMatch::Exact("red".into()),
        }],
        ..RouteConfig::to_cluster(PathMatch::SeparatedPrefix("/api/".into()), "api")
    };
    let t = from_config(&[route], first_cluster).unwrap();
    let request = |method: Method, host: &str, uri: &str, version: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("x-version", version)
            .body(())
            .unwrap();
        t.find(&Lookup::of(&req, Some(host))).cloned()
    };
    let api = Some("api".to_string());
    assert_eq!(
        request(Method::POST, "a.example.com", "/api?color=red", "v1"),
        api
    );
    assert_eq!(
        request(Method::POST, "x.b.example.com", "/api/x?color=red", "v2"),
        api
    );
    assert_eq!(
        request(Method::GET, "a.example.com", "/api?color=red", "v1"),
        None
    );
    assert_eq!(
        request(Method::POST, "c.example.com", "/api?color=red", "v1"),
        None
    );
    assert_eq!(
        request(Method::POST, "a.example.com", "/apis?color=red", "v1"),
        None
    );
    assert_eq!(
        request(Method::POST, "a.example.com", "/api?color=blue", "v1"),
        None
    );
    assert_eq!(
        request(Method::POST, "a.example.com", "/api?color=red", "v3"),
        None
    );
}

/// Conformance's GatewayHTTPListenerIsolation: four listeners on one
/// port; a request is routed only by the routes of the most specific
/// listener its host matches, never by a less specific one's.
#[test]
fn listeners_sharing_a_port_are_isolated() {
    let listeners = [
        (None, "/empty-hostname"),
        (Some("*.example.com"), "/wildcard-example-com"),
        (Some("*.foo.example.com"), "/wildcard-foo-example-com"),
        (Some("abc.foo.example.com"), "/abc-foo-example-com"),
    ];
    let routes: Vec<RouteConfig> = listeners
        .iter()
        .map(|(host, path)| RouteConfig {
            listener_host: host.map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.into()),
                None => HostMatch::Exact(h.into()),
            }),
            ..RouteConfig::to_cluster(PathMatch::SeparatedPrefix(path.to_string()), &path[1..])
        })
        .collect();
    let t = from_config(&routes, first_cluster).unwrap();
    let hosts = [
        "bar.com",
        "bar.example.com",
        "bar.foo.example.com",
        "abc.foo.example.com",
    ];
    for (i, host) in hosts.iter().enumerate() {
        for (j, (_, path)) in listeners.iter().enumerate() {
            let want = (i == j).then(|| &path[1..]);
            assert_eq!(find(&t, Some(host), path), want, "{host} {path}");
        }
    }
}

/// A host with many entries is indexed by first path segment; lookups
/// must find exactly what trying every entry in order finds.
#[test]
fn an_indexed_host_finds_what_a_scan_finds() {
    let kinds = |i: usize| match i % 7 {
        0 => PathMatch::SeparatedPrefix(format!("/s{}", i % 5)),
        1 => PathMatch::Prefix(format!("/s{}/", i % 5)),
        2 => PathMatch::Prefix(format!("/s{}", i % 3)),
        3 => PathMatch::Exact(format!("/s{}/x", i % 5)),
        4 => PathMatch::Regex(format!("/s[0-{}]/y.*", i % 4)),
        5 => PathMatch::Exact("/".into()),
        _ => PathMatch::SeparatedPrefix(format!("/s{}/x", i % 5)),
    };
    let routes: Vec<RouteConfig> = (0..60)
        .map(|i| RouteConfig::to_cluster(kinds(i), &format!("c{i}")))
        .collect();
    let t = from_config(&routes, first_cluster).unwrap();
    let conditions: Vec<Conditions> = routes
        .iter()
        .map(|r| config_conditions(r).unwrap())
        .collect();
    let paths = [
        "/", "/s0", "/s0/", "/s0/x", "/s1/x/z", "/s2/y1", "/s3/yy", "/s4", "/s12", "/s1x", "/t",
        "", "*", "/s0/y", "/s4/x",
    ];
    for path in paths {
        let req = http::Request::get("/").body(()).unwrap();
        let lookup = Lookup {
            path,
            ..Lookup::of(&req, None)
        };
        let scan = conditions
            .iter()
            .position(|c| c.matches(&lookup))
            .map(|i| format!("c{i}"));
        assert_eq!(t.find(&lookup).cloned(), scan, "{path:?}");
    }
}
