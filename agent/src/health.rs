//! Health checks: HTTP (status and optional body match, plain http only), TCP connect, and a
//! command's exit code — with retries, interval, timeout and a start period. Returns the
//! reason of the last failure so a rollback can say why.
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use dockfra_common::config::{HealthCheck, HealthSpec};

use crate::runner::{CommandSpec, Runner};

async fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("GET {url}: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: dockfra-agent\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(|e| format!("GET {url}: {e}"))?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await.map_err(|e| format!("GET {url}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("GET {url}: not an HTTP response"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("GET {url}: timed out after {timeout:?}"))?
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
