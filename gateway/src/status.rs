//! Status as the Gateway API's conformance suite reads it: conditions
//! with the specification's types and reasons, each carrying the
//! generation it was computed from. Only what skiff owns is here; the
//! writer merges it into the object, keeps other controllers' entries,
//! and stamps `lastTransitionTime` when a status changes.

use serde::Serialize;

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
