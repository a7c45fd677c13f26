//! Kubernetes' routing objects, read directly (no control plane): the
//! Gateway API's `GatewayClass`, `Gateway`, `HTTPRoute`, `GRPCRoute` and
//! `ReferenceGrant`, with the `Service`s, `Namespace`s and `Secret`s they
//! name, translated into skiff's own route and cluster config
//! ([`skiff_config`]) and the status the specification asks for.
//!
//! Pure: the proxy's watches (or `skiff check`'s manifest reader) fill a
//! [`World`]; [`translate`] turns it into what one Gateway serves. The
//! rules follow the specification in `apis/v1` of
//! `kubernetes-sigs/gateway-api` and the cases of its conformance suite;
//! the tests name the conformance test each one comes from.
//!
//! - [`objects`]: the objects' fields skiff reads.
//! - [`world`]: the objects known, by kind and name.
//! - [`translate`]: listeners, attachment, rules, precedence, backends.
//! - [`status`]: conditions, reasons and generations.
//! - [`manifests`]: YAML manifests read as the API server would serve them.
//! - [`report`]: what `skiff check --manifests` prints.

pub mod manifests;
pub mod objects;
pub mod report;
pub mod status;
pub mod translate;
pub mod world;

pub use translate::{
    mesh_routes, mesh_status, translate, translate_ingress, Certificate, IngressPorts, MeshRoutes,
    Port, Translation, INGRESS_CONTROLLER,
};
pub use world::{ObjectError, Pem, SecretInfo, World};

/// The `controllerName` of GatewayClasses skiff serves.
pub const CONTROLLER: &str = "skiff.io/gateway-controller";
