//! Health checks: HTTP (status and optional body match, plain http only), TCP connect, and a
//! command's exit code — with retries, interval, timeout and a start period. Returns the
//! reason of the last failure so a rollback can say why.
use std::path::Path;
use std::time::Duration;

use dockfra_common::config::{HealthCheck, HealthSpec};

use crate::runner::{CommandSpec, Runner};

/// GET an `http://` URL through the agent's HTTP client (hyper: chunked answers, keep-alive
/// servers and bodies split across reads all read as the server meant them).
async fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let endpoint = crate::http::Endpoint::new(&format!("http://{authority}"), None, None, None)
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (status, body) = endpoint.request("GET", path, &[], None, timeout).await.map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Run one check once.
pub async fn check_once(check: &HealthCheck, timeout: Duration, runner: &dyn Runner, cwd: &Path) -> Result<(), String> {
    match check {
        HealthCheck::Http { url, status, body } => {
            let (got, text) = http_get(url, timeout).await?;
            if got != *status {
                return Err(format!("GET {url}: status {got}, expected {status}"));
            }
            if let Some(b) = body {
                if !text.contains(b.as_str()) {
                    return Err(format!("GET {url}: body does not contain {b:?}"));
                }
            }
            Ok(())
        }
        HealthCheck::Tcp { address } => tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("tcp {address}: timed out"))?
            .map(|_| ())
            .map_err(|e| format!("tcp {address}: {e}")),
        HealthCheck::Command { command } => {
            let o = runner
                .run(&CommandSpec::script(command).cwd(cwd).timeout(timeout))
                .await
                .map_err(|e| format!("command {command:?}: {e}"))?;
            if o.success() {
                Ok(())
            } else {
                Err(format!("command {command:?} {}", o.failure()))
            }
        }
    }
}

/// All checks must pass in one round; up to `retries` extra rounds, `interval` apart.
pub async fn run(spec: &HealthSpec, runner: &dyn Runner, cwd: &Path) -> Result<(), String> {
    if spec.checks.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(spec.start_period).await;
    let mut last = String::new();
    for attempt in 0..=spec.retries {
        if attempt > 0 {
            tokio::time::sleep(spec.interval).await;
        }
        let mut ok = true;
        for c in &spec.checks {
            if let Err(e) = check_once(c, spec.timeout, runner, cwd).await {
                last = e;
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(());
        }
    }
    Err(format!("health check failed after {} attempts: {last}", spec.retries + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::SystemRunner;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn http_tcp_and_command_checks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nv2 ok\n").await;
            }
        });
        let t = Duration::from_secs(2);
        let cwd = std::env::temp_dir();
        let ok = HealthCheck::Http { url: format!("http://{addr}/health"), status: 200, body: Some("v2".into()) };
        check_once(&ok, t, &SystemRunner, &cwd).await.unwrap();
        let wrong_body = HealthCheck::Http { url: format!("http://{addr}/"), status: 200, body: Some("v3".into()) };
        assert!(check_once(&wrong_body, t, &SystemRunner, &cwd).await.unwrap_err().contains("v3"));
        let wrong_status = HealthCheck::Http { url: format!("http://{addr}/"), status: 204, body: None };
        assert!(check_once(&wrong_status, t, &SystemRunner, &cwd).await.is_err());
        check_once(&HealthCheck::Tcp { address: addr.to_string() }, t, &SystemRunner, &cwd).await.unwrap();
        // A port nothing listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(check_once(&HealthCheck::Tcp { address: closed.to_string() }, t, &SystemRunner, &cwd).await.is_err());
        check_once(&HealthCheck::Command { command: "true".into() }, t, &SystemRunner, &cwd).await.unwrap();
        // A chunked answer whose expected text spans two chunks (read raw, it would not match).
        let chunked = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let caddr = chunked.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = chunked.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nv\r\n4\r\n2 ok\r\n0\r\n\r\n")
                .await;
        });
        let split = HealthCheck::Http { url: format!("http://{caddr}/"), status: 200, body: Some("v2 ok".into()) };
        check_once(&split, t, &SystemRunner, &cwd).await.unwrap();
        let spec = HealthSpec {
            checks: vec![HealthCheck::Command { command: "exit 7".into() }],
            retries: 2,
            interval: Duration::from_millis(10),
            timeout: t,
            start_period: Duration::ZERO,
        };
        let e = run(&spec, &SystemRunner, &cwd).await.unwrap_err();
        assert!(e.contains("after 3 attempts"), "{e}");
    }
}
