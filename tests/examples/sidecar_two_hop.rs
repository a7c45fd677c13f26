//! The sidecar's two-hop latency benchmark (BENCHMARKS.md): what a client
//! sidecar plus a server sidecar add to a request, against the direct path,
//! at a fixed rate, in one run.
//!
//! ```sh
//! cargo build --release -p skiff -p skiff-bench
//! cargo run --release -p skiff-tests --example sidecar_two_hop -- [RATE] [SECONDS] [ROUNDS]
//! ```
//!
//! Needs root (network namespaces, iptables). Two pods on a bridge, from
//! 198.18.0.0/15: the client pod runs `skiff run --sidecar` behind `skiff
//! iptables` and the load generator; the server pod runs `skiff-bench
//! upstream` on :8080 and :9090 and a skiff with inbound capture. The fake
//! API server (in this process) holds the Service (198.19.0.10:80 → :8080)
//! and its EndpointSlice. Port 9090 is left out of capture on both sides,
//! so `skiff-bench load` measures, one URL after the other with the same
//! open-loop schedule:
//!
//! - two hops: app → client skiff (outbound, per request) → server skiff
//!   (inbound) → upstream, via the Service's ClusterIP;
//! - direct: app → upstream on :9090.
//!
//! With ROUNDS > 1 the two alternate, ROUNDS times each, so noise from a
//! shared machine falls on both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use skiff_tests::fake_kube::{endpoint_slice, ready_pod, service, FakeKube};
use skiff_tests::netns::{unavailable, Network};
use skiff_tests::{skiff_bin, TempDir};

const CLIENT: &str = "198.18.0.10";
const SERVER: &str = "198.18.0.11";

fn bench_bin() -> PathBuf {
    let bin = skiff_bin().with_file_name("skiff-bench");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p skiff-bench",
        bin.display()
    );
    bin
}

fn iptables(ns: &skiff_tests::netns::Netns, args: &[&str]) {
    let out = ns
        .command(skiff_bin().to_str().expect("path"))
        .args(["iptables", "--ipv6", "off"])
        .args(args)
        .output()
        .expect("skiff iptables");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    if let Some(why) = unavailable() {
        eprintln!("sidecar_two_hop: {why}");
        std::process::exit(2);
    }
    let mut args = std::env::args().skip(1);
    let rate: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = TempDir::new("two-hop");
    let net = Network::new(&[CLIENT, SERVER]);
    let (client, server) = (&net.pods[0], &net.pods[1]);

    let fake = FakeKube::unstarted();
    fake.serve(client.listen(fake.address));
    fake.apply_service(
        "bench",
        service("upstream", "198.19.0.10", &[("http", 80, 8080)]),
    );
    fake.apply(
        "bench",
        endpoint_slice(
            "upstream-1",
            "upstream",
            &[("http", 8080)],
            &[ready_pod(SERVER)],
        ),
    );
    let kubeconfig = fake.write_kubeconfig(&dir.0);

    let upstream = server
        .command(bench_bin().to_str().expect("path"))
        .args([
            "upstream",
            "--listen",
            &format!("{SERVER}:8080,{SERVER}:9090"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the upstream");
    iptables(client, &["--skip-outbound-ports", "9090"]);
    iptables(server, &["--skip-inbound-ports", "9090"]);
    let uid = skiff_config::sidecar::PROXY_UID;
    let client_skiff = client.skiff(
        uid,
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("path")),
            ("SKIFF_POD_NAMESPACE", "bench"),
            (
                "SKIFF_LOG",
                &std::env::var("SKIFF_LOG").unwrap_or("warn".into()),
            ),
        ],
        &["run", "--sidecar"],
        &dir.path("client.log"),
    );
    let config = dir.write(
        "server.yaml",
        "admin: { listen: 0.0.0.0:9901 }\nlisteners:\n  - name: inbound\n    listen: 0.0.0.0:4143\n    capture: { direction: inbound }\n",
    );
    let server_skiff = server.skiff(
        uid,
        &[("SKIFF_LOG", "warn")],
        &["run", "-c", config.to_str().expect("path")],
        &dir.path("server.log"),
    );
    let admin: SocketAddr = "127.0.0.1:9901".parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(30);
    for ns in [client, server] {
        while !matches!(ns.get(admin, "/ready").await, Ok((s, _)) if s == 200) {
            assert!(
                Instant::now() < deadline,
                "skiff not ready:\n{}\n{}",
                client_skiff.log_text(),
                server_skiff.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // One request first, so a broken setup shows what answered.
    let probe = client
        .get("198.19.0.10:80".parse().expect("address"), "/")
        .await;
    match probe {
        Ok((status, _)) if status == 200 => {}
        other => panic!(
            "the two-hop path does not work: {other:?}\nclient skiff:\n{}\nserver skiff:\n{}",
            client_skiff.log_text(),
            server_skiff.log_text()
        ),
    }

    // The load generator runs as root in the client pod: its connections
    // to the ClusterIP are captured, those to :9090 are not.
    let urls = (0..rounds).flat_map(|_| {
        [
            "http://198.19.0.10:80/".to_string(),
            format!("http://{SERVER}:9090/"),
        ]
    });
    let load = client
        .command(bench_bin().to_str().expect("path"))
        .args([
            "load",
            "--rate",
            &rate.to_string(),
            "-c",
            "10",
            "-w",
            "3s",
            "-d",
            &format!("{seconds}s"),
        ])
        .args(urls)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skiff-bench load");
    // Waited for off the runtime: the fake API server must keep answering.
    let load = tokio::task::spawn_blocking(move || load.wait_with_output());
    let load = load.await.expect("join").expect("skiff-bench load");
    print!("{}", String::from_utf8_lossy(&load.stdout));
    eprint!("{}", String::from_utf8_lossy(&load.stderr));
    // Per request, not per connection: the outbound listener counted them.
    let metrics = client
        .get(admin, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("skiff_requests_total{"))
    {
        println!("client skiff: {line}");
    }
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!(
            "client skiff:\n{}\nserver skiff:\n{}",
            client_skiff.log_text(),
            server_skiff.log_text()
        );
    }
    let mut upstream = upstream;
    let _ = upstream.kill();
    let _ = upstream.wait();
    drop((client_skiff, server_skiff));
}
