//! The house keeps its floors: every module of `proxy/src` imports only
//! from its own layer or the layers below it, no set of modules imports
//! each other in a circle, and the config crate builds without the
//! proxy's runtime. The layer table is the one in ARCHITECTURE.md, read
//! from there, so the picture and the code cannot drift apart.
//!
//! Imports are what the code names: `use crate::…`, `use super::…` (with
//! braces expanded) and paths written inline (`crate::metrics::label(…)`),
//! test modules included; comments and string literals are not code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A layer from ARCHITECTURE.md: its name and the top-level modules in it.
#[derive(Debug)]
struct Layer {
    name: String,
    modules: Vec<String>,
}

/// The rows of the table under `## Layers` in ARCHITECTURE.md, top first:
/// `| layer | modules | holds |`, the modules as `code` spans (`crate`
/// for the crate root, lib.rs).
fn layers() -> Vec<Layer> {
    let path = root().join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .unwrap_or_else(|| panic!("{}: no `## Layers` section", path.display()));
    let mut out = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2 || cells[0] == "layer" || cells[0].starts_with("---") {
            continue;
        }
        let modules: Vec<String> = cells[1]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        assert!(
            !modules.is_empty(),
            "{}: layer `{}` lists no modules",
            path.display(),
            cells[0]
        );
        out.push(Layer {
            name: cells[0].trim_matches('`').to_string(),
            modules,
        });
    }
    assert!(
        out.len() > 3,
        "{}: the layer table is missing",
        path.display()
    );
    out
}

/// Code with comments and string and char literals blanked out, line
/// breaks kept, so what is left is what the compiler reads as paths.
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        out.extend_from_slice(b"  ");
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        out.extend_from_slice(b"  ");
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // A raw string: r"…", r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let end = b[j + 1..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| j + 1 + p + close.len());
                for &c in &b[i..end] {
                    blank(&mut out, c);
                }
                i = end;
            }
            b'"' => {
                blank(&mut out, b[i]);
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                    if i < b.len() {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
                let len = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
                } else {
                    let ch = std::str::from_utf8(&b[i + 1..(i + 5).min(b.len())])
                        .ok()
                        .or_else(|| std::str::from_utf8(&b[i + 1..(i + 2).min(b.len())]).ok())
                        .and_then(|s| s.chars().next())
                        .map_or(1, char::len_utf8);
                    (b.get(i + 1 + ch) == Some(&b'\'')).then_some(ch + 2)
                };
                match len {
                    Some(len) => {
                        for &c in &b[i..i + len] {
                            blank(&mut out, c);
                        }
                        i += len;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One path a file names, with the line it is on and the inline modules
/// (`mod tests { … }`) it is written in, outermost first.
#[derive(Debug)]
struct Named {
    line: usize,
    path: Vec<String>,
    inline: Vec<String>,
}

/// The inline modules of `code`: (name, where its body starts, where it ends).
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(found) = code[pos..].find("mod ") {
        let at = pos + found;
        pos = at + 4;
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[at + 4..];
        let name_len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        let after = rest[name_len..].trim_start();
        if name_len == 0 || !after.starts_with('{') {
            continue;
        }
        let open = at + 4 + name_len + (rest.len() - name_len - after.len());
        let mut depth = 0;
        let mut end = code.len();
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((rest[..name_len].to_string(), open, end));
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut base = prefix.to_vec();
        base.extend(head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
    } else {
        let name = tree.split(" as ").next().unwrap_or(tree);
        let mut path = prefix.to_vec();
        path.extend(
            name.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "self" && *s != "*")
                .map(str::to_string),
        );
        out.push(path);
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `crate::`, `super::` and `self::` path in `code`, and every path
/// that starts with the name of one of the module's own `children` (as
/// `self::child…`): `use` trees expanded, and paths written inline.
fn named_paths_with(code: &str, children: &[String]) -> Vec<Named> {
    let mut out = named_paths(code);
    for child in children {
        let start = format!("{child}::");
        let mut pos = 0;
        while let Some(found) = code[pos..].find(&start) {
            let at = pos + found;
            pos = at + start.len();
            // Only a path's first segment: not `x::child::`, not `a_child::`.
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let rest = &code[at..];
            let len = rest
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len());
            let mut path = vec!["self".to_string()];
            path.extend(
                rest[..len]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            out.push(Named {
                line: code[..at].matches('\n').count() + 1,
                path,
                inline: Vec::new(),
            });
        }
    }
    out
}

/// Every `crate::`, `super::` and `self::` path in `code`: `use` trees
/// expanded, and paths written inline.
fn named_paths(code: &str) -> Vec<Named> {
    let mut out = Vec::new();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let modules = inline_modules(code);
    let inline = |pos: usize| -> Vec<String> {
        modules
            .iter()
            .filter(|(_, start, end)| *start < pos && pos < *end)
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    // `use` items, which may span lines.
    let mut pos = 0;
    while let Some(found) = code[pos..].find("use ") {
        let at = pos + found;
        pos = at + 4;
        let before = code[..at].chars().next_back();
        if before.is_some_and(is_ident) {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        let tree = &code[at + 4..at + end];
        let first = tree.trim_start().split("::").next().unwrap_or("");
        if !matches!(first.trim(), "crate" | "super" | "self") {
            continue;
        }
        let mut paths = Vec::new();
        expand(tree, &[], &mut paths);
        for path in paths {
            out.push(Named {
                line: line_of(at),
                path,
                inline: inline(at),
            });
        }
    }
    // Inline paths: `crate::a::b`, `super::a`.
    for start in ["crate::", "super::", "self::"] {
        let mut pos = 0;
        while let Some(found) = code[pos..].find(start) {
            let at = pos + found;
            pos = at + start.len();
            if code[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let rest = &code[at..];
            let len = rest
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len());
            let path: Vec<String> = rest[..len]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            out.push(Named {
                line: line_of(at),
                path,
                inline: inline(at),
            });
        }
    }
    out
}

/// A module of `proxy/src`: its path (`http::h1::parse`, `` for the
/// crate root) and its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read proxy/src") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            // The binary's root is its own crate: it names the library as `skiff::`.
            if parts == ["main"] {
                continue;
            }
            if parts == ["lib"] {
                parts.clear();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The module a path names: the longest prefix that is a module, from
/// the module `from` it is written in.
fn resolve(
    from: &str,
    inline: &[String],
    path: &[String],
    modules: &BTreeMap<String, PathBuf>,
) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    base.extend(inline.iter().map(String::as_str));
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        // A module's children are under its own path, whether it is a
        // file (`a/b.rs` declares `a::b::c`) or a directory.
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut full: Vec<&str> = base;
    full.extend(rest.iter().map(String::as_str));
    (0..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// The layer of a module: the row that lists its top-level module.
fn layer_of(module: &str, layers: &[Layer]) -> Option<usize> {
    let top = if module.is_empty() {
        "crate"
    } else {
        module.split("::").next().unwrap_or(module)
    };
    layers
        .iter()
        .position(|l| l.modules.iter().any(|m| m == top))
}

/// An edge of the import graph, with where it is written.
#[derive(Debug, Clone)]
struct Import {
    to: String,
    file: PathBuf,
    line: usize,
}

fn import_graph(src: &Path) -> BTreeMap<String, Vec<Import>> {
    let modules = modules(src);
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read a source file");
        let code = code_of(&text);
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let children: Vec<String> = modules
            .keys()
            .filter_map(|m| m.strip_prefix(&prefix).filter(|_| !m.is_empty()))
            .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            .map(str::to_string)
            .collect();
        let mut edges: Vec<Import> = Vec::new();
        for named in named_paths_with(&code, &children) {
            let Some(to) = resolve(module, &named.inline, &named.path, &modules) else {
                continue;
            };
            if &to == module || edges.iter().any(|e| e.to == to) {
                continue;
            }
            edges.push(Import {
                to,
                file: file.clone(),
                line: named.line,
            });
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

fn shown(module: &str) -> &str {
    if module.is_empty() {
        "crate"
    } else {
        module
    }
}

fn relative(file: &Path) -> String {
    file.strip_prefix(root())
        .unwrap_or(file)
        .display()
        .to_string()
}

#[test]
fn every_module_imports_only_from_its_layer_or_below() {
    let layers = layers();
    let src = root().join("proxy/src");
    let graph = import_graph(&src);
    let mut problems = Vec::new();
    for module in graph.keys() {
        if layer_of(module, &layers).is_none() {
            problems.push(format!(
                "proxy/src: module `{}` is in no layer of ARCHITECTURE.md's table",
                shown(module)
            ));
        }
    }
    for (module, edges) in &graph {
        let Some(from) = layer_of(module, &layers) else {
            continue;
        };
        for edge in edges {
            let Some(to) = layer_of(&edge.to, &layers) else {
                continue;
            };
            if to < from {
                problems.push(format!(
                    "{}:{}: `{}` (layer {}) imports `{}` from layer {}, above it",
                    relative(&edge.file),
                    edge.line,
                    shown(module),
                    layers[from].name,
                    shown(&edge.to),
                    layers[to].name,
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = import_graph(&root().join("proxy/src"));
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        graph: &'a BTreeMap<String, Vec<Import>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for e in self.graph.get(v).into_iter().flatten() {
                let w = e.to.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for module in graph.keys() {
        if !walk.index.contains_key(module.as_str()) {
            walk.visit(module);
        }
    }
    let mut problems = Vec::new();
    for component in &walk.components {
        let members: BTreeSet<&str> = component.iter().copied().collect();
        let mut lines = vec![format!(
            "these modules import each other in a circle: {}",
            members
                .iter()
                .map(|m| shown(m))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        for m in &members {
            for e in graph[*m].iter().filter(|e| members.contains(e.to.as_str())) {
                lines.push(format!(
                    "  {}:{}: `{}` imports `{}`",
                    relative(&e.file),
                    e.line,
                    shown(m),
                    shown(&e.to)
                ));
            }
        }
        problems.push(lines.join("\n"));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Every package `name` depends on, directly or not, from Cargo.lock.
fn dependency_tree(name: &str) -> BTreeSet<String> {
    let path = root().join("Cargo.lock");
    let lock = std::fs::read_to_string(&path).expect("read Cargo.lock");
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let Some(pname) = package
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
        else {
            continue;
        };
        let list = package
            .split("dependencies = [")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .unwrap_or("");
        let names = list
            .split(',')
            .map(|d| d.trim().trim_matches('"'))
            .filter(|d| !d.is_empty())
            .map(|d| d.split(' ').next().unwrap_or(d).to_string());
        deps.entry(pname).or_default().extend(names);
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(p) = todo.pop() {
        for d in deps.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    assert!(
        deps.contains_key(name),
        "{}: no package {name}",
        path.display()
    );
    seen
}

#[test]
fn the_config_route_and_gateway_crates_build_without_the_proxys_runtime() {
    for name in ["skiff-config", "skiff-route", "skiff-gateway"] {
        let tree = dependency_tree(name);
        for runtime in [
            "tokio",
            "hyper",
            "h2",
            "rustls",
            "kube",
            "skiff",
            "skiff-discovery",
        ] {
            assert!(
                !tree.contains(runtime),
                "{name} depends on {runtime} (through Cargo.lock's tree: {tree:?})"
            );
        }
    }
}

#[test]
fn the_reader_sees_code_not_comments_or_strings() {
    let code = code_of(
        "use crate::a; // crate::b\n/* crate::c /* nested */ crate::d */\nlet s = \"crate::e\"; let c = '\\''; let r = r#\"crate::f\"#;\nfn f<'a>(x: &'a str) -> crate::g::H {}\n",
    );
    let paths: Vec<String> = named_paths(&code)
        .iter()
        .map(|n| format!("{}:{}", n.line, n.path.join("::")))
        .collect();
    assert!(paths.contains(&"1:crate::a".to_string()), "{paths:?}");
    assert!(paths.contains(&"4:crate::g::H".to_string()), "{paths:?}");
    let children = named_paths_with(
        "use balance::Balancer;\nlet s = health::UNCHECKED; x::health::y; my_health::z;\n",
        &["balance".to_string(), "health".to_string()],
    );
    let children: Vec<String> = children.iter().map(|n| n.path.join("::")).collect();
    assert_eq!(
        children,
        ["self::balance::Balancer", "self::health::UNCHECKED"]
    );
    let tests = named_paths("mod tests {\n    use super::*;\n}\nuse super::x;\n");
    assert_eq!(tests[0].inline, ["tests"]);
    assert!(tests[1].inline.is_empty());
    for hidden in ["crate::b", "crate::c", "crate::d", "crate::e", "crate::f"] {
        assert!(
            !paths.iter().any(|p| p.ends_with(hidden)),
            "{hidden} in {paths:?}"
        );
    }
    let mut expanded = Vec::new();
    expand("crate::a::{b::{c, d as e}, f, self}", &[], &mut expanded);
    let expanded: Vec<String> = expanded.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        expanded,
        [
            "crate::a::b::c",
            "crate::a::b::d",
            "crate::a::f",
            "crate::a"
        ]
    );
}
