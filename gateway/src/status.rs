//! Status as the Gateway API's conformance suite reads it: conditions
//! with the specification's types and reasons, each carrying the
//! generation it was computed from. Only what skiff owns is here; the
//! writer merges it into the object, keeps other controllers' entries,
//! and stamps `lastTransitionTime` when a status changes.

use serde::Serialize;
use serde_json::{json, Value};

use crate::objects::{ParentRef, RouteGroupKind};

/// One condition (`metav1.Condition` without its transition time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: i64,
}

impl Condition {
    pub fn new(
        kind: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
        generation: i64,
    ) -> Condition {
        Condition {
            kind,
            status: if ok { "True" } else { "False" },
            reason,
            message: message.into(),
            observed_generation: generation,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The conditions a list holds, by type.
pub fn find<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.kind == kind)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

/// This controller's entry in a route's `status.parents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// What one route's status says for the parents this controller serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// `HTTPRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub parents: Vec<RouteParentStatus>,
}

/// Merges `ours` into an object's existing `conditions` (JSON, maybe
/// null): a condition of a type we own replaces the one there, keeping
/// its `lastTransitionTime` when its status did not change; conditions of
/// other types stay where they are. `None` when one of ours there was
/// written for a newer generation (our view is stale: write nothing).
pub fn merge_conditions(existing: &Value, ours: &[Condition], now: &str) -> Option<Value> {
    let mut out: Vec<Value> = existing.as_array().cloned().unwrap_or_default();
    for c in ours {
        let at = out.iter().position(|e| e["type"] == c.kind);
        let previous = at.map(|i| out[i].clone());
        if let Some(p) = &previous {
            if p["observedGeneration"].as_i64().unwrap_or(0) > c.observed_generation {
                return None;
            }
        }
        let since = match &previous {
            Some(p) if p["status"] == c.status => p["lastTransitionTime"].clone(),
            _ => Value::String(now.to_string()),
        };
        let mut value = serde_json::to_value(c).unwrap_or_default();
        value["lastTransitionTime"] = since;
        match at {
            Some(i) => out[i] = value,
            None => out.push(value),
        }
    }
    Some(Value::Array(out))
}

/// A GatewayClass's `status` with our conditions.
pub fn gateway_class(existing: &Value, ours: &[Condition], now: &str) -> Option<Value> {
    let mut status = existing.clone();
    if !status.is_object() {
        status = json!({});
    }
    status["conditions"] = merge_conditions(&existing["conditions"], ours, now)?;
    Some(status)
}

/// A Gateway's `status`: our conditions, a listener entry per listener
/// (entries of listeners no longer there go), and `addresses`.
pub fn gateway(
    existing: &Value,
    ours: &GatewayStatus,
    addresses: &[Value],
    now: &str,
) -> Option<Value> {
    let mut status = existing.clone();
    if !status.is_object() {
        status = json!({});
    }
    status["conditions"] = merge_conditions(&existing["conditions"], &ours.conditions, now)?;
    let old = existing["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut listeners = Vec::new();
    for l in &ours.listeners {
        let before = old.iter().find(|o| o["name"] == l.name.as_str());
        let conditions = before.map_or(&Value::Null, |b| &b["conditions"]);
        let mut value = serde_json::to_value(l).unwrap_or_default();
        value["conditions"] = merge_conditions(conditions, &l.conditions, now)?;
        listeners.push(value);
    }
    status["listeners"] = Value::Array(listeners);
    if !addresses.is_empty() {
        status["addresses"] = Value::Array(addresses.to_vec());
    }
    Some(status)
}

/// A route's `status`: other controllers' `parents` entries stay as they
/// are and in their order; ours are replaced by `ours` (an entry of ours
/// for a parent no longer referenced goes).
///
/// `owned` says which of this controller's entries (by `parentRef`, with
/// the route's namespace for a reference that leaves its own out) this
/// writer answers for: those are replaced by `ours`; the controller's
/// other entries (another Gateway's writer, the mesh's) stay as they are.
pub fn route(
    existing: &Value,
    ours: &RouteStatus,
    controller: &str,
    now: &str,
    owned: &dyn Fn(&Value, &str) -> bool,
) -> Option<Value> {
    let mut status = existing.clone();
    if !status.is_object() {
        status = json!({});
    }
    let old = existing["parents"].as_array().cloned().unwrap_or_default();
    let mine =
        |p: &Value| p["controllerName"] == controller && owned(&p["parentRef"], &ours.namespace);
    let mut parents: Vec<Value> = old.iter().filter(|p| !mine(p)).cloned().collect();
    for entry in &ours.parents {
        let parent_ref = serde_json::to_value(&entry.parent_ref).unwrap_or_default();
        let before = old.iter().find(|p| mine(p) && p["parentRef"] == parent_ref);
        let conditions = before.map_or(&Value::Null, |b| &b["conditions"]);
        let mut value = serde_json::to_value(entry).unwrap_or_default();
        value["conditions"] = merge_conditions(conditions, &entry.conditions, now)?;
        parents.push(value);
    }
    status["parents"] = Value::Array(parents);
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time_and_others_stay() {
        let existing = json!([
            { "type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 1, "lastTransitionTime": "T1", "message": "" },
            { "type": "special.io/Foo", "status": "True", "reason": "Foo" }
        ]);
        let ours = [
            Condition::new("Accepted", true, "Accepted", "", 2),
            Condition::new("ResolvedRefs", false, "BackendNotFound", "gone", 2),
        ];
        let merged = merge_conditions(&existing, &ours, "T2").unwrap();
        assert_eq!(merged[0]["lastTransitionTime"], "T1", "status unchanged");
        assert_eq!(merged[0]["observedGeneration"], 2);
        assert_eq!(
            merged[1]["type"], "special.io/Foo",
            "another's condition stays in place"
        );
        assert_eq!(merged[2]["lastTransitionTime"], "T2");
        let flipped = [Condition::new(
            "Accepted",
            false,
            "NotAllowedByListeners",
            "",
            2,
        )];
        let merged = merge_conditions(&existing, &flipped, "T3").unwrap();
        assert_eq!(merged[0]["lastTransitionTime"], "T3", "status changed");
        let stale = [Condition::new("Accepted", true, "Accepted", "", 0)];
        assert!(
            merge_conditions(&existing, &stale, "T4").is_none(),
            "a newer generation is there"
        );
    }

    #[test]
    fn route_parents_of_other_controllers_stay() {
        let existing = json!({ "parents": [
            { "controllerName": "example.com/other", "parentRef": { "name": "theirs" }, "conditions": [] },
            { "controllerName": "skiff.io/gateway-controller", "parentRef": { "name": "gone" }, "conditions": [] }
        ]});
        let ours = RouteStatus {
            kind: "HTTPRoute",
            namespace: "shop".into(),
            name: "web".into(),
            parents: vec![RouteParentStatus {
                parent_ref: ParentRef {
                    name: "web".into(),
                    ..Default::default()
                },
                controller_name: "skiff.io/gateway-controller".into(),
                conditions: vec![Condition::new("Accepted", true, "Accepted", "", 1)],
            }],
        };
        // This writer answers for the Gateway `web` only: the entry of
        // skiff's for the Gateway `gone` is another writer's and stays.
        let owned = |p: &Value, _: &str| p["name"] == "web";
        let merged = route(&existing, &ours, "skiff.io/gateway-controller", "T", &owned).unwrap();
        let parents = merged["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 3);
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["parentRef"]["name"], "gone");
        assert_eq!(parents[2]["parentRef"]["name"], "web");
        assert_eq!(parents[2]["conditions"][0]["lastTransitionTime"], "T");
        // Answering for every entry of skiff's, `gone` goes.
        let merged = route(
            &existing,
            &ours,
            "skiff.io/gateway-controller",
            "T",
            &|_, _| true,
        )
        .unwrap();
        assert_eq!(merged["parents"].as_array().unwrap().len(), 2);
    }
}
