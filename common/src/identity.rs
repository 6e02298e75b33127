//! TLS identities: the names every certificate carries, reading SANs off peer certificates,
//! tonic TLS configs, and the one unauthenticated step — fetching the coordinator's CA over TLS
//! and accepting it only if its SHA-256 matches the pin in the join token.
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// URI SAN of the coordinator's certificate.
pub const COORDINATOR_URI: &str = "spiffe://dockfra/coordinator";
/// URI SAN of the operator's admin certificate (the CLI).
pub const ADMIN_URI: &str = "spiffe://dockfra/admin";
/// DNS SAN of the coordinator's certificate; clients verify the server against this name,
/// whatever address they dialled.
pub const COORDINATOR_DNS: &str = "coordinator.dockfra";
/// The prefix of a target's URI SAN.
pub const TARGET_URI_PREFIX: &str = "spiffe://dockfra/target/";

/// URI SAN naming a target.
pub fn target_uri(target: &str) -> String {
    format!("{TARGET_URI_PREFIX}{target}")
}

/// DNS SAN of an agent's certificate; the coordinator verifies a push agent against it, so a
/// listener holding another target's certificate is refused.
pub fn agent_dns(target: &str) -> String {
    format!("{target}.agents.dockfra")
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    #[error("could not reach {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error(
        "the coordinator at {addr} did not present a CA whose SHA-256 is {pin} (wrong token, or someone in the middle)"
    )]
    PinMismatch { addr: String, pin: String },
}

/// Facts read off a certificate that authorization needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub uris: Vec<String>,
    pub serial_hex: String,
    pub not_after_unix: i64,
}

impl CertInfo {
    /// The target this certificate names, if it is an agent certificate.
    pub fn target(&self) -> Option<&str> {
        self.uris.iter().find_map(|u| u.strip_prefix(TARGET_URI_PREFIX))
    }
    pub fn has_uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|u| u == uri)
    }
}

/// Parse a DER certificate for its URI SANs, serial and expiry.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push(u.to_string());
            }
        }
    }
    Ok(CertInfo {
        uris,
        serial_hex: hex::encode(cert.raw_serial()),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// First certificate of a PEM string, as DER.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| IdentityError::Parse("no certificate in PEM".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| IdentityError::Parse(e.to_string()))
}

/// SHA-256 (hex) of the first certificate in a PEM string — the pin a join token carries.
pub fn ca_pin(ca_pem: &str) -> Result<String, IdentityError> {
    Ok(crate::sha256_hex(&first_cert_der(ca_pem)?))
}

/// Records the chain the server presents; accepts the handshake only if a certificate in the
/// chain has the pinned SHA-256 and the leaf verifies against it (signature, validity, name).
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    found: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::sha256_hex(c) == self.pin)
            .ok_or_else(|| rustls::Error::General("no certificate matches the pinned CA hash".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Connect to `addr` (host:port), and return the CA certificate (PEM) the coordinator presents,
/// if and only if its SHA-256 equals `pin` and the server's leaf is valid under it for
/// [`COORDINATOR_DNS`].
pub async fn fetch_pinned_ca(addr: &str, pin: &str) -> Result<String, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier { pin: pin.to_string(), found: Mutex::new(None), provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Handshake { addr: addr.into(), reason: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| IdentityError::Connect { addr: addr.into(), source })?;
    let name = ServerName::try_from(COORDINATOR_DNS).expect("static name is valid");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(name, tcp).await {
        Ok(_) => {}
        Err(e) => {
            let reason = e.to_string();
            if reason.contains("pinned CA") {
                return Err(IdentityError::PinMismatch { addr: addr.into(), pin: pin.into() });
            }
            return Err(IdentityError::Handshake { addr: addr.into(), reason });
        }
    }
    let der = verifier
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| IdentityError::PinMismatch { addr: addr.into(), pin: pin.into() })?;
    Ok(der_to_pem(&der))
}

/// Encode a DER certificate as PEM.
pub fn der_to_pem(der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A tonic client TLS config: trust only `ca_pem`, present `cert_pem`/`key_pem`, and verify
/// the server under `server_name`.
pub fn client_tls(ca_pem: &str, cert_pem: &str, key_pem: &str, server_name: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
        .domain_name(server_name)
}

/// Connect a tonic channel over mTLS.
pub async fn connect(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect_timeout(timeout)
        .timeout(std::time::Duration::from_secs(3600))
        .connect()
        .await
}

/// host:port of an `https://host:port` URL.
pub fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_roundtrip() {
        let der: Vec<u8> = (0u8..=255).cycle().take(1000).collect();
        let pem = der_to_pem(&der);
        assert_eq!(first_cert_der(&pem).unwrap(), der);
    }

    #[test]
    fn names() {
        assert_eq!(target_uri("edge-rpi3"), "spiffe://dockfra/target/edge-rpi3");
        assert_eq!(authority("https://127.0.0.1:7443"), "127.0.0.1:7443");
        let info = CertInfo { uris: vec![target_uri("a")], serial_hex: String::new(), not_after_unix: 0 };
        assert_eq!(info.target(), Some("a"));
    }
}
