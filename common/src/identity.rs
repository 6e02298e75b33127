//! TLS identities: the names every certificate carries, reading SANs off peer certificates,
//! tonic TLS configs, and the one unauthenticated step — fetching the coordinator's CA over TLS
//! and accepting it only if its SHA-256 matches the pin in the join token.
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// URI SAN of the coordinator's certificate.
pub const COORDINATOR_URI: &str = "spiffe://dockfra/coordinator";
/// URI SAN of the single admin certificate of coordinators initialized before operators had
/// names; it is honoured as operator `admin` while the store holds its serial.
pub const ADMIN_URI: &str = "spiffe://dockfra/admin";
/// The prefix of an operator's URI SAN: `spiffe://dockfra/operator/<name>`.
pub const OPERATOR_URI_PREFIX: &str = "spiffe://dockfra/operator/";
/// DNS SAN of the coordinator's certificate; clients verify the server against this name,
/// whatever address they dialled.
pub const COORDINATOR_DNS: &str = "coordinator.dockfra";
/// The prefix of a target's URI SAN.
pub const TARGET_URI_PREFIX: &str = "spiffe://dockfra/target/";

/// URI SAN naming a target.
pub fn target_uri(target: &str) -> String {
    format!("{TARGET_URI_PREFIX}{target}")
}

/// URI SAN naming an operator.
pub fn operator_uri(name: &str) -> String {
    format!("{OPERATOR_URI_PREFIX}{name}")
}

/// Is `name` a valid operator name: 1–64 of `[a-z0-9._-]`, starting with a letter or digit?
pub fn is_operator_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
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
    /// The operator this certificate names (the legacy admin certificate names `admin`).
    pub fn operator(&self) -> Option<&str> {
        self.uris
            .iter()
            .find_map(|u| u.strip_prefix(OPERATOR_URI_PREFIX))
            .or_else(|| self.has_uri(ADMIN_URI).then_some("admin"))
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

/// The handshake-signature methods of a `ServerCertVerifier` whose `provider` field is the
/// crypto provider: both verifiers here check signatures the standard way.
macro_rules! handshake_signatures_by_provider {
    () => {
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
    };
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

    handshake_signatures_by_provider!();
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

/// HTTP/2 flow-control windows for every dockfra connection, both ends. The defaults (64 KiB
/// by the protocol, 1-2 MiB in hyper) let a blob stream stall on each window update; these
/// keep a bundle moving at disk speed on a fast link while bounding what one connection may
/// buffer (a Raspberry Pi agent has 1 GiB).
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// See [`H2_STREAM_WINDOW`]: the whole connection's window.
pub const H2_CONNECTION_WINDOW: u32 = 8 << 20;
/// The largest HTTP/2 frame a dockfra server accepts: a 256 KiB blob chunk in 2 frames, not 16.
pub const H2_MAX_FRAME: u32 = 128 << 10;

/// Connect a tonic channel over mTLS. HTTP/2 keep-alive pings run while a call is open, so a
/// connection that died under a transfer (a cut link, a NAT that forgot us) is noticed in
/// seconds instead of hanging the call.
pub async fn connect(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    endpoint(url, tls, timeout)?
        .timeout(std::time::Duration::from_secs(3600))
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .keep_alive_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
}

/// How often a pull agent pings the connection of its watch stream when the coordinator sends
/// no keepalive events of its own (one that predates them): often enough to keep a NAT's
/// mapping (RFC 5382 asks NATs for two hours; home routers and carrier NATs are known to
/// forget in minutes) and to notice a dead link within this plus 20 s.
pub const WATCH_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long past the promised keepalive an agent waits for a word on its watch stream
/// before it takes the link for dead (and how long a ping may go unanswered).
pub const WATCH_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// A channel for a watch stream, held for hours, with no deadline on its calls. `ping`: the
/// agent pings it every [`WATCH_KEEPALIVE`] (for a coordinator that sends no keepalive
/// events); otherwise the coordinator's events keep it alive and the agent only listens.
pub async fn connect_watch(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    timeout: std::time::Duration,
    ping: bool,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let e = endpoint(url, tls, timeout)?;
    let e = if ping {
        e.http2_keep_alive_interval(WATCH_KEEPALIVE).keep_alive_timeout(WATCH_GRACE).keep_alive_while_idle(true)
    } else {
        e
    };
    e.connect().await
}

fn endpoint(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect_timeout(timeout)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW))
}

/// Accepts a server only if its chain verifies under the CA for the expected name AND its
/// leaf carries the expected serial: the certificate the store holds for that agent, not
/// any other the CA once issued for it (a superseded one whose key may have leaked).
#[derive(Debug)]
struct SerialPinVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    serial: String,
    seen: Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SerialPinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let info = cert_info(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.serial_hex.clone());
        if info.serial_hex != self.serial {
            return Err(rustls::Error::General(format!(
                "serial mismatch: presented {}, expected {}",
                info.serial_hex, self.serial
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_by_provider!();
}

/// Why a pinned dial failed.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("the agent at {addr} presented certificate serial {presented}, but the store holds {expected} for it (a superseded or foreign certificate)")]
    Serial { addr: String, presented: String, expected: String },
    #[error("{0}")]
    Connect(String),
}

/// Dials one address with our own TLS (tonic's transport then speaks plain HTTP/2 over it).
#[derive(Clone)]
struct PinnedConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    timeout: std::time::Duration,
}

impl tower_service::Service<http::Uri> for PinnedConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (config, name, timeout) = (self.config.clone(), self.name.clone(), self.timeout);
        Box::pin(async move {
            let addr = uri.authority().map(|a| a.to_string()).ok_or_else(|| std::io::Error::other("no authority"))?;
            let dial = async {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                // As tonic's own connector does: small gRPC frames must not wait for
                // delayed ACKs (40 ms each round trip otherwise).
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                Ok(hyper_util::rt::TokioIo::new(tls))
            };
            tokio::time::timeout(timeout, dial).await.map_err(|_| std::io::Error::other("connect timed out"))?
        })
    }
}

/// Connect over mTLS to `https://host:port`, trusting only `ca_pem`, presenting
/// `cert_pem`/`key_pem`, and accepting the server only under `server_name` with the leaf
/// serial `serial` (hex). The handshake happens here, so a wrong serial is an error now, not
/// on the first call.
pub async fn connect_pinned(
    url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    server_name: &str,
    serial: &str,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, PinnedError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let bad = |e: &dyn std::fmt::Display| PinnedError::Connect(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(&e))?;
    let verifier = Arc::new(SerialPinVerifier {
        inner,
        serial: serial.to_string(),
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| bad(&e))?;
    let addr = authority(url).to_string();
    let connector = PinnedConnector { config: Arc::new(config), name, timeout };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(&e))?
        .timeout(std::time::Duration::from_secs(3600))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    match endpoint.connect_with_connector(connector).await {
        Ok(ch) => Ok(ch),
        Err(e) => {
            let presented = verifier.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match presented {
                Some(p) if p != serial => Err(PinnedError::Serial { addr, presented: p, expected: serial.to_string() }),
                _ => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    Err(PinnedError::Connect(msg))
                }
            }
        }
    }
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
