//! `skiff demo`: the e-commerce example, all in one process.
//!
//! It starts Product Catalog ×3, Order ×2 and User Authentication ×2 as
//! small HTTP services on loopback (each with `/healthz` and a little
//! variable latency), a real skiff [`Proxy`] in front of them routing
//! `/products`, `/orders` and `/auth`, and a client sending steady traffic
//! through it. A table shows, per replica, its share of its service's
//! requests, its in-flight count and p50/p99 latency. Midway one catalog
//! replica turns slow, and least-request visibly moves traffic off it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::cluster::balance::random;
use crate::Proxy;
use skiff_config::cluster::ClusterConfig;
use skiff_config::listener::ListenerConfig;
use skiff_config::route::PathMatch;
use skiff_config::route::RouteConfig;
use skiff_config::AdminConfig;
use skiff_config::Config;
use skiff_config::ShutdownConfig;

/// One service of the shop: name, route prefix, replicas, base latency (ms).
struct ServiceSpec {
    name: &'static str,
    prefix: &'static str,
    replicas: usize,
    latency_ms: (u64, u64),
    /// Share of the client's requests (percent).
    share: u64,
}

const SHOP: [ServiceSpec; 3] = [
    ServiceSpec {
        name: "product-catalog",
        prefix: "/products",
        replicas: 3,
        latency_ms: (2, 8),
        share: 60,
    },
    ServiceSpec {
        name: "order",
        prefix: "/orders",
        replicas: 2,
        latency_ms: (4, 12),
        share: 25,
    },
    ServiceSpec {
        name: "user-auth",
        prefix: "/auth",
        replicas: 2,
        latency_ms: (1, 4),
        share: 15,
    },
];

/// Concurrent client connections.
const CLIENTS: usize = 24;
/// Extra latency given to the catalog replica that turns slow.
const SLOWDOWN: Duration = Duration::from_millis(40);
/// How often the table refreshes.
const REFRESH: Duration = Duration::from_secs(1);

/// A running replica and what the client saw of it in the current window.
struct Replica {
    service: &'static str,
    name: String,
    address: SocketAddr,
    extra_latency_ms: AtomicU64,
    window: Mutex<Window>,
    total: AtomicU64,
}

struct Window {
    latencies: hdrhistogram::Histogram<u64>,
}

/// Runs the demo until `duration` passes or Ctrl-C.
pub async fn run(duration: Option<Duration>, admin: SocketAddr) -> anyhow::Result<()> {
    let mut replicas: Vec<Arc<Replica>> = Vec::new();
    for spec in &SHOP {
        for i in 1..=spec.replicas {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a demo service on loopback")?;
            let replica = Arc::new(Replica {
                service: spec.name,
                name: format!("{}-{i}", spec.name),
                address: listener.local_addr()?,
                extra_latency_ms: AtomicU64::new(0),
                window: Mutex::new(Window {
                    latencies: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                        .context("histogram")?,
                }),
                total: AtomicU64::new(0),
            });
            tokio::spawn(serve_replica(listener, replica.clone(), spec.latency_ms));
            replicas.push(replica);
        }
    }

    let config = demo_config(&replicas, admin);
    let proxy = match Proxy::start(config.clone(), None).await {
        Ok(p) => p,
        Err(crate::ApplyError::Bind { name, .. }) if name == "admin" => {
            // Something else has the admin port; take any free one.
            let mut config = config;
            config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            Proxy::start(config, None).await?
        }
        Err(e) => return Err(e.into()),
    };
    let entry = proxy
        .listener_address("shop")
        .context("the demo listener did not bind")?;
    let admin = proxy.admin_address().context("no admin address")?;
    // The first health checks take a moment; traffic starts after them.
    let warm_by = Instant::now() + Duration::from_secs(5);
    while !proxy.is_ready() && Instant::now() < warm_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("skiff demo: shop on http://{entry}  (try: curl http://{entry}/products)");
    println!("admin on http://{admin}  (try: curl http://{admin}/metrics or /clusters)");
    match duration {
        Some(d) => println!("running for {d:?}; Ctrl-C stops it sooner\n"),
        None => println!("running until Ctrl-C\n"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let by_name: Arc<HashMap<String, Arc<Replica>>> = Arc::new(
        replicas
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect(),
    );
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(client(entry, by_name.clone(), stop.clone())));
    }

    let started = Instant::now();
    let slow_at = duration.map(|d| d / 2).unwrap_or(Duration::from_secs(15));
    let slow = replicas
        .iter()
        .find(|r| r.name == "product-catalog-2")
        .cloned()
        .context("catalog replica 2")?;
    let tty = std::io::stdout().is_terminal();
    let mut slowed = false;
    let mut events: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(REFRESH);
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                events.push("Ctrl-C: stopping".into());
                break;
            }
        }
        let elapsed = started.elapsed();
        if !slowed && elapsed >= slow_at {
            slow.extra_latency_ms
                .store(SLOWDOWN.as_millis() as u64, Relaxed);
            slowed = true;
            events.push(format!(
                "{:>4.0}s  {} slowed down by {:?}: watch least-request move traffic off it",
                elapsed.as_secs_f64(),
                slow.name,
                SLOWDOWN
            ));
        }
        render(&proxy, &replicas, elapsed, &events, tty);
        if duration.is_some_and(|d| elapsed >= d) {
            break;
        }
    }
    stop.store(true, Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let total: u64 = replicas.iter().map(|r| r.total.load(Relaxed)).sum();
    println!(
        "\ndone: {total} requests through skiff in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The replicas of `service`, as static endpoints.
fn endpoints(replicas: &[Arc<Replica>], service: &str) -> skiff_config::endpoints::Source {
    skiff_config::endpoints::Source::Static(
        replicas
            .iter()
            .filter(|r| r.service == service)
            .map(|r| skiff_config::endpoints::EndpointSpec::new(r.address, 1))
            .collect(),
    )
}

fn demo_config(replicas: &[Arc<Replica>], admin: SocketAddr) -> Config {
    let clusters = SHOP
        .iter()
        .map(|spec| ClusterConfig {
            health_check: Some(skiff_config::cluster::HealthCheck {
                kind: skiff_config::cluster::HealthCheckKind::Http {
                    path: "/healthz".into(),
                    host: None,
                    expected_statuses: vec![(200, 399)],
                },
                interval: Duration::from_secs(1),
                unhealthy_interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                jitter: Duration::from_millis(100),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
            }),
            ..ClusterConfig::new(spec.name, endpoints(replicas, spec.name))
        })
        .collect();
    Config {
        admin: AdminConfig { listen: admin },
        shutdown: ShutdownConfig {
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(5),
        },
        listeners: vec![ListenerConfig {
            limits: Default::default(),
            name: "shop".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertised_port: None,
            capture: None,
            access_log: None,
            routes: SHOP
                .iter()
                .map(|spec| {
                    RouteConfig::to_cluster(PathMatch::Prefix(spec.prefix.into()), spec.name)
                })
                .collect(),
            tls: None,
        }],
        clusters,
        mesh: None,
        gateway_api: None,
        ingress: None,
    }
}

/// One replica: `/healthz` answers at once, everything else after its latency.
async fn serve_replica(
    listener: tokio::net::TcpListener,
    replica: Arc<Replica>,
    latency: (u64, u64),
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let replica = replica.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let replica = replica.clone();
                async move {
                    if req.uri().path() != "/healthz" {
                        let (lo, hi) = latency;
                        let ms =
                            lo + random() % (hi - lo + 1) + replica.extra_latency_ms.load(Relaxed);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let body = format!(
                        "{{\"service\":\"{}\",\"replica\":\"{}\",\"path\":\"{}\"}}\n",
                        replica.service,
                        replica.name,
                        req.uri().path()
                    );
                    let resp = Response::builder()
                        .header("content-type", "application/json")
                        .header("x-replica", &replica.name)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A client connection sending requests one after another, with a short
/// random pause, to a path chosen by the services' shares.
async fn client(
    entry: SocketAddr,
    replicas: Arc<HashMap<String, Arc<Replica>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Relaxed) {
        let Ok(stream) = tokio::net::TcpStream::connect(entry).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        while !stop.load(Relaxed) {
            let roll = random() % 100;
            let mut acc = 0;
            let spec = SHOP
                .iter()
                .find(|s| {
                    acc += s.share;
                    roll < acc
                })
                .unwrap_or(&SHOP[0]);
            let path = format!("{}/{}", spec.prefix, random() % 1000);
            let Ok(req) = Request::get(path)
                .header("host", "shop.local")
                .body(Empty::<Bytes>::new())
            else {
                break;
            };
            if tx.ready().await.is_err() {
                break;
            }
            let sent = Instant::now();
            let Ok(resp) = tx.send_request(req).await else {
                break;
            };
            let replica = resp
                .headers()
                .get("x-replica")
                .and_then(|v| v.to_str().ok())
                .and_then(|n| replicas.get(n))
                .cloned();
            let ok = resp.status() == StatusCode::OK;
            if resp.into_body().collect().await.is_err() {
                break;
            }
            if let (Some(r), true) = (replica, ok) {
                let micros = sent.elapsed().as_micros() as u64;
                r.total.fetch_add(1, Relaxed);
                let _ = r.window.lock().latencies.record(micros.max(1));
            }
            tokio::time::sleep(Duration::from_millis(20 + random() % 40)).await;
        }
    }
}

/// Prints the per-replica table: in place on a terminal, as lines otherwise.
fn render(
    proxy: &Proxy,
    replicas: &[Arc<Replica>],
    elapsed: Duration,
    events: &[String],
    tty: bool,
) {
    let in_flight: HashMap<SocketAddr, u64> = proxy
        .clusters()
        .iter()
        .flat_map(|c| c.endpoints_for_display())
        .map(|e| (e.address, e.in_flight()))
        .collect();
    let mut rows = Vec::new();
    let mut service_totals: HashMap<&str, u64> = HashMap::new();
    let mut windows = Vec::new();
    for r in replicas {
        let (count, p50, p99) = {
            let mut w = r.window.lock();
            let h = &w.latencies;
            let out = (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99));
            w.latencies.reset();
            out
        };
        *service_totals.entry(r.service).or_default() += count;
        windows.push((r.clone(), count, p50, p99));
    }
    for (r, count, p50, p99) in windows {
        let total = service_totals.get(r.service).copied().unwrap_or(0).max(1);
        let share = 100.0 * count as f64 / total as f64;
        let bar = "#".repeat((share / 5.0).round() as usize);
        rows.push(format!(
            "{:<18} {:>6.1}%  {:<20} {:>4}/s {:>9} {:>8.1} {:>8.1}",
            r.name,
            share,
            bar,
            count,
            in_flight.get(&r.address).copied().unwrap_or(0),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
        ));
    }
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!(
        "skiff demo  t={:>4.0}s  least-request, per-request balancing (last {:?})\n",
        elapsed.as_secs_f64(),
        REFRESH
    ));
    out.push_str(&format!(
        "{:<18} {:>7}  {:<20} {:>6} {:>9} {:>8} {:>8}\n",
        "replica", "share", "", "rate", "in-flight", "p50 ms", "p99 ms"
    ));
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    if tty {
        for e in events {
            out.push_str(e);
            out.push('\n');
        }
    } else if let Some(e) = events.last() {
        out.push_str(&format!("event: {e}\n"));
    }
    out.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
