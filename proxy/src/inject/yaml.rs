//! YAML for `skiff inject`: split a stream into documents, read each into a
//! tree that keeps how every scalar was written, and write a tree back out.
//!
//! Injection must leave everything it does not touch as it was: a document
//! with no workload is copied byte for byte, and in a changed one every
//! other field keeps its value and type (a quoted `"8080"` stays a string,
//! a plain `8080` stays a number). So scalars keep their text and whether
//! they were plain; typing is the reader's business, as in the config
//! loader ([`skiff_discovery::yaml`]). Comments inside a changed document
//! are lost, as with `kubectl` and `linkerd inject`.

use std::fmt::Write as _;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// One YAML value with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line in the whole input stream.
    pub line: usize,
    pub value: Value,
}

/// The shape of a YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text and whether it was plain (unquoted, not a block scalar): a plain
    /// `true` is a boolean, a quoted one a string.
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A string that reads back as a string.
    pub fn string(text: &str) -> Node {
        Node {
            line: 0,
            value: Value::Scalar(text.into(), plain_is_string(text)),
        }
    }

    /// A plain scalar: a number, a boolean, or a string known to be safe.
    pub fn plain(text: impl ToString) -> Node {
        Node {
            line: 0,
            value: Value::Scalar(text.to_string(), true),
        }
    }

    pub fn map(entries: Vec<(&str, Node)>) -> Node {
        Node {
            line: 0,
            value: Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (Node::string(k), v))
                    .collect(),
            ),
        }
    }

    pub fn seq(items: Vec<Node>) -> Node {
        Node {
            line: 0,
            value: Value::Seq(items),
        }
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// True for a plain `null`, `~` or nothing.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s, true) if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The value under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key`, mutable.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            Value::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` in a mapping: replaced in place if present, else appended.
    /// Does nothing to a node that is not a mapping.
    pub fn set(&mut self, key: &str, value: Node) {
        if let Value::Map(entries) = &mut self.value {
            match entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
                Some((_, v)) => *v = value,
                None => entries.push((Node::string(key), value)),
            }
        }
    }
}

/// Whether `text` written plain reads back as the same string (and not as
/// a number, boolean, null, or something else YAML would see in it).
pub fn plain_is_string(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
    let keyword = matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~"
    );
    let numeric = text
        .trim_start_matches(['-', '+'])
        .starts_with(|c: char| c.is_ascii_digit() || c == '.');
    (first.is_ascii_alphabetic() || first == '/') && text.chars().all(safe) && !keyword && !numeric
}

/// One document of a YAML stream.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's source text, including its `---` line if it had one.
    pub source: String,
    /// Its content; `None` for a document with no content (only comments).
    pub root: Option<Node>,
}

/// A malformed YAML stream: which document, where, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index} (line {line}, column {col}): {message}")]
pub struct SyntaxError {
    /// 0-based position of the document in the stream.
    pub index: usize,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Whether `line` is the marker `marker` (`---` or `...`): at the start of
/// the line, alone or followed by white space.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether a document's source ends with a `...` line (which
/// [`parse_stream`] keeps as the last line of the document it ends).
pub fn ends_with_document_end(source: &str) -> bool {
    source
        .strip_suffix('\n')
        .unwrap_or(source)
        .rsplit('\n')
        .next()
        .is_some_and(|last| is_marker(last, "..."))
}

/// Splits a stream into its documents and parses each.
///
/// A `---` or `...` at the start of a line always ends what came before it
/// (the YAML spec forbids them inside any scalar), so splitting on those
/// lines first keeps each document's exact text for copying it unchanged.
pub fn parse_stream(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut chunks: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let marker = |m: &str| is_marker(line, m);
        if marker("---") {
            if !current.is_empty() {
                chunks.push((start_line, std::mem::take(&mut current)));
            }
            start_line = i + 1;
        } else if marker("...") {
            current.push_str(line);
            chunks.push((start_line, std::mem::take(&mut current)));
            start_line = i + 2;
            continue;
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        chunks.push((start_line, current));
    }
    let mut documents = Vec::with_capacity(chunks.len());
    for (start_line, source) in chunks {
        let index = documents.len();
        let root = parse_document(&source, start_line - 1).map_err(|(line, col, message)| {
            SyntaxError {
                index,
                line,
                col,
                message,
            }
        })?;
        documents.push(Document { source, root });
    }
    Ok(documents)
}

/// Parses one document's text; lines are shifted by `line_offset`.
fn parse_document(text: &str, line_offset: usize) -> Result<Option<Node>, (usize, usize, String)> {
    let mut builder = Builder {
        line_offset,
        ..Builder::default()
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            (
                e.marker().line() + line_offset,
                e.marker().col() + 1,
                e.info().to_string(),
            )
        })?;
        builder.push(event, span)?;
    }
    // `---` with nothing after it is an empty document, read as null.
    Ok(builder.root.filter(|r| !r.is_null()))
}

#[derive(Default)]
struct Builder {
    line_offset: usize,
    /// Open collections: the node, its anchor, and for mappings a key
    /// waiting for its value.
    stack: Vec<(Node, usize, Option<Node>)>,
    root: Option<Node>,
    anchors: std::collections::HashMap<usize, Node>,
    documents: usize,
}

impl Builder {
    fn push(&mut self, event: Event<'_>, span: Span) -> Result<(), (usize, usize, String)> {
        let line = span.start.line() + self.line_offset;
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err((
                        line,
                        span.start.col() + 1,
                        "a second document without a `---` line before it".into(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str 8080` is a string: written back quoted, it stays one.
                let string_tag = tag.is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !string_tag;
                self.finish(
                    Node {
                        line,
                        value: Value::Scalar(text.into_owned(), plain),
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Node {
                    line,
                    value: Value::Seq(Vec::new()),
                },
                anchor,
                None,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Node {
                    line,
                    value: Value::Map(Vec::new()),
                },
                anchor,
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, anchor, pending)) = self.stack.pop() {
                    if pending.is_some() {
                        return Err((node.line, 1, "a mapping key without a value".into()));
                    }
                    self.finish(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| {
                    (
                        line,
                        span.start.col() + 1,
                        "alias to an unknown anchor".to_string(),
                    )
                })?;
                self.finish(Node { line, ..node }, 0);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((parent, _, pending)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending.take() {
                    Some(key) => entries.push((key, node)),
                    None => *pending = Some(node),
                },
                Value::Scalar(..) => {}
            },
        }
    }
}

/// Writes `node` as one block-style document (no `---`), ending in a newline.
pub fn emit(node: &Node) -> String {
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
        quoted(text, out);
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

fn quoted(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
                quoted(text, out);
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

    #[test]
    fn documents_split_on_markers_and_keep_their_text() {
        let text = "# leading comment\na: 1\n---\nb: 2 # keep\n--- \n# only a comment\n---\nc: |\n  x\n...\n---\nd: 4\n";
        let docs = parse_stream(text).unwrap();
        let sources: Vec<&str> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "# leading comment\na: 1\n",
                "---\nb: 2 # keep\n",
                "--- \n# only a comment\n",
                "---\nc: |\n  x\n...\n",
                "---\nd: 4\n"
            ]
        );
        assert_eq!(sources.concat(), text);
        assert!(docs[2].root.is_none());
        assert_eq!(
            docs[3].root.as_ref().unwrap().get("c").unwrap().as_str(),
            Some("x\n")
        );
        assert_eq!(docs[4].root.as_ref().unwrap().line, 12);
    }

    #[test]
    fn a_syntax_error_names_the_document_and_the_stream_line() {
        let err = parse_stream("a: 1\n---\nb: 2\n---\nc: [1, 2\nd: 3\n").unwrap_err();
        assert_eq!(err.index, 2, "{err}");
        assert!(err.line >= 5, "{err}");
        assert!(err.to_string().starts_with("document 2 (line"), "{err}");
    }

    #[test]
    fn new_strings_are_quoted_only_when_plain_would_change_them() {
        for (text, plain) in [
            ("skiff", true),
            ("/ready", true),
            ("ghcr.io/skiff/skiff:0.1", false),
            ("100m", false),
            ("true", false),
            ("8080", false),
            ("", false),
            ("a b", false),
        ] {
            assert_eq!(plain_is_string(text), plain, "{text}");
        }
    }
}
