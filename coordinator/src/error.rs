//! The coordinator's errors and their one mapping to gRPC status codes. What reaches a client
//! is a code that says what kind of failure it was and a message written for it; what went
//! wrong inside (SQL, I/O) is logged under an incident id and never sent.
use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// No such target, release, operator, deployment.
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the world is not ready for it (no agent, a bad project).
    #[error("{0}")]
    Precondition(String),
    /// The request itself is wrong (a bad name, a bad CSR).
    #[error("{0}")]
    Invalid(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Denied(String),
    /// The caller could not be identified.
    #[error("{0}")]
    Unauthenticated(String),
    /// Something the coordinator depends on cannot be reached (an agent).
    #[error("{0}")]
    Unavailable(String),
    /// Slow down (rate limits).
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else that is our fault.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl CoordError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        CoordError::Internal(e.into())
    }
}

/// A short id that ties a client's "internal error" to the coordinator's log line.
fn incident() -> String {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Status {
        match e {
            CoordError::NotFound(m) => Status::not_found(m),
            CoordError::Precondition(m) => Status::failed_precondition(m),
            CoordError::Invalid(m) => Status::invalid_argument(m),
            CoordError::Denied(m) => Status::permission_denied(m),
            CoordError::Unauthenticated(m) => Status::unauthenticated(m),
            CoordError::Unavailable(m) => Status::unavailable(m),
            CoordError::Exhausted(m) => Status::resource_exhausted(m),
            CoordError::Exists(m) => Status::already_exists(m),
            e @ (CoordError::Store(_) | CoordError::Internal(_)) => {
                let id = incident();
                tracing::error!(incident = %id, "{e:#}");
                Status::internal(format!("internal error (incident {id}): the coordinator's log has the details"))
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        CoordError::Store(e).into()
    }
}

pub type Result<T> = std::result::Result<T, CoordError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_never_reach_the_client() {
        let sql = StoreError::Sql(rusqlite::Error::InvalidColumnName("secret_column".into()));
        let s: Status = sql.into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("secret_column"), "{}", s.message());
        assert!(s.message().contains("incident"));
        let io = CoordError::internal(std::io::Error::other("/var/lib/dockfra-coord/blobs: EIO"));
        assert!(!Status::from(io).message().contains("/var/lib"));
        let nf: Status = CoordError::NotFound("no target \"x\"".into()).into();
        assert_eq!((nf.code(), nf.message()), (tonic::Code::NotFound, "no target \"x\""));
    }
}
