//! The smallest useful Pingora load balancer, for skiff's peer comparison:
//! round-robin over the upstreams, keep-alive pooling (Pingora's default),
//! no logging. Configured by environment so Pingora's own CLI stays intact:
//!
//! `PINGORA_LISTEN=127.0.0.1:8083 PINGORA_UPSTREAMS=127.0.0.1:9001,127.0.0.1:9002 pingora-lb -c conf.yaml`
//! (`conf.yaml` sets `threads: 1` for the comparison; `PINGORA_H2C=1` accepts
//! h2c with prior knowledge).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;

struct Balancer(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Balancer {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(HTTPStatus(502), "no upstream"))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let listen = std::env::var("PINGORA_LISTEN").unwrap_or_else(|_| "127.0.0.1:8083".into());
    let upstreams = std::env::var("PINGORA_UPSTREAMS").unwrap_or_else(|_| "127.0.0.1:9001".into());
    let mut server = Server::new(Some(Opt::parse_args())).expect("pingora server");
    server.bootstrap();
    let balancer = LoadBalancer::try_from_iter(upstreams.split(',')).expect("upstream addresses");
    let mut service = http_proxy_service(&server.configuration, Balancer(Arc::new(balancer)));
    if std::env::var_os("PINGORA_H2C").is_some() {
        // h2c with prior knowledge, for the HTTP/2 scenario.
        if let Some(app) = service.app_logic_mut() {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
    }
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
