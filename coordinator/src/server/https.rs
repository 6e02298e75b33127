//! The HTTPS listener of the REST API and the dashboard (rustls, HTTP/1.1 and HTTP/2). Its
//! certificate is issued by the coordinator's CA at start-up for the names operators use
//! (`--http-name`, plus localhost and the loopback addresses); a client certificate is
//! optional and, when presented, must chain to the CA (an operator's certificate then
//! authenticates without a token).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service as _;

use super::api::{self, PeerCert};
use super::Coordinator;
use crate::ca::Subject;

/// Where and under which names the REST API and the dashboard are served.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: String,
    /// Names (DNS or IP) the certificate carries besides localhost, 127.0.0.1 and ::1.
    pub names: Vec<String>,
}

/// How long the listener's certificate is valid (a new one is made at every start).
const WEB_CERT_TTL: Duration = Duration::from_secs(90 * 86400);
/// A TLS handshake or a request's headers must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A name for the web certificate: an IP address or a DNS name, never one of dockfra's own
/// (`*.dockfra` names the coordinator and the agents to each other).
fn check_name(n: &str) -> anyhow::Result<()> {
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let lower = n.to_ascii_lowercase();
    anyhow::ensure!(
        !lower.is_empty()
            && lower.len() <= 253
            && lower.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }),
        "--http-name {n:?}: a DNS name or an IP address is expected"
    );
    anyhow::ensure!(
        lower != "dockfra" && !lower.ends_with(".dockfra"),
        "--http-name {n:?}: names under .dockfra are dockfra's own identities; use the name browsers reach this host by"
    );
    Ok(())
}

fn tls_config(c: &Coordinator, names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
    for n in names {
        check_name(n)?;
    }
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let issued = c.inner.ca.issue_with_key(Subject::Web { names: &all }, WEB_CERT_TTL)?;
    let key_pem = issued.key_pem.context("the web certificate has no key")?;
    let mut chain = Vec::new();
    for pem in [issued.cert_pem.as_str(), c.inner.ca_pem.as_str()] {
        chain.push(rustls::pki_types::CertificateDer::from(dockfra_common::identity::first_cert_der(pem)?));
    }
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the web certificate's key: {e}"))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[1].clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Bind the listener (errors name the address) and make its TLS config.
pub(super) async fn bind(
    c: &Coordinator,
    opts: &HttpOptions,
) -> anyhow::Result<(TcpListener, Arc<rustls::ServerConfig>, SocketAddr)> {
    let listener = TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", opts.listen))?;
    let addr = listener.local_addr()?;
    Ok((listener, Arc::new(tls_config(c, &opts.names)?), addr))
}

/// Accept connections until the task is dropped.
pub(super) async fn run(c: Coordinator, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = api::router(c).layer(axum::middleware::map_response(super::web::security_headers));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("https accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else { return };
            let peer =
                PeerCert(tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec())));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
            let _ = b.serve_connection_with_upgrades(TokioIo::new(tls), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn web_certificate_names_are_the_operators_never_dockfras_own() {
        for ok in ["deploy.example.lan", "10.0.0.5", "::1", "localhost", "*.example.com"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["coordinator.dockfra", "edge.agents.dockfra", "DOCKFRA", "", "a..b", "-x.com", "has space.com"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
