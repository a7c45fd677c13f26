//! Reading certificates, keys and CA bundles from PEM files (a mounted
//! Kubernetes Secret's `tls.crt` and `tls.key`), with errors that name the
//! file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    pub(crate) path: PathBuf,
    pub(crate) message: String,
}

impl TlsError {
    pub(crate) fn new(path: &Path, message: impl Into<String>) -> TlsError {
        TlsError {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// The one crypto provider skiff uses: ring (aws-lc needs cmake to build).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(path, format!("cannot read: {e}")))
}

/// The certificates of a PEM file, in order (leaf first for a chain).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&read(path)?, path)
}

/// The certificates of PEM text read from `origin` (a file, or a Secret's
/// `tls.crt`).
fn certs_from_pem(pem: &[u8], origin: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(origin, format!("not a valid PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            origin,
            "no certificate in it (expected a -----BEGIN CERTIFICATE----- block)",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&read(path)?, path)
}

fn key_from_pem(pem: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        TlsError::new(
            origin,
            format!(
                "no usable private key in it (expected a PKCS#8, PKCS#1 or SEC1 PEM block): {e}"
            ),
        )
    })
}

/// A certificate chain with its key, checked to belong together.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    pair(chain, der, (cert, key))
}

/// A certificate chain with its key from PEM text (a Secret's `tls.crt`
/// and `tls.key`); errors name `source` and the key.
pub(crate) fn pair_from_pem(
    cert: &[u8],
    key: &[u8],
    source: &str,
) -> Result<CertifiedKey, TlsError> {
    let (cert_origin, key_origin) = (
        PathBuf::from(format!("{source} tls.crt")),
        PathBuf::from(format!("{source} tls.key")),
    );
    let chain = certs_from_pem(cert, &cert_origin)?;
    let der = key_from_pem(key, &key_origin)?;
    pair(chain, der, (&cert_origin, &key_origin))
}

fn pair(
    chain: Vec<CertificateDer<'static>>,
    der: PrivateKeyDer<'static>,
    (cert, key): (&Path, &Path),
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::new(
            key,
            format!(
                "this private key does not match the certificate in {}",
                cert.display()
            ),
        ),
        e => TlsError::new(key, format!("unusable private key: {e}")),
    })
}

/// The trust anchors of a CA bundle.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The config's certificate checks, answered by loading the files as a
/// listener or cluster will: so `skiff check` and a reload refuse a
/// missing or broken certificate with the field that names it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles;

impl skiff_config::tls::Files for TlsFiles {
    fn cert_pair(&self, cert: &Path, key: &Path) -> Result<(), String> {
        load_pair(cert, key).map(drop).map_err(|e| e.to_string())
    }

    fn roots(&self, ca: &Path) -> Result<(), String> {
        load_roots(ca).map(drop).map_err(|e| e.to_string())
    }
}

/// The system's trust anchors (`/etc/ssl/certs` and the like).
pub(crate) fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none found".into());
        return Err(TlsError::new(
            Path::new("(system roots)"),
            format!("no CA certificates could be loaded: {why}; give `ca`"),
        ));
    }
    Ok(roots)
}
