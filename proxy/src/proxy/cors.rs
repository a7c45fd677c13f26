//! CORS, as Envoy's filter and the Gateway API's `CORS` filter do it: a
//! preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! from an allowed origin is answered by skiff itself and never reaches
//! the upstream; the answer to any other request from an allowed origin
//! says so (`Access-Control-Allow-Origin` echoing the origin, with the
//! credentials and exposed headers the route allows). A request from an
//! origin not allowed passes as it is and its answer is left alone, so
//! the browser refuses it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use skiff_config::route::Cors;

/// An allowed origin.
#[derive(Debug)]
enum Origin {
    Any,
    /// `https://shop.example.com[:port]`, lowercase.
    Exact(String),
    /// `https://*.example.com[:port]`: the scheme, `.example.com`, and
    /// the `:port` part (or empty).
    Under {
        scheme: String,
        suffix: String,
        port: String,
    },
}

impl Origin {
    fn parse(pattern: &str) -> Origin {
        let pattern = pattern.to_ascii_lowercase();
        if pattern == "*" {
            return Origin::Any;
        }
        match pattern.split_once("://*.") {
            Some((scheme, rest)) => {
                let (host, port) = match rest.find(':') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                Origin::Under {
                    scheme: scheme.to_string(),
                    suffix: format!(".{host}"),
                    port: port.to_string(),
                }
            }
            None => Origin::Exact(pattern),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(o) => origin.eq_ignore_ascii_case(o),
            Origin::Under {
                scheme,
                suffix,
                port,
            } => {
                let origin = origin.to_ascii_lowercase();
                let Some(rest) = origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|r| r.strip_prefix("://"))
                else {
                    return false;
                };
                let (host, origin_port) = match rest.find(':') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                origin_port == port && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// What a list allows: anything (`*`, answered with what was asked), or
/// these, joined.
#[derive(Debug)]
enum Allowed {
    Any,
    These(Option<HeaderValue>),
}

impl Allowed {
    fn of(items: &[String]) -> Allowed {
        if items.iter().any(|i| i == "*") {
            return Allowed::Any;
        }
        Allowed::These(
            HeaderValue::from_str(&items.join(", "))
                .ok()
                .filter(|_| !items.is_empty()),
        )
    }
}

/// A route's CORS policy, ready for requests.
#[derive(Debug)]
pub(crate) struct CorsPolicy {
    origins: Vec<Origin>,
    methods: Allowed,
    headers: Allowed,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

static ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;

impl CorsPolicy {
    pub(crate) fn of(cors: &Cors) -> CorsPolicy {
        CorsPolicy {
            origins: cors
                .allow_origins
                .iter()
                .map(|o| Origin::parse(o))
                .collect(),
            methods: Allowed::of(&cors.allow_methods),
            headers: Allowed::of(&cors.allow_headers),
            expose: HeaderValue::from_str(&cors.expose_headers.join(", "))
                .ok()
                .filter(|_| !cors.expose_headers.is_empty()),
            credentials: cors.allow_credentials,
            max_age: HeaderValue::from(cors.max_age.as_secs()),
        }
    }

    /// The request's `Origin`, when it is one this policy allows.
    pub(crate) fn allowed_origin<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o.allows(text))
            .then(|| origin.clone())
    }

    /// The headers of the answer (`200`, no body) to a preflight from
    /// `origin` (an allowed one), or none when `req` is not a preflight.
    pub(crate) fn preflight<B>(&self, req: &Request<B>, origin: &HeaderValue) -> Option<HeaderMap> {
        let asked = req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD);
        if req.method() != Method::OPTIONS || asked.is_none() {
            return None;
        }
        let mut answer = HeaderMap::new();
        let h = &mut answer;
        self.mark_origin(origin, h);
        let methods = match &self.methods {
            Allowed::Any => asked.cloned(),
            Allowed::These(v) => v.clone(),
        };
        if let Some(m) = methods {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        let headers = match &self.headers {
            Allowed::Any => req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned(),
            Allowed::These(v) => v.clone(),
        };
        if let Some(v) = headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(answer)
    }

    /// Marks the answer to a request from `origin` (an allowed one).
    pub(crate) fn mark(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        self.mark_origin(origin, headers);
        if let Some(v) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    fn mark_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(ALLOW_ORIGIN.clone(), origin.clone());
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        origins: &[&str],
        methods: &[&str],
        headers: &[&str],
        credentials: bool,
    ) -> CorsPolicy {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        CorsPolicy::of(&Cors {
            allow_origins: list(origins),
            allow_methods: list(methods),
            allow_headers: list(headers),
            expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
            allow_credentials: credentials,
            max_age: std::time::Duration::from_secs(3600),
        })
    }

    fn request(method: &str, origin: &str, asks: Option<(&str, &str)>) -> Request<()> {
        let mut req = Request::builder()
            .method(method)
            .uri("/cors")
            .header("origin", origin);
        if let Some((m, h)) = asks {
            req = req
                .header("access-control-request-method", m)
                .header("access-control-request-headers", h);
        }
        req.body(()).unwrap()
    }

    /// The conformance suite's HTTPRouteCORS cases.
    #[test]
    fn origins_exact_and_under_a_wildcard() {
        let p = policy(
            &["https://www.foo.com", "https://*.bar.com"],
            &["GET", "OPTIONS"],
            &["x-header-1", "x-header-2"],
            true,
        );
        for (origin, allowed) in [
            ("https://www.foo.com", true),
            ("https://www.bar.com", true),
            ("https://xpto.www.bar.com", true),
            ("https://bar.com", false),
            ("https://foobar.com", false),
            ("http://www.foo.com", false),
            ("https://www.bar.com:8443", false),
        ] {
            let req = request("GET", origin, None);
            assert_eq!(p.allowed_origin(&req).is_some(), allowed, "{origin}");
        }
        let req = request(
            "OPTIONS",
            "https://www.bar.com",
            Some(("GET", "x-header-1, x-header-2")),
        );
        let origin = p.allowed_origin(&req).unwrap();
        let h = p.preflight(&req, &origin).expect("a preflight");
        assert_eq!(h["access-control-allow-origin"], "https://www.bar.com");
        assert_eq!(h["access-control-allow-methods"], "GET, OPTIONS");
        assert_eq!(h["access-control-allow-headers"], "x-header-1, x-header-2");
        assert_eq!(h["access-control-expose-headers"], "x-header-3, x-header-4");
        assert_eq!(h["access-control-max-age"], "3600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(p
            .preflight(&request("GET", "https://www.bar.com", None), &origin)
            .is_none());
    }

    #[test]
    fn wildcards_answer_what_was_asked_and_credentials_only_when_allowed() {
        let p = policy(&["*"], &["*"], &["*"], false);
        let req = request(
            "OPTIONS",
            "https://foobar.com:12345",
            Some(("PUT", "x-header-1, x-header-2")),
        );
        let origin = p.allowed_origin(&req).unwrap();
        let h = p.preflight(&req, &origin).unwrap();
        assert_eq!(h["access-control-allow-origin"], "https://foobar.com:12345");
        assert_eq!(h["access-control-allow-methods"], "PUT");
        assert_eq!(h["access-control-allow-headers"], "x-header-1, x-header-2");
        assert!(h.get("access-control-allow-credentials").is_none());
        let mut answer = HeaderMap::new();
        p.mark(&origin, &mut answer);
        assert_eq!(
            answer["access-control-allow-origin"],
            "https://foobar.com:12345"
        );
        assert_eq!(answer["vary"], "origin");
    }
}
