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

async fn client() -> Result<bollard::Docker, String> {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    docker.negotiate_version().await.map_err(|e| format!("cannot negotiate the API version: {e}"))
}

/// Does the engine hold this image (by id or reference)?
pub async fn has_image(image: &str) -> Result<bool, String> {
    match client().await?.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(format!("inspect {image}: {e}")),
    }
}

/// Load a `docker save` archive into the engine, streamed from disk.
/// Remove an image by id, never forced: an image a container uses, or one tagged more than
/// once, stays (the engine's refusal is returned).
pub async fn remove_image(id: &str) -> Result<(), String> {
    let opts = bollard::query_parameters::RemoveImageOptions { force: false, noprune: false, ..Default::default() };
    client().await?.remove_image(id, Some(opts), None).await.map(|_| ()).map_err(|e| format!("remove {id}: {e}"))
}

pub async fn load_image(archive: &std::path::Path) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;
    let docker = client().await?;
    let mut file = tokio::fs::File::open(archive).await.map_err(|e| format!("{}: {e}", archive.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf.into())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let opts = bollard::query_parameters::ImportImageOptions { quiet: true, ..Default::default() };
    let mut progress = docker.import_image_stream(opts, tokio_stream::wrappers::ReceiverStream::new(rx), None);
    while let Some(item) = progress.next().await {
        let info = item.map_err(|e| format!("docker load: {e}"))?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(format!("docker load: {detail}"));
        }
    }
    Ok(())
}

/// One container of a compose project, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub name: String,
    /// running, exited, restarting, …
    pub state: String,
    /// e.g. "Up 5 minutes (healthy)"; at API 1.41 health lives only here.
    pub status: String,
}

/// The containers of compose project `project` (by its label), stopped ones included.
pub async fn compose_containers(project: &str) -> Result<Vec<ContainerState>, String> {
    let run = async {
        let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
        let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
        let filters = [("label".to_string(), vec![format!("com.docker.compose.project={project}")])].into();
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = docker.list_containers(Some(opts)).await.map_err(|e| e.to_string())?;
        let mut out: Vec<ContainerState> = list
            .into_iter()
            .map(|c| ContainerState {
                name: c.names.and_then(|n| n.first().cloned()).unwrap_or_default().trim_start_matches('/').to_string(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "the Docker engine did not answer in 5s".to_string())?
}

/// One word and a reason: `healthy`, `starting`, or `unhealthy: web-1 exited`.
pub fn compose_health(containers: &[ContainerState]) -> String {
    if containers.is_empty() {
        return "unhealthy: no containers".into();
    }
    let mut bad = Vec::new();
    let mut starting = false;
    for c in containers {
        if c.state != "running" {
            bad.push(format!("{} {}", c.name, c.state));
        } else if c.status.contains("(unhealthy)") {
            bad.push(format!("{} unhealthy", c.name));
        } else if c.status.contains("health: starting") {
            starting = true;
        }
    }
    match (bad.is_empty(), starting) {
        (false, _) => format!("unhealthy: {}", bad.join(", ")),
        (true, true) => "starting".into(),
        (true, false) => "healthy".into(),
    }
}

/// One swarm task of a stack, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackTask {
    pub id: String,
    pub service: String,
    pub desired: String,
    pub state: String,
    pub err: String,
}

/// The services (name, replicas; `None` for global) and tasks of stack `stack`.
pub async fn stack_state(stack: &str) -> Result<(Vec<(String, Option<i64>)>, Vec<StackTask>), String> {
    let docker = client().await?;
    let filters: std::collections::HashMap<String, Vec<String>> =
        [("label".to_string(), vec![format!("com.docker.stack.namespace={stack}")])].into();
    let services = docker
        .list_services(Some(bollard::query_parameters::ListServicesOptions {
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|e| format!("list services: {e}"))?;
    let tasks = docker
        .list_tasks(Some(bollard::query_parameters::ListTasksOptions { filters: Some(filters) }))
        .await
        .map_err(|e| format!("list tasks: {e}"))?;
    let mut names = std::collections::HashMap::new();
    let mut svcs = Vec::new();
    for s in services {
        let spec = s.spec.unwrap_or_default();
        let name = spec.name.unwrap_or_default();
        let replicas = spec.mode.and_then(|m| m.replicated).and_then(|r| r.replicas);
        names.insert(s.id.unwrap_or_default(), name.clone());
        svcs.push((name, replicas));
    }
    let tasks = tasks
        .into_iter()
        .map(|t| {
            let status = t.status.unwrap_or_default();
            StackTask {
                id: t.id.unwrap_or_default(),
                service: t.service_id.and_then(|id| names.get(&id).cloned()).unwrap_or_default(),
                desired: t.desired_state.map(|s| s.to_string()).unwrap_or_default(),
                state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                err: status.err.unwrap_or_default(),
            }
        })
        .collect();
    Ok((svcs, tasks))
}

/// Where a stack stands after a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackVerdict {
    Converged,
    Waiting(String),
    Failed(String),
}

/// Judge a stack from its services and tasks. `before`: task ids that existed before the
/// deploy — only a task of this deploy failing fails it.
pub fn stack_verdict(
    services: &[(String, Option<i64>)],
    tasks: &[StackTask],
    before: &std::collections::HashSet<String>,
) -> StackVerdict {
    if let Some(t) = tasks.iter().find(|t| !before.contains(&t.id) && (t.state == "failed" || t.state == "rejected")) {
        return StackVerdict::Failed(format!("{}: task {}: {}", t.service, t.state, t.err));
    }
    if services.is_empty() {
        return StackVerdict::Waiting("no services yet".into());
    }
    for (name, replicas) in services {
        let mine: Vec<&StackTask> = tasks.iter().filter(|t| &t.service == name).collect();
        let running = mine.iter().filter(|t| t.desired == "running" && t.state == "running").count() as i64;
        if let Some(t) = mine.iter().find(|t| t.desired == "running" && t.state != "running") {
            let why = if t.err.is_empty() { String::new() } else { format!(": {}", t.err) };
            return StackVerdict::Waiting(format!("{name}: a task is {}{why}", t.state));
        }
        if mine.iter().any(|t| t.desired == "shutdown" && t.state == "running") {
            return StackVerdict::Waiting(format!("{name}: an old task is still stopping"));
        }
        if let Some(want) = replicas {
            if running != *want {
                return StackVerdict::Waiting(format!("{name}: {running}/{want} running"));
            }
        }
    }
    StackVerdict::Converged
}

/// A deployed stack's health between deploys, from its services and tasks: `healthy` when
/// every replicated service runs its replicas (swarm replaces a task whose healthcheck fails,
/// so a failing service shows as short of replicas), else `unhealthy: web 0/1 running (…)`.
pub fn stack_health(services: &[(String, Option<i64>)], tasks: &[StackTask]) -> String {
    if services.is_empty() {
        return "unhealthy: no services".into();
    }
    let mut bad = Vec::new();
    for (name, replicas) in services {
        let mine: Vec<&StackTask> = tasks.iter().filter(|t| &t.service == name).collect();
        let running = mine.iter().filter(|t| t.desired == "running" && t.state == "running").count() as i64;
        let want = replicas.unwrap_or_else(|| running.max(1));
        if running < want {
            let why = mine
                .iter()
                .find(|t| t.desired == "running" && t.state != "running")
                .map(
                    |t| if t.err.is_empty() { format!(" ({})", t.state) } else { format!(" ({}: {})", t.state, t.err) },
                )
                .unwrap_or_default();
            bad.push(format!("{name} {running}/{want} running{why}"));
        }
    }
    if bad.is_empty() {
        "healthy".into()
    } else {
        format!("unhealthy: {}", bad.join(", "))
    }
}

/// Poll until the stack has converged and stayed so (the engine's states lag), a task of
/// this deploy fails, or `timeout` passes.
pub async fn wait_stack(
    stack: &str,
    before: &std::collections::HashSet<String>,
    timeout: Duration,
) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut stable = 0;
    let mut last = String::from("not polled yet");
    while start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (services, tasks) = stack_state(stack).await?;
        match stack_verdict(&services, &tasks, before) {
            StackVerdict::Failed(why) => return Err(why),
            StackVerdict::Waiting(why) => {
                stable = 0;
                last = why;
            }
            StackVerdict::Converged => {
                stable += 1;
                if stable >= 3 && start.elapsed() >= Duration::from_secs(2) {
                    return Ok(());
                }
            }
        }
    }
    Err(format!("stack {stack} did not converge in {}s: {last}", timeout.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_health_between_deploys() {
        let t = |svc: &str, desired: &str, state: &str, err: &str| StackTask {
            id: "x".into(),
            service: svc.into(),
            desired: desired.into(),
            state: state.into(),
            err: err.into(),
        };
        let svcs = vec![("s_web".to_string(), Some(1)), ("s_worker".to_string(), Some(1))];
        let ok = [t("s_web", "running", "running", ""), t("s_worker", "running", "running", "")];
        assert_eq!(stack_health(&svcs, &ok), "healthy");
        let pending = [t("s_web", "running", "pending", "no suitable node"), t("s_worker", "running", "running", "")];
        assert_eq!(stack_health(&svcs, &pending), "unhealthy: s_web 0/1 running (pending: no suitable node)");
        let old = [t("s_web", "shutdown", "failed", "unhealthy"), t("s_worker", "running", "running", "")];
        assert_eq!(stack_health(&svcs, &old), "unhealthy: s_web 0/1 running");
        assert_eq!(stack_health(&[], &[]), "unhealthy: no services");
    }

    #[test]
    fn stack_verdicts() {
        let t = |id: &str, svc: &str, desired: &str, state: &str, err: &str| StackTask {
            id: id.into(),
            service: svc.into(),
            desired: desired.into(),
            state: state.into(),
            err: err.into(),
        };
        let svcs = vec![("s_web".to_string(), Some(1))];
        let none = std::collections::HashSet::new();
        assert_eq!(stack_verdict(&svcs, &[t("1", "s_web", "running", "running", "")], &none), StackVerdict::Converged);
        assert!(matches!(
            stack_verdict(&svcs, &[t("1", "s_web", "running", "starting", "")], &none),
            StackVerdict::Waiting(_)
        ));
        assert!(matches!(
            stack_verdict(
                &svcs,
                &[t("1", "s_web", "shutdown", "running", ""), t("2", "s_web", "running", "running", "")],
                &none
            ),
            StackVerdict::Waiting(_)
        ));
        let failed =
            [t("9", "s_web", "shutdown", "failed", "unhealthy container"), t("2", "s_web", "running", "running", "")];
        assert_eq!(
            stack_verdict(&svcs, &failed, &none),
            StackVerdict::Failed("s_web: task failed: unhealthy container".into())
        );
        // A failure from before this deploy does not count against it.
        let before: std::collections::HashSet<String> = ["9".to_string()].into();
        assert_eq!(stack_verdict(&svcs, &failed, &before), StackVerdict::Converged);
    }

    #[test]
    fn compose_health_from_container_states() {
        let c = |name: &str, state: &str, status: &str| ContainerState {
            name: name.into(),
            state: state.into(),
            status: status.into(),
        };
        assert_eq!(
            compose_health(&[
                c("web-1", "running", "Up 3 seconds (healthy)"),
                c("worker-1", "running", "Up 2 seconds")
            ]),
            "healthy"
        );
        assert_eq!(
            compose_health(&[c("web-1", "exited", "Exited (137) 1 second ago"), c("worker-1", "running", "Up")]),
            "unhealthy: web-1 exited"
        );
        assert_eq!(compose_health(&[c("web-1", "running", "Up 9 seconds (unhealthy)")]), "unhealthy: web-1 unhealthy");
        assert_eq!(compose_health(&[c("web-1", "running", "Up 1 second (health: starting)")]), "starting");
        assert_eq!(compose_health(&[]), "unhealthy: no containers");
    }

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
