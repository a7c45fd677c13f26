//! The admin server: liveness, readiness, metrics, cluster state, config.
//!
//! It listens on loopback by default (127.0.0.1:9901) and is never on a
//! traffic listener's port. Paths: `GET /live`, `/ready`, `/metrics`,
//! `/clusters`, `/config`, `/`, and `POST /drain`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use std::sync::Arc;

use skiff_config::Config;

use crate::cluster::endpoint::{self, WEIGHT_SCALE};
use crate::cluster::Cluster;
use crate::metrics::{Registry, CODE_CLASSES};

pub mod prometheus;

/// What the admin server reads of the running proxy and asks of it.
/// [`crate::Proxy`] is the implementation; the admin server sits below it
/// and knows it only by this.
pub(crate) trait Control: Clone + Send + Sync + 'static {
    /// The metrics not owned by a cluster.
    fn registry(&self) -> &Registry;
    /// Every cluster, the sidecar's destinations included.
    fn clusters(&self) -> Arc<Vec<Arc<Cluster>>>;
    /// The config in force.
    fn config(&self) -> Arc<Config>;
    /// Listeners bound, every cluster warm, not draining.
    fn is_ready(&self) -> bool;
    /// The first config's listeners are bound.
    fn is_started(&self) -> bool;
    /// The namespaces whose Services the sidecar has not listed yet.
    fn services_waiting(&self) -> Vec<String>;
    /// Starts a graceful shutdown, as SIGTERM does.
    fn request_drain(&self);
}

/// Binds the admin server and serves it in the background; returns the bound address.
pub(crate) async fn serve<P: Control>(
    address: SocketAddr,
    proxy: P,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let renderer = MetricsThread::start()?;
    tracing::info!(address = %bound, "admin server listening");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = proxy.clone();
            let renderer = renderer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    let renderer = renderer.clone();
                    async move {
                        let get = matches!(*req.method(), Method::GET | Method::HEAD);
                        if get && req.uri().path() == "/metrics" {
                            return Ok::<_, Infallible>(match renderer.render(proxy).await {
                                Some(body) => metrics_response(body),
                                None => text(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "rendering the metrics failed: the metrics thread is gone\n",
                                ),
                            });
                        }
                        Ok::<_, Infallible>(route(req, &proxy, peer))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// Renders `/metrics` on a thread of its own, `skiff-metrics`, in Linux's
/// `SCHED_IDLE` class, so that whatever core it shares with the request
/// workers, a worker that wakes takes the core from it at once (issue 8:
/// with skiff on one core, renders on a normal-priority thread still raised
/// request p99). `SCHED_IDLE` is not starvation: the thread keeps a weight
/// of 3 against a normal thread's 1024, so on a saturated core a scrape
/// waits but ends (measured with a busy loop on skiff's core: median 8 ms,
/// max 127 ms; BENCHMARKS.md), far inside Prometheus' 10 s scrape timeout.
///
/// The thread keeps its text buffer between scrapes, so a scrape's render
/// allocates only the copy it answers with.
struct MetricsThread<P> {
    scrapes: std::sync::mpsc::Sender<Scrape<P>>,
}

impl<P> Clone for MetricsThread<P> {
    fn clone(&self) -> Self {
        MetricsThread {
            scrapes: self.scrapes.clone(),
        }
    }
}

struct Scrape<P> {
    proxy: P,
    reply: tokio::sync::oneshot::Sender<Bytes>,
}

impl<P: Control> MetricsThread<P> {
    /// Starts the thread; it ends when the last handle is dropped.
    fn start() -> std::io::Result<MetricsThread<P>> {
        let (scrapes, queue) = std::sync::mpsc::channel::<Scrape<P>>();
        std::thread::Builder::new()
            .name("skiff-metrics".into())
            .spawn(move || {
                lower_priority();
                let mut text = String::new();
                for scrape in queue {
                    text.clear();
                    let proxy = &scrape.proxy;
                    // A panic fails this scrape (its reply is dropped: a
                    // 500), not every later one.
                    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        prometheus::render_into(&mut text, proxy.registry(), &proxy.clusters())
                    }));
                    if rendered.is_ok() {
                        let _ = scrape.reply.send(Bytes::copy_from_slice(text.as_bytes()));
                    }
                    // Keep the capacity for the next scrape, unless the
                    // text shrank a lot (clusters removed).
                    if text.capacity() > 4 * text.len() {
                        text.shrink_to(text.len());
                    }
                }
            })?;
        Ok(MetricsThread { scrapes })
    }

    /// The text of every metric family; `None` if the thread is gone.
    async fn render(&self, proxy: P) -> Option<Bytes> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.scrapes.send(Scrape { proxy, reply }).ok()?;
        answer.await.ok()
    }
}

/// Moves the calling thread to `SCHED_IDLE`; where that is refused (a
/// seccomp profile, say), it keeps its priority and says so.
fn lower_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let result = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
    // The policy is set before the nice value, which may be refused alone.
    if thread_schedule_policy().ok() != Some(idle) {
        tracing::warn!(
            "the /metrics thread could not lower its priority ({result:?}); \
             scrapes compete with requests for the CPU"
        );
    }
}

fn route<P: Control>(req: Request<Incoming>, proxy: &P, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    // What changes the process (drain, log level) is for the pod's own
    // processes only, as linkerd2-proxy's admin `/shutdown` is: a sidecar's
    // admin server listens on the pod IP for probes and scrapes, where any
    // pod could reach it.
    let local = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if req.method() == Method::POST && !local {
        return text(
            StatusCode::FORBIDDEN,
            format!("POST {path} is only accepted from loopback; {peer} is not\n"),
        );
    }
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") => ready(proxy),
        // GET /metrics is answered in `serve`, by the metrics thread.
        (&Method::GET | &Method::HEAD, "/clusters") => json_response(clusters(proxy)),
        (&Method::GET | &Method::HEAD, "/config") => {
            json_response(serde_json::to_value(&*proxy.config()).unwrap_or_default())
        }
        (&Method::GET | &Method::HEAD, "/") => {
            let mut resp = text(StatusCode::OK, DASHBOARD);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        (&Method::GET | &Method::HEAD, "/logging") => match crate::logging::level() {
            Some(level) => text(StatusCode::OK, format!("{level}\n")),
            None => text(
                StatusCode::NOT_FOUND,
                "logging is not controlled by skiff here\n",
            ),
        },
        (&Method::POST, "/logging") => {
            let level = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("level="))
                    .map(|v| {
                        v.replace("%2C", ",")
                            .replace("%3D", "=")
                            .replace("%3d", "=")
                    })
            });
            match level {
                None => text(
                    StatusCode::BAD_REQUEST,
                    "give the level: POST /logging?level=debug (or a filter such as skiff=debug,hyper=info)\n",
                ),
                Some(level) => match crate::logging::set_level(&level) {
                    Ok(()) => text(StatusCode::OK, format!("log level: {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
            }
        }
        (&Method::POST, "/drain") => {
            proxy.request_drain();
            text(StatusCode::ACCEPTED, "draining\n")
        }
        (
            _,
            "/live" | "/ready" | "/metrics" | "/clusters" | "/config" | "/" | "/drain" | "/logging",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live /ready /metrics /clusters /config /logging\n",
        ),
    }
}

/// The dashboard: one page, no external assets, polling `/clusters`.
const DASHBOARD: &str = include_str!("dashboard.html");

fn ready<P: Control>(proxy: &P) -> Response<Full<Bytes>> {
    if proxy.is_ready() {
        return text(StatusCode::OK, "ready\n");
    }
    let waiting: Vec<String> = proxy
        .clusters()
        .iter()
        .filter(|c| !c.is_warm())
        .map(|c| {
            if c.is_primed() {
                format!("{} (first health checks)", c.name)
            } else {
                c.name.to_string()
            }
        })
        .collect();
    let services = proxy.services_waiting();
    let why = if !proxy.is_started() {
        "not ready: listeners are not bound yet\n".to_string()
    } else if !services.is_empty() {
        format!(
            "not ready: waiting for the Services of namespace {} (capture listeners)\n",
            services.join(", ")
        )
    } else if waiting.is_empty() {
        "not ready: shutting down\n".to_string()
    } else {
        format!(
            "not ready: waiting for endpoints of {}\n",
            waiting.join(", ")
        )
    };
    text(StatusCode::SERVICE_UNAVAILABLE, why)
}

fn clusters<P: Control>(proxy: &P) -> serde_json::Value {
    let list: Vec<serde_json::Value> = proxy
        .clusters()
        .iter()
        .map(|c| {
            let settings = c.settings();
            let endpoints: Vec<serde_json::Value> = c
                .endpoints_for_display()
                .iter()
                .map(|e| {
                    let mut requests = serde_json::Map::new();
                    requests.insert("total".into(), e.requests.total().into());
                    for (i, class) in CODE_CLASSES.iter().enumerate() {
                        requests.insert((*class).into(), e.requests.get(i).into());
                    }
                    let (ejected_ms, ejections) = e.ejection();
                    let state = if e.is_draining() {
                        "draining"
                    } else if e.is_ejected() {
                        "ejected"
                    } else if e.takes_traffic() {
                        "active"
                    } else {
                        "unhealthy"
                    };
                    let mut endpoint = json!({
                        "address": e.address.to_string(),
                        "weight": e.spec_weight(),
                        "state": state,
                        "health": endpoint::state_name(e.health()),
                        "in_flight": e.in_flight(),
                        "requests": requests,
                        "idle_connections": e.idle_connections(),
                        "ejections": ejections,
                        // Per bucket of `duration_buckets_seconds`, then over the last.
                        "duration_buckets": e.duration.buckets(),
                    });
                    if let Some(why) = e.health_failure() {
                        endpoint["health_failure"] = why.into();
                    }
                    if e.is_ejected() {
                        endpoint["ejection"] = json!({
                            "reason": format!(
                                "{} 5xx responses or connect failures in a row",
                                settings.outlier_detection.consecutive_failures
                            ),
                            "remaining_ms": ejected_ms,
                        });
                    }
                    if e.is_ramping() {
                        // Slow start: the share of its weight it gets now.
                        endpoint["slow_start_percent"] = (e.weight() as u64 * 100
                            / (e.spec_weight() as u64 * WEIGHT_SCALE as u64).max(1))
                        .into();
                    }
                    if let Some(origin) = e.origin() {
                        // Where discovery found it: slice, zone, node, conditions.
                        endpoint["origin"] = serde_json::to_value(&*origin).unwrap_or_default();
                    }
                    endpoint
                })
                .collect();
            json!({
                "name": &*c.name,
                "lb": settings.lb,
                "protocol": settings.protocol,
                "ready": c.is_warm(),
                "panic": c.snapshot().panic,
                "in_flight": c.in_flight(),
                "requests": c.stats.duration.count(),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({
        "duration_buckets_seconds": crate::metrics::DURATION_BUCKETS,
        "clusters": list,
    })
}

fn metrics_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(value: serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
