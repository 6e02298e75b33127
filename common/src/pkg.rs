//! Package managers of the hosts an agent runs on: apt (Debian, Ubuntu, Raspberry Pi OS),
//! dnf (Fedora, RHEL and its rebuilds), apk (Alpine) and Homebrew (macOS). Each is reached
//! through its own CLI: this module only says which one a host has and the argv for what
//! the bootstrap and `ssh_raw` hosts need (install, install a package file, query).
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Dnf,
    Apk,
    Brew,
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
            PackageManager::Apk => "apk",
            PackageManager::Brew => "brew",
        })
    }
}

impl PackageManager {
    /// From /etc/os-release's `ID` and `ID_LIKE` (e.g. `raspbian` / `debian`).
    pub fn for_os_release(id: &str, id_like: &str) -> Option<Self> {
        let ids = std::iter::once(id).chain(id_like.split_whitespace());
        for i in ids {
            match i {
                "debian" | "ubuntu" | "raspbian" | "linuxmint" | "pop" => return Some(PackageManager::Apt),
                "fedora" | "rhel" | "centos" | "rocky" | "almalinux" | "ol" | "amzn" => {
                    return Some(PackageManager::Dnf)
                }
                "alpine" => return Some(PackageManager::Apk),
                _ => {}
            }
        }
        None
    }

    /// From the programs a host has (`has("apt-get")`, …), for hosts without os-release
    /// (macOS) or with an unknown ID.
    pub fn from_programs(has: impl Fn(&str) -> bool) -> Option<Self> {
        [
            ("apt-get", PackageManager::Apt),
            ("dnf", PackageManager::Dnf),
            ("apk", PackageManager::Apk),
            ("brew", PackageManager::Brew),
        ]
        .into_iter()
        .find(|(p, _)| has(p))
        .map(|(_, m)| m)
    }

    /// The package file this manager installs (the agent ships `.deb`s today).
    pub fn package_format(self) -> &'static str {
        match self {
            PackageManager::Apt => "deb",
            PackageManager::Dnf => "rpm",
            PackageManager::Apk => "apk",
            PackageManager::Brew => "formula",
        }
    }

    /// Install packages from the configured repositories, non-interactively.
    pub fn install(self, packages: &[&str]) -> Vec<String> {
        let head: &[&str] = match self {
            PackageManager::Apt => &["apt-get", "install", "-y", "--no-install-recommends"],
            PackageManager::Dnf => &["dnf", "install", "-y"],
            PackageManager::Apk => &["apk", "add", "--no-cache"],
            PackageManager::Brew => &["brew", "install"],
        };
        head.iter().chain(packages).map(|s| s.to_string()).collect()
    }

    /// Install a package file already on the host (its dependencies from the repositories).
    /// Homebrew installs formulae, not files: `None`.
    pub fn install_file(self, path: &str) -> Option<Vec<String>> {
        // apt-get only treats an argument as a file when it contains a slash.
        let local = if path.contains('/') { path.to_string() } else { format!("./{path}") };
        let argv: Vec<&str> = match self {
            PackageManager::Apt => vec!["apt-get", "install", "-y", "--no-install-recommends", &local],
            PackageManager::Dnf => vec!["dnf", "install", "-y", &local],
            PackageManager::Apk => vec!["apk", "add", "--no-cache", "--allow-untrusted", &local],
            PackageManager::Brew => return None,
        };
        Some(argv.into_iter().map(String::from).collect())
    }

    /// Ask whether `package` is installed: exit 0 with its version on stdout when it is.
    pub fn query(self, package: &str) -> Vec<String> {
        let argv: Vec<&str> = match self {
            PackageManager::Apt => vec!["dpkg-query", "-W", "-f", "${Version}", package],
            PackageManager::Dnf => vec!["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package],
            PackageManager::Apk => vec!["apk", "info", "-e", package],
            PackageManager::Brew => vec!["brew", "list", "--versions", package],
        };
        argv.into_iter().map(String::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_manager_a_host_has() {
        assert_eq!(PackageManager::for_os_release("raspbian", "debian"), Some(PackageManager::Apt));
        assert_eq!(PackageManager::for_os_release("rocky", "rhel centos fedora"), Some(PackageManager::Dnf));
        assert_eq!(PackageManager::for_os_release("alpine", ""), Some(PackageManager::Apk));
        assert_eq!(PackageManager::for_os_release("nixos", ""), None);
        assert_eq!(PackageManager::from_programs(|p| p == "brew"), Some(PackageManager::Brew));
        assert_eq!(PackageManager::from_programs(|_| false), None);
    }

    #[test]
    fn argv_per_manager() {
        let j = |v: Vec<String>| v.join(" ");
        assert_eq!(j(PackageManager::Apt.install(&["curl"])), "apt-get install -y --no-install-recommends curl");
        assert_eq!(j(PackageManager::Dnf.install(&["curl"])), "dnf install -y curl");
        assert_eq!(j(PackageManager::Apk.install(&["curl"])), "apk add --no-cache curl");
        assert_eq!(j(PackageManager::Brew.install(&["curl"])), "brew install curl");
        assert_eq!(
            j(PackageManager::Apt.install_file("dockfra-agent_0.1.0_armhf.deb").unwrap()),
            "apt-get install -y --no-install-recommends ./dockfra-agent_0.1.0_armhf.deb"
        );
        assert_eq!(j(PackageManager::Dnf.install_file("/tmp/a.rpm").unwrap()), "dnf install -y /tmp/a.rpm");
        assert_eq!(
            j(PackageManager::Apk.install_file("/tmp/a.apk").unwrap()),
            "apk add --no-cache --allow-untrusted /tmp/a.apk"
        );
        assert_eq!(PackageManager::Brew.install_file("x"), None);
        assert_eq!(j(PackageManager::Apt.query("dpkg")), "dpkg-query -W -f ${Version} dpkg");
        assert_eq!(j(PackageManager::Dnf.query("bash")), "rpm -q --qf %{VERSION}-%{RELEASE} bash");
        assert_eq!(j(PackageManager::Apk.query("bash")), "apk info -e bash");
        assert_eq!(j(PackageManager::Brew.query("podman")), "brew list --versions podman");
    }

    /// The one that exists here, for real: dpkg answers the query argv on this Debian host.
    #[test]
    fn apt_query_runs_for_real_where_dpkg_is() {
        let argv = PackageManager::Apt.query("dpkg");
        let Ok(out) = std::process::Command::new(&argv[0]).args(&argv[1..]).output() else {
            return; // not a Debian host
        };
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).chars().next().is_some_and(|c| c.is_ascii_digit()));
        let missing = PackageManager::Apt.query("dockfra-no-such-package");
        let out = std::process::Command::new(&missing[0]).args(&missing[1..]).output().unwrap();
        assert!(!out.status.success());
    }
}
