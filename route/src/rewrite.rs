//! New paths for rewritten and redirected requests: the Gateway API's
//! `ReplacePrefixMatch` and `ReplaceFullPath`, and skiff's own
//! byte-prefix rewrite (Envoy's `prefix_rewrite`).

use skiff_config::route::{PathMatch, PathRewrite};

/// The path `path` becomes when a route that matched it by `matched`
/// rewrites it by `rewrite`; `None` when a prefix rewrite meets a path its
/// prefix does not match (a route matched by exact path or expression).
///
/// A whole-segment prefix `P` replaced by `R`: both lose one trailing `/`,
/// the rest of the path after `P` (empty or starting with `/`) is put
/// after `R`, and an empty result is `/`; so `/foo/bar` with `/foo` → `/xyz`
/// is `/xyz/bar`, `/foo/` → `/xyz/`, and `/foo` with `/foo` → `/` is `/`.
/// A byte prefix is replaced as it is.
pub fn new_path(path: &str, matched: &PathMatch, rewrite: &PathRewrite) -> Option<String> {
    let to = match rewrite {
        PathRewrite::Full(full) => return Some(full.clone()),
        PathRewrite::Prefix(to) => to.as_str(),
    };
    let (rest, to) = match matched {
        PathMatch::Prefix(from) => (path.strip_prefix(from.as_str())?, to),
        PathMatch::SeparatedPrefix(from) => {
            let from = from.strip_suffix('/').unwrap_or(from);
            let rest = path.strip_prefix(from)?;
            (rest, to.strip_suffix('/').unwrap_or(to))
        }
        PathMatch::Exact(_) | PathMatch::Regex(_) => return None,
    };
    let mut out = String::with_capacity(to.len() + rest.len() + 1);
    out.push_str(to);
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's table for `ReplacePrefixMatch`.
    #[test]
    fn segment_prefixes_are_replaced_as_the_gateway_api_says() {
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ];
        for (path, prefix, to, want) in cases {
            let got = new_path(
                path,
                &PathMatch::SeparatedPrefix(prefix.into()),
                &PathRewrite::Prefix(to.into()),
            );
            assert_eq!(got.as_deref(), Some(want), "{path} {prefix} {to}");
        }
    }

    #[test]
    fn byte_prefixes_full_paths_and_misfits() {
        let prefix = PathMatch::Prefix("/api/".into());
        let to = PathRewrite::Prefix("/v2/".into());
        assert_eq!(
            new_path("/api/items/7", &prefix, &to).unwrap(),
            "/v2/items/7"
        );
        assert_eq!(new_path("/api/", &prefix, &to).unwrap(), "/v2/");
        let strip = PathRewrite::Prefix("".into());
        assert_eq!(new_path("/api/", &prefix, &strip).unwrap(), "/");
        let full = PathRewrite::Full("/one".into());
        assert_eq!(new_path("/api/x", &prefix, &full).unwrap(), "/one");
        let exact = PathMatch::Exact("/api".into());
        assert_eq!(new_path("/api", &exact, &to), None);
        assert_eq!(new_path("/api", &exact, &full).unwrap(), "/one");
    }
}
