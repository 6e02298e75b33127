//! The Docker Engine as seen through its API (bollard, local socket only, honouring
//! DOCKER_HOST): ping, the negotiated API version (never pinned: the engines we meet speak
//! as old as 1.41), engine version, architecture and swarm state. Read-only.
use std::time::Duration;

/// What the engine says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFacts {
    pub engine_version: String,
    pub api_version: String,
    pub arch: String,
    pub swarm: String,
}

impl EngineFacts {
    /// One line for `deploy-test`: `20.10.24 (API 1.41, x86_64, swarm inactive)`.
    pub fn summary(&self) -> String {
        format!("{} (API {}, {}, swarm {})", self.engine_version, self.api_version, self.arch, self.swarm)
    }
}

/// Ask the local engine; `Err` says why it could not be reached.
pub async fn detect() -> Result<EngineFacts, String> {
    let run = async {
        let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
        let docker = docker.negotiate_version().await.map_err(|e| format!("cannot negotiate the API version: {e}"))?;
        docker.ping().await.map_err(|e| format!("ping: {e}"))?;
        let v = docker.version().await.map_err(|e| format!("version: {e}"))?;
        let info = docker.info().await.map_err(|e| format!("info: {e}"))?;
        let swarm = info
            .swarm
            .and_then(|s| s.local_node_state)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let client = docker.client_version();
        Ok(EngineFacts {
            engine_version: v.version.unwrap_or_default(),
            api_version: format!("{}.{}", client.major_version, client.minor_version),
            arch: info.architecture.or(v.arch).unwrap_or_default(),
            swarm,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "the Docker engine did not answer in 5s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let f = EngineFacts {
            engine_version: "20.10.24".into(),
            api_version: "1.41".into(),
            arch: "x86_64".into(),
            swarm: "inactive".into(),
        };
        assert_eq!(f.summary(), "20.10.24 (API 1.41, x86_64, swarm inactive)");
    }
}
