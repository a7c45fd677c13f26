//! Typed field readers shared by every part of the config: each kind of
//! value (text, whole number, duration, size, address, header name, file,
//! name) is read, checked and reported in one place, so the same mistake
//! gets the same words wherever it is made.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::units::{format_size, parse_duration, parse_size};
use crate::yaml::{Diagnostics, MapReader, Node, Value};

/// Reads a scalar as text, reporting anything else.
pub fn string(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    match &node.value {
        Value::Scalar(s, _) if !node.is_null() => Some(s.clone()),
        _ => {
            diags.error(node, path, format!("expected text, found {}", node.kind()));
            None
        }
    }
}

/// Reads an unsigned integer within `range`.
pub fn uint(
    node: &Node,
    path: &str,
    range: RangeInclusive<u64>,
    diags: &mut Diagnostics,
) -> Option<u64> {
    let text = string(node, path, diags)?;
    match text.trim().parse::<u64>() {
        Ok(v) if range.contains(&v) => Some(v),
        Ok(v) => {
            diags.error(
                node,
                path,
                format!("{v} is out of range ({}..={})", range.start(), range.end()),
            );
            None
        }
        Err(_) => {
            diags.error(
                node,
                path,
                format!("expected a whole number, found `{text}`"),
            );
            None
        }
    }
}

/// Reads `true`/`false`.
pub fn boolean(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<bool> {
    let text = string(node, path, diags)?;
    match text.as_str() {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => {
            diags.error(
                node,
                path,
                format!("expected true or false, found `{text}`"),
            );
            None
        }
    }
}

/// Reads a list, reporting anything else.
pub fn seq<'a>(node: &'a Node, path: &str, diags: &mut Diagnostics) -> Option<&'a [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        _ => {
            diags.error(
                node,
                path,
                format!("expected a list, found {}", node.kind()),
            );
            None
        }
    }
}

/// Reads a list of text.
pub fn string_list(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Vec<String>> {
    let items = seq(node, path, diags)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match string(item, &format!("{path}[{i}]"), diags) {
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Reads a duration (`250ms`, `2s`, `1m`).
pub fn duration(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Duration> {
    let text = string(node, path, diags)?;
    match parse_duration(&text) {
        Ok(d) => Some(d),
        Err(message) => {
            diags.error(node, path, message);
            None
        }
    }
}

/// Reads a size (`65536`, `64KiB`) within `range` bytes.
pub fn size(
    node: &Node,
    path: &str,
    range: RangeInclusive<u64>,
    diags: &mut Diagnostics,
) -> Option<u64> {
    let text = string(node, path, diags)?;
    match parse_size(&text) {
        Ok(n) if range.contains(&n) => Some(n),
        Ok(_) => {
            diags.error(
                node,
                path,
                format!(
                    "`{text}` is out of range ({}..={})",
                    format_size(*range.start()),
                    format_size(*range.end())
                ),
            );
            None
        }
        Err(message) => {
            diags.error(node, path, message);
            None
        }
    }
}

/// Reads a socket address (`IP:PORT` or `[IPv6]:PORT`).
pub fn address(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<SocketAddr> {
    let text = string(node, path, diags)?;
    match text.trim().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            diags.error(
                node,
                path,
                format!("`{text}` is not an address like 10.0.0.1:8080 or [fd00::1]:8080"),
            );
            None
        }
    }
}

/// Reads a header name, lowercased as HTTP/2 and skiff's matching want it.
pub fn header_name(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    let text = string(node, path, diags)?;
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name.as_str().to_owned()),
        Err(_) => {
            diags.error(node, path, format!("`{text}` is not a header name"));
            None
        }
    }
}

/// Reads a header value (visible ASCII, spaces and tabs).
pub fn header_value(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    let text = string(node, path, diags)?;
    if http::HeaderValue::from_str(&text).is_err() {
        diags.error(node, path, format!("`{text}` is not a header value"));
        return None;
    }
    Some(text)
}

/// Reads a file path, resolved against `base` (the config file's directory).
pub fn file(node: &Node, path: &str, base: &Path, diags: &mut Diagnostics) -> Option<PathBuf> {
    let text = string(node, path, diags)?;
    if text.is_empty() {
        diags.error(node, path, "a file path is required");
        return None;
    }
    Some(base.join(text))
}

/// Longest listener or cluster name: they appear in metric labels and URLs.
const MAX_NAME: usize = 128;

/// Reads the `name` of a listener or cluster.
pub fn name(map: &mut MapReader<'_>, diags: &mut Diagnostics) -> Option<String> {
    let path = map.path_of("name");
    let node = map.required("name", diags)?;
    let name = string(node, &path, diags)?;
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        diags.error(
            node,
            &path,
            format!("`{name}` is not a valid name (letters, digits, `-`, `_`, `.`; at most 128)"),
        );
        return None;
    }
    Some(name)
}

/// An RFC 1123 label, as Kubernetes namespace and Service names are.
pub fn is_dns_label(s: &str) -> bool {
    let ok_end = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 63
        && ok_end(s.bytes().next())
        && ok_end(s.bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A name TLS can carry as SNI and verify in a certificate: an IP address,
/// or DNS labels of letters, digits, `-` and `_` (not at a label's ends
/// for `-`), at most 253 bytes, as rustls accepts them.
pub fn is_server_name(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // A name of digits and dots alone would be a malformed address.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl MapReader<'_> {
    /// A whole number in `range` under `name`, or `default` when absent.
    pub fn uint_or(
        &mut self,
        name: &str,
        range: RangeInclusive<u64>,
        default: u32,
        diags: &mut Diagnostics,
    ) -> Option<u32> {
        let path = self.path_of(name);
        match self.optional(name) {
            Some(n) => uint(n, &path, range, diags).map(|v| v as u32),
            None => Some(default),
        }
    }

    /// A duration under `name`, or `default` when absent.
    pub fn duration_or(
        &mut self,
        name: &str,
        default: Duration,
        diags: &mut Diagnostics,
    ) -> Option<Duration> {
        let path = self.path_of(name);
        match self.optional(name) {
            Some(n) => duration(n, &path, diags),
            None => Some(default),
        }
    }

    /// A duration of at least `min` under `name`, or `default` when absent.
    pub fn duration_at_least(
        &mut self,
        name: &str,
        min: Duration,
        default: Duration,
        diags: &mut Diagnostics,
    ) -> Option<Duration> {
        let path = self.path_of(name);
        let Some(n) = self.optional(name) else {
            return Some(default);
        };
        let d = duration(n, &path, diags)?;
        if d < min {
            let min = crate::units::format_duration(min);
            diags.error(n, &path, format!("must be at least {min}"));
            return None;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_names_or_addresses() {
        for ok in [
            "payments.shop.svc",
            "10.0.0.1",
            "::1",
            "a_b.example.com",
            "x.",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in ["", "-a.com", "a..b", "a b", "1.2.3.4.5", &"a".repeat(64)] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn dns_labels_are_lowercase() {
        assert!(is_dns_label("shop-1"));
        assert!(!is_dns_label("Shop"));
        assert!(!is_dns_label("-shop"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
