//! Where a cluster's endpoints come from, as the config names them
//! ([`Source`]), and the endpoints themselves ([`EndpointSpec`]), whether
//! written in the config, in an endpoint file, or read from Kubernetes.
//!
//! An endpoint file is a YAML list, read with the same reader and the same
//! `file:line:col` errors as the config:
//!
//! ```yaml
//! - address: 10.0.0.1:8080
//!   weight: 2
//! - 10.0.0.2:8080          # shorthand: weight 1
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::read;
use crate::yaml::{self, Diagnostics, MapReader, Node, Value};

/// Weight an endpoint gets when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight accepted; keeps weighted schedules small.
pub const MAX_WEIGHT: u32 = 10_000;
/// How often an endpoint file is checked for changes unless configured.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The shortest check interval accepted.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One backend as a source describes it.
///
/// The proxy tells endpoints apart by `address` alone: a new `weight` or
/// `origin` for the same address updates the live endpoint in place.
#[derive(Debug, Clone, Eq, serde::Serialize)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub weight: u32,
    /// Where a discovered endpoint came from; `None` for static and file
    /// endpoints. Shared, so copying a set copies no strings.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "origin")]
    pub origin: Option<Arc<Origin>>,
}

/// Equal when address, weight and origin are; a shared origin compares by
/// pointer first, so comparing two sets of one Service costs no string
/// comparisons for the endpoints that did not change.
impl PartialEq for EndpointSpec {
    fn eq(&self, other: &EndpointSpec) -> bool {
        self.address == other.address
            && self.weight == other.weight
            && match (&self.origin, &other.origin) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// By content, as equality is (a shared pointer only shortcuts equality).
impl std::hash::Hash for EndpointSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.address.hash(state);
        self.weight.hash(state);
        self.origin.as_deref().hash(state);
    }
}

impl EndpointSpec {
    /// An endpoint with no origin (static or file).
    pub fn new(address: SocketAddr, weight: u32) -> EndpointSpec {
        EndpointSpec {
            address,
            weight,
            origin: None,
        }
    }
}

/// What a Kubernetes EndpointSlice says about one endpoint: the slice it was
/// read from, its topology and its conditions as the API defines them
/// (absent `ready`/`serving` read as true, absent `terminating` as false).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Origin {
    pub slice: String,
    pub zone: Option<String>,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

fn origin<S: serde::Serializer>(o: &Option<Arc<Origin>>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&o.as_deref(), s)
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A fixed list from the config file.
    Static(Vec<EndpointSpec>),
    /// A YAML file (a list of `address` with optional `weight`), checked
    /// for changes every `interval`.
    File {
        path: PathBuf,
        #[serde(serialize_with = "millis")]
        interval: Duration,
    },
    /// A Kubernetes Service's EndpointSlices, watched on the API server.
    Kubernetes(ServiceTarget),
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// One cluster's Service: where to find it and which port to route to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ServiceTarget {
    pub namespace: String,
    pub service: String,
    pub port: ServicePort,
}

/// Which of a Service's ports to route to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum ServicePort {
    /// The Service port's name; each slice maps it to its pods' target port.
    Name(String),
    /// A port number as the slices list it: the pods' target port. For
    /// Services with a single unnamed port.
    Number(u16),
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePort::Name(name) => f.write_str(name),
            ServicePort::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Parses an endpoint file's text; `file` names it in errors.
pub fn parse_file(text: &str, file: &str) -> Result<Vec<EndpointSpec>, Diagnostics> {
    let root = yaml::parse_file(text, file)?;
    let mut diags = Diagnostics::new(file);
    if root.is_null() {
        return Ok(Vec::new());
    }
    let list = endpoint_list(&root, "endpoints", &mut diags);
    diags.into_result(list.unwrap_or_default())
}

/// Reads a list of endpoints, refusing an address listed twice.
pub(crate) fn endpoint_list(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<EndpointSpec>> {
    let items = read::seq(node, path, diags)?;
    let mut out: Vec<EndpointSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(spec) = endpoint(item, &p, diags) {
            if out.iter().any(|e| e.address == spec.address) {
                diags.error(item, &p, format!("{} is listed twice", spec.address));
            } else {
                out.push(spec);
            }
        }
    }
    Some(out)
}

/// Reads one endpoint: `ADDRESS` or `{address: ADDRESS, weight: N}`.
fn endpoint(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<EndpointSpec> {
    if let Value::Scalar(..) = node.value {
        let address = read::address(node, path, diags)?;
        return Some(EndpointSpec::new(address, DEFAULT_WEIGHT));
    }
    let mut map = MapReader::new(node, path, diags)?;
    let address = map
        .required("address", diags)
        .and_then(|n| read::address(n, &yaml::join(path, "address"), diags));
    let weight = map.uint_or("weight", 1..=MAX_WEIGHT as u64, DEFAULT_WEIGHT, diags);
    map.finish(diags, &["address", "weight"]);
    Some(EndpointSpec::new(address?, weight?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mappings_and_shorthand() {
        let set = parse_file(
            "- address: 127.0.0.1:1\n  weight: 3\n- 127.0.0.1:2\n- address: '[::1]:3'\n",
            "e.yaml",
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set[0].weight, 3);
        assert_eq!(set[1].weight, 1);
        assert!(set[2].address.is_ipv6());
    }

    #[test]
    fn every_mistake_is_reported_with_its_position() {
        let err = parse_file(
            "- address: nope\n- address: 127.0.0.1:1\n  weight: 0\n- 127.0.0.1:1\n- port: 3\n",
            "e.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("e.yaml:1:12: endpoints[0].address: `nope` is not an address"),
            "{err}"
        );
        assert!(
            err.contains("e.yaml:3:11: endpoints[1].weight: 0 is out of range"),
            "{err}"
        );
        assert!(
            err.contains("e.yaml:5:3: endpoints[3]: missing field `address`"),
            "{err}"
        );
        assert!(err.contains("endpoints[3].port: unknown field"), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_set() {
        assert!(parse_file("", "e.yaml").unwrap().is_empty());
    }
}
