//! A TLS listener's server side: certificates chosen by SNI, ALPN, client
//! authentication, and live reload of the files.
//!
//! The rustls `ServerConfig` is immutable, so a reload builds a new one and
//! swaps it in; each handshake loads the current one, and connections
//! already open keep theirs. The session ticketer and session cache are
//! carried over, so clients resume across a certificate rotation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::certs::{self, TlsError};
use super::identity;
use crate::metrics::tls::TlsStats;
use skiff_config::tls::ListenerTls;

/// ALPN protocols offered, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// TLS 1.2 sessions kept for resumption by session id (TLS 1.3 and
/// ticket-capable 1.2 clients use stateless tickets instead).
const SESSION_CACHE: usize = 8192;
/// How often certificate files are checked for changes (Kubernetes
/// updates a mounted Secret within about a minute; this adds little).
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A listener's TLS: the current server config and what rebuilds it.
pub(crate) struct ServerTls {
    listener: Arc<str>,
    pub(crate) settings: ListenerTls,
    config: ArcSwap<rustls::ServerConfig>,
    pub(crate) identity_header: Option<HeaderName>,
    pub(crate) stats: Arc<TlsStats>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .field("settings", &self.settings)
            .finish()
    }
}

impl ServerTls {
    /// Loads the listener's certificates and starts watching their files.
    pub(crate) fn build(
        listener: &str,
        settings: ListenerTls,
        stats: Arc<TlsStats>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| {
            TlsError::new(
                std::path::Path::new("(session tickets)"),
                format!("cannot make a ticket key: {e}"),
            )
        })?;
        let sessions = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        let (config, expires) = server_config(&settings, ticketer.clone(), sessions.clone())?;
        stats.expires.store(expires.unwrap_or(0), Relaxed);
        let identity_header = settings
            .client_auth
            .as_ref()
            .and_then(|a| a.identity_header.as_deref())
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        let server = Arc::new(ServerTls {
            listener: listener.into(),
            settings,
            config: ArcSwap::from_pointee(config),
            identity_header,
            stats,
            ticketer,
            sessions,
        });
        if !server.settings.files().is_empty() {
            tokio::spawn(watch(Arc::downgrade(&server)));
        }
        Ok(server)
    }

    /// The config new handshakes use.
    pub(crate) fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    /// Re-reads every file; a new set that does not load is refused and
    /// the running one stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.settings, self.ticketer.clone(), self.sessions.clone());
        match config {
            Ok((config, expires)) => {
                self.config.store(Arc::new(config));
                self.stats.expires.store(expires.unwrap_or(0), Relaxed);
                self.stats.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(listener = %self.listener, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.stats.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(listener = %self.listener, "new TLS certificates refused, the running ones stay: {e}");
                Err(e)
            }
        }
    }
}

/// Polls the listener's files until the listener's TLS is dropped. The
/// stamps follow symlinks, so Kubernetes' swap of the `..data` link (which
/// changes every file at once) is seen as a change of each.
async fn watch(server: Weak<ServerTls>) {
    let files: Vec<PathBuf> = match server.upgrade() {
        Some(s) => s.settings.files().into_iter().map(Into::into).collect(),
        None => return,
    };
    let stamps = || -> Vec<Option<skiff_discovery::file::Stamp>> {
        files
            .iter()
            .map(|f| skiff_discovery::file::stamp(f).ok())
            .collect()
    };
    let mut last = stamps();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(server) = server.upgrade() else {
            return;
        };
        let now = stamps();
        if now != last {
            last = now;
            let _ = server.reload();
        }
    }
}

/// Builds a rustls server config from the listener's files; also returns
/// when the first of its certificates expires.
fn server_config(
    settings: &ListenerTls,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
) -> Result<(rustls::ServerConfig, Option<i64>), TlsError> {
    let provider = certs::provider();
    let resolver = CertSet::load(settings)?;
    let expires = resolver.expires;
    let resolver = Arc::new(resolver);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new(std::path::Path::new("(tls)"), e.to_string()))?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = certs::load_roots(&auth.ca)?;
            let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::new(&auth.ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(Arc::new(AllowList {
                inner,
                allow: auth.allow.clone(),
            }))
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = ticketer;
    config.session_storage = sessions;
    // TLS 1.3 tickets per handshake: one suffices for a client that
    // reconnects, and each costs an encryption.
    config.send_tls13_tickets = 1;
    Ok((config, expires))
}

/// Certificates by the names clients ask for (SNI): exact names first,
/// then one-label wildcards, then the default.
#[derive(Debug)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// When the first of the certificates expires (Unix seconds).
    expires: Option<i64>,
}

/// Loads a certificate and its key, warning when the certificate is not
/// valid now: skiff serves it (the files are what the operator gave), but
/// clients will refuse it.
fn load_checked(
    cert: &Path,
    key: &Path,
    expires: &mut Option<i64>,
) -> Result<CertifiedKey, TlsError> {
    let pair = certs::load_pair(cert, key)?;
    check_validity(&pair, &cert.display().to_string(), expires);
    Ok(pair)
}

/// Warns when `pair` (from `origin`) is not valid now, and notes when it
/// expires.
fn check_validity(pair: &CertifiedKey, origin: &str, expires: &mut Option<i64>) {
    let leaf = pair.end_entity_cert().map(|c| c.as_ref()).unwrap_or(&[]);
    if let Some(validity) = identity::validity(leaf) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now > validity.not_after {
            tracing::warn!(cert = %origin, "the certificate has expired; clients will refuse it");
        } else if now < validity.not_before {
            tracing::warn!(cert = %origin, "the certificate is not valid yet; clients will refuse it");
        }
        *expires = Some(expires.map_or(validity.not_after, |e| e.min(validity.not_after)));
    }
}

impl CertSet {
    fn load(settings: &ListenerTls) -> Result<CertSet, TlsError> {
        let mut set = CertSet {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
            expires: None,
        };
        if let Some(files) = &settings.default {
            set.default = Some(Arc::new(load_checked(
                &files.cert,
                &files.key,
                &mut set.expires,
            )?));
        }
        for sni in &settings.certificates {
            let key = Arc::new(load_checked(
                &sni.files.cert,
                &sni.files.key,
                &mut set.expires,
            )?);
            let names = if sni.names.is_empty() {
                let leaf = key.end_entity_cert().map(|c| c.as_ref()).unwrap_or(&[]);
                let dns = identity::names(leaf).dns;
                if dns.is_empty() {
                    return Err(TlsError::new(
                        &sni.files.cert,
                        "the certificate names no DNS host (subjectAltName); give `names`",
                    ));
                }
                dns
            } else {
                sni.names.clone()
            };
            set.add(names, &key);
        }
        for inline in &settings.inline {
            let key = certs::pair_from_pem(&inline.cert, &inline.key, &inline.source)?;
            check_validity(&key, &inline.source, &mut set.expires);
            let key = Arc::new(key);
            if inline.names.is_empty() {
                set.default.get_or_insert(key);
            } else {
                set.add(inline.names.clone(), &key);
            }
        }
        Ok(set)
    }

    /// Serves `key` for `names`; the first certificate listed for a name
    /// wins.
    fn add(&mut self, names: Vec<String>, key: &Arc<CertifiedKey>) {
        for name in names {
            match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_owned()),
                None => self.exact.entry(name),
            }
            .or_insert_with(|| key.clone());
        }
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            // rustls hands over SNI lowercased and without a trailing dot.
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for CertSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A client certificate refused, with the identity it claimed: a log line
/// must say who was turned away, whatever the reason.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) identity: String,
    pub(crate) why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client identity {} {}", self.identity, self.why)
    }
}

impl std::error::Error for Refused {}

fn refused(end_entity: &CertificateDer<'_>, why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused {
            identity: identity::names(end_entity).joined(),
            why,
        }),
    )))
}

/// Verifies client certificates against the CA, then their identity
/// against the allow-list.
#[derive(Debug)]
struct AllowList {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Vec<String>,
}

impl ClientCertVerifier for AllowList {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Every refusal names the identity, at the price of a generic
        // `certificate_unknown` alert instead of `unknown_ca` and the like.
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| {
                refused(
                    end_entity,
                    format!("has a certificate that does not verify: {e}"),
                )
            })?;
        if self.allow.is_empty() || identity::allowed(&identity::names(end_entity), &self.allow) {
            Ok(verified)
        } else {
            Err(refused(end_entity, "is not in client_auth.allow".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
