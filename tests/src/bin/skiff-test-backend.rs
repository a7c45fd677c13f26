//! A test backend as a process of its own, for tests where a backend dies
//! (SIGKILL) or is replaced (SIGTERM: it stops accepting, finishes its
//! requests in progress and exits, as a pod does).
//!
//! `skiff-test-backend NAME [ADDRESS]` prints `listening ADDRESS` once bound.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use skiff_tests::Backend;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let address = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = match tokio::net::TcpListener::bind(&address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-test-backend: bind {address}: {e}");
            std::process::exit(2);
        }
    };
    let backend = Backend::serve(&name, listener);
    println!("listening {}", backend.address);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    term.recv().await;
    backend.shut_down_gracefully();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while backend.control.open_connections.load(Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "skiff-test-backend {name}: exiting after {} requests",
        backend.requests()
    );
}
