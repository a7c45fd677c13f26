//! Everything skiff knows of the cluster's routing objects: what the
//! watches (or a directory of manifests) delivered, by kind and name.
//! Translation reads only this, so the same objects always give the same
//! routes and status.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::objects::{
    Gateway, GatewayClass, GrpcRoute, HttpRoute, Ingress, IngressClass, Meta, Namespace,
    ReferenceGrant, Service, GATEWAY_GROUP,
};

/// `(namespace, name)`.
pub type Key = (String, String);

/// A Secret, as far as a listener's certificate reference needs to know:
/// whether it is of the TLS type with both keys, and their PEM text.
/// Whether the PEM loads is for a reader with a TLS library to find out
/// (the proxy): it sets `problem`, and keeps in `pem` the last
/// certificate that did load, so a bad edit leaves the listener serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub tls: bool,
    /// `tls.crt` and `tls.key`, decoded.
    pub pem: Option<Pem>,
    /// Why the Secret's certificate cannot be served.
    pub problem: Option<String>,
}

/// A certificate chain and its private key, as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub cert: Arc<[u8]>,
    pub key: Arc<[u8]>,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pem({} bytes of certificate)", self.cert.len())
    }
}

impl SecretInfo {
    /// Reads a Secret object: `data` (base64, as the API server gives it)
    /// or `stringData` (plain, as a manifest may write it).
    fn read(value: &serde_json::Value) -> SecretInfo {
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("Opaque");
        let field = |k: &str| -> Option<Vec<u8>> {
            use base64::Engine as _;
            let encoded = value.get("data").and_then(|d| d.get(k)?.as_str());
            if let Some(encoded) = encoded {
                return base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok();
            }
            let plain = value.get("stringData").and_then(|d| d.get(k)?.as_str())?;
            Some(plain.as_bytes().to_vec())
        };
        if kind != "kubernetes.io/tls" {
            // Other Secrets' data is never needed: not kept.
            return SecretInfo {
                tls: false,
                pem: None,
                problem: None,
            };
        }
        let pem = match (field("tls.crt"), field("tls.key")) {
            (Some(cert), Some(key)) => Some(Pem {
                cert: cert.into(),
                key: key.into(),
            }),
            _ => None,
        };
        SecretInfo {
            tls: pem.is_some(),
            pem,
            problem: None,
        }
    }
}

/// The objects, by kind.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub gateway_classes: BTreeMap<String, GatewayClass>,
    pub gateways: BTreeMap<Key, Gateway>,
    pub http_routes: BTreeMap<Key, HttpRoute>,
    pub grpc_routes: BTreeMap<Key, GrpcRoute>,
    pub reference_grants: BTreeMap<Key, ReferenceGrant>,
    pub services: BTreeMap<Key, Service>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub secrets: BTreeMap<Key, SecretInfo>,
    pub ingresses: BTreeMap<Key, Ingress>,
    pub ingress_classes: BTreeMap<String, IngressClass>,
}

/// An object that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    /// `HTTPRoute shop/catalog`.
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// The kinds [`World::apply`] reads.
pub const KINDS: [&str; 10] = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "ReferenceGrant",
    "Service",
    "Namespace",
    "Secret",
    "Ingress",
    "IngressClass",
];

fn key(meta: &Meta) -> Key {
    (meta.namespace.clone(), meta.name.clone())
}

fn read<T: DeserializeOwned>(value: serde_json::Value, object: &str) -> Result<T, ObjectError> {
    serde_json::from_value(value).map_err(|e| ObjectError {
        object: object.to_string(),
        reason: e.to_string(),
    })
}

impl World {
    /// Adds or replaces one object from its JSON (as the API server or a
    /// manifest gives it); an object of another kind is left alone.
    /// An object that cannot be read changes nothing, and the error names
    /// it and says why.
    pub fn apply(&mut self, value: serde_json::Value) -> Result<(), ObjectError> {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let meta = value.get("metadata");
        let text = |field: &str| {
            meta.and_then(|m| m.get(field))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let object = match text("namespace").as_str() {
            "" => format!("{kind} {}", text("name")),
            ns => format!("{kind} {ns}/{}", text("name")),
        };
        if text("name").is_empty() {
            return Err(ObjectError {
                object,
                reason: "metadata.name is missing".into(),
            });
        }
        match kind.as_str() {
            "GatewayClass" => {
                let class: GatewayClass = read(value, &object)?;
                self.gateway_classes
                    .insert(class.metadata.name.clone(), class);
            }
            "Gateway" => {
                let gateway: Gateway = read(value, &object)?;
                self.gateways.insert(key(&gateway.metadata), gateway);
            }
            "HTTPRoute" => {
                let route: HttpRoute = read(value, &object)?;
                self.http_routes.insert(key(&route.metadata), route);
            }
            "GRPCRoute" => {
                let route: GrpcRoute = read(value, &object)?;
                self.grpc_routes.insert(key(&route.metadata), route);
            }
            "Ingress" => {
                let ingress: Ingress = read(value, &object)?;
                self.ingresses.insert(key(&ingress.metadata), ingress);
            }
            "IngressClass" => {
                let class: IngressClass = read(value, &object)?;
                self.ingress_classes
                    .insert(class.metadata.name.clone(), class);
            }
            "ReferenceGrant" => {
                let grant: ReferenceGrant = read(value, &object)?;
                self.reference_grants.insert(key(&grant.metadata), grant);
            }
            "Service" => {
                let service: Service = read(value, &object)?;
                self.services.insert(key(&service.metadata), service);
            }
            "Namespace" => {
                let namespace: Namespace = read(value, &object)?;
                self.namespaces
                    .insert(namespace.metadata.name.clone(), namespace);
            }
            "Secret" => {
                let secret = SecretInfo::read(&value);
                self.secrets
                    .insert((text("namespace"), text("name")), secret);
            }
            _ => {}
        }
        Ok(())
    }

    /// Forgets every object of `kind`, before a relist puts back what is
    /// there.
    pub fn clear(&mut self, kind: &str) {
        match kind {
            "GatewayClass" => self.gateway_classes.clear(),
            "Gateway" => self.gateways.clear(),
            "HTTPRoute" => self.http_routes.clear(),
            "GRPCRoute" => self.grpc_routes.clear(),
            "ReferenceGrant" => self.reference_grants.clear(),
            "Service" => self.services.clear(),
            "Namespace" => self.namespaces.clear(),
            "Secret" => self.secrets.clear(),
            "Ingress" => self.ingresses.clear(),
            "IngressClass" => self.ingress_classes.clear(),
            _ => {}
        }
    }

    /// Forgets one object.
    pub fn remove(&mut self, kind: &str, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        match kind {
            "GatewayClass" => drop(self.gateway_classes.remove(name)),
            "Gateway" => drop(self.gateways.remove(&key)),
            "HTTPRoute" => drop(self.http_routes.remove(&key)),
            "GRPCRoute" => drop(self.grpc_routes.remove(&key)),
            "Ingress" => drop(self.ingresses.remove(&key)),
            "IngressClass" => drop(self.ingress_classes.remove(name)),
            "ReferenceGrant" => drop(self.reference_grants.remove(&key)),
            "Service" => drop(self.services.remove(&key)),
            "Namespace" => drop(self.namespaces.remove(name)),
            "Secret" => drop(self.secrets.remove(&key)),
            _ => {}
        }
    }

    /// A namespace's labels; Kubernetes gives every namespace
    /// `kubernetes.io/metadata.name`, so that one is there even when the
    /// Namespace object is not known.
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(namespace)
            .map(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| namespace.to_string());
        labels
    }

    /// Whether a ReferenceGrant in `to_namespace` lets objects of
    /// `from_kind` (Gateway API group) in `from_namespace` refer to
    /// `to_kind` (`to_group`) named `to_name` there.
    pub fn grants(
        &self,
        from_kind: &str,
        from_namespace: &str,
        (to_group, to_kind): (&str, &str),
        to_namespace: &str,
        to_name: &str,
    ) -> bool {
        self.reference_grants
            .iter()
            .filter(|((ns, _), _)| ns == to_namespace)
            .any(|(_, grant)| {
                let from = grant.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_namespace
                });
                let to = grant.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                });
                from && to
            })
    }
}
