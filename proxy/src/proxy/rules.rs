//! Route rules at run time: what a forwarding route changes in the
//! request (path and host rewrites, header edits) and in the response
//! (header edits), compiled from the route's config
//! ([`skiff_config::route`]) once, when its table is built. The
//! conditions that pick a route are `skiff_route`'s.
//!
//! A route without any of these keeps the plain path: its edits are
//! `None`, one branch per request.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri};
use skiff_config::route::{HeaderEdits, PathMatch, PathRewrite, Rewrite};

/// One header edit.
#[derive(Debug)]
enum Op {
    Remove(HeaderName),
    Set(HeaderName, HeaderValue),
    Add(HeaderName, HeaderValue),
}

/// Header edits in the order they are made: a route's, then its chosen
/// backend's; within each, removals, then replacements, then additions
/// (the Gateway API allows a name in one of them only, so the order
/// within one is never seen).
#[derive(Debug, Default)]
pub(crate) struct HeaderOps(Vec<Op>);

impl HeaderOps {
    /// The edits of `levels`, in order; none when they make none. Names and
    /// values were checked when the config was read; one that is not valid
    /// here is left out.
    pub(crate) fn of(levels: &[&HeaderEdits]) -> Option<Box<HeaderOps>> {
        let mut ops = Vec::new();
        for edits in levels {
            let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).ok();
            let pair = |(n, v): &(String, String)| Some((name(n)?, HeaderValue::from_str(v).ok()?));
            ops.extend(edits.remove.iter().filter_map(|n| name(n)).map(Op::Remove));
            ops.extend(
                edits
                    .set
                    .iter()
                    .filter_map(pair)
                    .map(|(n, v)| Op::Set(n, v)),
            );
            ops.extend(
                edits
                    .add
                    .iter()
                    .filter_map(pair)
                    .map(|(n, v)| Op::Add(n, v)),
            );
        }
        (!ops.is_empty()).then(|| Box::new(HeaderOps(ops)))
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for op in &self.0 {
            match op {
                Op::Remove(name) => {
                    headers.remove(name);
                }
                Op::Set(name, value) => {
                    headers.insert(name.clone(), value.clone());
                }
                Op::Add(name, value) => {
                    // A line of its own: safe for `set-cookie`.
                    headers.append(name.clone(), value.clone());
                }
            }
        }
    }
}

/// What a forwarding route changes in the request before it leaves.
#[derive(Debug)]
pub(crate) struct Edits {
    /// How the route matched, and the new path.
    path: Option<(PathMatch, PathRewrite)>,
    host: Option<HeaderValue>,
    headers: Option<Box<HeaderOps>>,
}

impl Edits {
    /// The edits of a route that matched by `matched` (with `rewrite` and
    /// the request header edits of the route and of its backend), or none
    /// when it makes none.
    pub(crate) fn of(
        rewrite: Option<&Rewrite>,
        matched: &PathMatch,
        headers: &[&HeaderEdits],
    ) -> Option<Box<Edits>> {
        let path = rewrite
            .and_then(|r| r.path.clone())
            .map(|to| (matched.clone(), to));
        let host = rewrite
            .and_then(|r| r.host.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let headers = HeaderOps::of(headers);
        if path.is_none() && host.is_none() && headers.is_none() {
            return None;
        }
        Some(Box::new(Edits {
            path,
            host,
            headers,
        }))
    }

    /// Applies the edits: headers, then the host, then the path.
    pub(crate) fn apply<B>(&self, req: &mut Request<B>) {
        if let Some(ops) = &self.headers {
            ops.apply(req.headers_mut());
        }
        if let Some(host) = &self.host {
            // The upstream's host comes from `Host` alone: an authority in
            // the URI (HTTP/2 clients) would win over it.
            if req.uri().authority().is_some() {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = None;
                parts.authority = None;
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        if let Some((matched, to)) = &self.path {
            let uri = req.uri();
            let Some(path) = skiff_route::rewrite::new_path(uri.path(), matched, to) else {
                return;
            };
            let mut path_and_query = path;
            if let Some(q) = uri.query() {
                path_and_query.push('?');
                path_and_query.push_str(q);
            }
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderEdits {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        HeaderEdits {
            set: pairs(set),
            add: pairs(add),
            remove: remove.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest_and_the_query() {
        let rewrite = Rewrite {
            host: None,
            path: Some(PathRewrite::Prefix("/v2/".into())),
        };
        let headers = edits(&[("x-gateway", "skiff")], &[], &["x-debug"]);
        let edits = Edits::of(
            Some(&rewrite),
            &PathMatch::Prefix("/api/".into()),
            &[&headers],
        )
        .unwrap();
        let mut req = Request::get("/api/items/7?color=red")
            .header("x-debug", "1")
            .header("x-gateway", "client")
            .body(())
            .unwrap();
        edits.apply(&mut req);
        assert_eq!(req.uri(), "/v2/items/7?color=red");
        assert_eq!(req.headers()["x-gateway"], "skiff");
        assert!(!req.headers().contains_key("x-debug"));
    }

    /// Conformance's HTTPRouteRequestHeaderModifier: `set` replaces every
    /// value, `add` appends after the client's, `remove` takes all; the
    /// backend's edits come after the route's.
    #[test]
    fn set_add_and_remove_as_the_gateway_api_says() {
        let route = edits(&[("x-set", "one")], &[("x-add", "added")], &["x-gone"]);
        let backend = edits(&[("x-backend", "b")], &[], &[]);
        let ops = HeaderOps::of(&[&route, &backend]).unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-set", HeaderValue::from_static("a"));
        headers.append("X-Set", HeaderValue::from_static("b"));
        headers.append("x-add", HeaderValue::from_static("original"));
        headers.append("x-gone", HeaderValue::from_static("1"));
        headers.append("x-gone", HeaderValue::from_static("2"));
        ops.apply(&mut headers);
        let all = |n: &str| {
            headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-set"), ["one"]);
        assert_eq!(all("x-add"), ["original", "added"]);
        assert!(all("x-gone").is_empty());
        assert_eq!(all("x-backend"), ["b"]);
    }

    #[test]
    fn a_host_rewrite_replaces_host_and_authority() {
        let rewrite = Rewrite {
            host: Some("catalog.internal".into()),
            path: Some(PathRewrite::Full("/one".into())),
        };
        let edits = Edits::of(Some(&rewrite), &PathMatch::Exact("/x".into()), &[]).unwrap();
        let mut req = Request::get("http://shop.example.com/x?a=1")
            .body(())
            .unwrap();
        edits.apply(&mut req);
        assert_eq!(req.uri(), "/one?a=1");
        assert_eq!(req.headers()["host"], "catalog.internal");
    }

    #[test]
    fn plain_routes_have_no_edits() {
        let none = HeaderEdits::default();
        assert!(Edits::of(None, &PathMatch::Prefix("/".into()), &[&none]).is_none());
        assert!(HeaderOps::of(&[&none]).is_none());
    }
}
