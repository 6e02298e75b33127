//! What kind of failure an error is, and what to do about it: every error that reaches an
//! operator (the CLIs, the REST API, a failed deployment) carries a category and a fix.
//!
//! The categories: `configuration` (the project or a flag is wrong), `connectivity` (the other
//! side cannot be reached), `permission` (it can, but may not), `resource` (disk, memory,
//! ports, rate limits), `runtime` (the engine or the app failed). Most errors know their own
//! category (a gRPC code, an I/O error kind); the rest are read from their text.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Configuration,
    Connectivity,
    Permission,
    Resource,
    Runtime,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Configuration => "configuration",
            Category::Connectivity => "connectivity",
            Category::Permission => "permission",
            Category::Resource => "resource",
            Category::Runtime => "runtime",
        }
    }

    /// What to do, in general, about an error of this kind.
    pub fn fix(self) -> &'static str {
        match self {
            Category::Configuration => {
                "check the file, target and key the message names (`dockfra-coord validate` lists the project's defects)"
            }
            Category::Connectivity => {
                "check that the other side runs and that the network lets it through (`dockfra-coord deploy-test TARGET`)"
            }
            Category::Permission => {
                "check the credentials and the user the process runs as (an agent's access to the engine, the release dir's owner)"
            }
            Category::Resource => "free what the message names (disk: `dockfra-coord gc`; a port: stop what holds it), or ask for less",
            Category::Runtime => {
                "see the deployment's events (`dockfra-coord deployment ID`) and the engine's or the service's logs on the host"
            }
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A category and the fix for this error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub category: Category,
    pub fix: String,
}

impl Diagnosis {
    pub fn of(category: Category) -> Diagnosis {
        Diagnosis { category, fix: category.fix().to_string() }
    }
}

/// Rules read in order: the first whose words appear in the text wins; a rule may carry a
/// fix more precise than its category's.
const RULES: &[(Category, &[&str], Option<&str>)] = &[
    (Category::Resource, &["no space left", "enospc", "disk full", "not enough disk", "quota exceeded"], Some(
        "free disk space on that host: `dockfra-coord gc` prunes releases no agent keeps; a lower keep_releases keeps fewer",
    )),
    (Category::Resource, &["address already in use", "port is already allocated", "already taken", "eaddrinuse"], Some(
        "stop what holds the port (`ss -lntup` on the host), or publish the service on another host port",
    )),
    (Category::Resource, &["out of memory", "oom", "cannot allocate memory", "too many open files", "rate limit", "too many requests", "resource exhausted"], None),
    (Category::Permission, &["revoked"], Some("re-enroll the agent with a new token (`dockfra-coord token create TARGET`)")),
    (Category::Permission, &["permission denied", "eacces", "operation not permitted", "forbidden", "not authorized", "unauthorized", "unauthenticated", "access denied", "bad certificate", "unknown ca", "certificate"], None),
    (Category::Connectivity, &["connection refused", "cannot reach", "unreachable", "no route to host", "timed out", "timeout", "deadline", "connection reset", "broken pipe", "failed to lookup", "name resolution", "dns error", "transport error", "network is unreachable", "gave up waiting"], None),
    (Category::Configuration, &["deploy-targets.yaml", "compose.yaml", "compose.yml", "docker-compose", "unknown key", "missing required", "no target", "invalid", "expected ", "undefined", "not supported", "mismatch", "no such", "not found", "does not exist", "is not a", "selector"], None),
    (Category::Runtime, &["docker", "podman", "systemctl", "health", "unhealthy", "exit status", "exited", "container", "image", "script", "rolled back", "failed"], None),
];

/// Read a category from an error's text; `None` when nothing in it says.
pub fn from_text(text: &str) -> Option<Diagnosis> {
    let t = text.to_ascii_lowercase();
    RULES.iter().find(|(_, words, _)| words.iter().any(|w| t.contains(w))).map(|(c, _, fix)| Diagnosis {
        category: *c,
        fix: fix.map(str::to_string).unwrap_or_else(|| c.fix().to_string()),
    })
}

/// An I/O error's category, from its kind.
pub fn from_io(e: &std::io::Error) -> Option<Category> {
    use std::io::ErrorKind::*;
    Some(match e.kind() {
        PermissionDenied => Category::Permission,
        NotFound | InvalidInput | InvalidData | AlreadyExists => Category::Configuration,
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | TimedOut | BrokenPipe
        | AddrNotAvailable => Category::Connectivity,
        AddrInUse | OutOfMemory => Category::Resource,
        _ if e.raw_os_error() == Some(28) => Category::Resource, // ENOSPC
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_read_as_their_category() {
        let c = |t: &str| from_text(t).map(|d| d.category);
        assert_eq!(c("write release: No space left on device (os error 28)"), Some(Category::Resource));
        assert_eq!(c("Bind for 0.0.0.0:8080 failed: port is already allocated"), Some(Category::Resource));
        assert_eq!(c("open /var/run/docker.sock: permission denied"), Some(Category::Permission));
        assert_eq!(c("the agent of \"pi\" is revoked"), Some(Category::Permission));
        assert_eq!(c("cannot reach the coordinator at https://127.0.0.1:7443"), Some(Category::Connectivity));
        assert_eq!(c("tcp connect error: Connection refused (os error 111)"), Some(Category::Connectivity));
        assert_eq!(
            c("deploy-targets.yaml: target \"x\": key \"config.images\": unknown image source"),
            Some(Category::Configuration)
        );
        assert_eq!(c("health check failed: command `grep -q ok health.txt` exited with 1"), Some(Category::Runtime));
        assert_eq!(c("all good"), None);
        assert!(from_text("No space left on device").unwrap().fix.contains("gc"));
    }
}
