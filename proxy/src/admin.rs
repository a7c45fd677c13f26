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

use crate::metrics::CODE_CLASSES;
use crate::Proxy;

/// Binds the admin server and serves it in the background; returns the bound address.
pub async fn serve(address: SocketAddr, proxy: Proxy) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "admin server listening");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(route(req, &proxy)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn route(req: Request<Incoming>, proxy: &Proxy) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") => ready(proxy),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let body = crate::metrics::render(proxy.registry(), &proxy.clusters());
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET | &Method::HEAD, "/clusters") => json_response(clusters(proxy)),
        (&Method::GET | &Method::HEAD, "/config") => {
            json_response(serde_json::to_value(&*proxy.config()).unwrap_or_default())
        }
        (&Method::GET | &Method::HEAD, "/") => {
            let mut resp = text(StatusCode::OK, INDEX);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/drain") => {
            proxy.request_drain();
            text(StatusCode::ACCEPTED, "draining\n")
        }
        (_, "/live" | "/ready" | "/metrics" | "/clusters" | "/config" | "/" | "/drain") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live /ready /metrics /clusters /config\n",
        ),
    }
}

const INDEX: &str = "<!doctype html><title>skiff admin</title><h1>skiff admin</h1><ul>\
<li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/clusters\">/clusters</a></li>\
<li><a href=\"/config\">/config</a></li><li><a href=\"/ready\">/ready</a></li>\
<li><a href=\"/live\">/live</a></li></ul>\n";

fn ready(proxy: &Proxy) -> Response<Full<Bytes>> {
    if proxy.is_ready() {
        return text(StatusCode::OK, "ready\n");
    }
    let waiting: Vec<String> = proxy
        .clusters()
        .iter()
        .filter(|c| !c.is_primed())
        .map(|c| c.name.to_string())
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

fn clusters(proxy: &Proxy) -> serde_json::Value {
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
                    let mut endpoint = json!({
                        "address": e.address.to_string(),
                        "weight": e.weight(),
                        "state": if e.is_draining() { "draining" } else { "active" },
                        "in_flight": e.in_flight(),
                        "requests": requests,
                        "idle_connections": e.idle_connections(),
                    });
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
                "ready": c.is_primed(),
                "in_flight": c.in_flight(),
                "requests": c.stats.duration.count(),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "clusters": list })
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
