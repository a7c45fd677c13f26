//! A YAML tree that remembers where every node came from, and a decoder
//! that collects every mistake it finds instead of stopping at the first.
//!
//! serde stops at the first error and forgets positions once a value is
//! built; skiff's config errors must say `file:line:col: field.path: message`
//! for each mistake, including semantic ones found after parsing (a route to
//! a cluster that does not exist). So the config and the endpoint file are
//! read into [`Node`]s, and decoded by hand with a [`Diagnostics`] sink.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts in its source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl Mark {
    fn from_span(span: &Span) -> Mark {
        Mark {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// One YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub mark: Mark,
    pub value: Value,
}

/// The shape of a YAML value. Scalars keep their text; typing happens when
/// the decoder asks for a type, so the error can name the field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// Text and whether it was quoted (a quoted `"null"` is a string).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short name of the node's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
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
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses one YAML document into a [`Node`] tree. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        builder.push(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        mark: Mark { line: 1, col: 1 },
        value: Value::Null,
    }))
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, usize)>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    documents: usize,
}

impl Builder {
    fn push(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let mark = Mark::from_span(&span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError {
                        line: mark.line,
                        col: mark.col,
                        message: "only one YAML document is allowed here".into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let value = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned(), !plain)
                };
                self.finish(Node { mark, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Node {
                    mark,
                    value: Value::Seq(Vec::new()),
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Node {
                    mark,
                    value: Value::Map(Vec::new()),
                },
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, anchor)) = self.stack.pop() {
                    if let Value::Map(entries) = &node.value {
                        if entries
                            .last()
                            .is_some_and(|(_, v)| v.mark == Mark::default())
                        {
                            return Err(SyntaxError {
                                line: node.mark.line,
                                col: node.mark.col,
                                message: "mapping has a key without a value".into(),
                            });
                        }
                    }
                    self.finish(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    line: mark.line,
                    col: mark.col,
                    message: "alias to an unknown anchor".into(),
                })?;
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
            Some((parent, _)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match entries.last_mut() {
                    // A key waiting for its value is marked with the default mark.
                    Some((_, value)) if value.mark == Mark::default() => *value = node,
                    _ => entries.push((
                        node,
                        Node {
                            mark: Mark::default(),
                            value: Value::Null,
                        },
                    )),
                },
                _ => {}
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
            let Some(name) = k.as_str() else {
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
        match entry.2.value {
            Value::Null => None,
            _ => Some(entry.2),
        }
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

/// Reads a scalar as text, reporting anything else.
pub fn string(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<String> {
    match &node.value {
        Value::Scalar(s, _) => Some(s.clone()),
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
    range: std::ops::RangeInclusive<u64>,
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

/// Parses a duration like `250ms`, `1.5s`, `2m`, `1h`, `0s`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 2s or 1m"))?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    let secs = number * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Reads a duration field.
pub fn duration(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<std::time::Duration> {
    let text = string(node, path, diags)?;
    match parse_duration(&text) {
        Ok(d) => Some(d),
        Err(message) => {
            diags.error(node, path, message);
            None
        }
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
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("1.5s").unwrap().as_millis(), 1500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let node = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.value, entries[1].1.value);
    }
}
