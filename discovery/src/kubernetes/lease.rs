//! Leader election with a `coordination.k8s.io/v1` Lease, as
//! client-go's leaderelection does it: the holder renews the Lease every
//! `duration / 3`; a candidate takes it over once its renew time is more
//! than `duration` old; every write carries the resourceVersion it read,
//! so two candidates never both win (one gets 409 Conflict and stays a
//! follower). Used so that one replica of a gateway writes status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use super::control_runtime;

/// Which Lease, who we are, and how long a Lease lasts unrenewed.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Runs the election until the returned handle is aborted; `leader` says
/// whether this process holds the Lease now.
pub fn run(election: Election) -> (watch::Receiver<bool>, tokio::task::AbortHandle) {
    let (tx, rx) = watch::channel(false);
    let task = control_runtime().spawn(elect(Arc::new(election), tx));
    (rx, task.abort_handle())
}

async fn elect(election: Arc<Election>, leader: watch::Sender<bool>) {
    let renew = (election.duration / 3).max(Duration::from_millis(100));
    let mut client = None;
    loop {
        if client.is_none() {
            client = Client::try_default().await.ok();
        }
        let held = match &client {
            Some(c) => match round(c.clone(), &election).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(lease = %election.name, "leader election: {e}");
                    false
                }
            },
            None => false,
        };
        if *leader.borrow() != held {
            tracing::info!(lease = %election.name, identity = %election.identity, leader = held, "leader election");
        }
        leader.send_replace(held);
        tokio::time::sleep(renew).await;
    }
}

/// One try to take or renew the Lease; whether we hold it after.
async fn round(client: Client, e: &Election) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    let now = Timestamp::now();
    let seconds = i32::try_from(e.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&e.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(e.name.clone()),
                namespace: Some(e.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let ours = spec.holder_identity.as_deref() == Some(&e.identity);
    let lasts =
        SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
    let expired = spec
        .renew_time
        .as_ref()
        .is_none_or(|t| t.0.checked_add(lasts).is_ok_and(|end| end < now));
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(e.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    match api.replace(&e.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}
