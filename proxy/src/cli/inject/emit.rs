//! Writing a YAML tree back out, for `skiff inject`: a changed document
//! is read with skiff's one reader ([`skiff_config::yaml`]), edited, and
//! written here, block style as kubectl writes it.
//!
//! Every other field keeps its value and type: a scalar that was plain is
//! written plain when it reads back the same, else quoted (a quoted
//! `"8080"` stays a string, a plain `8080` stays a number). Comments inside
//! a changed document are lost, as with `kubectl` and `linkerd inject`.

use std::fmt::Write as _;

use skiff_config::yaml::{write_quoted, Node, Value};

/// Writes `node` as one block-style document (no `---`), ending in a newline.
pub(crate) fn emit(node: &Node) -> String {
    let mut out = String::new();
    match &node.value {
        Value::Map(entries) if !entries.is_empty() => emit_map(entries, 0, false, &mut out),
        Value::Seq(items) if !items.is_empty() => emit_seq(items, 0, false, &mut out),
        _ => {
            emit_inline(node, 0, &mut out);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Longest key written as an implicit key (`key: value`), in bytes: YAML
/// allows at most 1024 characters there (§7.4.2), and a key quoted for its
/// control characters can pass that though its text did not (found by the
/// inject fuzz target). Longer ones are written explicitly (`? key`).
const LONGEST_IMPLICIT_KEY: usize = 1000;

fn emit_map(entries: &[(Node, Node)], at: usize, first_inline: bool, out: &mut String) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, at);
        }
        match &key.value {
            Value::Scalar(text, _) if text.len() < LONGEST_IMPLICIT_KEY / 6 => {
                // Short enough whatever escaping makes of it (`\u001d`).
                emit_scalar(key, at, true, out)
            }
            Value::Scalar(..) => {
                let mut written = String::new();
                emit_scalar(key, at, true, &mut written);
                if written.len() > LONGEST_IMPLICIT_KEY {
                    out.push_str("? ");
                    out.push_str(&written);
                    out.push('\n');
                    indent(out, at);
                } else {
                    out.push_str(&written);
                }
            }
            _ => {
                out.push_str("? ");
                emit_flow(key, out);
                out.push('\n');
                indent(out, at);
            }
        }
        out.push(':');
        match &value.value {
            Value::Map(e) if !e.is_empty() => {
                out.push('\n');
                emit_map(e, at + 2, false, out);
            }
            // Lists under a key at the key's own indentation, as kubectl writes them.
            Value::Seq(items) if !items.is_empty() => {
                out.push('\n');
                emit_seq(items, at, false, out);
            }
            _ => {
                if value.value != Value::Scalar(String::new(), true) {
                    out.push(' ');
                }
                emit_inline(value, at + 2, out);
                out.push('\n');
            }
        }
    }
}

fn emit_seq(items: &[Node], at: usize, first_inline: bool, out: &mut String) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, at);
        }
        out.push_str("- ");
        match &item.value {
            Value::Map(e) if !e.is_empty() => emit_map(e, at + 2, true, out),
            Value::Seq(s) if !s.is_empty() => emit_seq(s, at + 2, true, out),
            _ => {
                emit_inline(item, at + 2, out);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection, on the current line.
fn emit_inline(node: &Node, at: usize, out: &mut String) {
    match &node.value {
        Value::Scalar(..) => emit_scalar(node, at, false, out),
        Value::Map(_) | Value::Seq(_) => emit_flow(node, out),
    }
}

/// A scalar as it was written: plain if it was plain and reads the same
/// plain in block context, else as a literal block when it spans lines,
/// else double-quoted.
fn emit_scalar(node: &Node, at: usize, key: bool, out: &mut String) {
    let Value::Scalar(text, plain) = &node.value else {
        return;
    };
    if *plain && block_plain_ok(text) {
        out.push_str(text);
    } else if !key && literal_fits(text) {
        let body = text.trim_end_matches('\n');
        let chomp = match text.len() - body.len() {
            0 => "-",
            1 => "",
            _ => "+",
        };
        let _ = writeln!(out, "|{chomp}");
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .unwrap_or(text)
            .split('\n')
            .collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.is_empty() {
                indent(out, at);
                out.push_str(line);
            }
            if i + 1 < lines.len() {
                out.push('\n');
            }
        }
    } else {
        write_quoted(text, out);
    }
}

/// Whether `text`, plain in a flow collection, stays one plain scalar in
/// block context: a flow plain scalar such as `?` or `-` is an indicator
/// there (found by the inject fuzz target).
fn block_plain_ok(text: &str) -> bool {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return true;
    };
    let second = chars.next();
    let indicator_first = "[]{}#&*!|>'\"%@`,".contains(first)
        || ("?:-".contains(first) && second.is_none_or(|c| c == ' ' || c == '\t'));
    // `---` or `...` at the start of a line is a document marker, and a
    // key is written at the start of one (found by the inject fuzz target).
    let marker_first = text.starts_with("---") || text.starts_with("...");
    !indicator_first
        && !marker_first
        && !text.contains('\n')
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.ends_with(':')
        && !text.starts_with([' ', '\t'])
        && !text.ends_with([' ', '\t'])
}

/// Whether `text` can be a literal block scalar without an indentation
/// indicator: several lines, printable, not starting with a space.
fn literal_fits(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\t', '\n'])
        && text
            .chars()
            .all(|c| c == '\n' || c == '\t' || !(c.is_control() || c == '\u{feff}'))
        && !text.lines().any(|l| l.ends_with([' ', '\t']))
}

/// Flow style: for complex keys and empty collections.
fn emit_flow(node: &Node, out: &mut String) {
    match &node.value {
        Value::Scalar(text, plain) => {
            // Plain only when nothing in it can read as flow syntax; one
            // with white space is quoted, which keeps it a string (the
            // inject fuzz target found `ord0 -` read as a misplaced `-`).
            let flow_safe = block_plain_ok(text)
                && !text.contains([',', '[', ']', '{', '}', ':', '#'])
                && !text.contains(char::is_whitespace);
            if *plain && text.is_empty() {
                // An empty plain scalar is null; in flow style only the
                // word can say so (`[, x]` does not parse).
                out.push_str("null");
            } else if *plain && flow_safe {
                out.push_str(text);
            } else {
                write_quoted(text, out);
            }
        }
        Value::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit_flow(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit_flow(k, out);
                out.push_str(": ");
                emit_flow(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::yaml::parse_stream;

    /// Compares trees without the line numbers.
    fn shape(node: &Node) -> String {
        match &node.value {
            Value::Scalar(s, p) => format!("{s:?}{}", if *p { "" } else { "q" }),
            Value::Seq(items) => format!(
                "[{}]",
                items.iter().map(shape).collect::<Vec<_>>().join(",")
            ),
            Value::Map(e) => format!(
                "{{{}}}",
                e.iter()
                    .map(|(k, v)| format!("{}:{}", shape(k), shape(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    #[test]
    fn flow_plain_scalars_that_are_indicators_in_block_context_are_quoted() {
        // From the inject fuzz target: `[{name: ?}]` emitted as `name: ?`
        // made a mapping key of the value.
        for text in [
            "c: [{name: ?}]\n",
            "c: [{name: ?x, b: -y, d: '#x'}]\n",
            "c: [a, b]\n",
        ] {
            let root = parse_stream(text).unwrap().remove(0).root.unwrap();
            let out = emit(&root);
            let again = parse_stream(&out)
                .unwrap_or_else(|e| panic!("{e}\n{out}"))
                .remove(0)
                .root
                .unwrap();
            // The same text; a plain scalar may come back quoted.
            let text_only = |n: &Node| shape(n).replace("\"q", "\"");
            assert_eq!(text_only(&root), text_only(&again), "\n{out}");
        }
    }

    fn round_trip(text: &str) {
        let docs = parse_stream(text).unwrap();
        for doc in docs {
            let Some(root) = doc.root else { continue };
            let out = emit(&root);
            let again = parse_stream(&out)
                .unwrap_or_else(|e| panic!("{e}\n{out}"))
                .remove(0)
                .root
                .unwrap();
            // Block scalars read back as block scalars: only plainness
            // between quoted and literal may differ, never the text.
            assert_eq!(shape(&root), shape(&again), "\n{out}");
        }
    }

    #[test]
    fn values_and_their_types_survive_a_round_trip() {
        round_trip(
            r#"
apiVersion: v1
kind: ConfigMap
data:
  port: "8080"
  plain: 8080
  flag: "true"
  yes_plain: yes
  empty: ""
  nothing:
  tilde: ~
  colon: "a: b"
  hash: "a #b"
  unicode: "naïve ✓"
  escape: "tab\there\u0001"
  script: |
    #!/bin/sh
    echo "hi"

    exit 0
  keep: |+
    two trailing

  strip: |-
    no trailing
  folded: >
    folded
    text
  indented: "  leading space\nsecond"
  flow: {a: 1, b: [x, "y,z"]}
  tagged: !!str 8080
  emptymap: {}
  emptyseq: []
  nested:
  - - a
    - b
  - {c: d}
  - - []
? [complex, key]
: value
anchor: &a {k: v}
alias: *a
"#,
        );
    }
}
