//! Manifests as `kubectl apply` takes them (YAML, several documents, `List`
//! objects), read into JSON as the API server would serve them, for
//! `skiff check` and for tests. Plain scalars are typed by YAML 1.2's core
//! schema (`true`, `12`, `null`); quoted ones stay text.

use serde_json::{Map, Number, Value};
use skiff_config::yaml::{self, Node};

/// Every object in `text`, each with the line its document starts on; a
/// syntax error names the line and column.
pub fn objects(text: &str) -> Result<Vec<(usize, Value)>, String> {
    let documents =
        yaml::parse_stream(text).map_err(|e| format!("{}:{}: {}", e.line, e.col, e.message))?;
    let mut out = Vec::new();
    for document in documents {
        let Some(root) = document.root else {
            continue;
        };
        let line = root.mark.line;
        let value = json(&root);
        match (
            value.get("kind").and_then(Value::as_str),
            value.get("items"),
        ) {
            (Some("List"), Some(Value::Array(items))) => {
                out.extend(items.iter().map(|item| (line, item.clone())));
            }
            _ => out.push((line, value)),
        }
    }
    Ok(out)
}

/// A YAML node as JSON.
pub fn json(node: &Node) -> Value {
    match &node.value {
        yaml::Value::Scalar(text, plain) => scalar(text, *plain),
        yaml::Value::Seq(items) => Value::Array(items.iter().map(json).collect()),
        yaml::Value::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match &k.value {
                    yaml::Value::Scalar(text, _) => text.clone(),
                    _ => continue,
                };
                map.insert(key, json(v));
            }
            Value::Object(map)
        }
    }
}

fn scalar(text: &str, plain: bool) -> Value {
    if !plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = text.parse::<i64>() {
        return Value::Number(n.into());
    }
    if text.contains(['.', 'e', 'E'])
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_scalar_types() {
        let text = "\
apiVersion: v1
kind: Service
metadata: { name: a, labels: { tier: \"1\" } }
spec: { ports: [{ port: 80, appProtocol: kubernetes.io/h2c }], enabled: true, nothing: ~ }
---
kind: List
items:
  - { kind: Namespace, metadata: { name: x } }
  - { kind: Namespace, metadata: { name: y } }
";
        let read = objects(text).unwrap();
        assert_eq!(read.len(), 3);
        let service = &read[0].1;
        assert_eq!(service["spec"]["ports"][0]["port"], 80);
        assert_eq!(service["metadata"]["labels"]["tier"], "1");
        assert_eq!(service["spec"]["enabled"], true);
        assert!(service["spec"]["nothing"].is_null());
        assert_eq!(read[2].1["metadata"]["name"], "y");
        let err = objects("a: [").unwrap_err();
        assert!(err.contains(":"), "{err}");
    }
}
