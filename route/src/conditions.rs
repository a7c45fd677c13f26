//! What a route asks of a request besides its host: the path, the
//! method, header fields and query parameters. skiff's own config uses
//! string prefixes and header prefixes, presence and absence; the
//! Gateway API adds segment-wise prefixes, regular expressions, query
//! parameters and the method. Regular expressions are Rust's `regex`
//! dialect (RE2-like, linear time) and must match the whole value.

use http::header::{HeaderMap, HeaderName};
use http::Method;
use regex::Regex;

/// The request as matching reads it.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// As sent (any case, maybe with a port); `None` without one.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl<'a> Lookup<'a> {
    /// A lookup for `req`, whose host is `host` (the caller knows where
    /// it comes from: `Host`, `:authority`, or the URI).
    pub fn of<B>(req: &'a http::Request<B>, host: Option<&'a str>) -> Lookup<'a> {
        Lookup {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        }
    }
}

/// A condition on the path.
#[derive(Debug, Clone)]
pub enum PathCondition {
    /// The path starts with these bytes (skiff's `path_prefix`).
    Prefix(String),
    /// Segment-wise (the Gateway API's `PathPrefix`): the path is this, or
    /// this followed by `/`; kept without a trailing `/`, so `/` is empty
    /// and matches every path.
    Segments(String),
    /// Byte for byte.
    Exact(String),
    /// The whole path matches.
    Regex(Whole),
}

impl PathCondition {
    /// The Gateway API's `PathPrefix` of `value` (its trailing `/` dropped).
    pub fn segments(value: &str) -> PathCondition {
        PathCondition::Segments(value.strip_suffix('/').unwrap_or(value).to_string())
    }

    /// The first path segment every path this matches has (`api` for
    /// `/api/v1/`), or `None` when it can match paths of any (`/`, `/ap`
    /// as a byte prefix, an expression).
    pub fn first_segment(&self) -> Option<&str> {
        match self {
            PathCondition::Prefix(p) => {
                let rest = p.strip_prefix('/')?;
                Some(&rest[..rest.find('/')?])
            }
            PathCondition::Segments(p) => {
                let rest = p.strip_prefix('/').filter(|r| !r.is_empty())?;
                rest.split('/').next()
            }
            PathCondition::Exact(p) => p.strip_prefix('/')?.split('/').next(),
            PathCondition::Regex(_) => None,
        }
    }

    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathCondition::Prefix(p) => path.starts_with(p.as_str()),
            PathCondition::Exact(p) => path == p,
            PathCondition::Segments(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathCondition::Regex(re) => re.matches(path),
        }
    }
}

/// A regular expression that must match a whole value.
#[derive(Debug, Clone)]
pub struct Whole(Regex);

impl Whole {
    /// Compiles `pattern`, anchored at both ends; the error says what is
    /// wrong with it.
    pub fn new(pattern: &str) -> Result<Whole, regex::Error> {
        Ok(Whole(Regex::new(&format!("^(?:{pattern})$"))?))
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

/// A condition on one value (a header field's or a query parameter's).
#[derive(Debug, Clone)]
pub enum ValueCheck {
    Exact(String),
    Prefix(String),
    Regex(Whole),
    /// There, whatever its value.
    Present,
    /// Not there.
    Absent,
}

impl ValueCheck {
    #[inline]
    fn matches(&self, found: Option<&[u8]>) -> bool {
        match (self, found) {
            (ValueCheck::Present, found) => found.is_some(),
            (ValueCheck::Absent, found) => found.is_none(),
            (ValueCheck::Exact(want), Some(v)) => v == want.as_bytes(),
            (ValueCheck::Prefix(want), Some(v)) => v.starts_with(want.as_bytes()),
            (ValueCheck::Regex(re), Some(v)) => std::str::from_utf8(v).is_ok_and(|v| re.matches(v)),
            (_, None) => false,
        }
    }
}

/// A condition on a header field (its first value; names are
/// case-insensitive).
#[derive(Debug, Clone)]
pub struct HeaderCheck {
    pub name: HeaderName,
    pub value: ValueCheck,
}

impl HeaderCheck {
    #[inline]
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.value
            .matches(headers.get(&self.name).map(|v| v.as_bytes()))
    }
}

/// A condition on a query parameter (its first value; names are
/// case-sensitive; both are compared percent-decoded).
#[derive(Debug, Clone)]
pub struct QueryCheck {
    pub name: String,
    pub value: ValueCheck,
}

impl QueryCheck {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let found = query.and_then(|q| first_param(q, &self.name));
        self.value.matches(found.as_deref().map(str::as_bytes))
    }
}

/// The first value of the parameter `name` in a query string.
fn first_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// Percent-decodes a query component (`+` is a space); an invalid escape
/// stays as it is.
fn decode(text: &str) -> String {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything a route asks of a request besides its host; all must hold.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub path: PathCondition,
    pub method: Option<Method>,
    pub headers: Box<[HeaderCheck]>,
    pub query: Box<[QueryCheck]>,
}

impl Conditions {
    /// Just a path condition.
    pub fn path(path: PathCondition) -> Conditions {
        Conditions {
            path,
            method: None,
            headers: Box::new([]),
            query: Box::new([]),
        }
    }

    #[inline]
    pub fn matches(&self, req: &Lookup<'_>) -> bool {
        self.path.matches(req.path)
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|c| c.matches(req.headers))
            && (self.query.is_empty() || self.query.iter().all(|c| c.matches(req.query)))
    }
}
