//! The mesh's routes in the sidecar (the Gateway API's GAMMA): with
//! `capture: { routes: true }` on an outbound listener, HTTPRoutes and
//! GRPCRoutes whose parent is a Service shape the requests this pod sends
//! to that Service, as [`skiff_gateway::mesh_routes`] translates them for
//! the pod's namespace (producer routes, or this namespace's consumer
//! routes in their place).
//!
//! The routes, Services and ReferenceGrants are followed cluster-wide
//! ([`skiff_discovery::kubernetes::objects`]); each change, gathered for a
//! moment, rebuilds the route table of every destination in use, in
//! place, so open connections take the new routes with their next
//! request. A destination with no route keeps its one route to the
//! Service.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use skiff_discovery::kubernetes::objects::{self, Change, MESH_KINDS};
use skiff_gateway::World;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// The objects the mesh's routes are made from, as the watches left them.
pub(crate) struct Routing {
    pub(super) world: Mutex<World>,
    /// Every kind listed once: until then no destination takes a route.
    pub(super) listed: AtomicBool,
    /// The pod's namespace: its consumer routes apply to it.
    pub(super) client_namespace: String,
    watches: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("listed", &self.listed)
            .field("client_namespace", &self.client_namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for Routing {
    fn drop(&mut self) {
        for watch in self.watches.lock().drain(..) {
            watch.abort();
        }
    }
}

impl Routing {
    /// Starts following the objects; `refresh` (which rebuilds the
    /// destinations' tables, and says whether they are still there) runs
    /// after each change.
    pub(super) fn start(
        refresh: impl Fn() -> bool + Send + Sync + 'static,
        client_namespace: String,
    ) -> Arc<Routing> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Watch failures are logged (and retried) by the watches.
        let watches = objects::follow(&MESH_KINDS, tx, Arc::new(AtomicU64::new(0)));
        let routing = Arc::new(Routing {
            world: Mutex::new(World::default()),
            listed: AtomicBool::new(false),
            client_namespace,
            watches: Mutex::new(watches),
        });
        tokio::spawn(follow(Arc::downgrade(&routing), refresh, rx));
        routing
    }
}

async fn follow(
    routing: Weak<Routing>,
    refresh: impl Fn() -> bool,
    mut rx: mpsc::UnboundedReceiver<Change>,
) {
    let mut listed: BTreeSet<&'static str> = BTreeSet::new();
    while let Some(change) = rx.recv().await {
        let Some(r) = routing.upgrade() else { return };
        take(&r, &mut listed, change);
        objects::gather(&mut rx, |change| take(&r, &mut listed, change)).await;
        if listed.len() < MESH_KINDS.len() {
            continue;
        }
        r.listed.store(true, Relaxed);
        drop(r);
        if !refresh() {
            return;
        }
    }
}

fn take(routing: &Routing, listed: &mut BTreeSet<&'static str>, change: Change) {
    let mut world = routing.world.lock();
    let apply = |world: &mut World, object| {
        if let Err(e) = world.apply(object) {
            tracing::warn!("mesh routes: {e}; skipped");
        }
    };
    match change {
        Change::Listed { kind, objects } => {
            world.clear(kind);
            for object in objects {
                apply(&mut world, object);
            }
            listed.insert(kind);
        }
        Change::Applied(object) => apply(&mut world, object),
        Change::Deleted {
            kind,
            namespace,
            name,
        } => world.remove(kind, &namespace, &name),
    }
}
