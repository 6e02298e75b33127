//! Authorization, once per service, as tonic interceptors: a handler of `Fleet` runs only
//! with a verified [`AgentPeer`] in its request, one of `Admin` only with a verified
//! [`OperatorPeer`]; `Enrollment` — the one service open to callers without a certificate —
//! is rate-limited per source address, and so is what its refusals may write.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use dockfra_common::identity::{self, CertInfo};

use super::Coordinator;

/// The agent a Fleet call comes from: its certificate is the one the store holds as live.
#[derive(Debug, Clone)]
pub struct AgentPeer {
    pub target: String,
    pub serial: String,
    /// When the certificate of this call expires (unix seconds).
    pub not_after_unix: i64,
}

/// The operator an Admin call comes from: a named, unrevoked credential.
#[derive(Debug, Clone)]
pub struct OperatorPeer {
    pub name: String,
}

impl AgentPeer {
    /// The verified agent of this request (set by the Fleet interceptor).
    pub fn of<T>(req: &Request<T>) -> Result<Self, Status> {
        req.extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("not an authenticated agent call"))
    }
}

impl OperatorPeer {
    /// The verified operator of this request (set by the Admin interceptor).
    pub fn of<T>(req: &Request<T>) -> Result<Self, Status> {
        req.extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("not an authenticated operator call"))
    }
}

fn peer<T>(req: &Request<T>) -> Result<CertInfo, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let first = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    identity::cert_info(first.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Fleet: the certificate names a target and is that target's live certificate.
pub fn agent_interceptor(c: Coordinator) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let info = peer(&req)?;
        let target = info
            .target()
            .ok_or_else(|| Status::permission_denied("this call is for agents; the certificate names no target"))?
            .to_string();
        let store = c.store();
        if !store.cert_active(&target, &info.serial_hex)? {
            return Err(Status::permission_denied(format!(
                "the certificate of agent {target:?} is revoked or superseded; re-enroll with a new token"
            )));
        }
        store.note_use(&target, &info.serial_hex)?;
        drop(store);
        req.extensions_mut().insert(AgentPeer { target, serial: info.serial_hex, not_after_unix: info.not_after_unix });
        Ok(req)
    }
}

/// Admin: the certificate names an operator whose live credential it is.
pub fn operator_interceptor(c: Coordinator) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let info = peer(&req)?;
        let name = info
            .operator()
            .ok_or_else(|| Status::permission_denied("this call needs an operator credential"))?
            .to_string();
        if !c.store().operator_active(&name, &info.serial_hex)? {
            return Err(Status::permission_denied(format!(
                "the credential of operator {name:?} is revoked, replaced or expired"
            )));
        }
        req.extensions_mut().insert(OperatorPeer { name });
        Ok(req)
    }
}

/// Enrollment: at most the configured burst of calls per source address, refilled slowly.
pub fn enroll_interceptor(c: Coordinator) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let ip = req.remote_addr().map(|a| a.ip());
        match ip {
            Some(ip) => match c.inner.enroll_limit.take(ip) {
                Ok(()) => Ok(req),
                Err(wait) => Err(Status::resource_exhausted(format!(
                    "too many enrollment attempts from {ip}; try again in {}s",
                    wait.as_secs().max(1)
                ))),
            },
            None => Ok(req),
        }
    }
}

/// Token buckets per source address, plus one global bucket that bounds how many refusal
/// events all addresses together may write (an IPv6 attacker has many addresses).
pub struct RateLimiter {
    burst: f64,
    per: Duration,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    events: Mutex<(f64, Instant, u64)>,
}

/// Refusal events written per hour at most (the rest are counted and summarized).
const REFUSAL_EVENTS_PER_HOUR: f64 = 60.0;

impl RateLimiter {
    pub fn new(burst: u32, per: Duration) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per: per.max(Duration::from_millis(1)),
            buckets: Mutex::new(HashMap::new()),
            events: Mutex::new((REFUSAL_EVENTS_PER_HOUR, Instant::now(), 0)),
        }
    }

    /// Take one token for `ip`, or say how long until one is there.
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 10_000 {
            // Forget addresses whose bucket is full again (they cost nothing to re-create).
            let (burst, per) = (self.burst, self.per);
            b.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() / per.as_secs_f64() < burst);
        }
        let (tokens, at) = b.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / self.per.as_secs_f64()).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(self.per.mul_f64(1.0 - *tokens))
        }
    }

    /// May one more refusal event be written? Returns how many were suppressed since the
    /// last one that was (to say so in it), or `None` to suppress this one.
    pub fn refusal_event(&self) -> Option<u64> {
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at, suppressed) = &mut *e;
        *tokens =
            (*tokens + at.elapsed().as_secs_f64() * REFUSAL_EVENTS_PER_HOUR / 3600.0).min(REFUSAL_EVENTS_PER_HOUR);
        *at = Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_address() {
        let l = RateLimiter::new(3, Duration::from_millis(100));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.take(a).unwrap();
        }
        assert!(l.take(a).is_err());
        l.take(b).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        l.take(a).unwrap();
        let mut written = 0;
        let mut summary = 0;
        for _ in 0..100 {
            if let Some(s) = l.refusal_event() {
                written += 1;
                summary += s;
            }
        }
        assert_eq!(written, REFUSAL_EVENTS_PER_HOUR as i32);
        assert_eq!(summary, 0, "nothing suppressed before the bucket ran dry");
    }
}
