//! The operator's CLI. Parses flags into typed commands, talks to the running server over
//! mTLS with the admin certificate, prints tables (or JSON with `--output json`), and maps
//! outcomes to documented exit codes. No deploy logic lives here.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_stream::StreamExt;

use dockfra_common::config;
use dockfra_common::identity;
use dockfra_common::proto::{self, admin_client::AdminClient};

use crate::state::{self, StateDir};

/// Exit codes (documented in docs/CLI.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    /// The deploy ran but the release is not live and healthy (failed, rolled back, refused).
    pub const DEPLOY_FAILED: u8 = 3;
    /// Gave up waiting for a pull agent's report; the deploy stays queued.
    pub const TIMEOUT: u8 = 4;
    /// `validate` found errors (or warnings, with --strict); `check` found a blocker.
    pub const INVALID: u8 = 5;
}

#[derive(Parser, Debug)]
#[command(
    name = "dockfra-coord",
    version = dockfra_common::VERSION,
    about = "dockfra coordinator: build signed bundles and deploy them to your fleet's agents",
    long_about = "dockfra coordinator: builds signed, content-addressed bundles per target, keeps fleet state \
in SQLite, talks to agents over mutual-TLS gRPC, and is the operator's CLI.\n\n\
First steps:\n  dockfra-coord init --listen 127.0.0.1:7443\n  dockfra-coord serve --root ./myproject &\n  \
dockfra-coord token create edge-rpi3 --ttl 1h       # give this to `dockfra-agent enroll`\n  \
dockfra-coord deploy edge-rpi3\n\nOr see everything work on this machine: dockfra-coord demo"
)]
pub struct Cli {
    /// State directory (CA, keys, SQLite store, blobs). Default: /var/lib/dockfra-coord for root,
    /// else ~/.local/share/dockfra-coord (macOS: ~/Library/Application Support/dockfra-coord).
    #[arg(long, global = true, env = "DOCKFRA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the running coordinator for CLI commands (default: the one `serve` bound).
    #[arg(long, global = true, env = "DOCKFRA_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Act as this operator: its credential is <state-dir>/operators/NAME.{crt,key} (default:
    /// the only one there, or `admin`). Every action is recorded under this name.
    #[arg(long, global = true, env = "DOCKFRA_OPERATOR")]
    pub operator: Option<String>,
    /// Log more (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// What `generate` writes.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Generated {
    /// Caddyfile site blocks: a reverse proxy per service that publishes a host port.
    Caddy,
    /// systemd units for the ssh_raw targets' apps.
    Systemd,
    /// A minimal compose file (the target's resolved services, or a starter).
    Compose,
}

/// What `convert` renders.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ConvertTo {
    /// Kubernetes objects (one YAML stream; a file per object with --out).
    #[value(alias = "kubernetes")]
    K8s,
    /// A Nomad job (HCL; --format json for the API's JSON form).
    Nomad,
    /// Podman Quadlet units.
    Quadlet,
    /// The compose file `docker stack deploy` takes.
    Swarm,
}

/// The form of a Nomad job.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum JobFormat {
    Hcl,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a state dir: CA, coordinator certificate, bundle-signing key, SQLite store, and
    /// the first operator's credential (operators/admin.{crt,key}).
    Init {
        /// gRPC address agents and the CLI use (ADDR:PORT).
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: String,
        /// Lifetime of agent certificates (agents renew at two thirds of it; at least 10s).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        agent_cert_ttl: Duration,
        /// Name of the first operator.
        #[arg(long = "first-operator", default_value = "admin")]
        first_operator: String,
    },
    /// Serve agents and the CLI (gRPC, mTLS) and the dashboard and REST API (HTTPS) in the
    /// foreground until SIGTERM/SIGINT. Prints the dashboard's URL when it starts.
    #[command(
        after_help = "The dashboard and the REST API:\n  dockfra-coord serve --root ./myproject --http-listen 0.0.0.0:8443 --http-name deploy.example.lan\n  dockfra-coord operator token          # a bearer token to log in with\n  curl --cacert STATE/ca.crt -H \"Authorization: Bearer $TOKEN\" https://127.0.0.1:8443/api/deploy-targets\nThe certificate is issued by the coordinator's CA (STATE/ca.crt): trust that file in the\nbrowser, or put a reverse proxy with your own certificate in front."
    )]
    #[command(
        after_help = "Several projects (one app each) on one coordinator:\n  dockfra-coord serve --root /srv/shop --root /srv/metrics\nTarget ids and app names are unique across them; targets of two projects that name one\nagent (`agent: {name: pi-7}`) deploy both apps to it, each in its own release store."
    )]
    Serve {
        /// Project dir holding deploy-targets.yaml and the app. Repeat to serve several
        /// projects (apps) from one coordinator.
        #[arg(long = "root", default_value = ".")]
        roots: Vec<PathBuf>,
        /// Override the listen address chosen at init.
        #[arg(long)]
        listen: Option<String>,
        /// Where the dashboard and the REST API listen (HTTPS), or `off`. Default: the state
        /// dir's http_listen, else 127.0.0.1:8443 (loopback only).
        #[arg(long)]
        http_listen: Option<String>,
        /// A name (DNS or IP) browsers use to reach the dashboard, put in its certificate
        /// besides localhost, 127.0.0.1 and ::1 (repeatable).
        #[arg(long = "http-name")]
        http_names: Vec<String>,
    },
    /// Print the REST API's OpenAPI document (what `GET /api/openapi.json` serves).
    Openapi,
    /// Print shell completions for dockfra-coord (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Load them:\n  bash:  source <(dockfra-coord completions bash)    (or save to /etc/bash_completion.d/dockfra-coord)\n  zsh:   dockfra-coord completions zsh > \"${fpath[1]}/_dockfra-coord\"\n  fish:  dockfra-coord completions fish > ~/.config/fish/completions/dockfra-coord.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page dockfra-coord(1) in roff; with --out DIR, write it and a page per
    /// command (dockfra-coord-deploy(1), …) into DIR.
    #[command(after_help = "Read it:  dockfra-coord man | man -l -")]
    Man {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Join tokens for agents.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Build a signed bundle for TARGET, deliver it, and wait until it is live and healthy.
    /// With --selector or --all: a fleet deploy, in waves.
    #[command(
        after_help = "Fleet deploys:\n  dockfra-coord deploy --selector 'env=prod,region in (eu)' --canary 1 --max-parallel 10\n  dockfra-coord deploy --all --max-parallel 5 --wave-timeout 5m\nA wave with a failed target halts the rest; `fleet show ID` reports which target runs what.\nSelectors are kubectl's: k=v, k!=v, k in (a,b), k notin (a,b), k, !k."
    )]
    Deploy {
        /// The target (or name several with --selector, or --all).
        #[arg(required_unless_present_any = ["selector", "all"], conflicts_with_all = ["selector", "all"])]
        target: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Pull targets: wait for the agent's report instead of returning once queued.
        #[arg(long)]
        wait: bool,
        /// How long to wait for a pull agent.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
        /// Version label (default: derived from the content).
        #[arg(long)]
        version: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Roll TARGET back to its previous release (or --to RELEASE). With --selector or --all:
    /// each target to its previous release, in waves.
    #[command(
        after_help = "See first what it would do (nothing is changed):\n  dockfra-coord rollback --plan edge-rpi3\n  dockfra-coord rollback --plan -l env=prod --output json"
    )]
    Rollback {
        #[arg(required_unless_present_any = ["selector", "all"], conflicts_with_all = ["selector", "all"])]
        target: Option<String>,
        /// Release name (e.g. 3-1a2b3c4d5e6f) or bundle id; see `history`.
        #[arg(long, conflicts_with_all = ["selector", "all"])]
        to: Option<String>,
        /// Say what the rollback would do (which release comes back, which services restart,
        /// what stays) and change nothing.
        #[arg(long)]
        plan: bool,
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Fleet deploys: `fleet list`, `fleet show ID`.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// What runs where: current and previous release, health, last deploy.
    Status {
        target: Option<String>,
        /// Only targets whose labels match (kubectl syntax).
        #[arg(long, short = 'l', conflicts_with = "target")]
        selector: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Deployments, newest first.
    History {
        target: Option<String>,
        /// Only targets whose labels match (kubectl syntax).
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// Only deployments with this result (succeeded, failed, refused, superseded, …).
        #[arg(long)]
        result: Option<String>,
        /// Only deployments started within this long (e.g. 24h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        #[arg(long, default_value = "200")]
        limit: u32,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One deployment and its events, step by step.
    Deployment {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What a deploy of TARGET would change, without building a release or telling its agent:
    /// files added/changed/removed, bytes to move, compose services and images.
    Plan {
        target: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Targets from deploy-targets.yaml and their enrollment (never dials anything).
    Targets {
        /// Only targets whose labels match (kubectl syntax).
        #[arg(long, short = 'l')]
        selector: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Enrolled agents and the targets each serves; `agents revoke AGENT` cuts one off at its
    /// next call.
    Agents {
        #[command(subcommand)]
        cmd: Option<AgentsCmd>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Agents on targets: `agent install TARGET` puts one there over SSH, `agent upgrade`
    /// moves agents to a new binary in waves.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Write DEPLOYED.md: what runs where, since when, health, the previous release, who
    /// deployed it (from the coordinator's records and its agents' last reports).
    #[command(
        after_help = "Examples:\n  dockfra-coord report                      # ./DEPLOYED.md\n  dockfra-coord report -l env=prod --out -  # to stdout"
    )]
    Report {
        /// Only targets whose labels match (kubectl syntax).
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// Where to write it (`-`: stdout).
        #[arg(long, default_value = "DEPLOYED.md")]
        out: PathBuf,
    },
    /// Pre-flight for a deploy, through the agent's report of its host: free disk against the
    /// bundle, memory, host ports already taken, the runtime and its version, OS, driver.
    /// Builds nothing into the store and sends nothing.
    #[command(
        after_help = "Examples:\n  dockfra-coord check edge-rpi3\n  dockfra-coord check -l env=prod --output json\n\
A push agent is asked now; a pull agent's last report is used (its age is shown).\n\
Exit status: 0 when nothing fails (warnings allowed), 5 when a check fails."
    )]
    Check {
        #[arg(required_unless_present_any = ["selector", "all"], conflicts_with_all = ["selector", "all"])]
        target: Option<String>,
        /// The targets whose labels match (kubectl syntax).
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// Every target.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Check a target's agent: reachability, agent version, detected OS and runtimes.
    DeployTest {
        target: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Offline bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Operators: each has a named, revocable credential; every action records who did it.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// The bundle-signing key agents trust.
    #[command(subcommand, name = "signing-key")]
    SigningKey(SigningKeyCmd),
    /// The audit trail, newest first: who did what to which target.
    Events {
        target: Option<String>,
        #[arg(long, default_value = "50")]
        limit: u32,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Drop releases no agent keeps (beyond each target's keep_releases), blobs no kept
    /// release names, and copies a build left half-written (killed mid-copy; older than 10
    /// minutes). Runs by itself after every successful deploy.
    Gc {
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Write a first deploy-targets.yaml for the app in DIR: detects how it deploys (compose
    /// file, compose with Quadlet units, plain files with a systemd unit, plain files), takes
    /// the targets from --target (or asks, on a terminal), and checks the result as `validate`.
    #[command(
        after_help = "Examples:\n  dockfra-coord setup                                   # asks, on a terminal\n  \
dockfra-coord setup ./shop --target vps=203.0.113.7 --target edge-rpi3 --mode pull --label env=prod\n  \
dockfra-coord setup --non-interactive                 # one target `local` on 127.0.0.1\n\
An existing deploy-targets.yaml is kept unless --force."
    )]
    Setup {
        /// The app's directory (where deploy-targets.yaml is written).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// A target, as ID or ID=HOST (repeatable).
        #[arg(long = "target", value_name = "ID[=HOST]")]
        targets: Vec<String>,
        /// The platform, instead of the detected one (docker_compose, podman, swarm, kubernetes, nomad, ssh_raw).
        #[arg(long)]
        platform: Option<config::Platform>,
        /// How the targets' agents get their work: push (the coordinator dials) or pull.
        #[arg(long, default_value = "push")]
        mode: config::Mode,
        /// The targets' OS (linux, macos, windows, wsl).
        #[arg(long)]
        os: Option<String>,
        /// A label for every target, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The app's name (default: the directory's name).
        #[arg(long)]
        app: Option<String>,
        /// Overwrite an existing deploy-targets.yaml.
        #[arg(long)]
        force: bool,
        /// Never ask, even on a terminal.
        #[arg(long)]
        non_interactive: bool,
    },
    /// The resolved environment per target: each variable the compose file can use, with its
    /// value and where it comes from (.env, .env.<environment>, the target's env:), and each
    /// service's container environment. Values of secret-looking names are masked.
    #[command(
        after_help = "Precedence, highest first: the target's env:, .env.<environment> (the target's `env` label:\n\
labels: {env: production} reads .env.production), .env. The coordinator's own environment is never used.\n\
Example:  dockfra-coord env --target prod-vps --root ./shop"
    )]
    Env {
        /// Only this target (default: every target).
        #[arg(long)]
        target: Option<String>,
        /// Only targets whose labels match (kubectl syntax).
        #[arg(long, short = 'l', conflicts_with = "target")]
        selector: Option<String>,
        /// Project dir holding deploy-targets.yaml.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Write files from the project: Caddyfile entries (a reverse proxy per published
    /// service), systemd units for ssh_raw apps, a minimal compose file.
    #[command(
        after_help = "Examples:\n  dockfra-coord generate caddy --domain example.org >> /etc/caddy/Caddyfile\n  \
dockfra-coord generate systemd --target edge-rpi3 --out ./units\n  \
dockfra-coord generate compose --out compose.yaml      # a starter, for an app without one\n\
Nothing is overwritten without --force."
    )]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        /// Only this target (default: every target the kind applies to).
        #[arg(long)]
        target: Option<String>,
        /// Project dir holding deploy-targets.yaml.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// caddy: sites are SERVICE.DOMAIN (SERVICE.TARGET.DOMAIN with several targets).
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// caddy: the host Caddy reaches the services on (default: 127.0.0.1, Caddy beside
        /// the app, or the port's own host IP).
        #[arg(long)]
        upstream: Option<String>,
        /// Write there instead of stdout (systemd: a directory, a unit file per target).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Check the project before a deploy, without dialing anything: deploy-targets.yaml, and
    /// per target the compose file resolved with its variables. Errors and warnings name the
    /// file, the target(s), the service and the key.
    #[command(after_help = "What it checks: host ports published twice (in one app, or by two apps on one agent),\n\
variables nothing sets, volumes/networks/configs/secrets used but not defined, missing secret\n\
and env files, secrets written as plain environment values, images without a tag or digest,\n\
compose keys the target's platform ignores, `platform:` the target cannot run.\n\n\
Exit status: 0 valid (warnings allowed), 5 errors found (or warnings, with --strict), 1 could not run.\n\n\
In CI:  dockfra-coord validate --root . --strict --output json > validate.json")]
    Validate {
        /// Project dir holding deploy-targets.yaml (repeat for projects served together). A
        /// dir without one is validated as a bare compose project.
        #[arg(long = "root", default_value = ".")]
        roots: Vec<PathBuf>,
        /// Validate this compose file alone (no targets).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Warnings fail too (exit 5).
        #[arg(long)]
        strict: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Render the compose project for another platform: Kubernetes objects, a Nomad job,
    /// Podman Quadlet units or a swarm stack file, with the target's config applied. What the
    /// platform cannot express is a warning naming service and key; a loss that would change
    /// behaviour (host networking on Kubernetes, …) is an error unless allowed.
    #[command(
        after_help = "Examples:\n  dockfra-coord convert --to k8s --target prod-k8s | kubectl apply --dry-run=client -f -\n  \
dockfra-coord convert --to nomad --target nomad-cluster --format json > job.json\n  \
dockfra-coord convert --to k8s -f compose.yaml --out manifests/    # a file per object\n  \
dockfra-coord convert --to k8s --allow network_mode                # accept a dangerous loss\n\n\
Exit status: 0 rendered (warnings on stderr), 5 refused (errors on stderr, nothing written), 1 could not run."
    )]
    Convert {
        /// The platform to render for.
        #[arg(long, value_enum)]
        to: ConvertTo,
        /// Compose file (default: compose.yaml / docker-compose.yml in the app dir).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Take this target's config and `env:` (its platform must match --to).
        #[arg(long)]
        target: Option<String>,
        /// Project dir holding deploy-targets.yaml.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Write the files into this directory instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// nomad: HCL (default) or the JSON job the HTTP API takes.
        #[arg(long, value_enum, default_value = "hcl")]
        format: JobFormat,
        /// Label the objects with this release.
        #[arg(long)]
        release: Option<String>,
        /// Accept the loss of this compose key (KEY or SERVICE.KEY); repeatable.
        #[arg(long = "allow", value_name = "KEY")]
        allow: Vec<String>,
        /// Replace files that exist in --out.
        #[arg(long)]
        force: bool,
    },
    /// Print the compose project fully resolved (interpolated, normalized), like `docker compose config`.
    Config {
        /// Compose file (default: compose.yaml / docker-compose.yml in the app dir).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Use this target's `env:` for interpolation.
        #[arg(long)]
        target: Option<String>,
        /// Project dir holding deploy-targets.yaml.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Run a real deploy on this machine: coordinator + agent on loopback, v1, v2, rollback, status.
    Demo {
        /// Keep the demo's temp dir and print its path.
        #[arg(long)]
        keep: bool,
    },
}

/// How an order goes to many targets, and the confirmations it may need.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// The targets whose labels match (kubectl syntax: env=prod,region in (eu,us),!canary).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Every target of the project.
    #[arg(long)]
    pub all: bool,
    /// Targets per wave after the canary (default: all of them in one wave).
    #[arg(long, default_value = "0")]
    pub max_parallel: u32,
    /// A first wave of N targets (or N%) that must stay healthy for --soak before the rest.
    #[arg(long)]
    pub canary: Option<String>,
    /// How long the canary wave must stay healthy.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub soak: Duration,
    /// How long a wave waits for its targets; pull targets not done by then are reported
    /// pending (their orders stay queued) and the next wave goes on.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub wave_timeout: Duration,
    /// Production targets (coordinator.json production_selector, default env=production):
    /// yes, without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Take targets over from another operator's open deployment.
    #[arg(long)]
    pub force: bool,
    /// Use the waves deploy-targets.yaml declares (`waves:`), split by --max-parallel.
    #[arg(long, conflicts_with = "canary")]
    pub waves: bool,
    /// When a wave fails, roll its targets that took the release back to their previous one.
    #[arg(long = "auto-rollback-wave")]
    pub auto_rollback_wave: bool,
}

impl FleetArgs {
    /// One target: the wave flags have nothing to shape; say so rather than ignore them.
    fn only_one_target(&self) -> Result<()> {
        let used: Vec<&str> = [
            (self.max_parallel != 0, "--max-parallel"),
            (self.canary.is_some(), "--canary"),
            (self.soak != Duration::from_secs(30), "--soak"),
            (self.wave_timeout != Duration::from_secs(600), "--wave-timeout"),
            (self.waves, "--waves"),
            (self.auto_rollback_wave, "--auto-rollback-wave"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| f)
        .collect();
        if !used.is_empty() {
            bail!("{} shape(s) a fleet deploy: name the targets with --selector or --all", used.join(", "));
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Fleet deploys, newest first.
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One fleet deploy: its waves and which target runs what.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Stop a running fleet deploy: orders already given run on, no further target is ordered.
    Cancel {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Make a credential for operator NAME: a key made here, a certificate from the
    /// coordinator. Written to --out (default <state-dir>/operators) as NAME.key and NAME.crt.
    #[command(
        after_help = "Give the two files (and ca.crt) to the operator; they run the CLI with\n  --state-dir DIR --operator NAME --coordinator HOST:PORT\nwhere DIR holds ca.crt and operators/NAME.{crt,key}."
    )]
    Add {
        name: String,
        /// How long the credential is valid.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Re-issue for an existing operator; its old credential stops working at once.
        #[arg(long)]
        replace: bool,
    },
    /// Every operator, with who made it and whether it is revoked.
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke NAME's credential (effective at its next call) and its API tokens. The last
    /// active operator cannot be revoked.
    Revoke {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print a bearer token for the REST API and the dashboard, bound to the operator the CLI
    /// acts as (--operator). Revoking the operator ends its tokens.
    #[command(
        after_help = "Example:\n  TOKEN=$(dockfra-coord operator token --ttl 7d --label ci)\n  curl --cacert STATE/ca.crt -H \"Authorization: Bearer $TOKEN\" https://127.0.0.1:8443/api/deploy-targets"
    )]
    Token {
        /// How long it is valid (at most 365d).
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        ttl: Duration,
        /// What it is for (recorded in the audit trail).
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every API token: id, operator, label, expiry, whether revoked (never the secret).
    Tokens {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke one API token by its id (`operator tokens`), leaving its operator's others.
    RevokeToken {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum SigningKeyCmd {
    /// The current key's fingerprint and the rotation history.
    Show {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Replace the key. The old key signs the new one over; agents accept the new key only
    /// through that statement, at their next order. The old private key is destroyed.
    Rotate {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Print a one-time join token for an agent (only the token goes to stdout). AGENT is an
    /// agent's name (`agent: {name: …}`) or the id of a target that deploys through it.
    Create {
        #[arg(value_name = "AGENT")]
        target: String,
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    /// Revoke an agent's certificate (effective at its next call): its name, or the id of a
    /// target that deploys through it.
    Revoke {
        #[arg(value_name = "AGENT")]
        target: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Install the agent on TARGET over SSH (its host/port/user in deploy-targets.yaml; key
    /// auth, the host key checked): probe the host, upload and install the matching .deb (or the static binary),
    /// write /etc/dockfra/agent.yaml, enroll with a fresh one-time token, start the service,
    /// then verify with deploy-test.
    #[command(
        after_help = "Example:\n  dockfra-coord agent install edge-rpi3 --identity ~/.ssh/id_ed25519 \\\n      --host-key-fingerprint SHA256:abc... --artifacts dist/ --agent-coordinator https://10.0.0.1:7443"
    )]
    Install {
        target: String,
        /// Private key for ssh -i (default: ssh's own choice).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Trust only the host key with this fingerprint (`ssh-keygen -lf` prints it:
        /// SHA256:…); the host's keys are fetched with ssh-keyscan and compared.
        #[arg(long, conflicts_with = "known_hosts")]
        host_key_fingerprint: Option<String>,
        /// known_hosts file to check the host key against (default: ~/.ssh/known_hosts).
        #[arg(long)]
        known_hosts: Option<PathBuf>,
        /// Directory holding the packages (dockfra-agent_VERSION_ARCH.deb) and the static
        /// binaries (dockfra-agent-TRIPLE) from cross/build.
        #[arg(long, default_value = "target/cross/dist")]
        artifacts: PathBuf,
        /// Install the static binary (to /usr/local/bin, with the package's systemd unit) even
        /// where a .deb would fit. Hosts that are not Debian-family always get the binary.
        #[arg(long)]
        binary: bool,
        /// The coordinator's address as the target reaches it (default: this coordinator's
        /// own address).
        #[arg(long)]
        agent_coordinator: Option<String>,
    },
    /// Upgrade the agents of TARGETs (or of --selector / --all) to a new dockfra-agent binary,
    /// in waves like a fleet deploy. Each agent gets the binary for its OS and CPU from
    /// --binaries (checked against its SHA256SUMS), signed; it verifies it, keeps the old
    /// binary, restarts into the new one, and the new one must reach the coordinator within
    /// --trial-timeout, or the old one comes back by itself. An agent that already runs the
    /// binary is left alone.
    #[command(
        after_help = "Examples:\n  cross/build && dockfra-coord agent upgrade --all --canary 1 --binaries target/cross/dist\n  dockfra-coord agent upgrade -l 'site=lab' --max-parallel 10 --trial-timeout 5m\n  dockfra-coord agent upgrade edge-rpi3\nA canary or wave whose agents do not come back halts the rest (they stay on their old binary)."
    )]
    Upgrade {
        /// Target ids whose agents to upgrade (instead of --selector or --all).
        targets: Vec<String>,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Dir with dockfra-agent-<triple> binaries and their SHA256SUMS (cross/build's
        /// dist), read by the coordinator.
        #[arg(long, default_value = "target/cross/dist")]
        binaries: PathBuf,
        /// How long a new agent has to reach the coordinator before the old one comes back.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        trial_timeout: Duration,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Build a signed bundle for TARGET and write it as one .tar (for `dockfra-agent apply`).
    Export {
        target: String,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// How long the bundle's signed order stays valid (at most 30d; agents refuse
        /// longer-lived orders unless their max_order_lifetime says otherwise).
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires_in: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    init_tracing(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            print_error(&e);
            ExitCode::from(exit::ERROR)
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DOCKFRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,dockfra_coord={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(crate::progress::color())
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> Result<u8> {
    let state = StateDir::new(&cli.state_dir.clone().unwrap_or_else(state::default_state_dir));
    match cli.command {
        Command::Init { listen, agent_cert_ttl, first_operator } => {
            state.init(&listen, agent_cert_ttl, &first_operator)?;
            println!(
                "initialized {} (gRPC for agents on {listen}); operator {first_operator}'s credential is in {}",
                state.root.display(),
                state.operators_dir().display()
            );
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "dockfra-coord", &mut buf);
            if shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 spells a hyphenated bin name one way in its dispatch loop and
                // another in its case arms, so nothing past the first word completes
                // (clap-rs/clap#6421): spell the arms as the loop does.
                let script = String::from_utf8_lossy(&buf).replace("dockfra__subcmd__coord", "dockfra__coord");
                buf = script.into_bytes();
            }
            write_stdout(&buf)?;
            Ok(exit::OK)
        }
        Command::Man { out } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match out {
                None => {
                    // As `--out` writes it (no page for `help`).
                    let mut buf = Vec::new();
                    clap_mangen::Man::new(cmd.disable_help_subcommand(true)).render(&mut buf)?;
                    write_stdout(&buf)?;
                }
                Some(dir) => {
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    clap_mangen::generate_to(cmd, &dir).with_context(|| format!("cannot write {}", dir.display()))?;
                    println!("man pages written to {}", dir.display());
                }
            }
            Ok(exit::OK)
        }
        Command::Openapi => {
            write_stdout(format!("{}\n", crate::server::openapi_json()).as_bytes())?;
            Ok(exit::OK)
        }
        Command::Serve { roots, listen, http_listen, http_names } => {
            let mut projects: Vec<PathBuf> = Vec::new();
            for root in &roots {
                let f = project_file(root)?;
                if projects.contains(&f) {
                    bail!("--root {}: that project is already served (named twice)", root.display());
                }
                projects.push(f);
            }
            let settings = state.settings()?;
            let listen = listen.unwrap_or(settings.listen);
            let http_listen =
                http_listen.or(settings.http_listen).unwrap_or_else(|| crate::state::DEFAULT_HTTP_LISTEN.to_string());
            let http = if http_listen == "off" {
                None
            } else {
                http_listen
                    .parse::<std::net::SocketAddr>()
                    .with_context(|| format!("--http-listen {http_listen:?} is not ADDR:PORT (or `off`)"))?;
                Some(crate::server::HttpOptions { listen: http_listen, names: http_names })
            };
            let coord = crate::server::Coordinator::open(state, projects)?;
            // One shutdown path: the signal stops accepting and drains open calls; after a
            // grace period we leave anyway (agents retry, deploys are journaled on their side).
            let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
            let signal = async move {
                shutdown_signal().await;
                let _ = stopping_tx.send(true);
            };
            let grace = async move {
                let _ = stopping.changed().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                r = coord.serve(&listen, http, signal) => r?,
                _ = grace => tracing::warn!("calls still open after {SHUTDOWN_GRACE:?}: exiting anyway"),
            }
            Ok(exit::OK)
        }
        Command::Convert { to, file, target, root, out, format, release, allow, force } => convert(
            to,
            &ConvertArgs { file: file.as_deref(), target: target.as_deref(), root: &root, out: out.as_deref() },
            format,
            release,
            allow,
            force,
        ),
        Command::Config { file, target, root } => {
            print!("{}", resolve_compose(&root, file.as_deref(), target.as_deref())?);
            Ok(exit::OK)
        }
        Command::Setup { dir, targets, platform, mode, os, labels, app, force, non_interactive } => {
            setup(&dir, &targets, platform, mode, os, &labels, app, force, non_interactive)
        }
        Command::Generate { what, target, root, domain, upstream, out, force } => {
            generate(what, target.as_deref(), &root, &domain, upstream.as_deref(), out.as_deref(), force)
        }
        Command::Env { target, selector, root, output } => {
            env_command(&root, target.as_deref(), selector.as_deref(), output)
        }
        Command::Validate { roots, file, strict, output } => validate(&roots, file.as_deref(), strict, output),
        Command::Demo { keep } => crate::demo::run(keep).await,
        cmd => {
            let url = coordinator_url(&state, cli.coordinator.as_deref())?;
            let operator = pick_operator(&state, cli.operator.as_deref())?;
            let mut c = admin_client(&state, cli.coordinator.as_deref(), &operator).await?;
            admin_command(&mut c, cmd, &url, &state).await
        }
    }
}

/// How long `serve` drains open calls after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}

/// `<root>/deploy-targets.yaml`, with a clear error when it is missing.
pub fn project_file(root: &Path) -> Result<PathBuf> {
    let f = root.join("deploy-targets.yaml");
    if !f.is_file() {
        bail!("{} not found: --root must name a project dir holding deploy-targets.yaml", f.display());
    }
    Ok(std::fs::canonicalize(&f)?)
}

fn resolve_compose(root: &Path, file: Option<&Path>, target: Option<&str>) -> Result<String> {
    let (env, app_dir) = match (target, root.join("deploy-targets.yaml").is_file()) {
        (Some(t), _) => {
            let p = config::load(&project_file(root)?)?;
            let tg = p.target(t).with_context(|| format!("no target {t:?} in {}", p.file.display()))?;
            (crate::envs::overrides(&p, tg)?, p.app.path.clone())
        }
        (None, true) => (Default::default(), config::load(&project_file(root)?)?.app.path),
        (None, false) => (Default::default(), root.to_path_buf()),
    };
    let file = match file {
        Some(f) => f.to_path_buf(),
        None => dockfra_common::compose::find_compose_file(&app_dir)
            .with_context(|| format!("no compose.yaml or docker-compose.yml in {}", app_dir.display()))?,
    };
    let opts = dockfra_common::compose::LoadOptions { project_name: None, overrides: &env, use_process_env: true };
    let (project, warnings) = dockfra_common::compose::load_with_warnings(&file, &opts)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(project.to_yaml())
}

/// Write (name, text) files into `dir`, all or nothing: every file is checked before one is
/// written, and none is replaced without `force`. Each is written to a temp file and renamed.
fn write_files(dir: &Path, files: &[(String, String)], force: bool, say_each: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !force {
        if let Some((n, _)) = files.iter().find(|(n, _)| dir.join(n).exists()) {
            bail!("{} exists: nothing written (run with --force to replace it)", dir.join(n).display());
        }
    }
    for (name, text) in files {
        let path = dir.join(name);
        let tmp = path.with_extension("dockfra-tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        if say_each {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

struct ConvertArgs<'a> {
    file: Option<&'a Path>,
    target: Option<&'a str>,
    root: &'a Path,
    out: Option<&'a Path>,
}

fn convert(
    to: ConvertTo,
    a: &ConvertArgs,
    format: JobFormat,
    release: Option<String>,
    allow: Vec<String>,
    force: bool,
) -> Result<u8> {
    use crate::convert::{k8s, nomad, quadlet};
    use config::{Platform, PlatformConfig};
    let platform = match to {
        ConvertTo::K8s => Platform::Kubernetes,
        ConvertTo::Nomad => Platform::Nomad,
        ConvertTo::Quadlet => Platform::Podman,
        ConvertTo::Swarm => Platform::Swarm,
    };
    let has_project = a.root.join("deploy-targets.yaml").is_file();
    let project = if has_project || a.target.is_some() { Some(config::load(&project_file(a.root)?)?) } else { None };
    let (mut cfg, env, app_dir, app) = match (&project, a.target) {
        (Some(p), Some(t)) => {
            let tg = p.target(t).with_context(|| format!("no target {t:?} in {}", p.file.display()))?;
            if tg.platform != platform {
                bail!(
                    "target {t:?} is not a {platform} target (its platform is {}): --to {} takes a {platform} target's config, or without --target the platform's defaults",
                    tg.platform,
                    to.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
                );
            }
            (tg.config.clone(), crate::envs::overrides(p, tg)?, p.app.path.clone(), p.app.name.clone())
        }
        (Some(p), None) => {
            (PlatformConfig::default_for(platform), Default::default(), p.app.path.clone(), p.app.name.clone())
        }
        (None, _) => {
            let name = std::fs::canonicalize(a.root)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_string()))
                .unwrap_or_else(|| "app".into());
            (PlatformConfig::default_for(platform), Default::default(), a.root.to_path_buf(), name)
        }
    };
    let file = match a.file {
        Some(f) => f.to_path_buf(),
        None => dockfra_common::compose::find_compose_file(&app_dir)
            .with_context(|| format!("no compose.yaml or docker-compose.yml in {}", app_dir.display()))?,
    };
    // Named as its bundles name it: the app's name, unless the compose file names itself.
    let (compose, warnings) = crate::envs::load_as_app(&file, project.as_ref().map(|_| app.as_str()), &env)?;
    for w in warnings {
        eprintln!("warning: {}: {w}", file.display());
    }
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let files = |p: &str| std::fs::read(dir.join(p)).ok();
    let rendered = match &mut cfg {
        PlatformConfig::Kubernetes(c) => {
            c.allow.extend(allow);
            k8s::convert(&compose.model, &k8s::Options { app, release, config: c, slot: None, track: None }, &files)
        }
        PlatformConfig::Nomad(c) => {
            c.allow.extend(allow);
            nomad::convert(&compose.model, &nomad::Options { app, release, config: c }, &files)
        }
        PlatformConfig::Podman { pod_name, compose_project, .. } => {
            let project = compose_project.clone().unwrap_or_else(|| compose.name.clone());
            let q = quadlet::convert(&compose.model, &quadlet::Options { project, pod: pod_name.clone() });
            let files = q.units.into_iter().map(|u| (u.name, u.text)).collect();
            crate::convert::Rendered { files, warnings: q.warnings, errors: vec![] }
        }
        PlatformConfig::Swarm { replicas, update_parallelism, update_delay, .. } => {
            let mut model = compose.model.clone();
            crate::builder::for_swarm(&mut model, *replicas, *update_parallelism, *update_delay);
            let text = serde_yaml_ng::to_string(&model)?;
            crate::convert::Rendered { files: vec![("stack.yaml".into(), text)], ..Default::default() }
        }
        _ => unreachable!("--to names one of four platforms"),
    };
    for w in &rendered.warnings {
        eprintln!("warning: {w}");
    }
    if !rendered.errors.is_empty() {
        for e in &rendered.errors {
            eprintln!("error: {e}");
        }
        eprintln!("{}: {} error(s): nothing written", file.display(), rendered.errors.len());
        return Ok(exit::INVALID);
    }
    // Nomad renders both forms; one is printed or written unless --out takes both.
    let mut files = rendered.files;
    if to == ConvertTo::Nomad && a.out.is_none() {
        let ext = if format == JobFormat::Json { ".json" } else { ".hcl" };
        files.retain(|(n, _)| n.ends_with(ext));
    }
    match a.out {
        None => {
            let sep = match to {
                ConvertTo::K8s => "---\n",
                _ => "\n",
            };
            let text = if to == ConvertTo::Quadlet {
                files.iter().map(|(n, t)| format!("# {n}\n{t}")).collect::<Vec<_>>().join(sep)
            } else {
                files.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(sep)
            };
            write_stdout(text.as_bytes())?;
        }
        Some(out) => {
            write_files(out, &files, force, false)?;
            eprintln!("wrote {} file(s) into {}", files.len(), out.display());
        }
    }
    Ok(exit::OK)
}

fn generate(
    what: Generated,
    target: Option<&str>,
    root: &Path,
    domain: &str,
    upstream: Option<&str>,
    out: Option<&Path>,
    force: bool,
) -> Result<u8> {
    let p = config::load(&project_file(root)?)?;
    let targets: Vec<&config::Target> = match target {
        Some(t) => vec![p.target(t).with_context(|| format!("no target {t:?} in {}", p.file.display()))?],
        None => p.targets.iter().collect(),
    };
    if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') {
        bail!("--domain {domain:?}: expected a domain name");
    }
    let write = |file: &Path, text: &str| -> Result<()> {
        if file.exists() && !force {
            bail!("{} exists: it is kept (run with --force to replace it)", file.display());
        }
        let tmp = file.with_extension("dockfra-tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
        eprintln!("wrote {}", file.display());
        Ok(())
    };
    let text = match what {
        Generated::Caddy => crate::generate::caddy(&p, &targets, domain, upstream)?,
        Generated::Compose => crate::generate::compose_file(&p, target.and(targets.first().copied()))?,
        Generated::Systemd => {
            let units = crate::generate::systemd(&p, &targets)?;
            match out {
                Some(dir) => {
                    write_files(dir, &units, force, true)?;
                    return Ok(exit::OK);
                }
                None => units.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n"),
            }
        }
    };
    match out {
        Some(f) => write(f, &text)?,
        None => write_stdout(text.as_bytes())?,
    }
    Ok(exit::OK)
}

fn env_command(root: &Path, target: Option<&str>, selector: Option<&str>, output: Output) -> Result<u8> {
    let p = config::load(&project_file(root)?)?;
    let selector = selector.map(dockfra_common::selector::Selector::parse).transpose()?;
    let targets: Vec<&config::Target> = match target {
        Some(t) => vec![p.target(t).with_context(|| format!("no target {t:?} in {}", p.file.display()))?],
        None => p.targets.iter().filter(|t| selector.as_ref().is_none_or(|s| s.matches(&t.labels))).collect(),
    };
    if targets.is_empty() {
        bail!("no target of {} matches the selector", p.file.display());
    }
    let envs = targets.iter().map(|t| crate::envs::resolve(&p, t)).collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for e in &envs {
        for v in &e.variables {
            rows.push(serde_json::json!({"target": e.target, "scope": "variables", "name": v.name, "value": v.value, "source": v.source}));
        }
        for s in &e.services {
            for v in &s.environment {
                rows.push(serde_json::json!({"target": e.target, "scope": format!("service {}", s.service), "name": v.name, "value": v.value, "source": v.source}));
            }
        }
    }
    let cols = [("TARGET", "target"), ("SCOPE", "scope"), ("NAME", "name"), ("VALUE", "value"), ("SOURCE", "source")];
    print_out(output, &serde_json::to_value(&envs)?, &rows, &cols);
    Ok(exit::OK)
}

#[allow(clippy::too_many_arguments)]
fn setup(
    dir: &Path,
    targets: &[String],
    platform: Option<config::Platform>,
    mode: config::Mode,
    os: Option<String>,
    labels: &[String],
    app: Option<String>,
    force: bool,
    non_interactive: bool,
) -> Result<u8> {
    use crate::setup::{self, Plan, TargetPlan};
    use config::Platform;
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let file = dir.join("deploy-targets.yaml");
    if file.exists() && !force {
        bail!("{} exists: it is kept (run with --force to replace it)", file.display());
    }
    if let Some(os) = &os {
        if !config::OS_IDS.contains(&os.as_str()) {
            bail!("--os {os:?}: expected one of {}", config::OS_IDS.join(", "));
        }
    }
    let mut label_map = std::collections::BTreeMap::new();
    for l in labels {
        let (k, v) = setup::parse_label(l).map_err(|e| anyhow::anyhow!("--label: {e}"))?;
        label_map.insert(k, v);
    }
    let mut plans = Vec::new();
    for t in targets {
        let (id, host) = setup::parse_target(t).map_err(|e| anyhow::anyhow!("--target: {e}"))?;
        if plans.iter().any(|p: &TargetPlan| p.id == id) {
            bail!("--target {id}: named twice");
        }
        plans.push(TargetPlan { id, host, mode, labels: label_map.clone() });
    }
    let mut detected = setup::detect(dir)?;
    if let Some(p) = platform {
        match p {
            Platform::DockerCompose | Platform::Podman | Platform::Swarm | Platform::Kubernetes | Platform::Nomad
                if detected.compose.is_none() =>
            {
                bail!("--platform {p} needs a compose.yaml or docker-compose.yml in {}", dir.display())
            }
            _ => {}
        }
        detected.why = format!("{}; --platform {p}", detected.why);
        detected.platform = p;
    }
    if plans.is_empty() {
        plans = if setup::interactive(non_interactive) {
            println!("Setting up {} ({})", dir.display(), detected.why);
            setup::ask_targets(mode)?
        } else {
            vec![TargetPlan { id: "local".into(), host: Some("127.0.0.1".into()), mode, labels: label_map.clone() }]
        };
        if plans.is_empty() {
            bail!("no target given: nothing written");
        }
    }
    let app = match app {
        Some(a) => a,
        None => {
            let abs = std::fs::canonicalize(dir)?;
            let base = abs.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "app".into());
            let safe: String =
                base.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
            if safe.trim_matches('.').is_empty() {
                "app".to_string()
            } else {
                safe
            }
        }
    };
    let plan = Plan { app, platform: detected.platform, os, targets: plans, detected };
    let project = setup::write(&file, &setup::render(&plan))?;
    println!(
        "wrote {} ({}; {} target(s): {})",
        file.display(),
        plan.detected.why,
        project.targets.len(),
        project.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")
    );
    let report = crate::validate::projects(&[std::fs::canonicalize(&file)?]);
    println!(
        "validate: {} error(s), {} warning(s){}",
        report.errors,
        report.warnings,
        if report.findings.is_empty() { "" } else { " (dockfra-coord validate lists them)" }
    );
    for f in report.findings.iter().filter(|f| f.severity == crate::validate::Severity::Error) {
        println!("  error: {}: {}: {}", f.file.display(), f.key.as_deref().unwrap_or("-"), f.message);
    }
    Ok(exit::OK)
}

fn validate(roots: &[PathBuf], file: Option<&Path>, strict: bool, output: Output) -> Result<u8> {
    use crate::validate;
    let report = match file {
        Some(f) => {
            if !f.is_file() {
                bail!("-f {}: no such file", f.display());
            }
            validate::compose_file(f)
        }
        None => match roots {
            [one] if !one.join("deploy-targets.yaml").is_file() => {
                if !one.is_dir() {
                    bail!("--root {}: no such directory", one.display());
                }
                let f = dockfra_common::compose::find_compose_file(one).with_context(|| {
                    format!(
                        "{}: neither deploy-targets.yaml nor a compose file here (run `dockfra-coord setup`)",
                        one.display()
                    )
                })?;
                validate::compose_file(&f)
            }
            _ => validate::projects(&roots.iter().map(|r| project_file(r)).collect::<Result<Vec<_>>>()?),
        },
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            for f in &report.findings {
                let mut at = f.file.display().to_string();
                if !f.targets.is_empty() {
                    at.push_str(&format!(": target {}", f.targets.join(", ")));
                }
                if let Some(s) = &f.service {
                    at.push_str(&format!(": service {s}"));
                }
                if let Some(k) = &f.key {
                    at.push_str(&format!(": {k}"));
                }
                let sev = match f.severity {
                    validate::Severity::Error => "error",
                    validate::Severity::Warning => "warning",
                };
                println!("{sev}: {at}: {}", f.message);
                if let Some(fix) = &f.fix {
                    println!("  fix: {fix}");
                }
            }
            println!(
                "{}: {} error(s), {} warning(s)",
                if report.errors == 0 { "valid" } else { "invalid" },
                report.errors,
                report.warnings
            );
        }
    }
    Ok(if report.errors > 0 || (strict && report.warnings > 0) { exit::INVALID } else { exit::OK })
}

/// The address of the running coordinator: --coordinator, else what `serve` bound, else init's.
fn coordinator_url(state: &StateDir, flag: Option<&str>) -> Result<String> {
    if let Some(u) = flag {
        return Ok(if u.starts_with("https://") { u.to_string() } else { format!("https://{u}") });
    }
    let addr = match std::fs::read_to_string(state.serve_addr_file()) {
        Ok(a) => a.trim().to_string(),
        Err(_) => state.settings()?.listen,
    };
    let addr = addr.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    Ok(format!("https://{addr}"))
}

/// Which operator the CLI acts as: --operator, else the only credential in the state dir,
/// else `admin`.
pub fn pick_operator(state: &StateDir, flag: Option<&str>) -> Result<String> {
    if let Some(n) = flag {
        return Ok(n.to_string());
    }
    let names = state.operator_names();
    match names.as_slice() {
        [] => bail!(
            "no operator credential in {} (run `dockfra-coord init`, or put NAME.crt and NAME.key there and pass --operator NAME)",
            state.operators_dir().display()
        ),
        [one] => Ok(one.clone()),
        many if many.iter().any(|n| n == "admin") => Ok("admin".into()),
        many => bail!("several operator credentials ({}): pick one with --operator NAME", many.join(", ")),
    }
}

pub async fn admin_client(
    state: &StateDir,
    flag: Option<&str>,
    operator: &str,
) -> Result<AdminClient<tonic::transport::Channel>> {
    let url = coordinator_url(state, flag)?;
    let (cert, key) = state.operator_identity(operator)?;
    let tls = identity::client_tls(&state.ca_pem()?, &cert, &key, identity::COORDINATOR_DNS);
    let ch = identity::connect(&url, tls, Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot reach the coordinator at {url} (is `dockfra-coord serve` running?)"))?;
    Ok(AdminClient::new(ch).max_decoding_message_size(64 << 20))
}

/// A refusal or failure the coordinator answered with: its message, and its gRPC code for the
/// category.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct RpcError {
    code: tonic::Code,
    message: String,
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    RpcError { code: s.code(), message: s.message().to_string() }.into()
}

/// The category of an error and what to do about it: from its gRPC code, an I/O error's
/// kind, a configuration error's type, else its text.
pub fn diagnosis(e: &anyhow::Error) -> dockfra_common::diagnose::Diagnosis {
    use dockfra_common::diagnose::{self, Category, Diagnosis};
    let text = format!("{e:#}");
    let by_text = diagnose::from_text(&text);
    // A precise fix from the text, when it agrees with what the error's type says.
    let with = |c: Category| match &by_text {
        Some(d) if d.category == c => d.clone(),
        _ => Diagnosis::of(c),
    };
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RpcError>() {
            use tonic::Code::*;
            return match r.code {
                Unavailable | DeadlineExceeded => with(Category::Connectivity),
                PermissionDenied | Unauthenticated => with(Category::Permission),
                ResourceExhausted => with(Category::Resource),
                InvalidArgument | NotFound | AlreadyExists | OutOfRange => with(Category::Configuration),
                _ => by_text.clone().unwrap_or_else(|| Diagnosis::of(Category::Runtime)),
            };
        }
        if cause.is::<config::ConfigError>() || cause.is::<dockfra_common::compose::ComposeError>() {
            return with(Category::Configuration);
        }
        if let Some(c) = cause.downcast_ref::<std::io::Error>().and_then(diagnose::from_io) {
            return with(c);
        }
    }
    by_text.unwrap_or_else(|| Diagnosis::of(Category::Configuration))
}

/// `error: …`, then its category and the fix, on stderr.
pub fn print_error(e: &anyhow::Error) {
    let d = diagnosis(e);
    eprintln!("error: {e:#}\n  category: {}\n  fix: {}", d.category, d.fix);
}

/// A private temp dir (0700) for this process.
fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("dockfra-coord-{}-{}", std::process::id(), dockfra_common::now_unix()));
    std::fs::create_dir_all(&d)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    Ok(d)
}

async fn admin_command(
    c: &mut AdminClient<tonic::transport::Channel>,
    cmd: Command,
    own_url: &str,
    state: &StateDir,
) -> Result<u8> {
    match cmd {
        Command::Token(TokenCmd::Create { target, ttl, output }) => {
            let r = c
                .create_token(proto::CreateTokenRequest { target: target.clone(), ttl_ms: ttl.as_millis() as u64 })
                .await
                .map_err(status_err)?
                .into_inner();
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({"agent": target, "token": r.token, "ttl_ms": ttl.as_millis() as u64})
                );
            } else {
                println!("{}", r.token);
            }
            Ok(exit::OK)
        }
        Command::Deploy { target: None, fleet, version, output, .. } => {
            run_fleet(c, "deploy", &fleet, version.unwrap_or_default(), output, |_| {}).await
        }
        Command::Rollback { target, to, fleet, plan: true, output, .. } => {
            let req = proto::RollbackPlanRequest {
                target: target.unwrap_or_default(),
                to_release: to.unwrap_or_default(),
                selector: fleet.selector.clone().unwrap_or_default(),
                all: fleet.all,
            };
            let list = c.rollback_plan(req).await.map_err(status_err)?.into_inner();
            if output == Output::Json {
                println!("{}", serde_json::to_string(&list)?);
                return Ok(exit::OK);
            }
            for p in &list.plans {
                if p.release.is_empty() {
                    println!("{}: cannot roll back: {}", p.target, p.blocked);
                    continue;
                }
                println!(
                    "{}: {} -> {} (version {}, {})",
                    p.target,
                    if p.current_release.is_empty() { "-" } else { &p.current_release },
                    p.release,
                    p.version,
                    p.platform
                );
                if !p.blocked.is_empty() {
                    println!("  blocked: {}", p.blocked);
                }
                println!(
                    "  files: {} added, {} changed, {} removed, {} unchanged; {} bytes to move",
                    p.files_added, p.files_changed, p.files_removed, p.files_unchanged, p.bytes_to_move
                );
                for f in &p.files {
                    println!("    {:<8} {}", f.change, f.path);
                }
                for sv in &p.services {
                    let image = if sv.old_image == sv.image || sv.old_image.is_empty() {
                        sv.image.clone()
                    } else {
                        format!("{} -> {}", sv.old_image, sv.image)
                    };
                    println!("    service {:<10} {:<9} {image}", sv.service, sv.change);
                }
                for n in &p.notes {
                    println!("  note: {n}");
                }
            }
            Ok(exit::OK)
        }
        Command::Rollback { target: None, fleet, output, .. } => {
            run_fleet(c, "rollback", &fleet, String::new(), output, |_| {}).await
        }
        Command::Deploy { target: Some(target), fleet, wait, timeout, version, output } => {
            fleet.only_one_target()?;
            let mut req = proto::DeployRequest {
                target: target.clone(),
                wait,
                version: version.unwrap_or_default(),
                wait_timeout_ms: timeout.as_millis() as u64,
                confirm: fleet.yes,
                force: fleet.force,
            };
            let stream = match c.deploy(req.clone()).await {
                Err(e) if needs_confirmation(&e) && confirm_on_terminal(&e, 1)? => {
                    req.confirm = true;
                    c.deploy(req).await
                }
                other => other,
            };
            follow(&target, stream.map_err(status_err)?.into_inner(), output).await
        }
        Command::Rollback { target: Some(target), to, fleet, wait, timeout, output, .. } => {
            fleet.only_one_target()?;
            let mut req = proto::RollbackRequest {
                target: target.clone(),
                to_release: to.unwrap_or_default(),
                wait,
                wait_timeout_ms: timeout.as_millis() as u64,
                confirm: fleet.yes,
                force: fleet.force,
            };
            let stream = match c.rollback(req.clone()).await {
                Err(e) if needs_confirmation(&e) && confirm_on_terminal(&e, 1)? => {
                    req.confirm = true;
                    c.rollback(req).await
                }
                other => other,
            };
            follow(&target, stream.map_err(status_err)?.into_inner(), output).await
        }
        Command::Fleet(FleetCmd::List { output }) => {
            let v = json(c.fleet_deploys(proto::Empty {}).await)?;
            let whole = v["fleet_deploys"].clone();
            let mut rows = whole.as_array().cloned().unwrap_or_default();
            // Waves are counted from 1 where people read them (the JSON keeps the API's count
            // from 0, as `fleet show --output json` does).
            for r in &mut rows {
                r["wave"] = serde_json::json!(r["wave"].as_u64().unwrap_or(0) + 1);
            }
            print_out(
                output,
                &whole,
                &rows,
                &[
                    ("ID", "id"),
                    ("ACTION", "action"),
                    ("SELECTOR", "selector"),
                    ("OPERATOR", "operator"),
                    ("STATUS", "status"),
                    ("WAVE", "wave"),
                    ("WAVES", "waves"),
                    ("REASON", "reason"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Fleet(FleetCmd::Cancel { id, output }) => {
            let info = c.cancel_fleet_deploy(proto::FleetDeployId { id }).await.map_err(status_err)?.into_inner();
            if output == Output::Json {
                print_fleet(&info, output)?;
                return Ok(exit::OK);
            }
            println!("fleet deploy {} cancelled; targets not ordered yet are skipped", info.id);
            Ok(exit::OK)
        }
        Command::Fleet(FleetCmd::Show { id, output }) => {
            let info = c.get_fleet_deploy(proto::FleetDeployId { id }).await.map_err(status_err)?.into_inner();
            print_fleet(&info, output)?;
            Ok(if info.status == "failed" { exit::DEPLOY_FAILED } else { exit::OK })
        }
        Command::Status { target, selector, output } => {
            let one = target.is_some();
            let req =
                proto::TargetRequest { target: target.unwrap_or_default(), selector: selector.unwrap_or_default() };
            let v = json(c.status(req).await)?;
            let rows = v["targets"].as_array().cloned().unwrap_or_default();
            // One target: its object; all: the array (what scripts of 0.1 read).
            let whole = if one { rows.first().cloned().unwrap_or_default() } else { serde_json::json!(rows) };
            print_out(
                output,
                &whole,
                &rows,
                &[
                    ("TARGET", "target"),
                    ("STATE", "state"),
                    ("MODE", "mode"),
                    ("CURRENT", "current_release"),
                    ("VERSION", "current_version"),
                    ("PREVIOUS", "previous_release"),
                    ("HEALTH", "health"),
                    ("LAST DEPLOY", "last_deploy.status"),
                ],
            );
            Ok(exit::OK)
        }
        Command::History { target, selector, result, since, limit, output } => {
            let req = proto::HistoryRequest {
                selector: selector.unwrap_or_default(),
                target: target.unwrap_or_default(),
                result: result.unwrap_or_default(),
                since_unix: since.map(|d| dockfra_common::now_unix().saturating_sub(d.as_secs())).unwrap_or(0),
                until_unix: 0,
                limit,
            };
            let v = json(c.history(req).await)?;
            let rows = v["deployments"].as_array().cloned().unwrap_or_default();
            print_out(
                output,
                &serde_json::json!(rows),
                &rows,
                &[
                    ("ID", "id"),
                    ("TARGET", "target"),
                    ("ACTION", "action"),
                    ("RELEASE", "release"),
                    ("VERSION", "version"),
                    ("STATUS", "status"),
                    ("OPERATOR", "operator"),
                    ("MS", "duration_ms"),
                    ("BYTES", "bytes"),
                    ("REASON", "reason"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Deployment { id, output } => {
            let v = json(c.get_deployment(proto::DeploymentRequest { id }).await)?;
            let d = &v["deployment"];
            if output == Output::Json {
                println!("{v}");
            } else {
                println!(
                    "{} {} {} on {}: {} ({} ms, by {})",
                    d["id"].as_str().unwrap_or("?"),
                    d["action"].as_str().unwrap_or("?"),
                    d["release"].as_str().unwrap_or("?"),
                    d["target"].as_str().unwrap_or("?"),
                    d["status"].as_str().unwrap_or("?"),
                    d["duration_ms"],
                    cell(&d["operator"]),
                );
                if let Some(r) = d["reason"].as_str().filter(|r| !r.is_empty()) {
                    println!("reason: {r}");
                }
                let rows = v["events"].as_array().cloned().unwrap_or_default();
                print_out(Output::Table, &v, &rows, &[("TIME", "unix_ms"), ("STEP", "kind"), ("MESSAGE", "message")]);
            }
            Ok(exit::OK)
        }
        Command::Plan { target, output } => {
            let v = json(c.plan(proto::TargetRequest { target, ..Default::default() }).await)?;
            if output == Output::Json {
                println!("{v}");
                return Ok(exit::OK);
            }
            println!(
                "{}: {} -> {} ({})",
                v["target"].as_str().unwrap_or("?"),
                cell(&v["current_release"]),
                v["version"].as_str().unwrap_or("?"),
                v["platform"].as_str().unwrap_or("?")
            );
            println!(
                "files: {} added, {} changed, {} removed, {} unchanged; {} of {} bytes to move",
                v["files_added"],
                v["files_changed"],
                v["files_removed"],
                v["files_unchanged"],
                v["bytes_to_move"],
                v["bytes_total"]
            );
            for f in v["files"].as_array().into_iter().flatten() {
                println!("  {:<8} {}", f["change"].as_str().unwrap_or("?"), f["path"].as_str().unwrap_or("?"));
            }
            for sv in v["services"].as_array().into_iter().flatten() {
                let image = match (sv["old_image"].as_str().unwrap_or(""), sv["image"].as_str().unwrap_or("")) {
                    (a, b) if a == b || a.is_empty() => b.to_string(),
                    (a, b) => format!("{a} -> {b}"),
                };
                println!(
                    "  service {:<10} {:<9} {image}",
                    sv["service"].as_str().unwrap_or("?"),
                    sv["change"].as_str().unwrap_or("?")
                );
            }
            for n in v["notes"].as_array().into_iter().flatten() {
                println!("note: {}", n.as_str().unwrap_or(""));
            }
            Ok(exit::OK)
        }
        Command::Targets { selector, output } => {
            let v = json(
                c.status(proto::TargetRequest { selector: selector.unwrap_or_default(), ..Default::default() }).await,
            )?;
            let rows = v["targets"].as_array().cloned().unwrap_or_default();
            print_out(
                output,
                &serde_json::json!(rows),
                &rows,
                &[
                    ("TARGET", "target"),
                    ("PLATFORM", "platform"),
                    ("HOST", "host"),
                    ("MODE", "mode"),
                    ("ENROLLED", "enrolled"),
                    ("REVOKED", "revoked"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Agent(AgentCmd::Upgrade { targets, fleet, binaries, trial_timeout, output }) => {
            if targets.is_empty() && fleet.selector.is_none() && !fleet.all {
                bail!("name the targets whose agents to upgrade, or --selector, or --all");
            }
            if fleet.auto_rollback_wave {
                bail!("--auto-rollback-wave is for deploys: an agent whose upgrade fails goes back to its old binary by itself");
            }
            let dir = std::fs::canonicalize(&binaries).with_context(|| {
                format!("--binaries {}: no such dir (cross/build writes target/cross/dist)", binaries.display())
            })?;
            run_fleet(c, "upgrade", &fleet, String::new(), output, |r| {
                r.targets = targets;
                r.binaries = dir.display().to_string();
                r.trial_timeout_ms = trial_timeout.as_millis() as u64;
            })
            .await
        }
        Command::Agent(AgentCmd::Install {
            target,
            identity,
            host_key_fingerprint,
            known_hosts,
            artifacts,
            binary,
            agent_coordinator,
        }) => {
            let targets = json(c.status(proto::TargetRequest::default()).await)?;
            let Some(t) =
                targets["targets"].as_array().into_iter().flatten().find(|t| t["target"] == target.as_str()).cloned()
            else {
                anyhow::bail!("unknown target {target:?} (see `dockfra-coord targets`)");
            };
            let Some(host) = t["host"].as_str().filter(|h| !h.is_empty()).map(String::from) else {
                anyhow::bail!("target {target:?} has no host: in deploy-targets.yaml; nothing to log in to");
            };
            let user = t["user"].as_str().filter(|u| !u.is_empty()).map(String::from).unwrap_or_else(|| "root".into());
            let port = t["port"].as_u64().filter(|p| *p > 0).unwrap_or(22) as u16;
            let sh = crate::bootstrap::SystemShell;
            let tmp = tempfile_dir()?;
            let known = match (&host_key_fingerprint, known_hosts) {
                (Some(fp), _) => {
                    let kh = tmp.join("known_hosts");
                    crate::bootstrap::pin_fingerprint(&sh, &host, port, fp, &kh)?;
                    println!("host key: {fp} (pinned)");
                    kh
                }
                (None, Some(kh)) => kh,
                (None, None) => std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
                    .context("no --known-hosts, --host-key-fingerprint or $HOME")?,
            };
            let remote = crate::bootstrap::Remote { host, port, user, identity, known_hosts: known };
            let coordinator = match agent_coordinator {
                Some(u) if u.starts_with("https://") => u,
                Some(u) => format!("https://{u}"),
                None => own_url.to_string(),
            };
            let handle = tokio::runtime::Handle::current();
            let mut token = || {
                let mut c = c.clone();
                let target = target.clone();
                tokio::task::block_in_place(|| {
                    handle.block_on(async move {
                        let r = c
                            .create_token(proto::CreateTokenRequest { target, ttl_ms: 15 * 60 * 1000 })
                            .await
                            .map_err(status_err)?;
                        Ok::<_, anyhow::Error>(r.into_inner().token)
                    })
                })
            };
            let plan = crate::bootstrap::Plan {
                target: &target,
                coordinator: &coordinator,
                artifacts: &artifacts,
                binary,
                token: &mut token,
            };
            let result = tokio::task::block_in_place(|| crate::bootstrap::install(&sh, &remote, plan));
            let _ = std::fs::remove_dir_all(&tmp);
            result?;
            // Verify: a push agent must answer; a pull agent must have polled.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let v = c.deploy_test(proto::TargetRequest { target: target.clone(), ..Default::default() }).await;
                match v {
                    Ok(r) => {
                        let v = serde_json::to_value(r.into_inner())?;
                        if v["reachable"] == true {
                            println!(
                                "verify:   deploy-test: reachable, agent {} on {} ({}), os check {}",
                                v["facts"]["agent_version"].as_str().unwrap_or("?"),
                                v["facts"]["os_release"].as_str().unwrap_or("?"),
                                v["facts"]["arch"].as_str().unwrap_or("?"),
                                v["os_check"].as_str().unwrap_or("?")
                            );
                            return Ok(exit::OK);
                        }
                    }
                    Err(e) if std::time::Instant::now() >= deadline => {
                        anyhow::bail!("installed, but deploy-test fails: {}", e.message())
                    }
                    Err(_) => {}
                }
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!("installed, but the agent has not been seen within 60s (journalctl -u dockfra-agent on the host)");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Command::Agents { cmd: Some(AgentsCmd::Revoke { target }), output } => {
            let v = json(c.revoke_agent(proto::TargetRequest { target: target.clone(), ..Default::default() }).await)?;
            if output == Output::Json {
                println!("{v}");
                return Ok(exit::OK);
            }
            println!(
                "revoked agent {}; its next call is refused and its watch stream ends",
                v["target"].as_str().unwrap_or(&target)
            );
            Ok(exit::OK)
        }
        Command::Agents { cmd: None, output } => {
            let v = json(c.agents(proto::Empty {}).await)?;
            let rows = v["agents"].as_array().cloned().unwrap_or_default();
            print_out(
                output,
                &serde_json::json!(rows),
                &rows,
                &[
                    ("AGENT", "target"),
                    ("TARGETS", "targets"),
                    ("SERIAL", "serial"),
                    ("REVOKED", "revoked"),
                    ("LAST SEEN", "last_seen_unix"),
                    ("WATCHING", "watching"),
                    ("VERSION", "agent_version"),
                    ("OS", "os"),
                    ("ARCH", "arch"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Report { selector, out } => {
            let r = c
                .report(proto::TargetRequest { selector: selector.unwrap_or_default(), ..Default::default() })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.as_os_str() == "-" {
                write_stdout(r.markdown.as_bytes())?;
            } else {
                let tmp = out.with_extension("md.dockfra-tmp");
                std::fs::write(&tmp, &r.markdown).with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, &out).with_context(|| format!("cannot write {}", out.display()))?;
                println!("wrote {}", out.display());
            }
            Ok(exit::OK)
        }
        Command::Check { target, selector, all, output } => {
            let req =
                proto::CheckRequest { target: target.unwrap_or_default(), selector: selector.unwrap_or_default(), all };
            let r = c.check(req).await.map_err(status_err)?.into_inner();
            if output == Output::Json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let rows: Vec<serde_json::Value> = r
                    .targets
                    .iter()
                    .flat_map(|t| {
                        t.checks.iter().map(move |c| {
                            serde_json::json!({"target": t.target, "check": c.name, "result": c.result,
                                "category": c.category, "message": c.message})
                        })
                    })
                    .collect();
                let cols = [
                    ("TARGET", "target"),
                    ("CHECK", "check"),
                    ("RESULT", "result"),
                    ("CATEGORY", "category"),
                    ("MESSAGE", "message"),
                ];
                print_out(output, &serde_json::Value::Null, &rows, &cols);
                for t in &r.targets {
                    if t.reported_seconds_ago > 0 {
                        println!("{}: figures from the agent's report {}s ago", t.target, t.reported_seconds_ago);
                    }
                    for c in t.checks.iter().filter(|c| !c.fix.is_empty()) {
                        println!("fix {} {} ({}): {}", t.target, c.name, c.category, c.fix);
                    }
                }
                println!("{}", r.result);
            }
            Ok(if r.result == "fail" { exit::INVALID } else { exit::OK })
        }
        Command::DeployTest { target, output } => {
            let v = json(c.deploy_test(proto::TargetRequest { target, ..Default::default() }).await)?;
            let os_check = v["os_check"].as_str().unwrap_or("").to_string();
            if output == Output::Json {
                println!("{v}");
            } else {
                println!("target:     {}", v["target"].as_str().unwrap_or("?"));
                println!("mode:       {}", v["mode"].as_str().unwrap_or("?"));
                println!("reachable:  {}", v["reachable"]);
                let f = &v["facts"];
                println!("agent:      {}", f["agent_version"].as_str().unwrap_or("?"));
                println!(
                    "os:         {} ({}){}",
                    f["os"].as_str().unwrap_or("?"),
                    f["os_release"].as_str().unwrap_or("?"),
                    if f["wsl"] == true { " [WSL]" } else { "" }
                );
                println!("arch:       {}", f["arch"].as_str().unwrap_or("?"));
                println!("os check:   {os_check}");
                for r in f["runtimes"].as_array().into_iter().flatten() {
                    println!(
                        "runtime:    {} {} ({})",
                        r["name"].as_str().unwrap_or("?"),
                        r["version"].as_str().unwrap_or(""),
                        r["path"].as_str().unwrap_or("")
                    );
                }
            }
            if os_check.starts_with("mismatch") {
                eprintln!("error: {os_check}");
                return Ok(exit::ERROR);
            }
            Ok(exit::OK)
        }
        Command::Bundle(BundleCmd::Export { target, output, expires_in }) => {
            let s = c
                .export_bundle(proto::ExportRequest { target, expires_in_ms: expires_in.as_millis() as u64 })
                .await
                .map_err(status_err)?
                .into_inner();
            let bytes = receive_to_file(s, &output).await?;
            eprintln!("wrote {} ({bytes} bytes)", output.display());
            Ok(exit::OK)
        }
        Command::Operator(OperatorCmd::Add { name, ttl, out, replace }) => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
            let r = c
                .add_operator(proto::AddOperatorRequest {
                    name: name.clone(),
                    csr_pem: csr,
                    ttl_secs: ttl.as_secs(),
                    replace,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let dir = out.unwrap_or_else(|| state.operators_dir());
            let crt = StateDir::write_credential(&dir, &name, &r.cert_pem, &key.serialize_pem())?;
            let info = r.operator.unwrap_or_default();
            println!(
                "operator {name}: credential written to {} (and {name}.key, mode 0600), serial {}",
                crt.display(),
                info.serial
            );
            Ok(exit::OK)
        }
        Command::Operator(OperatorCmd::List { output }) => {
            let r = c.operators(proto::Empty {}).await.map_err(status_err)?.into_inner();
            let rows: Vec<serde_json::Value> = r
                .operators
                .iter()
                .map(|o| {
                    serde_json::json!({"name": o.name, "serial": o.serial, "created_unix": o.created_unix,
                        "created_by": o.created_by, "expires_unix": o.expires_unix,
                        "revoked": o.revoked_unix != 0, "you": o.name == r.you})
                })
                .collect();
            print_out(
                output,
                &serde_json::json!(rows),
                &rows,
                &[
                    ("NAME", "name"),
                    ("CREATED BY", "created_by"),
                    ("EXPIRES", "expires_unix"),
                    ("REVOKED", "revoked"),
                    ("YOU", "you"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Operator(OperatorCmd::Token { ttl, label, output }) => {
            let r = c
                .create_api_token(proto::ApiTokenRequest { ttl_secs: ttl.as_secs(), label })
                .await
                .map_err(status_err)?
                .into_inner();
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({"id": r.id, "operator": r.operator, "expires_unix": r.expires_unix, "token": r.token})
                );
                return Ok(exit::OK);
            }
            eprintln!("API token {} for operator {} (expires at {}): shown once", r.id, r.operator, r.expires_unix);
            println!("{}", r.token);
            Ok(exit::OK)
        }
        Command::Operator(OperatorCmd::Tokens { output }) => {
            let v = json(c.api_tokens(proto::Empty {}).await)?;
            let rows = v["tokens"].as_array().cloned().unwrap_or_default();
            print_out(
                output,
                &serde_json::json!(rows),
                &rows,
                &[
                    ("ID", "id"),
                    ("OPERATOR", "operator"),
                    ("LABEL", "label"),
                    ("CREATED", "created_unix"),
                    ("EXPIRES", "expires_unix"),
                    ("REVOKED", "revoked_unix"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Operator(OperatorCmd::RevokeToken { id, output }) => {
            let v = json(c.revoke_api_token(proto::ApiTokenId { id: id.clone() }).await)?;
            if output == Output::Json {
                println!("{v}");
                return Ok(exit::OK);
            }
            println!("revoked API token {id}; its next request is refused");
            Ok(exit::OK)
        }
        Command::Operator(OperatorCmd::Revoke { name, output }) => {
            let r = c
                .revoke_operator(proto::OperatorRequest { name: name.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            if output == Output::Json {
                println!("{}", serde_json::json!({"operator": r.name, "revoked": true}));
                return Ok(exit::OK);
            }
            println!("revoked operator {name}; its next call is refused");
            Ok(exit::OK)
        }
        Command::SigningKey(cmd) => {
            let (r, output) = match cmd {
                SigningKeyCmd::Show { output } => (c.signing_key(proto::Empty {}).await, output),
                SigningKeyCmd::Rotate { output } => (c.rotate_signing_key(proto::Empty {}).await, output),
            };
            let r = r.map_err(status_err)?.into_inner();
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({"fingerprint": r.fingerprint, "rotations": r.rotations, "history": r.history})
                );
                return Ok(exit::OK);
            }
            println!("signing key {} ({} rotation(s))", r.fingerprint, r.rotations);
            println!("history: {}", r.history.join(" -> "));
            Ok(exit::OK)
        }
        Command::Events { target, limit, output } => {
            let r = c
                .events(proto::EventsRequest { target: target.unwrap_or_default(), limit })
                .await
                .map_err(status_err)?
                .into_inner();
            let rows: Vec<serde_json::Value> = r
                .events
                .iter()
                .map(|e| {
                    serde_json::json!({"unix_ms": e.unix_ms, "target": e.target, "kind": e.kind,
                        "operator": e.operator, "message": e.message})
                })
                .collect();
            print_out(
                output,
                &serde_json::json!(rows),
                &rows,
                &[
                    ("TIME", "unix_ms"),
                    ("TARGET", "target"),
                    ("KIND", "kind"),
                    ("OPERATOR", "operator"),
                    ("MESSAGE", "message"),
                ],
            );
            Ok(exit::OK)
        }
        Command::Gc { dry_run, output } => {
            let r = c.gc(proto::GcRequest { dry_run }).await.map_err(status_err)?.into_inner();
            let v = serde_json::json!({"dry_run": dry_run, "releases_pruned": r.releases_pruned, "pruned": r.pruned,
                "blobs_removed": r.blobs_removed, "bytes_freed": r.bytes_freed, "blobs_kept": r.blobs_kept,
                "bytes_kept": r.bytes_kept});
            if output == Output::Json {
                println!("{v}");
            } else {
                let verb = if dry_run { "would prune" } else { "pruned" };
                println!(
                    "{verb} {} release(s): {}",
                    r.releases_pruned,
                    if r.pruned.is_empty() { "-".into() } else { r.pruned.join(", ") }
                );
                println!(
                    "blobs: {} removed ({} bytes), {} kept ({} bytes)",
                    r.blobs_removed, r.bytes_freed, r.blobs_kept, r.bytes_kept
                );
            }
            Ok(exit::OK)
        }
        Command::Init { .. }
        | Command::Serve { .. }
        | Command::Config { .. }
        | Command::Convert { .. }
        | Command::Validate { .. }
        | Command::Setup { .. }
        | Command::Env { .. }
        | Command::Generate { .. }
        | Command::Demo { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Openapi => {
            unreachable!("handled before connecting")
        }
    }
}

/// Write `bytes` to stdout; a reader that stopped early (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Write a stream of chunks to `output` as they arrive (never all in memory): a temp file
/// beside it, fsynced and renamed in only when the stream ended well; removed otherwise.
async fn receive_to_file(mut s: tonic::Streaming<proto::BlobChunk>, output: &Path) -> Result<u64> {
    use tokio::io::AsyncWriteExt as _;
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = output.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut n = 0u64;
        let mut done = false;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(status_err)?;
            f.write_all(&chunk.data).await?;
            n += chunk.data.len() as u64;
            if chunk.last {
                done = true;
                break;
            }
        }
        anyhow::ensure!(done, "the coordinator ended the stream before the bundle was complete");
        f.sync_all().await?;
        std::fs::rename(&tmp, output).with_context(|| format!("cannot write {}", output.display()))?;
        dockfra_common::fsync_dir(dir)?;
        Ok(n)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The coordinator refused an order for want of a production confirmation.
fn needs_confirmation(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::FailedPrecondition && e.message().contains("confirm with --yes")
}

/// On a terminal, ask the operator to type the number of production targets; elsewhere (a
/// script, CI) the refusal stands and says to pass --yes.
fn confirm_on_terminal(e: &tonic::Status, count: usize) -> Result<bool> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let mut err = std::io::stderr();
    writeln!(err, "{}", e.message())?;
    write!(err, "type {count} to confirm: ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() == count.to_string() {
        Ok(true)
    } else {
        bail!("not confirmed: nothing was deployed")
    }
}

/// The number of production targets a refusal names ("N production target(s) among …").
fn production_count(e: &tonic::Status) -> usize {
    e.message().split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(1)
}

/// Make a fleet deploy and follow it to its end, one line per target as its state changes.
async fn run_fleet(
    c: &mut AdminClient<tonic::transport::Channel>,
    action: &str,
    f: &FleetArgs,
    version: String,
    output: Output,
    more: impl FnOnce(&mut proto::FleetDeployRequest),
) -> Result<u8> {
    let mut req = proto::FleetDeployRequest {
        selector: f.selector.clone().unwrap_or_default(),
        all: f.all,
        action: action.into(),
        version,
        max_parallel: f.max_parallel,
        canary: f.canary.clone().unwrap_or_default(),
        soak_ms: f.soak.as_millis() as u64,
        wave_timeout_ms: f.wave_timeout.as_millis() as u64,
        confirm: f.yes,
        force: f.force,
        waves: f.waves,
        auto_rollback: f.auto_rollback_wave,
        ..Default::default()
    };
    more(&mut req);
    let info = match c.fleet_deploy(req.clone()).await {
        Err(e) if needs_confirmation(&e) && confirm_on_terminal(&e, production_count(&e))? => {
            req.confirm = true;
            c.fleet_deploy(req).await
        }
        other => other,
    }
    .map_err(status_err)?
    .into_inner();
    if output == Output::Table {
        eprintln!(
            "fleet {action} {}: {} target(s) in {} wave(s){}",
            info.id,
            info.targets.len(),
            info.waves,
            if info.canary > 0 { format!(", the first a canary of {}", info.canary) } else { String::new() }
        );
    }
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut live = crate::progress::Live::new();
    let info = loop {
        let info =
            c.get_fleet_deploy(proto::FleetDeployId { id: info.id.clone() }).await.map_err(status_err)?.into_inner();
        if output == Output::Table {
            for t in &info.targets {
                if seen.get(&t.target) != Some(&t.status) {
                    seen.insert(t.target.clone(), t.status.clone());
                    if t.status != "planned" {
                        live.line(&format!("[wave {}] {:<20} {:<10} {}", t.wave + 1, t.target, t.status, t.reason));
                    }
                }
            }
            let ended = |s: &str| !matches!(s, "planned" | "running" | "queued" | "deploying");
            let done = info.targets.iter().filter(|t| ended(&t.status)).count();
            let failed = info.targets.iter().filter(|t| t.status == "failed").count();
            live.status(format!(
                "fleet {action} {}: wave {}/{} {} {done}/{} targets done, {failed} failed",
                info.id,
                (info.wave + 1).min(info.waves.max(1)),
                info.waves,
                crate::progress::bar(done, info.targets.len(), 20),
                info.targets.len()
            ));
        }
        if info.status != "running" {
            break info;
        }
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(125)).await;
            live.draw();
        }
    };
    live.finish();
    print_fleet(&info, output)?;
    Ok(if info.status == "succeeded" { exit::OK } else { exit::DEPLOY_FAILED })
}

fn print_fleet(info: &proto::FleetDeployInfo, output: Output) -> Result<()> {
    let v = serde_json::to_value(info)?;
    if output == Output::Json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "fleet {} {}: {}{}",
        info.action,
        info.id,
        info.status,
        if info.reason.is_empty() { String::new() } else { format!(" — {}", info.reason) }
    );
    let rows: Vec<serde_json::Value> = v["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut t = t.clone();
            let w = t["wave"].as_u64().unwrap_or(0) as usize;
            let name = info.wave_names.get(w).cloned().unwrap_or_else(|| format!("wave {}", w + 1));
            t["wave"] = serde_json::json!(format!("{}: {name}", w + 1));
            t
        })
        .collect();
    print_out(
        Output::Table,
        &v,
        &rows,
        &[
            ("WAVE", "wave"),
            ("TARGET", "target"),
            ("STATUS", "status"),
            ("ORDERED", "deployment.release"),
            ("RUNS NOW", "current_release"),
            ("VERSION", "current_version"),
            ("REASON", "reason"),
        ],
    );
    Ok(())
}

/// A typed reply as JSON (for tables and `--output json`).
fn json<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(r.map_err(status_err)?.into_inner())?)
}

/// Follow a deploy's events; the exit code says whether it ended live and healthy.
pub async fn follow(target: &str, mut stream: tonic::Streaming<proto::DeployEvent>, output: Output) -> Result<u8> {
    let mut last: Option<proto::DeployEvent> = None;
    let mut live = crate::progress::Live::new();
    let table = output == Output::Table;
    if table {
        live.status(format!("[{target}] building and sending the bundle"));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(120));
    loop {
        let ev = tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => ev.map_err(status_err)?,
                None => break,
            },
            _ = tick.tick(), if table && live.is_live() => {
                live.draw();
                continue;
            }
        };
        if table {
            live.line(&format!("[{target}] {:<13} {}", ev.phase, ev.message));
            let moved = if ev.bytes_received > 0 {
                format!(" · {} received", crate::progress::human(ev.bytes_received))
            } else {
                String::new()
            };
            live.status(format!("[{target}] {}{moved}", ev.phase));
        }
        let done = ev.r#final;
        last = Some(ev);
        if done {
            break;
        }
    }
    live.finish();
    let Some(ev) = last else { bail!("the coordinator closed the stream without a result") };
    if output == Output::Json {
        let mut v = serde_json::json!({"target": target, "deployment_id": ev.deployment_id, "result": ev.result,
            "release": ev.release, "message": ev.message, "bytes_received": ev.bytes_received});
        if !matches!(ev.result.as_str(), "succeeded" | "queued") {
            let d = dockfra_common::diagnose::from_text(&ev.message).unwrap_or_else(|| {
                dockfra_common::diagnose::Diagnosis::of(dockfra_common::diagnose::Category::Runtime)
            });
            v["category"] = d.category.as_str().into();
            v["fix"] = d.fix.into();
        }
        println!("{v}");
    }
    Ok(match ev.result.as_str() {
        "succeeded" => {
            if output == Output::Table {
                println!(
                    "{target}: release {} is live and healthy ({} bytes transferred)",
                    ev.release, ev.bytes_received
                );
            }
            exit::OK
        }
        "queued" => {
            if output == Output::Table {
                println!("{target}: queued as {} (pull target; use --wait to wait for the agent)", ev.deployment_id);
            }
            exit::OK
        }
        "timeout" => exit::TIMEOUT,
        other => {
            if output == Output::Table {
                println!("{target}: {other}: {}", ev.message);
                let d = dockfra_common::diagnose::from_text(&ev.message).unwrap_or_else(|| {
                    dockfra_common::diagnose::Diagnosis::of(dockfra_common::diagnose::Category::Runtime)
                });
                println!("  category: {}\n  fix: {}", d.category, d.fix);
            }
            exit::DEPLOY_FAILED
        }
    })
}

fn lookup<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) if s.is_empty() => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) if a.is_empty() => "-".into(),
        serde_json::Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_out(output: Output, whole: &serde_json::Value, rows: &[serde_json::Value], cols: &[(&str, &str)]) {
    if output == Output::Json {
        println!("{whole}");
        return;
    }
    let table: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|(_, k)| cell(lookup(r, k))).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| table.iter().map(|r| r[i].chars().count()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|(h, _)| h.to_string()).collect());
    for r in table {
        line(r);
    }
}
