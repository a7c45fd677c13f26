//! TLS test support: a throwaway CA that issues certificates (rcgen),
//! a TLS backend, and the real `curl` and `openssl` clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A certificate authority for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).expect("write cert");
        std::fs::write(&key, &self.key).expect("write key");
        (cert, key)
    }
}

/// What a certificate says about its holder.
#[derive(Default)]
pub struct Subject<'a> {
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub ips: &'a [&'a str],
    /// Valid until 2000: an expired certificate.
    pub expired: bool,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate for server and client use.
    pub fn issue(&self, subject: Subject<'_>) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        if let Some(first) = subject.dns.first().or(subject.uris.first()) {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        for d in subject.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into().expect("dns name")));
        }
        for u in subject.uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().expect("uri")));
        }
        for ip in subject.ips {
            params
                .subject_alt_names
                .push(SanType::IpAddress(ip.parse().expect("ip")));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if subject.expired {
            params.not_before = rcgen::date_time_ymd(1999, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/NAME.crt`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

/// An HTTPS backend (HTTP/1.1 and h2 by ALPN) that answers every request
/// with its name and the HTTP version (`name HTTP/2.0`).
pub struct TlsBackend {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    pub async fn start(name: &str, issued: &Issued) -> TlsBackend {
        Self::start_with_client_ca(name, issued, None).await
    }

    /// Like [`TlsBackend::start`], requiring client certificates from
    /// `client_ca` (PEM) when given.
    pub async fn start_with_client_ca(
        name: &str,
        issued: &Issued,
        client_ca: Option<&str>,
    ) -> TlsBackend {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions");
        let mut config = match client_ca {
            None => config.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(cert.expect("client CA")).expect("add client CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .build()
                .expect("client verifier");
                config.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(certs, key)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let text = format!("{name} {:?}", req.version());
                        async move { Ok::<_, Infallible>(http::Response::new(crate::full(text))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend { address, task }
    }
}

/// What a command-line client printed, and whether it succeeded.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        let _ = input.write_all(text.as_bytes()).await;
    }
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .expect("wait");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `curl -sS` with `args`, resolving `host` to `address`.
pub async fn curl(host: &str, address: SocketAddr, args: &[&str]) -> Output {
    let resolve = format!("{host}:{}:{}", address.port(), address.ip());
    let mut all = vec!["-sS", "--max-time", "10", "--resolve", &resolve];
    all.extend_from_slice(args);
    run("curl", &all, None).await
}

/// Runs `openssl s_client` against `address` with `args`, sending `stdin`.
pub async fn s_client(address: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let connect = address.to_string();
    let mut all = vec!["s_client", "-connect", &connect];
    all.extend_from_slice(args);
    run("openssl", &all, Some(stdin)).await
}

/// A client config trusting `ca_pem`, offering `alpn`, optionally with a
/// client certificate.
pub fn client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    client: Option<&Issued>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes())
                .expect("key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A keep-alive HTTPS (HTTP/1.1) connection, and the certificate the
/// server presented on it.
pub struct HttpsConn {
    sender: hyper::client::conn::http1::SendRequest<crate::TestBody>,
    pub leaf: Vec<u8>,
    host: String,
}

impl HttpsConn {
    /// Connects to `address` asking for `host` (SNI) and runs the handshake.
    pub async fn connect(
        address: SocketAddr,
        host: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<HttpsConn> {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(HttpsConn {
            sender,
            leaf,
            host: host.to_string(),
        })
    }

    /// GETs `path`; returns the status and body.
    pub async fn get(&mut self, path: &str) -> Result<(http::StatusCode, bytes::Bytes), String> {
        use http_body_util::BodyExt;
        let req = http::Request::get(path)
            .header("host", &self.host)
            .body(crate::empty())
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("certificate")
        .to_vec()
}

/// A directory laid out as Kubernetes mounts a Secret: the files are
/// symlinks through `..data`, a symlink to a timestamped directory that
/// is replaced in one `rename` when the Secret changes.
pub struct SecretMount {
    pub dir: PathBuf,
    generation: u32,
}

impl SecretMount {
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> SecretMount {
        let mut mount = SecretMount {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        mount.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name))
                .expect("file symlink");
        }
        mount
    }

    /// Swaps in new contents atomically, as the kubelet does.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let version = format!("..2026_11_27_{:04}", self.generation);
        let version_dir = self.dir.join(&version);
        std::fs::create_dir_all(&version_dir).expect("version dir");
        for (name, text) in files {
            std::fs::write(version_dir.join(name), text).expect("write secret file");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("..data_tmp symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if self.generation > 1 {
            let old = self
                .dir
                .join(format!("..2026_11_27_{:04}", self.generation - 1));
            let _ = std::fs::remove_dir_all(old);
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
