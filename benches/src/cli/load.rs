//! `skiff-bench load`: runs the load generator ([`skiff_bench::load`])
//! against each URL in turn and prints one table; writes JSON and an SVG
//! chart on request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::builder::NonEmptyStringValueParser;
use http::{HeaderName, HeaderValue, Method, Uri};
use skiff_bench::load::{self, LoadResult, LoadSpec, Protocol, TlsOptions};
use skiff_bench::report;

use super::parse_duration;

const ABOUT: &str = "\
Sends HTTP requests to each URL for --warmup plus --duration, then reports \
latency percentiles, requests per second, errors and bytes received.

Closed loop (the default): each connection sends its next request as soon as \
the previous response is in, so the target sets the pace. Open loop (--rate): \
requests fall due on a fixed schedule shared by all connections; a request \
that must wait for a busy connection is charged from the time it was due, so \
a stall shows in the latency of every request queued behind it, not just the \
one that stalled (no coordinated omission).

Connections are opened before the clock starts. Requests of the warmup are \
sent but not recorded. Several URLs are run one after the other with the same \
load, and reported together.";

const EXAMPLES: &str = "\
Examples:
  Closed loop, HTTP/1.1, 10 connections, 10 s after 2 s of warmup:
    skiff-bench load http://127.0.0.1:8080/

  HTTP/2 cleartext, 4 connections of 100 streams, 20000 requests/s:
    skiff-bench load --protocol h2 -c 4 --streams 100 --rate 20000 http://127.0.0.1:8080/

  Direct and through skiff, in one table, JSON file and chart:
    skiff-bench load -l direct -l skiff --json load.json --svg load.svg \\
        http://127.0.0.1:9001/ http://127.0.0.1:8080/

  HTTPS to a server whose certificate is signed by ca.pem:
    skiff-bench load --cacert ca.pem https://localhost:8443/

  Full TLS handshakes per second (a new connection for every request):
    skiff-bench load --new-connections --insecure -c 8 https://localhost:8443/";

/// Put HTTP load on one or more targets and report latency percentiles.
#[derive(clap::Args)]
#[command(long_about = ABOUT, after_long_help = EXAMPLES)]
pub struct Args {
    /// URL to load; its path and query are requested every time. Give
    /// several to run them one after another.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<Uri>,

    /// How requests travel. Default: https for https:// URLs, else http1.
    #[arg(short, long, value_enum)]
    protocol: Option<Protocol>,

    /// Connections to hold open for the whole run.
    #[arg(short, long, value_name = "N", default_value_t = load::DEFAULT_CONNECTIONS)]
    connections: usize,

    /// Requests in flight per connection (h2 only; HTTP/1.1 carries one).
    #[arg(short, long, value_name = "N", default_value_t = 1)]
    streams: usize,

    /// Measured time, after the warmup.
    #[arg(short, long, value_name = "TIME", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Time spent sending before measuring; its requests are not recorded.
    #[arg(short, long, value_name = "TIME", default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,

    /// Open loop: this many requests per second in total, on a fixed
    /// schedule. Without it, closed loop as fast as the target answers.
    #[arg(short, long, value_name = "PER_SECOND", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Longest wait for one response; past it the request counts as a
    /// transport error.
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,

    /// HTTP method of every request.
    #[arg(short = 'X', long, default_value = "GET")]
    method: Method,

    /// Extra request header, as "name: value"; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "HEADER", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// Request body sent with every request.
    #[arg(long, value_name = "TEXT")]
    body: Option<String>,

    /// https: trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// https: accept any server certificate (for self-signed test servers).
    #[arg(short = 'k', long)]
    insecure: bool,

    /// Name of a target in reports, in the order of the URLs; repeat for
    /// each. Default: the URL.
    #[arg(short, long = "label", value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    labels: Vec<String>,

    /// Write every result, with its percentile curve, to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Draw the latency percentile curves of all targets to this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,

    /// Open a new connection for every request and close it after (TLS: a
    /// full handshake each time, no resumption): measures connection setup.
    /// Latency then includes the connect and the handshake.
    #[arg(long)]
    new_connections: bool,

    /// Worker threads of the load generator. Default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// Runs `skiff-bench load`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let specs = args.specs()?;
    let runtime = super::runtime(args.threads.map(usize::from))?;
    let results = runtime.block_on(run_all(&specs))?;

    print!("{}", report::table(&results));
    for result in &results {
        if let Some(first) = &result.first_transport_error {
            eprintln!(
                "{}: {} transport errors; the first: {first}",
                result.label, result.transport_errors
            );
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::json(&results))?;
        write(path, text + "\n", "JSON results")?;
    }
    if let Some(path) = &args.svg {
        write(path, report::svg(&results)?, "latency chart")?;
    }
    Ok(())
}

async fn run_all(specs: &[LoadSpec]) -> anyhow::Result<Vec<LoadResult>> {
    let mut results = Vec::with_capacity(specs.len());
    for spec in specs {
        let bar = load::progress_bar(spec);
        let result = load::run_with_progress(spec, &bar).await;
        bar.finish_and_clear();
        results.push(result?);
    }
    Ok(results)
}

impl Args {
    fn specs(&self) -> anyhow::Result<Vec<LoadSpec>> {
        if self.labels.len() > self.urls.len() {
            anyhow::bail!(
                "{} labels for {} URLs: give at most one --label per URL",
                self.labels.len(),
                self.urls.len()
            );
        }
        let specs: Vec<LoadSpec> = self
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| self.spec(url, self.labels.get(i)))
            .collect();
        for spec in &specs {
            spec.validate()?;
        }
        Ok(specs)
    }

    fn spec(&self, url: &Uri, label: Option<&String>) -> LoadSpec {
        let protocol = self.protocol.unwrap_or_else(|| Protocol::for_url(url));
        let mut spec = LoadSpec::new(url.clone(), protocol);
        if let Some(label) = label {
            spec.label = label.clone();
        }
        spec.connections = self.connections;
        spec.streams = self.streams;
        spec.duration = self.duration;
        spec.warmup = self.warmup;
        spec.rate = self.rate;
        spec.timeout = self.timeout;
        spec.method = self.method.clone();
        spec.headers.extend(
            self.headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        spec.body = self.body.clone().map(Bytes::from).unwrap_or_default();
        spec.new_connections = self.new_connections;
        spec.tls = TlsOptions {
            insecure: self.insecure,
            ca_cert: self.cacert.clone(),
        };
        spec
    }
}

fn write(path: &Path, contents: String, what: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)
        .with_context(|| format!("write the {what} to {}", path.display()))?;
    eprintln!("wrote the {what} to {}", path.display());
    Ok(())
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of requests per second"
        )),
    }
}

fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not \"name: value\""))?;
    let name = HeaderName::try_from(name.trim())
        .map_err(|e| format!("header name {:?}: {e}", name.trim()))?;
    let value = HeaderValue::try_from(value.trim())
        .map_err(|e| format!("header value {:?}: {e}", value.trim()))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("load").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_become_one_spec_per_url() {
        let args = parse(&[
            "-p",
            "h2",
            "-c",
            "4",
            "-s",
            "100",
            "-r",
            "2000",
            "-d",
            "500ms",
            "-w",
            "0",
            "-H",
            "x-test: yes",
            "-l",
            "direct",
            "http://127.0.0.1:1/a",
            "http://127.0.0.1:2/b",
        ])
        .expect("parses");
        let specs = args.specs().expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].label, "direct");
        assert_eq!(specs[1].label, "http://127.0.0.1:2/b");
        assert_eq!(specs[0].protocol, Protocol::H2);
        assert_eq!((specs[0].connections, specs[0].streams), (4, 100));
        assert_eq!(specs[0].rate, Some(2000.0));
        assert_eq!(specs[0].duration, Duration::from_millis(500));
        assert_eq!(specs[0].warmup, Duration::ZERO);
        assert_eq!(specs[0].headers["x-test"], "yes");
    }

    #[test]
    fn protocol_follows_the_url_scheme_by_default() {
        let args = parse(&["-k", "https://127.0.0.1:8443/"]).expect("parses");
        assert_eq!(args.specs().expect("valid")[0].protocol, Protocol::Https);
    }

    #[test]
    fn bad_input_is_refused_with_what_is_wrong() {
        let error = |argv: &[&str]| match parse(argv) {
            Ok(args) => args.specs().expect_err("invalid").to_string(),
            Err(error) => error.to_string(),
        };
        assert!(error(&["--rate=-5", "http://h/"]).contains("not a positive number"));
        assert!(error(&["-H", "nocolon", "http://h/"]).contains("is not \"name: value\""));
        assert!(error(&["-s", "8", "http://h/"]).contains("needs protocol h2"));
        assert!(error(&["-l", "a", "-l", "b", "http://h/"]).contains("2 labels for 1 URLs"));
        assert!(error(&["https://h/"]).contains("--cacert"));
    }
}
