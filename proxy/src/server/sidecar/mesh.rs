//! Mutual TLS between sidecars, as linkerd2-proxy does it: the app speaks
//! plaintext to its own sidecar, and sidecars speak mTLS to each other.
//!
//! The `mesh:` section is read by [`skiff_config::sidecar`]; this is what
//! runs from it.
//!
//! Outbound, a captured connection to a Service is sent to the pod the
//! balancer picked, on the port it was going to, over TLS with this pod's
//! certificate. The server pod's capture rules redirect it to that pod's
//! inbound listener, which sees the TLS ClientHello, terminates it (the
//! client certificate verified against `ca` and `allow`) and serves the
//! requests inside to the app with the client's identity in
//! `identity_header`, as a listener with `client_auth` does.
//!
//! Who a Service's pods are: the client expects the server's certificate
//! to carry `spiffe://<trust_domain>/ns/<namespace>/sa/<account>` as a SAN
//! URI, where `<account>` is the Service's `skiff.io/service-account`
//! annotation, else the Service's name (the convention of a workload
//! running as a ServiceAccount named after it). A Service whose pods have
//! no sidecar is annotated `skiff.io/mtls: disabled` and gets plaintext.
//! The client sends SNI `<account>.<namespace>.serviceaccount.identity.<trust_domain>`
//! (linkerd2-proxy's form of the same name); an inbound listener
//! terminates only TLS whose SNI ends in
//! `.serviceaccount.identity.<trust_domain>`, so an app's own TLS passes
//! through to it untouched.
//!
//! Inside the TLS, ALPN says what follows: `h2` or `http/1.1` are served
//! per request; no ALPN is opaque TCP, copied to the app's port.

use std::time::Duration;

use skiff_config::sidecar::{MeshConfig, MeshMode};
use skiff_discovery::kubernetes::services::ServiceRef;
use tokio::net::TcpStream;

use crate::tls::client::Connector;
use crate::tls::hello::{self, Hello};
use crate::tls::{certs, TlsError};

/// The mesh settings in force, shared by the capture listeners.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub(crate) config: MeshConfig,
    /// `.serviceaccount.identity.<trust domain>`.
    sni_suffix: String,
}

impl Mesh {
    pub(crate) fn new(config: MeshConfig) -> Mesh {
        if let Ok(chain) = certs::load_certs(&config.files.cert) {
            let names = crate::tls::identity::names(&chain[0]);
            let prefix = format!("spiffe://{}/", config.trust_domain);
            match names.uris.iter().find(|u| u.starts_with(&prefix)) {
                Some(me) => tracing::info!(identity = %me, mode = ?config.mode, "mesh mTLS on"),
                None => tracing::warn!(
                    cert = %config.files.cert.display(),
                    "the mesh certificate has no {prefix}... identity (SAN URI); other sidecars will refuse it as a server"
                ),
            }
        }
        Mesh {
            sni_suffix: format!(".serviceaccount.identity.{}", config.trust_domain),
            config,
        }
    }

    /// Whether a ClientHello with this SNI is a sidecar's, for this
    /// listener to terminate.
    pub(crate) fn is_mesh_sni(&self, sni: Option<&str>) -> bool {
        sni.is_some_and(|s| s.len() > self.sni_suffix.len() && s.ends_with(&self.sni_suffix))
    }

    /// The identity the pods of `service` must prove, and the SNI that asks for it.
    pub(crate) fn server_identity(&self, service: &ServiceRef) -> (String, String) {
        let account = service
            .service_account
            .as_deref()
            .unwrap_or(&service.service);
        let td = &self.config.trust_domain;
        (
            format!("spiffe://{td}/ns/{}/sa/{account}", service.namespace),
            format!("{account}.{}{}", service.namespace, self.sni_suffix),
        )
    }

    /// A connector to the pods of `service`; `alpn` none for opaque TCP.
    pub(crate) fn connector(
        &self,
        service: &ServiceRef,
        alpn: Option<&[u8]>,
    ) -> Result<Connector, TlsError> {
        let (identity, sni) = self.server_identity(service);
        Connector::mesh(&self.config.ca, &self.config.files, &sni, &identity, alpn)
    }

    pub(crate) fn strict(&self) -> bool {
        self.config.mode == MeshMode::Strict
    }
}

/// What an inbound connection opens with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// A TLS ClientHello, with its SNI.
    Tls(Option<String>),
    /// Bytes that are not TLS.
    Plain,
    /// Nothing within the detection timeout (a server-speaks-first protocol).
    Silent,
}

/// How long to wait between peeks while the ClientHello is incomplete.
const PEEK_AGAIN: Duration = Duration::from_millis(1);

/// Peeks at a connection's first bytes (they stay in the socket) until
/// it is known to open with a ClientHello (and its SNI), with anything
/// else, or with silence for `timeout`.
pub(crate) async fn opening(stream: &TcpStream, timeout: Duration) -> Opening {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == hello::HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => return Opening::Plain,
        Ok(_) => return Opening::Plain,
        Err(_) => return Opening::Silent,
    }
    let mut buf = vec![0u8; hello::MAX_CLIENT_HELLO];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            // Closed, failed or stalled mid-ClientHello: no SNI to go by.
            _ => return Opening::Tls(None),
        };
        if n > seen {
            seen = n;
            match hello::read(&buf[..n]) {
                Hello::Incomplete => {}
                Hello::NotTls => return Opening::Plain,
                Hello::Tls(sni) => return Opening::Tls(sni),
            }
        }
        tokio::time::sleep(PEEK_AGAIN).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::TlsFiles;
    use std::path::{Path, PathBuf};

    fn mesh_files(dir: &Path, uri: &str) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::default();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-mesh-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_services_identity_comes_from_its_annotation_or_its_name() {
        let dir = temp_dir("identity");
        mesh_files(&dir, "spiffe://cluster.local/ns/shop/sa/order");
        let text = format!(
            "{}  trust_domain: example.org\n",
            skiff_config::sidecar::mesh_config_text(&dir)
        );
        let config =
            skiff_config::Config::parse_checked(&text, "s.yaml", Path::new("."), &TlsFiles)
                .unwrap_or_else(|d| panic!("{d}"));
        let mesh = Mesh::new(config.mesh.unwrap());
        let mut service = ServiceRef {
            namespace: "shop".into(),
            service: "catalog".into(),
            port_name: "http".into(),
            port: 80,
            service_account: None,
            mtls: true,
        };
        assert_eq!(
            mesh.server_identity(&service),
            (
                "spiffe://example.org/ns/shop/sa/catalog".to_string(),
                "catalog.shop.serviceaccount.identity.example.org".to_string()
            )
        );
        service.service_account = Some("catalog-sa".into());
        assert_eq!(
            mesh.server_identity(&service).0,
            "spiffe://example.org/ns/shop/sa/catalog-sa"
        );
        assert!(mesh.is_mesh_sni(Some("catalog-sa.shop.serviceaccount.identity.example.org")));
        assert!(!mesh.is_mesh_sni(Some("shop.example.org")));
        assert!(!mesh.is_mesh_sni(Some(".serviceaccount.identity.example.org")));
        assert!(!mesh.is_mesh_sni(None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_client_hello_is_told_from_plaintext_and_silence_and_gives_its_sni() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();

        let _quiet = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            opening(&server, Duration::from_millis(20)).await,
            Opening::Silent
        );

        let mut plain = TcpStream::connect(address).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            opening(&server, Duration::from_secs(5)).await,
            Opening::Plain
        );

        let tls = tokio::spawn(async move {
            let stream = TcpStream::connect(address).await.unwrap();
            let config = rustls::ClientConfig::builder_with_provider(certs::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(
                "order.shop.serviceaccount.identity.cluster.local",
            )
            .unwrap();
            let _ = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, stream)
                .await;
        });
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            opening(&server, Duration::from_secs(5)).await,
            Opening::Tls(Some(
                "order.shop.serviceaccount.identity.cluster.local".into()
            ))
        );
        drop(server);
        let _ = tls.await;
    }
}
