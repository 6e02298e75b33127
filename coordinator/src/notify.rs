//! Notifications after every deploy, rollback, agent upgrade and fleet wave: a generic
//! webhook (JSON, signed with HMAC-SHA256), Slack and Discord webhooks, and mail over SMTP.
//!
//! Sending never blocks or fails a deploy: a notice is queued (a bounded queue; when it is
//! full the notice is dropped with a warning) and delivered by its own task, each channel
//! apart, with retries and backoff. A URL is never logged beyond its scheme and host (webhook
//! URLs carry their tokens in the path), nor is a secret.
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use dockfra_common::config::{Channel, Notification, SmtpTls};

/// Attempts per channel and the waits between them.
const BACKOFF: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(9)];
/// One attempt's limit: connect, TLS, request and answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Notices waiting to be sent; more are dropped (and said so in the log).
const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const PARALLEL: usize = 16;

/// What happened, in the forms the channels need.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `deploy`, `rollback`, `upgrade` or `wave`.
    pub event: String,
    pub succeeded: bool,
    /// The generic webhook's body (`event`, `result`, `target`, …).
    pub payload: serde_json::Value,
    /// One line for chat and mail subjects.
    pub summary: String,
    /// A few lines for mail bodies and chat details.
    pub details: Vec<String>,
}

impl Notice {
    /// A deployment that ended.
    pub fn deployment(d: &crate::store::DeploymentRow, app: &str) -> Notice {
        let event = match d.action.as_str() {
            "rollback" => "rollback",
            "upgrade" => "upgrade",
            _ => "deploy",
        };
        let succeeded = d.status == "succeeded";
        let what = match event {
            "rollback" => "rollback",
            "upgrade" => "agent upgrade",
            _ => "deploy",
        };
        let summary = format!("{what} of {app} to {} {}: {}", d.target, d.status, d.release);
        let mut details = vec![
            format!("target:     {}", d.target),
            format!("app:        {app}"),
            format!("result:     {}", d.status),
            format!("release:    {} (version {})", d.release, d.version),
            format!("operator:   {}", d.operator),
            format!("deployment: {}", d.id),
        ];
        if !d.fleet.is_empty() {
            details.push(format!("fleet:      {}", d.fleet));
        }
        if !d.reason.is_empty() {
            details.push(format!("message:    {}", d.reason));
        }
        Notice {
            event: event.into(),
            succeeded,
            payload: json!({
                "event": event, "result": d.status, "target": d.target, "app": app, "release": d.release,
                "version": d.version, "deployment": d.id, "operator": d.operator, "fleet": d.fleet,
                "message": d.reason, "started_unix": d.started_unix, "finished_unix": d.finished_unix,
            }),
            summary: summary.trim_end_matches(": ").to_string(),
            details,
        }
    }
}

struct Job {
    channels: Vec<Notification>,
    notice: Notice,
}

/// The queue the coordinator hands notices to.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Job>,
}

impl Notifier {
    /// Start the delivery task (on the current tokio runtime).
    pub fn start() -> Notifier {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let slots = Arc::new(Semaphore::new(PARALLEL));
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let body = Arc::new(job.notice);
                for n in job.channels {
                    if !n.events.iter().any(|e| *e == body.event) || (n.failures_only && body.succeeded) {
                        continue;
                    }
                    let Ok(permit) = slots.clone().acquire_owned().await else { return };
                    let notice = body.clone();
                    tokio::spawn(async move {
                        deliver(&n.channel, &notice).await;
                        drop(permit);
                    });
                }
            }
        });
        Notifier { tx }
    }

    /// Queue `notice` for `channels`; never waits.
    pub fn send(&self, channels: Vec<Notification>, notice: Notice) {
        if channels.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(Job { channels, notice }) {
            tracing::warn!(
                "notification dropped: {}",
                match e {
                    mpsc::error::TrySendError::Full(_) => "the queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the notifier stopped",
                }
            );
        }
    }
}

/// Send to one channel, retrying what may pass later (connection errors, timeouts, 429, 5xx).
async fn deliver(channel: &Channel, notice: &Notice) {
    let delivery = hex::encode(random::<8>());
    let mut last = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF[attempt - 1]).await;
        }
        match tokio::time::timeout(ATTEMPT_TIMEOUT, send_once(channel, notice, &delivery)).await {
            Ok(Ok(())) => {
                tracing::debug!("notified {} ({})", channel.shown(), notice.summary);
                return;
            }
            Ok(Err(Failure::Final(why))) => {
                tracing::warn!("notification to {} refused, not retried: {why}", channel.shown());
                return;
            }
            Ok(Err(Failure::Retry(why))) => last = why,
            Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        }
    }
    tracing::warn!("notification to {} failed after {} attempts: {last}", channel.shown(), BACKOFF.len() + 1);
}

enum Failure {
    Retry(String),
    Final(String),
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

async fn send_once(channel: &Channel, notice: &Notice, delivery: &str) -> Result<(), Failure> {
    match channel {
        Channel::Webhook { url, secret } => {
            let body = serde_json::to_vec(&notice.payload).unwrap_or_default();
            let mut headers =
                vec![("x-dockfra-event", notice.event.clone()), ("x-dockfra-delivery", delivery.to_string())];
            if let Some(s) = secret {
                let key = s.resolve().map_err(Failure::Final)?;
                headers.push(("x-dockfra-signature-256", signature(key.as_bytes(), &body)));
            }
            post(url, body, &headers).await
        }
        Channel::Slack { url } => {
            let text = format!("*{}*\n```{}```", notice.summary, notice.details.join("\n"));
            post(url, serde_json::to_vec(&json!({ "text": text })).unwrap_or_default(), &[]).await
        }
        Channel::Discord { url } => {
            let mut content = format!("**{}**\n```\n{}\n```", notice.summary, notice.details.join("\n"));
            // Discord refuses content over 2000 characters.
            if content.chars().count() > 1990 {
                content = content.chars().take(1985).collect::<String>() + "…```";
            }
            post(url, serde_json::to_vec(&json!({ "content": content })).unwrap_or_default(), &[]).await
        }
        Channel::Email { .. } => mail(channel, notice).await,
    }
}

/// `sha256=HEX` of HMAC-SHA256(key, body), as GitHub signs its webhooks.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    format!("sha256={}", hex::encode(ring::hmac::sign(&k, body).as_ref()))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS to `host` with the web's roots (webpki-roots).
async fn tls(io: Box<dyn Io>, host: &str) -> Result<Box<dyn Io>, Failure> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Final(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| Failure::Final(e.to_string()))?;
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, io)
        .await
        .map_err(|e| Failure::Retry(format!("TLS: {e}")))?;
    Ok(Box::new(s))
}

async fn connect(host: &str, port: u16) -> Result<Box<dyn Io>, Failure> {
    let s = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| Failure::Retry(format!("connect: {e}")))?;
    let _ = s.set_nodelay(true);
    Ok(Box::new(s))
}

/// POST `body` as JSON over HTTP/1.1.
async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<(), Failure> {
    let (secure, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(Failure::Final("not an http(s) URL".into())),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => {
            (h, p.parse::<u16>().map_err(|_| Failure::Final("the URL's port is not a number".into()))?)
        }
        _ => (authority, if secure { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut io = connect(host, port).await?;
    if secure {
        io = tls(io, host).await?;
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| Failure::Retry(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, format!("dockfra/{}", dockfra_common::VERSION));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| Failure::Final(format!("request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| Failure::Retry(format!("HTTP: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Retry(format!("answered {status}")))
    } else {
        Err(Failure::Final(format!("answered {status}")))
    }
}

/// The reply to an SMTP command: its code and text.
async fn reply(io: &mut Box<dyn Io>) -> Result<(u16, String), Failure> {
    let mut text = String::new();
    loop {
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            let n = io.read(&mut b).await.map_err(|e| Failure::Retry(format!("SMTP: {e}")))?;
            if n == 0 {
                return Err(Failure::Retry("SMTP: the server closed the connection".into()));
            }
            if b[0] == b'\n' {
                break;
            }
            if line.len() > 4096 {
                return Err(Failure::Retry("SMTP: reply line too long".into()));
            }
            line.push(b[0]);
        }
        let l = String::from_utf8_lossy(&line).trim_end().to_string();
        let code = l
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| Failure::Retry(format!("SMTP: bad reply {l:?}")))?;
        text.push_str(l.get(4..).unwrap_or(""));
        if l.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
        text.push('\n');
    }
}

async fn command(io: &mut Box<dyn Io>, line: &str, want: &[u16]) -> Result<String, Failure> {
    io.write_all(format!("{line}\r\n").as_bytes()).await.map_err(|e| Failure::Retry(format!("SMTP: {e}")))?;
    expect(io, want, line.split(' ').next().unwrap_or(line)).await
}

async fn expect(io: &mut Box<dyn Io>, want: &[u16], what: &str) -> Result<String, Failure> {
    let (code, text) = reply(io).await?;
    if want.contains(&code) {
        Ok(text)
    } else if (400..500).contains(&code) {
        Err(Failure::Retry(format!("SMTP {what}: {code} {text}")))
    } else {
        Err(Failure::Final(format!("SMTP {what}: {code} {text}")))
    }
}

/// A header value with no line breaks, RFC 2047-encoded when it is not ASCII.
fn header_value(s: &str) -> String {
    let flat: String = s.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
    if flat.is_ascii() {
        flat
    } else {
        use base64::Engine as _;
        format!("=?utf-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(flat.as_bytes()))
    }
}

/// The message: headers, then the body, base64 when it is not ASCII; lines dot-stuffed.
pub fn message(from: &str, to: &[String], subject: &str, body: &str) -> String {
    use base64::Engine as _;
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
    let domain = from.rsplit('@').next().unwrap_or("dockfra");
    let mut m = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{}@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n",
        header_value(from),
        header_value(&to.join(", ")),
        header_value(subject),
        hex::encode(random::<12>()),
        header_value(domain),
    );
    if body.is_ascii() {
        m.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        for line in body.lines() {
            if line.starts_with('.') {
                m.push('.');
            }
            m.push_str(line);
            m.push_str("\r\n");
        }
    } else {
        m.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        let b = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
        for chunk in b.as_bytes().chunks(76) {
            m.push_str(&String::from_utf8_lossy(chunk));
            m.push_str("\r\n");
        }
    }
    m
}

async fn mail(channel: &Channel, notice: &Notice) -> Result<(), Failure> {
    let Channel::Email { host, port, tls: mode, username, password, from, to } = channel else {
        return Err(Failure::Final("not a mail channel".into()));
    };
    let mut io = connect(host, *port).await?;
    if *mode == SmtpTls::Tls {
        io = tls(io, host).await?;
    }
    expect(&mut io, &[220], "greeting").await?;
    let hello = format!("EHLO {}", local_name());
    let mut ehlo = command(&mut io, &hello, &[250]).await?;
    if *mode == SmtpTls::StartTls {
        if !ehlo.lines().any(|l| l.trim().eq_ignore_ascii_case("STARTTLS")) {
            return Err(Failure::Final(format!(
                "{host}:{port} offers no STARTTLS (set tls: none to send in the clear)"
            )));
        }
        command(&mut io, "STARTTLS", &[220]).await?;
        io = tls(io, host).await?;
        ehlo = command(&mut io, &hello, &[250]).await?;
    }
    let _ = ehlo;
    if let Some(user) = username {
        use base64::Engine as _;
        let pass = match password {
            Some(p) => p.resolve().map_err(Failure::Final)?,
            None => String::new(),
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        command(&mut io, &format!("AUTH PLAIN {token}"), &[235]).await?;
    }
    command(&mut io, &format!("MAIL FROM:<{from}>"), &[250]).await?;
    for rcpt in to {
        command(&mut io, &format!("RCPT TO:<{rcpt}>"), &[250, 251]).await?;
    }
    command(&mut io, "DATA", &[354]).await?;
    let subject = format!("[dockfra] {}", notice.summary);
    let body = notice.details.join("\n") + "\n";
    let msg = message(from, to, &subject, &body);
    io.write_all(msg.as_bytes()).await.map_err(|e| Failure::Retry(format!("SMTP: {e}")))?;
    io.write_all(b".\r\n").await.map_err(|e| Failure::Retry(format!("SMTP: {e}")))?;
    expect(&mut io, &[250], "DATA").await?;
    let _ = command(&mut io, "QUIT", &[221]).await;
    Ok(())
}

fn local_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .unwrap_or_else(|| "dockfra-coord".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn mail_headers_cannot_be_injected_and_bodies_are_dot_stuffed() {
        let m = message("d@example.org", &["ops@example.org".into()], "x\r\nBcc: evil@example.org", ".hidden\nok\n");
        assert!(!m.contains("\r\nBcc:"), "{m}");
        assert!(m.contains("\r\n..hidden\r\nok\r\n"), "{m}");
        let u = message("d@example.org", &["ops@example.org".into()], "déployé", "été\n");
        assert!(u.contains("Subject: =?utf-8?B?") && u.contains("Content-Transfer-Encoding: base64"), "{u}");
    }
}
