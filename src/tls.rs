//! TLS termination: certificate chains loaded from PEM files, the one a client names by SNI
//! chosen per handshake (the first one otherwise), and ALPN offering `h2` then `http/1.1`.

use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsAcceptor;

/// Loads a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1).
///
/// # Errors
/// What is wrong with which file, as a message for the config loader.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|error| format!("cannot read certificate file {}: {error}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("certificate file {} is not PEM: {error}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {} holds no certificate",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("cannot read private key {}: {error}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider)
        .map(Arc::new)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "the private key {} does not belong to the certificate {}: the key's public half differs from the certificate's. Give the key that was made with this certificate (compare `openssl pkey -in KEY -pubout` with `openssl x509 -in CERT -noout -pubkey`)",
                key.display(),
                cert.display()
            ),
            error => format!(
                "certificate {} and key {} do not make a usable pair: {error}",
                cert.display(),
                key.display()
            ),
        })
}

/// Picks, per handshake, the first certificate valid for the name the client sent (SNI), or the
/// first certificate when it sent none or none matches.
#[derive(Debug)]
struct BySni {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wanted = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name.to_string()).ok());
        let matching = wanted.and_then(|name| {
            self.certificates.iter().find(|certified| {
                let Some(leaf) = certified.cert.first() else {
                    return false;
                };
                webpki::EndEntityCert::try_from(leaf)
                    .is_ok_and(|leaf| leaf.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        matching.or_else(|| self.certificates.first()).cloned()
    }
}

/// The TLS side of a listener: handshakes with the service's certificates.
#[derive(Clone)]
pub struct Acceptor(TlsAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    /// Completes the TLS handshake on `io`.
    ///
    /// # Errors
    /// The handshake's I/O or protocol error.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.0.accept(io).await
    }

    /// Whether the client chose HTTP/2 by ALPN on this connection.
    pub fn negotiated_h2<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> bool {
        stream.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// A TLS acceptor over `certificates` (at least one), offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn acceptor(certificates: &[Arc<CertifiedKey>]) -> Acceptor {
    let resolver = Arc::new(BySni {
        certificates: certificates.to_vec(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Acceptor(TlsAcceptor::from(Arc::new(config)))
}
