//! Writing an object's `status` through its `/status` subresource:
//! read, let the caller make the new status from what is there, and
//! replace with the resourceVersion read, again on 409 Conflict (someone
//! wrote in between), so what other controllers wrote is never lost.

use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};

use super::objects::Kind;

/// How many times a write is tried when others keep writing between.
const TRIES: usize = 5;

/// Replaces the status of `kind` `namespace/name` (namespace empty for a
/// cluster-scoped kind) with what `make` returns from the object as it is
/// now; `make` returning `None` (or the same status) writes nothing.
/// Returns whether it wrote.
pub async fn write(
    client: Client,
    kind: &Kind,
    namespace: &str,
    name: &str,
    make: impl Fn(&serde_json::Value) -> Option<serde_json::Value>,
) -> Result<bool, kube::Error> {
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = if namespace.is_empty() {
        Api::all_with(client, &resource)
    } else {
        Api::namespaced_with(client, namespace, &resource)
    };
    let mut last = None;
    for _ in 0..TRIES {
        let Some(object) = api.get_opt(name).await? else {
            return Ok(false);
        };
        let mut value = serde_json::to_value(&object).unwrap_or_default();
        let current = value.get("status").cloned().unwrap_or_default();
        let Some(status) = make(&value) else {
            return Ok(false);
        };
        if status == current {
            return Ok(false);
        }
        value["status"] = status;
        value["kind"] = kind.kind.into();
        value["apiVersion"] = resource.api_version.clone().into();
        let Ok(body) = serde_json::from_value::<DynamicObject>(value) else {
            return Ok(false);
        };
        match api
            .replace_status(name, &PostParams::default(), &body)
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some(kube::Error::Api(s)),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("a conflict was seen"))
}

/// A client as kubectl would find the cluster (for the status writer).
pub async fn client() -> Result<Client, kube::Error> {
    Client::try_default().await
}
