//! TEMPORARY stub until the real parser lands.
use serde::{Deserialize, Serialize};
use std::time::Duration;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform { DockerCompose, Podman, Kubernetes, Swarm, Nomad, SshRaw }
impl Platform { pub fn as_str(&self) -> &'static str { match self { Self::DockerCompose => "docker_compose", Self::Podman => "podman", Self::Kubernetes => "kubernetes", Self::Swarm => "swarm", Self::Nomad => "nomad", Self::SshRaw => "ssh_raw" } } }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode { Push, Pull }
impl Mode { pub fn as_str(&self) -> &'static str { match self { Self::Push => "push", Self::Pull => "pull" } } }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceManager { None, Systemd, Supervisord, Pm2 }
impl ServiceManager { pub fn as_str(&self) -> &'static str { match self { Self::None => "none", Self::Systemd => "systemd", Self::Supervisord => "supervisord", Self::Pm2 => "pm2" } } }
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec { pub checks: Vec<HealthCheck>, pub retries: u32, #[serde(skip)] pub interval: Duration, #[serde(skip)] pub timeout: Duration, #[serde(skip)] pub start_period: Duration }
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthCheck { Http { url: String, status: u16, body: Option<String> }, Tcp { address: String }, Command { command: String } }
pub fn parse_duration(s: &str) -> Result<Duration, String> { let _ = s; Err("stub".into()) }
