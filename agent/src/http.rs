//! A small HTTP/1.1 client for the cluster APIs a driver talks to (Nomad's): one request per
//! connection, plain or TLS (rustls with the target's CA file and, when the servers verify
//! clients, a client certificate), a deadline for the whole exchange, a bounded answer.
//! hyper does the protocol (the Docker API client already links it); nothing here parses HTTP.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Largest answer read (a job's allocations list stays far below).
const MAX_BODY: usize = 8 << 20;

/// Where an API is, and how to talk to it.
pub struct Endpoint {
    address: String,
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// What went wrong, told apart where a caller says different things.
#[derive(Debug)]
pub enum HttpError {
    /// Nothing answered (refused, unreachable, no such host, timed out connecting).
    Unreachable(String),
    /// A TLS failure or a broken exchange.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Unreachable(m) | HttpError::Failed(m) => f.write_str(m),
        }
    }
}

fn read_pem(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {path}: {e}"))
}

impl Endpoint {
    /// `http://HOST:PORT` or `https://HOST:PORT` (with `ca`: a PEM file of the CA that signed
    /// the servers; `client`: certificate and key PEM files; `server_name`: the name the
    /// servers' certificate carries, when not the host).
    pub fn new(
        address: &str,
        ca: Option<&str>,
        client: Option<(&str, &str)>,
        server_name: Option<&str>,
    ) -> Result<Self, String> {
        let (tls, rest) = match (address.strip_prefix("https://"), address.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(format!("{address}: not an http:// or https:// address")),
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().map_err(|_| format!("{address}: bad port"))?,
            ),
            _ if !authority.contains(':') || authority.ends_with(']') => {
                (authority.trim_start_matches('[').trim_end_matches(']').to_string(), if tls { 443 } else { 80 })
            }
            _ => return Err(format!("{address}: not HOST:PORT")),
        };
        let tls = if tls {
            let ca = ca.ok_or_else(|| format!("{address}: an https address needs the CA certificate (ca_cert)"))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read_pem(ca, "CA certificate")?) {
                let c = c.map_err(|e| format!("{ca}: {e}"))?;
                roots.add(c).map_err(|e| format!("{ca}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("{ca}: no certificate in it"));
            }
            let builder =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots);
            let config = match client {
                Some((cert, key)) => {
                    let chain: Vec<CertificateDer<'static>> =
                        CertificateDer::pem_slice_iter(&read_pem(cert, "client certificate")?)
                            .collect::<Result<_, _>>()
                            .map_err(|e| format!("{cert}: {e}"))?;
                    let key = PrivateKeyDer::from_pem_slice(&read_pem(key, "client key")?)
                        .map_err(|e| format!("{key}: {e}"))?;
                    builder.with_client_auth_cert(chain, key).map_err(|e| format!("{cert}: {e}"))?
                }
                None => builder.with_no_client_auth(),
            };
            let name = ServerName::try_from(server_name.unwrap_or(&host).to_string())
                .map_err(|e| format!("{}: not a TLS server name: {e}", server_name.unwrap_or(&host)))?;
            Some((Arc::new(config), name))
        } else {
            None
        };
        Ok(Endpoint { address: address.trim_end_matches('/').to_string(), host, port, tls })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// One request; the status and the body of the answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let what = format!("{method} {}{path}", self.address);
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| HttpError::Unreachable(format!("{what}: {e}")))?;
            let stream = match &self.tls {
                Some((config, name)) => Stream::Tls(Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| HttpError::Failed(format!("{what}: TLS: {e}")))?,
                )),
                None => Stream::Plain(tcp),
            };
            self.exchange(TokioIo::new(stream), method, path, headers, body, &what).await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Unreachable(format!("{what}: no answer within {}s", timeout.as_secs())))?
    }

    async fn exchange(
        &self,
        io: TokioIo<Stream>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let failed = |e: &dyn std::fmt::Display| HttpError::Failed(format!("{what}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| failed(&e))?;
        let driver = tokio::spawn(conn);
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("user-agent", concat!("dockfra-agent/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| failed(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| failed(&e))?.to_bytes();
        driver.abort();
        Ok((status, bytes.to_vec()))
    }
}

/// A connection, plain or TLS: one type, so hyper's client is built once for both.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Does a path exist and can it be read (the token file, a CA file)?
pub fn readable(path: &str) -> Result<(), String> {
    std::fs::File::open(Path::new(path)).map(drop).map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Endpoint, String>) -> String {
        r.err().expect("an error")
    }

    #[test]
    fn addresses() {
        let e = Endpoint::new("http://127.0.0.1:4646/", None, None, None).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.address()), ("127.0.0.1", 4646, "http://127.0.0.1:4646"));
        let e = Endpoint::new("http://[::1]:4646", None, None, None).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4646));
        assert!(err(Endpoint::new("https://nomad:4646", None, None, None)).contains("ca_cert"));
        assert!(Endpoint::new("ftp://x", None, None, None).is_err());
        assert!(
            err(Endpoint::new("https://nomad:4646", Some("/nonexistent/ca.pem"), None, None)).contains("cannot read")
        );
    }
}
