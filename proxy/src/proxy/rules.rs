//! Route rules at run time: what a forwarding route changes in the
//! request (rewrites, header edits; the conditions that pick it are
//! `skiff_route`'s),
//! compiled from the route's config ([`skiff_config::route`]) once, when
//! its table is built.
//!
//! A route without any of these keeps the plain path: its rules are
//! `None`, one branch per request.

use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri};
use skiff_config::route::{PathMatch, RouteRules};

/// What a forwarding route changes in the request before it leaves.
#[derive(Debug)]
pub(crate) struct Edits {
    /// (prefix matched, replacement).
    rewrite: Option<(String, String)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    /// The edits of a route, or none when it makes none.
    pub(crate) fn of(rules: &RouteRules, path: &PathMatch) -> Option<Box<Edits>> {
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
    pub(crate) fn apply<B>(&self, req: &mut Request<B>) {
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
}
