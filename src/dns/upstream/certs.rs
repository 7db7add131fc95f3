//! How an encrypted upstream's certificate is checked: a rustls client configuration per
//! upstream, trusting the system's roots (rustls-native-certs: `/etc/ssl/certs`, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`) or the upstream's `ca_file` instead, checking the
//! certificate against the upstream's name (or its IP address), and, when pins are given, the
//! server's key against them (RFC 7858 section 4.2's SPKI pin set, here on top of the usual
//! checks, so that a pin never weakens them). Failures are described for the log line that
//! says why an upstream is not used.

use std::{fmt, io, path::Path, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use sha2::{Digest, Sha256};

use crate::config::EncryptedServer;

/// Largest CA file read, in bytes: a system bundle is about 200 KiB.
const MAX_CA_FILE: u64 = 4 << 20;

/// Why an upstream's TLS client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The CA file could not be read.
    #[error("cannot read the CA file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The CA file holds no PEM certificate that rustls takes as a trust anchor.
    #[error("the CA file {path} holds no usable PEM certificate")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// Neither the system's roots nor a CA file gave a trust anchor.
    #[error("no trusted root certificate found on this system (set ca_file)")]
    NoRoots,
    /// rustls refused the configuration (no protocol version in common with the provider).
    #[error("TLS configuration refused")]
    Rustls(#[source] rustls::Error),
}

/// The certificates of a PEM file, checked to be at least one.
///
/// # Errors
/// [`CertsError::Read`] or [`CertsError::NoCertificate`].
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let shown = path.display().to_string();
    let text =
        crate::state::read_text_bounded(path, MAX_CA_FILE).map_err(|source| CertsError::Read {
            path: shown.clone(),
            source,
        })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(CertsError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// The trust anchors for `server`: its CA file's, else the system's.
fn roots(server: &EncryptedServer) -> Result<RootCertStore, CertsError> {
    let certs = match &server.ca_file {
        Some(path) => load_ca_file(path)?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match &server.ca_file {
            Some(path) => CertsError::NoCertificate {
                path: path.display().to_string(),
            },
            None => CertsError::NoRoots,
        });
    }
    Ok(roots)
}

/// The TLS client configuration for `server`, offering `alpn` (RFC 7301): TLS 1.2 or 1.3
/// (RFC 8310 section 8), session resumption kept in memory.
///
/// # Errors
/// [`CertsError`]: no trust anchor could be had.
pub(super) fn client_config(
    server: &EncryptedServer,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, CertsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(server)?),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|_| CertsError::NoRoots)?;
    let verifier: Arc<dyn ServerCertVerifier> = if server.spki_sha256.is_empty() {
        webpki
    } else {
        Arc::new(Pinned {
            webpki,
            pins: server.spki_sha256.clone(),
        })
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name the certificate is checked against and sent as SNI: the configured name, else
/// the IP address.
pub(super) fn server_name(server: &EncryptedServer) -> ServerName<'static> {
    server
        .name
        .as_deref()
        .and_then(|name| ServerName::try_from(name.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(server.addr.ip().into()))
}

/// The server's key matched none of the pins.
#[derive(Debug)]
struct PinMismatch;

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server's key matches none of the pinned SPKI digests (spki_sha256)")
    }
}

impl std::error::Error for PinMismatch {}

/// The usual checks, then the leaf certificate's SubjectPublicKeyInfo against the pins.
#[derive(Debug)]
struct Pinned {
    webpki: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let digest: [u8; 32] = Sha256::digest(cert.tbs_certificate.subject_pki.raw).into();
        if self.pins.contains(&digest) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The certificate failure behind a failed handshake, described, if that is why it failed.
pub(super) fn certificate_failure(error: &io::Error) -> Option<String> {
    let rustls_error = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if other.0.downcast_ref::<PinMismatch>().is_some() =>
        {
            Some(PinMismatch.to_string())
        }
        rustls::Error::InvalidCertificate(_) => Some(rustls_error.to_string()),
        _ => None,
    }
}
