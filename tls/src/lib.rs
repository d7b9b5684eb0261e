//! Transport security for both planes: rustls configurations, the process's trust, and a
//! development CA.
//!
//! One crypto provider for the whole binary: *ring* (reqwest's `rustls-tls` and async-nats
//! already pull it in; aws-lc-rs is never compiled). Every configuration here names it
//! explicitly, and [`install_provider`] makes it the process default at start, so a rustls
//! user that asks for the default (reqwest) never finds two and panics.
//!
//! - Servers (the broker, the control plane): [`server_config`] from `--tls-cert`,
//!   `--tls-key` and the optional `--tls-client-ca` (client certificates are then checked
//!   against that CA when presented; the broker requires one from workers).
//! - Clients (client, worker, fs, the broker's feed, the gateway): the process's [`Trust`],
//!   set once from `--ca` / `[main] ca` ([`set_trust`]), read by [`client_config`] for
//!   `tls://` broker addresses and by [`http_client`] for `https://` URLs. Without a CA the
//!   public web PKI roots are trusted.
//! - [`Ca`]: a development CA (rcgen) for `triggerfs up --tls` and the tests.

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use rustls;

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        /// Which file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing generated files failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The one crypto provider of the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes *ring* the process's default rustls provider (idempotent). Call at start.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Pem {
        path: path.to_path_buf(),
        what: "certificates",
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: "a private key",
        message: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: "CA certificates",
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A server's configuration: its certificate chain and key, and, with `client_ca`, client
/// certificates checked against that CA. A client that presents none is still admitted at
/// the TLS layer (the broker then refuses a worker without one, with a typed error); one that
/// presents a certificate the CA did not sign is refused in the handshake.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// What a client process trusts and presents: `--ca` (else the web PKI roots) and, for a
/// worker of a broker with `--tls-client-ca`, its certificate and key.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// PEM file of the CA(s) whose servers are trusted.
    pub ca: Option<PathBuf>,
    /// The client certificate chain presented to servers that ask for one.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

struct Loaded {
    ca: Vec<CertificateDer<'static>>,
    config: Arc<ClientConfig>,
}

static TRUST: OnceLock<Loaded> = OnceLock::new();

/// Sets the process's trust (once; later calls are ignored). Reads the files now, so a bad
/// `--ca` is an error at start, not at the first connection.
pub fn set_trust(trust: &Trust) -> Result<(), TlsError> {
    let loaded = load(trust)?;
    let _ = TRUST.set(loaded);
    Ok(())
}

fn load(trust: &Trust) -> Result<Loaded, TlsError> {
    let (store, ca) = match &trust.ca {
        Some(path) => (roots(path)?, load_certs(path)?),
        None => (
            RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            Vec::new(),
        ),
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_webpki_verifier(verifier);
    let config = match (&trust.cert, &trust.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both --tls-cert and --tls-key".into(),
            ))
        }
    };
    Ok(Loaded {
        ca,
        config: Arc::new(config),
    })
}

/// The process's client configuration for `tls://` broker addresses (the web PKI roots when
/// [`set_trust`] was not called).
pub fn client_config() -> Arc<ClientConfig> {
    TRUST
        .get_or_init(|| load(&Trust::default()).expect("the built-in roots load"))
        .config
        .clone()
}

/// A reqwest client builder that trusts the process's `--ca` as well as the web PKI roots,
/// for `https://` URLs. Every HTTP client of the binary starts here.
pub fn http_client() -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder();
    if let Some(loaded) = TRUST.get() {
        for cert in &loaded.ca {
            if let Ok(cert) = reqwest::Certificate::from_der(cert) {
                builder = builder.add_root_certificate(cert);
            }
        }
    }
    builder
}

/// An error with its causes, `a: b: c`: reqwest's own text hides why a request failed (an
/// unknown CA, a refused connection).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The `host` of `host:port` (brackets of an IPv6 literal removed), as a TLS server name.
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("{host} is not a server name: {e}")))
}

/// A certificate authority made here: `triggerfs up --tls`'s development CA, and the tests'.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// The CA's certificate, PEM: what clients are given as `--ca`.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), good for a server and as a
    /// client certificate.
    pub fn issue(&self, names: &[String]) -> Result<Issued, TlsError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
        let key = rcgen::KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("triggerFS", |n| n.as_str()),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files of a development CA and the server certificate it signed.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The CA's certificate: `ca = ...` in the client config.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's key (0600).
    pub key: PathBuf,
}

/// Makes (or keeps) a development CA and a server certificate for `names` in `dir`:
/// `ca.pem`, `server.pem`, `server.key`. Files made for other names are replaced, CA
/// included (the CA's key is not kept: nothing else is ever signed with it).
pub fn dev_files(dir: &Path, names: &[String]) -> Result<DevFiles, TlsError> {
    let files = DevFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let names_file = dir.join("names");
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(&names_file).ok();
    if current.as_deref() == Some(wanted.as_str())
        && [&files.ca, &files.cert, &files.key]
            .iter()
            .all(|p| p.exists())
    {
        return Ok(files);
    }
    let ca = Ca::new("triggerFS development CA")?;
    let issued = ca.issue(names)?;
    write(&files.ca, &ca.cert_pem(), 0o644)?;
    write(&files.cert, &issued.cert_pem, 0o644)?;
    write(&files.key, &issued.key_pem, 0o600)?;
    write(&names_file, &wanted, 0o644)?;
    Ok(files)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_files_make_a_server_config_and_a_trust_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let files = dev_files(dir.path(), &names).unwrap();
        server_config(&files.cert, &files.key, Some(&files.ca)).unwrap();
        load(&Trust {
            ca: Some(files.ca.clone()),
            ..Trust::default()
        })
        .unwrap();
        // Kept while the names are the same.
        let before = std::fs::read_to_string(&files.ca).unwrap();
        dev_files(dir.path(), &names).unwrap();
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), before);
    }

    #[test]
    fn server_names_drop_the_port() {
        assert!(server_name("localhost:5555").is_ok());
        assert!(server_name("127.0.0.1:5555").is_ok());
        assert!(server_name("[::1]:5555").is_ok());
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = load_certs(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
