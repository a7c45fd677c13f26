//! What to run: the target, the protocol, and the shape of the load.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};

use super::LoadError;

/// Connections when the caller does not say; wrk's default.
pub const DEFAULT_CONNECTIONS: usize = 10;
/// Measured time when the caller does not say.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Unmeasured time before it, for connection pools and caches to fill.
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
/// How long one request may take before it counts as a transport error.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How requests travel to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext (h2c, prior knowledge), many requests at a time
    /// per connection (the streams setting).
    H2,
    /// HTTP/1.1 over TLS.
    Https,
}

impl Protocol {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Https => "https",
        }
    }

    /// The protocol a URL implies by its scheme: `https` for `https://`,
    /// `http1` otherwise.
    pub fn for_url(url: &Uri) -> Protocol {
        if url.scheme_str() == Some("https") {
            Protocol::Https
        } else {
            Protocol::Http1
        }
    }

    fn uses_tls(self) -> bool {
        self == Protocol::Https
    }
}

/// How to trust the server's certificate for [`Protocol::Https`].
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Accept any certificate; for self-signed test servers only.
    pub insecure: bool,
    /// PEM file with the certificates of the CAs to trust.
    pub ca_cert: Option<PathBuf>,
}

/// One load test against one target.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Name of the target in reports.
    pub label: String,
    /// What to request; its path and query go on every request.
    pub url: Uri,
    pub protocol: Protocol,
    /// Connections held open for the whole run.
    pub connections: usize,
    /// Requests in flight per connection; above 1 only with [`Protocol::H2`].
    pub streams: usize,
    /// Measured time, after the warmup.
    pub duration: Duration,
    /// Time spent sending before measuring; its requests are not recorded.
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; `None` for a
    /// closed loop as fast as the target answers.
    pub rate: Option<f64>,
    /// Longest wait for one response, counted as a transport error past it;
    /// in open loop, also the longest a due request waits to be sent.
    pub timeout: Duration,
    pub method: Method,
    /// Sent with every request, besides `host`.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub tls: TlsOptions,
    /// Every request on a connection of its own, opened for it (with a full
    /// TLS handshake, no resumption) and closed after it: measures
    /// connection setup, and latency includes it.
    pub new_connections: bool,
}

impl LoadSpec {
    /// A closed-loop GET of `url` with the default connections, duration and
    /// warmup, labelled with the URL.
    pub fn new(url: Uri, protocol: Protocol) -> Self {
        LoadSpec {
            label: url.to_string(),
            url,
            protocol,
            connections: DEFAULT_CONNECTIONS,
            streams: 1,
            duration: DEFAULT_DURATION,
            warmup: DEFAULT_WARMUP,
            rate: None,
            timeout: DEFAULT_TIMEOUT,
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            tls: TlsOptions::default(),
            new_connections: false,
        }
    }

    /// The `host:port` connected to, with the scheme's port if none is given.
    pub fn authority(&self) -> Result<String, LoadError> {
        let host = self
            .url
            .host()
            .ok_or_else(|| self.invalid(format!("URL {} has no host", self.url)))?;
        let default_port = if self.protocol.uses_tls() { 443 } else { 80 };
        Ok(format!(
            "{host}:{}",
            self.url.port_u16().unwrap_or(default_port)
        ))
    }

    /// Checks that the spec describes a run that can happen.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.authority()?;
        match (self.url.scheme_str(), self.protocol.uses_tls()) {
            (Some("http"), false) | (Some("https"), true) => {}
            (Some("https"), false) => {
                return Err(self.invalid(format!(
                    "URL {} is https:// but protocol {} is cleartext; use protocol https",
                    self.url,
                    self.protocol.name()
                )))
            }
            _ => {
                return Err(self.invalid(format!(
                    "URL {} must start with {} for protocol {}",
                    self.url,
                    if self.protocol.uses_tls() {
                        "https://"
                    } else {
                        "http://"
                    },
                    self.protocol.name()
                )))
            }
        }
        if self.connections == 0 {
            return Err(self.invalid("connections must be at least 1".into()));
        }
        if self.streams == 0 {
            return Err(self.invalid("streams must be at least 1".into()));
        }
        if self.streams > 1 && self.protocol != Protocol::H2 {
            return Err(self.invalid(format!(
                "streams {} needs protocol h2: HTTP/1.1 carries one request at a time per connection",
                self.streams
            )));
        }
        if self.new_connections && self.protocol == Protocol::H2 {
            return Err(self.invalid(
                "new connections are for HTTP/1.1 and https: an HTTP/2 connection is meant to carry many requests"
                    .into(),
            ));
        }
        if self.duration.is_zero() {
            return Err(self.invalid("duration must be above zero".into()));
        }
        if self.timeout.is_zero() {
            return Err(self.invalid("timeout must be above zero".into()));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(self.invalid(format!(
                    "rate {rate} must be a positive number of requests per second"
                )));
            }
        }
        if self.protocol.uses_tls() && !self.tls.insecure && self.tls.ca_cert.is_none() {
            return Err(self.invalid(
                "protocol https needs a CA certificate to trust (--cacert FILE) or --insecure"
                    .into(),
            ));
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> LoadError {
        LoadError::InvalidSpec {
            label: self.label.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, protocol: Protocol) -> LoadSpec {
        LoadSpec::new(url.parse().expect("test URL"), protocol)
    }

    fn reason(spec: &LoadSpec) -> String {
        spec.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn defaults_are_a_valid_closed_loop() {
        let spec = spec("http://127.0.0.1:8080/products", Protocol::Http1);
        spec.validate().expect("valid");
        assert_eq!(spec.authority().expect("authority"), "127.0.0.1:8080");
        assert_eq!(spec.label, "http://127.0.0.1:8080/products");
    }

    #[test]
    fn port_defaults_to_the_scheme_port() {
        assert_eq!(
            spec("http://example.test/", Protocol::H2)
                .authority()
                .expect("authority"),
            "example.test:80"
        );
        assert_eq!(
            spec("https://example.test/", Protocol::Https)
                .authority()
                .expect("authority"),
            "example.test:443"
        );
    }

    #[test]
    fn many_streams_need_http2() {
        let mut h1 = spec("http://127.0.0.1:80/", Protocol::Http1);
        h1.streams = 100;
        assert!(reason(&h1).contains("needs protocol h2"), "{}", reason(&h1));
        let mut h2 = spec("http://127.0.0.1:80/", Protocol::H2);
        h2.streams = 100;
        h2.validate().expect("valid");
    }

    #[test]
    fn new_connections_are_not_for_http2() {
        let mut h2 = spec("http://127.0.0.1:80/", Protocol::H2);
        h2.new_connections = true;
        assert!(reason(&h2).contains("HTTP/2"), "{}", reason(&h2));
        let mut https = spec("https://127.0.0.1/", Protocol::Https);
        (https.new_connections, https.tls.insecure) = (true, true);
        https.validate().expect("valid");
    }

    #[test]
    fn scheme_and_protocol_must_agree() {
        let cleartext_to_https = spec("https://127.0.0.1/", Protocol::Http1);
        assert!(reason(&cleartext_to_https).contains("use protocol https"));
        let mut tls_to_http = spec("http://127.0.0.1/", Protocol::Https);
        tls_to_http.tls.insecure = true;
        assert!(reason(&tls_to_http).contains("must start with https://"));
    }

    #[test]
    fn https_needs_a_way_to_trust_the_server() {
        let mut https = spec("https://127.0.0.1/", Protocol::Https);
        assert!(reason(&https).contains("--cacert"));
        https.tls.insecure = true;
        https.validate().expect("valid");
    }

    #[test]
    fn rate_must_be_positive_and_errors_name_the_target() {
        let mut open = spec("http://127.0.0.1/", Protocol::Http1);
        open.label = "direct".into();
        open.rate = Some(0.0);
        let reason = reason(&open);
        assert!(reason.starts_with("direct: "), "{reason}");
        assert!(reason.contains("rate 0"), "{reason}");
    }
}
