//! skiff's one YAML reader: a tree that remembers where every node came
//! from and how every scalar was written, and a decoder that collects
//! every mistake it finds instead of stopping at the first.
//!
//! serde stops at the first error and forgets positions once a value is
//! built; skiff's config errors must say `file:line:col: field.path: message`
//! for each mistake, including semantic ones found after parsing (a route to
//! a cluster that does not exist). So the config, endpoint files and the
//! manifests `skiff inject` rewrites are all read into [`Node`]s: the config
//! is decoded by hand with a [`Diagnostics`] sink, and `skiff inject` edits
//! the tree and writes it back, so it needs each scalar's text and whether
//! it was plain (a quoted `"8080"` stays a string, a plain `8080` a number).

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts in its source: 1-based line and column (both 0
/// for a node made by code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

/// One YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub mark: Mark,
    pub value: Value,
}

/// The shape of a YAML value. Scalars keep their text and whether they
/// were plain (unquoted, not a block scalar, no `!!str` tag); typing
/// happens when the reader asks for a type, so the error can name the field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A node made by code: a string that reads back as a string (plain
    /// only when plain would not change it).
    pub fn string(text: &str) -> Node {
        Node::made(Value::Scalar(text.into(), plain_is_string(text)))
    }

    /// A plain scalar made by code: a number, a boolean, or a string known
    /// to be safe.
    pub fn plain(text: impl ToString) -> Node {
        Node::made(Value::Scalar(text.to_string(), true))
    }

    /// A mapping made by code.
    pub fn map(entries: Vec<(&str, Node)>) -> Node {
        Node::made(Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Node::string(k), v))
                .collect(),
        ))
    }

    /// A list made by code.
    pub fn seq(items: Vec<Node>) -> Node {
        Node::made(Value::Seq(items))
    }

    fn made(value: Value) -> Node {
        Node {
            mark: Mark::default(),
            value,
        }
    }

    /// True for a plain `null`, `~` or nothing.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s, true) if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A short name of the node's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "nothing",
            Value::Scalar(..) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
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

/// `text` as a double-quoted YAML scalar, which reads back as the same
/// string whatever it holds.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    write_quoted(text, &mut out);
    out
}

/// Appends `text` as a double-quoted YAML scalar.
pub fn write_quoted(text: &str, out: &mut String) {
    use std::fmt::Write as _;
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

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses one YAML document into a [`Node`] tree. An empty document is a
/// null (an empty plain scalar).
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let root = parse_document(text, 0, "only one YAML document is allowed here")?;
    Ok(root.unwrap_or_else(|| Node {
        mark: Mark { line: 1, col: 1 },
        value: Value::Scalar(String::new(), true),
    }))
}

/// Parses one document of the file `file`: its tree, or its syntax error
/// as a diagnostic naming the file.
pub fn parse_file(text: &str, file: &str) -> Result<Node, Diagnostics> {
    parse(text).map_err(|e| {
        let mut diags = Diagnostics::new(file);
        diags.syntax(e);
        diags
    })
}

/// One document of a YAML stream.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's source text, including its `---` line if it had one.
    pub source: String,
    /// Its content; `None` for a document with no content (only comments)
    /// or only a null.
    pub root: Option<Node>,
}

/// A malformed YAML stream: which document, where, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index} (line {line}, column {col}): {message}")]
pub struct StreamError {
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

/// Splits a stream into its documents and parses each; lines are counted
/// in the whole stream.
///
/// A `---` or `...` at the start of a line always ends what came before it
/// (the YAML spec forbids them inside any scalar), so splitting on those
/// lines first keeps each document's exact text for copying it unchanged.
pub fn parse_stream(text: &str) -> Result<Vec<Document>, StreamError> {
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
        let second = "a second document without a `---` line before it";
        let root = parse_document(&source, start_line - 1, second).map_err(|e| StreamError {
            index,
            line: e.line,
            col: e.col,
            message: e.message,
        })?;
        // `---` with nothing after it is an empty document, read as null.
        let root = root.filter(|r| !r.is_null());
        documents.push(Document { source, root });
    }
    Ok(documents)
}

/// Parses one document's text; lines are shifted by `line_offset`, and a
/// second document is refused with `second`.
fn parse_document(
    text: &str,
    line_offset: usize,
    second: &str,
) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder {
        line_offset,
        second,
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            line: e.marker().line() + line_offset,
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        builder.push(event, span)?;
    }
    Ok(builder.root)
}

struct Builder<'a> {
    line_offset: usize,
    second: &'a str,
    /// Open collections: the node, its anchor, and for mappings a key
    /// waiting for its value.
    stack: Vec<(Node, usize, Option<Node>)>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    documents: usize,
}

impl Builder<'_> {
    fn push(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let mark = Mark {
            line: span.start.line() + self.line_offset,
            col: span.start.col() + 1,
        };
        let error = |message: &str| SyntaxError {
            line: mark.line,
            col: mark.col,
            message: message.into(),
        };
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(error(self.second));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str 8080` is a string: written back quoted, it stays one.
                let string_tag = tag.is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !string_tag;
                let value = Value::Scalar(text.into_owned(), plain);
                self.finish(Node { mark, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                let value = Value::Seq(Vec::new());
                self.stack.push((Node { mark, value }, anchor, None));
            }
            Event::MappingStart(anchor, _) => {
                let value = Value::Map(Vec::new());
                self.stack.push((Node { mark, value }, anchor, None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, anchor, pending)) = self.stack.pop() {
                    if pending.is_some() {
                        return Err(SyntaxError {
                            line: node.mark.line,
                            col: node.mark.col,
                            message: "mapping has a key without a value".into(),
                        });
                    }
                    self.finish(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| error("alias to an unknown anchor"))?;
                self.finish(Node { mark, ..node }, 0);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Attaches a finished node to its parent (or makes it the root).
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

/// One mistake in a document: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    /// Dotted field path, e.g. `clusters[1].timeouts.connect`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.col, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.col, self.path, self.message
            )
        }
    }
}

/// Every mistake found in one file, printed one per line as
/// `file:line:col: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics {
    pub file: String,
    pub items: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}", self.file, d)?;
        }
        Ok(())
    }
}

impl Diagnostics {
    pub fn new(file: impl Into<String>) -> Self {
        Diagnostics {
            file: file.into(),
            items: Vec::new(),
        }
    }

    /// Records a mistake at `node`, under field `path`.
    pub fn error(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.items.push(Diagnostic {
            line: node.mark.line,
            col: node.mark.col,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Records a syntax error that stopped parsing.
    pub fn syntax(&mut self, e: SyntaxError) {
        self.items.push(Diagnostic {
            line: e.line,
            col: e.col,
            path: String::new(),
            message: e.message,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, else all the mistakes.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.items.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// Reads the fields of one mapping, reporting unknown and missing ones.
pub struct MapReader<'a> {
    node: &'a Node,
    path: String,
    entries: Vec<(&'a str, &'a Node, &'a Node, bool)>,
}

impl<'a> MapReader<'a> {
    /// Starts reading `node` as a mapping; reports and returns `None` if it is not one.
    pub fn new(node: &'a Node, path: &str, diags: &mut Diagnostics) -> Option<MapReader<'a>> {
        let Value::Map(entries) = &node.value else {
            diags.error(
                node,
                path,
                format!("expected a mapping, found {}", node.kind()),
            );
            return None;
        };
        let mut seen: Vec<(&'a str, &'a Node, &'a Node, bool)> = Vec::new();
        for (k, v) in entries {
            let Some(name) = k.as_str().filter(|_| !k.is_null()) else {
                diags.error(k, path, "keys must be plain names");
                continue;
            };
            if seen.iter().any(|(n, ..)| *n == name) {
                diags.error(k, &join(path, name), "field appears twice");
                continue;
            }
            seen.push((name, k, v, false));
        }
        Some(MapReader {
            node,
            path: path.to_string(),
            entries: seen,
        })
    }

    /// The mapping node itself, for errors about the whole thing.
    pub fn node(&self) -> &'a Node {
        self.node
    }

    /// The path of field `name` under this mapping.
    pub fn path_of(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Takes an optional field; a present `null` counts as absent.
    pub fn optional(&mut self, name: &str) -> Option<&'a Node> {
        let entry = self.entries.iter_mut().find(|(n, ..)| *n == name)?;
        entry.3 = true;
        (!entry.2.is_null()).then_some(entry.2)
    }

    /// Takes a required field, reporting it when missing.
    pub fn required(&mut self, name: &str, diags: &mut Diagnostics) -> Option<&'a Node> {
        let found = self.optional(name);
        if found.is_none() {
            diags.error(self.node, &self.path, format!("missing field `{name}`"));
        }
        found
    }

    /// Reports every field that was never taken as unknown.
    pub fn finish(self, diags: &mut Diagnostics, known: &[&str]) {
        for (name, key, _, used) in &self.entries {
            if !used {
                diags.error(
                    key,
                    &join(&self.path, name),
                    format!("unknown field (expected one of: {})", known.join(", ")),
                );
            }
        }
    }
}

/// `a.b`, or `b` when `a` is empty.
pub fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_the_value() {
        let node = parse("a: 1\nb:\n  c: x\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.mark, Mark { line: 1, col: 4 });
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.mark, Mark { line: 3, col: 3 });
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\n").unwrap_err();
        assert!(err.line >= 1, "{err}");
    }

    #[test]
    fn one_document_only_where_one_is_expected() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.message, "only one YAML document is allowed here");
        assert!(parse("").unwrap().is_null());
    }

    #[test]
    fn unknown_and_missing_fields_are_all_reported() {
        let node = parse("name: x\nbogus: 1\nother: 2\n").unwrap();
        let mut diags = Diagnostics::new("f.yaml");
        let mut map = MapReader::new(&node, "root", &mut diags).unwrap();
        map.optional("name");
        map.required("listen", &mut diags);
        map.finish(&mut diags, &["name", "listen"]);
        let text = diags.to_string();
        assert!(
            text.contains("f.yaml:1:1: root: missing field `listen`"),
            "{text}"
        );
        assert!(
            text.contains("f.yaml:2:1: root.bogus: unknown field"),
            "{text}"
        );
        assert!(
            text.contains("f.yaml:3:1: root.other: unknown field"),
            "{text}"
        );
    }

    #[test]
    fn nulls_are_absent_and_quoted_nulls_are_text() {
        let node = parse("a: ~\nb:\nc: 'null'\n").unwrap();
        let mut diags = Diagnostics::new("f.yaml");
        let mut map = MapReader::new(&node, "", &mut diags).unwrap();
        assert!(map.optional("a").is_none());
        assert!(map.optional("b").is_none());
        assert_eq!(map.optional("c").and_then(Node::as_str), Some("null"));
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let node = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.value, entries[1].1.value);
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
        assert_eq!(docs[4].root.as_ref().unwrap().mark.line, 12);
        assert!(ends_with_document_end(&docs[3].source));
    }

    #[test]
    fn a_syntax_error_names_the_document_and_the_stream_line() {
        let err = parse_stream("a: 1\n---\nb: 2\n---\nc: [1, 2\nd: 3\n").unwrap_err();
        assert_eq!(err.index, 2, "{err}");
        assert!(err.line >= 5, "{err}");
        assert!(err.to_string().starts_with("document 2 (line"), "{err}");
    }

    #[test]
    fn scalars_keep_whether_they_were_plain() {
        let node = parse("a: 8080\nb: \"8080\"\nc: !!str 8080\n").unwrap();
        let plain = |k: &str| matches!(node.get(k).unwrap().value, Value::Scalar(_, true));
        assert!(plain("a"));
        assert!(!plain("b"));
        assert!(!plain("c"));
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
