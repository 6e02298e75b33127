//! The REST API and the dashboard, over HTTPS (rustls) on their own listener.
//!
//! - Every route but `GET /api/health` and the dashboard's static files needs an operator:
//!   a bearer token (`dockfra-coord operator token`) or an operator's client certificate.
//!   Both are checked against the store on every request, so revoking an operator ends its
//!   tokens at once. Every action is recorded in the audit trail under the operator's name.
//! - The handlers are thin: they call the same code the gRPC Admin service runs and return
//!   the same typed messages, as JSON. Errors are JSON `{"code", "message"}` with the HTTP
//!   status their kind calls for (4xx: the request; 5xx: the coordinator or an agent).
//! - The OpenAPI document (`GET /api/openapi.json`) is derived from these handlers and types.
//! - Live progress is server-sent events: one stream per deployment and one for the fleet.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use utoipa::OpenApi;

use dockfra_common::identity;
use dockfra_common::proto;

use super::admin::API_TOKEN_PREFIX;
use super::{metrics, views, Coordinator, OperatorPeer};

/// The client certificate a connection presented (DER), set by the listener per connection.
#[derive(Clone, Default)]
pub struct PeerCert(pub Option<Arc<Vec<u8>>>);

// ------------------------------------------------------------------ errors

/// An error as the API sends it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// Stable, machine-readable: invalid_argument, unauthenticated, permission_denied,
    /// not_found, method_not_allowed, conflict, failed_precondition, payload_too_large,
    /// too_many_requests, internal, unavailable,
    /// deadline_exceeded.
    pub code: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// What kind of failure: configuration, connectivity, permission, resource, runtime.
    pub category: String,
    /// What to do about it.
    pub fix: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        let (status, code) = match s.code() {
            InvalidArgument | OutOfRange => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            AlreadyExists => (StatusCode::CONFLICT, "conflict"),
            FailedPrecondition | Aborted => (StatusCode::CONFLICT, "failed_precondition"),
            ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, s.message())
    }
}

impl From<crate::error::CoordError> for ApiError {
    fn from(e: crate::error::CoordError) -> Self {
        tonic::Status::from(e).into()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::error::CoordError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use dockfra_common::diagnose::{self, Category, Diagnosis};
        let by_code = match self.code {
            "unauthenticated" | "permission_denied" => Some(Category::Permission),
            "unavailable" | "deadline_exceeded" => Some(Category::Connectivity),
            "too_many_requests" | "payload_too_large" => Some(Category::Resource),
            "invalid_argument" | "not_found" | "method_not_allowed" | "conflict" => Some(Category::Configuration),
            _ => None,
        };
        let by_text = diagnose::from_text(&self.message);
        // A precondition is the project's state unless the text says more than "runtime".
        let by_code = match (self.code, &by_text) {
            ("failed_precondition", Some(t)) if t.category != Category::Runtime => Some(t.category),
            ("failed_precondition", _) => Some(Category::Configuration),
            _ => by_code,
        };
        let d = match (by_code, by_text) {
            (Some(c), Some(t)) if t.category == c => t,
            (Some(c), _) => Diagnosis::of(c),
            (None, Some(t)) => t,
            (None, None) => Diagnosis::of(Category::Runtime),
        };
        let body = ApiErrorBody {
            code: self.code.into(),
            message: self.message,
            category: d.category.to_string(),
            fix: d.fix,
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dockfra\""));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ------------------------------------------------------------------ authentication

/// The operator a request comes from (a valid bearer token or operator certificate).
pub struct Operator(pub OperatorPeer, pub &'static str, pub u64);

impl FromRequestParts<Coordinator> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Coordinator) -> Result<Self, ApiError> {
        refuse_cross_site(parts)?;
        if let Some(h) = parts.headers.get(header::AUTHORIZATION) {
            let h = h.to_str().map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
            let token = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or_else(|| ApiError::unauthenticated("Authorization must be `Bearer <token>`"))?;
            let (name, expires) = c.check_api_token(token.trim())?;
            return Ok(Operator(OperatorPeer { name }, "token", expires));
        }
        if let Some(der) = parts.extensions.get::<PeerCert>().and_then(|p| p.0.clone()) {
            let info = identity::cert_info(&der).map_err(|e| ApiError::unauthenticated(e.to_string()))?;
            let name = info.operator().ok_or_else(|| {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "this certificate is not an operator's")
            })?;
            if !c.store().operator_active(name, &info.serial_hex)? {
                return Err(ApiError::unauthenticated(format!(
                    "operator {name:?}: this certificate was revoked or replaced"
                )));
            }
            return Ok(Operator(
                OperatorPeer { name: name.to_string() },
                "certificate",
                info.not_after_unix.max(0) as u64,
            ));
        }
        Err(ApiError::unauthenticated(
            "no credentials: send `Authorization: Bearer <token>` (dockfra-coord operator token prints one)",
        ))
    }
}

/// A browser that holds an operator's client certificate sends it to any page's requests:
/// a request that changes something must not come from another site. Browsers say where a
/// request comes from (`Origin`, `Sec-Fetch-Site`); scripts and the CLI send neither.
fn refuse_cross_site(parts: &Parts) -> Result<(), ApiError> {
    if matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD) {
        return Ok(());
    }
    let forbidden = |why: &str| {
        ApiError::new(StatusCode::FORBIDDEN, "permission_denied", format!("cross-site request refused: {why}"))
    };
    if let Some(site) = parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return Err(forbidden(&format!("Sec-Fetch-Site: {site}")));
        }
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(String::from))
            .unwrap_or_default();
        // https's own port may be left out on either side.
        let bare = |h: &str| h.strip_suffix(":443").unwrap_or(h).to_ascii_lowercase();
        let same = origin.strip_prefix("https://").is_some_and(|o| bare(o) == bare(&host));
        if !same {
            return Err(forbidden(&format!("Origin {origin:?} is not this dashboard (https://{host})")));
        }
    }
    Ok(())
}

impl Coordinator {
    /// The operator a bearer token belongs to, if the token and the operator are both live.
    fn check_api_token(&self, token: &str) -> Result<(String, u64), ApiError> {
        let bad = || ApiError::unauthenticated("this token is not valid");
        let rest = token.strip_prefix(API_TOKEN_PREFIX).ok_or_else(bad)?;
        let (id, secret) = rest.split_once('.').ok_or_else(bad)?;
        if id.len() != 16 || secret.len() != 32 || !id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let store = self.store();
        let row = store.api_token(id)?.ok_or_else(bad)?;
        let want = dockfra_common::sha256_hex(secret.as_bytes());
        if !crate::store::constant_time_eq(want.as_bytes(), row.secret_sha256.as_bytes()) {
            return Err(bad());
        }
        if row.revoked_unix.is_some() {
            return Err(ApiError::unauthenticated("this token was revoked"));
        }
        if row.expires_unix <= dockfra_common::now_unix() as i64 {
            return Err(ApiError::unauthenticated(
                "this token expired: `dockfra-coord operator token` issues a new one",
            ));
        }
        match store.operator(&row.operator)? {
            Some(o) if o.revoked_unix.is_none() => Ok((row.operator, row.expires_unix.max(0) as u64)),
            _ => Err(ApiError::unauthenticated(format!("operator {:?} was revoked", row.operator))),
        }
    }
}

/// A request, as the Admin service's handlers take it, on behalf of `op`.
fn as_admin<T>(op: &Operator, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(op.0.clone());
    r
}

// ------------------------------------------------------------------ inputs

/// A target id from the path: a DNS label, as deploy-targets.yaml requires.
fn target_id(id: &str) -> ApiResult<&str> {
    let ok = (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(id)
    } else {
        Err(ApiError::bad(format!("target id {id:?}: a DNS label ([a-z0-9-]{{1,63}}) is expected")))
    }
}

/// A deployment id from the path (`d-<ms>-<hex>`).
fn deployment_id(id: &str) -> ApiResult<&str> {
    let ok = (3..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(ApiError::bad(format!("deployment id {id:?}: expected d-<ms>-<hex>")))
    }
}

/// The largest request body the API reads (its bodies are a few small fields).
const MAX_BODY: usize = 64 * 1024;

/// A request body, at most [`MAX_BODY`] bytes (a longer or unreadable one is a JSON error).
struct RawBody(axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, ApiError> {
        axum::body::to_bytes(req.into_body(), MAX_BODY).await.map(RawBody).map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over {MAX_BODY} bytes or could not be read"),
            )
        })
    }
}

/// A JSON body that may be empty; anything but an object of the right shape is a 400.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

/// The query string as a map (a malformed one is a 400).
struct QueryMap(BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<BTreeMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|q| QueryMap(q.0))
            .map_err(|e| ApiError::bad(format!("query: {e}")))
    }
}

impl QueryMap {
    fn only(&self, allowed: &[&str]) -> ApiResult<()> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad(format!("unknown query parameter {k:?} (known: {})", allowed.join(", ")))),
            None => Ok(()),
        }
    }
    /// A parameter's value; present but empty is an error (say it, or leave it out).
    /// `target=ID` (checked) and `all=true|false`, as the many-target tools take them.
    fn target_or_all(&self) -> ApiResult<(String, bool)> {
        let all = match self.text("all")? {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(ApiError::bad(format!("all={other:?}: expected true or false"))),
        };
        let target = match self.text("target")? {
            Some(t) => target_id(t)?.to_string(),
            None => String::new(),
        };
        Ok((target, all))
    }

    fn text(&self, key: &str) -> ApiResult<Option<&str>> {
        match self.0.get(key).map(String::as_str) {
            Some("") => Err(ApiError::bad(format!("{key}= is empty: give a value or leave it out"))),
            v => Ok(v),
        }
    }
    fn num(&self, key: &str, max: u64) -> ApiResult<Option<u64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(ApiError::bad(format!("{key}={v:?}: a whole number from 0 to {max} is expected"))),
            },
        }
    }
}

/// A deployment's status: open (queued, running, retrying, exporting) or final.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // the schema's enum: handlers check the same names in STATUSES
pub enum DeployStatus {
    Queued,
    Running,
    Retrying,
    Exporting,
    Succeeded,
    Failed,
    Refused,
    Superseded,
    Interrupted,
    Exported,
    Timeout,
}

/// The statuses [`DeployStatus`] names, as stored.
const STATUSES: &[&str] = &[
    "queued",
    "running",
    "retrying",
    "exporting",
    "succeeded",
    "failed",
    "refused",
    "superseded",
    "interrupted",
    "exported",
    "timeout",
];

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct DeployBody {
    /// Version label (default: derived from the content).
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
    pub version: Option<String>,
    /// Required for a production target: the operator's yes.
    #[serde(default)]
    pub confirm: bool,
    /// Take the target over from another operator's open deployment.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RollbackBody {
    /// A release the agent keeps (default: the previous one).
    #[schema(pattern = r"^[0-9]{1,20}-[0-9a-f]{1,64}$")]
    pub to_release: Option<String>,
    #[serde(default)]
    pub confirm: bool,
    #[serde(default)]
    pub force: bool,
}

fn version_label(v: &str) -> ApiResult<&str> {
    let ok = (1..=64).contains(&v.len())
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(v)
    } else {
        Err(ApiError::bad(format!("version {v:?}: 1-64 of A-Z a-z 0-9 . _ + -, starting with a letter or digit")))
    }
}

fn release_name(v: &str) -> ApiResult<&str> {
    let ok = v.split_once('-').is_some_and(|(seq, id)| {
        (1..=20).contains(&seq.len())
            && seq.bytes().all(|b| b.is_ascii_digit())
            && (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(v)
    } else {
        Err(ApiError::bad(format!("release {v:?}: expected SEQUENCE-BUNDLEID as `history` shows it")))
    }
}

// ------------------------------------------------------------------ replies of the API's own

/// The service is up (no credentials needed).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Who the credentials belong to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub operator: String,
    /// token | certificate
    pub via: String,
    pub expires_unix: u64,
}

/// A platform and what dockfra does with it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Plugin {
    pub name: String,
    /// Whether this build can deploy to it.
    pub supported: bool,
    pub description: String,
    /// The driver's abilities: files, service_manager, compose, images_in_bundle, registry,
    /// replicas, rolling_update, quadlet, rootless, health_check, rollback.
    pub capabilities: Vec<String>,
    /// The keys of its `config:` section in deploy-targets.yaml.
    pub config_keys: Vec<String>,
    /// Agents that report a driver for it.
    pub agents: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginList {
    pub plugins: Vec<Plugin>,
}

/// name, supported, description, capabilities, config keys.
type PluginRow = (&'static str, bool, &'static str, &'static [&'static str], &'static [&'static str]);

const PLUGINS: &[PluginRow] = &[
    (
        "ssh_raw",
        true,
        "Plain files in Capistrano-style release dirs with an atomic `current` switch; optional scripts and a service (systemd, launchd, or none).",
        &["files", "service_manager", "scripts", "health_check", "rollback"],
        &["deploy_path", "service_manager", "service_name", "pre_script", "post_script"],
    ),
    (
        "docker_compose",
        true,
        "A resolved compose file run with `docker compose up --wait` on the agent's engine.",
        &["compose", "images_in_bundle", "registry", "health_check", "rollback"],
        &["compose_project", "pull_policy", "restart_policy", "ship_images", "registry"],
    ),
    (
        "swarm",
        true,
        "A stack deployed with `docker stack deploy` on a Swarm manager, with rolling updates.",
        &["compose", "images_in_bundle", "registry", "replicas", "rolling_update", "health_check", "rollback"],
        &["stack_name", "replicas", "update_parallelism", "update_delay", "ship_images", "registry"],
    ),
    (
        "podman",
        true,
        "podman-compose, or Quadlet units under systemd (rootless or not).",
        &["compose", "quadlet", "rootless", "images_in_bundle", "health_check", "rollback"],
        &["use_quadlet", "rootless", "pod_name", "compose_project", "ship_images", "start_machine"],
    ),
    (
        "kubernetes",
        true,
        "Kubernetes objects rendered from the compose file, applied with kubectl (server-side apply).",
        &["rolling", "recreate", "blue_green", "canary", "health_check", "rollback"],
        &["namespace", "kubeconfig", "context", "strategy", "canary", "replicas", "resource_limits", "workloads", "service_type", "volume_size", "storage_class", "ingress", "wait_image", "rollout_timeout", "allow"],
    ),
    (
        "nomad",
        true,
        "A Nomad job rendered from the compose file, registered through Nomad's HTTP API.",
        &["rolling", "canary", "auto_revert", "health_check", "rollback"],
        &["datacenter", "job_name", "count", "driver", "region", "namespace", "group", "update", "service_provider", "wait_image", "allow", "address", "token_file", "ca_cert", "client_cert", "client_key", "tls_server_name"],
    ),
];

// ------------------------------------------------------------------ handlers

#[utoipa::path(get, path = "/api/health", tag = "service",
    responses((status = 200, description = "The coordinator is up", body = Health)), security(()))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: dockfra_common::VERSION.into() })
}

#[utoipa::path(get, path = "/api/whoami", tag = "service",
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiErrorBody)))]
async fn whoami(op: Operator) -> Json<WhoAmI> {
    Json(WhoAmI { operator: op.0.name, via: op.1.into(), expires_unix: op.2 })
}

/// Every target with its live state and a count of each state.
#[utoipa::path(get, path = "/api/deploy-targets", tag = "targets",
    params(("label" = Option<String>, Query, description = "Only targets with these labels: key=value[,key=value…]",
        pattern = "^[^=,]+=[^,]*(,[^=,]+=[^,]*)*$"),
        ("selector" = Option<String>, Query, description = "Only targets whose labels match (kubectl syntax: k=v, k!=v, k in (a,b), k notin (a,b), k, !k)")),
    responses((status = 200, body = proto::TargetList), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn list_targets(State(c): State<Coordinator>, _op: Operator, q: QueryMap) -> ApiResult<Json<proto::TargetList>> {
    q.only(&["label", "selector"])?;
    let selector = q
        .text("selector")?
        .map(dockfra_common::selector::Selector::parse)
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut want = Vec::new();
    for pair in q.text("label")?.map(|s| s.split(',').collect::<Vec<_>>()).unwrap_or_default() {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| ApiError::bad(format!("label {pair:?}: key=value expected")))?;
        want.push((k.to_string(), v.to_string()));
    }
    let keep = |l: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| l.get(k) == Some(v)) && selector.as_ref().is_none_or(|s| s.matches(l))
    };
    Ok(Json(c.target_list(None, keep)?))
}

/// One target: its config, its agent's facts and report, its releases and last deployment.
#[utoipa::path(get, path = "/api/deploy-targets/{id}", tag = "targets",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses((status = 200, body = proto::TargetStatus), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn get_target(
    State(c): State<Coordinator>,
    _op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::TargetStatus>> {
    let list = c.target_list(Some(target_id(&id)?), |_| true)?;
    list.targets.into_iter().next().map(Json).ok_or_else(|| ApiError::from(tonic::Status::not_found(id)))
}

/// What a deploy would change (files, bytes to move, compose services and images), without
/// building a release or telling the agent.
#[utoipa::path(get, path = "/api/deploy-targets/{id}/plan", tag = "deploy",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses((status = 200, body = proto::DeployPlan), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn plan(
    State(c): State<Coordinator>,
    _op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::DeployPlan>> {
    Ok(Json(c.plan(target_id(&id)?).await?))
}

/// The target's resolved environment (`dockfra-coord env --target ID`): its variables with
/// their sources and each service's container environment; secret-looking values masked.
#[utoipa::path(get, path = "/api/deploy-targets/{id}/env", tag = "targets",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses((status = 200, body = crate::envs::TargetEnv), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn target_env(
    State(c): State<Coordinator>,
    _op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::envs::TargetEnv>> {
    let id = target_id(&id)?.to_string();
    let projects = c.projects()?;
    let (project, target) =
        projects.target(&id).ok_or_else(|| ApiError::from(tonic::Status::not_found(format!("no target {id:?}"))))?;
    let env = crate::envs::resolve(project, target)
        .map_err(|e| ApiError::from(tonic::Status::failed_precondition(format!("{e:#}"))))?;
    Ok(Json(env))
}

/// Pre-flight for a deploy (`dockfra-coord check`): per target, ok/warn/fail for the agent,
/// its driver and OS, the runtime, disk against the bundle, memory and host ports, each
/// warning or failure with a category and a fix. Sends nothing to an agent but questions.
#[utoipa::path(get, path = "/api/check", tag = "deploy",
    params(("target" = Option<String>, Query, description = "One target", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
        ("selector" = Option<String>, Query, description = "The targets whose labels match (kubectl syntax)"),
        ("all" = Option<bool>, Query, description = "Every target (also when neither target nor selector is given)")),
    responses((status = 200, body = proto::CheckReport), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn check(State(c): State<Coordinator>, _op: Operator, q: QueryMap) -> ApiResult<Json<proto::CheckReport>> {
    q.only(&["target", "selector", "all"])?;
    let (target, all) = q.target_or_all()?;
    let req = proto::CheckRequest { target, selector: q.text("selector")?.unwrap_or("").to_string(), all };
    Ok(Json(c.check_of(&req).await?))
}

/// What a rollback would do (`dockfra-coord rollback --plan`): per target, the release that
/// comes back, the files and services that change, what stays, and why it could not happen.
#[utoipa::path(get, path = "/api/rollback-plan", tag = "deploy",
    params(("target" = Option<String>, Query, description = "One target", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
        ("to" = Option<String>, Query, description = "With target: the release to go back to (default: the previous one)",
            pattern = "^[A-Za-z0-9._-]{1,128}$"),
        ("selector" = Option<String>, Query, description = "The targets whose labels match (kubectl syntax)"),
        ("all" = Option<bool>, Query, description = "Every target (also when neither target nor selector is given)")),
    responses((status = 200, body = proto::RollbackPlanList), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn rollback_plan(
    State(c): State<Coordinator>,
    _op: Operator,
    q: QueryMap,
) -> ApiResult<Json<proto::RollbackPlanList>> {
    q.only(&["target", "to", "selector", "all"])?;
    let (target, all) = q.target_or_all()?;
    let to = q.text("to")?.unwrap_or("");
    if to.len() > 128 || !to.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)) {
        return Err(ApiError::bad(format!("to {to:?}: expected a release name ([A-Za-z0-9._-], at most 128)")));
    }
    let req = proto::RollbackPlanRequest {
        target,
        to_release: to.to_string(),
        selector: q.text("selector")?.unwrap_or("").to_string(),
        all,
    };
    let this = c.clone();
    let plans = tokio::task::spawn_blocking(move || this.rollback_plans(&req))
        .await
        .map_err(|e| ApiError::from(tonic::Status::internal(e.to_string())))??;
    Ok(Json(plans))
}

/// DEPLOYED.md (`dockfra-coord report`): what runs where, since when, health, the previous
/// release, who deployed it; Markdown.
#[utoipa::path(get, path = "/api/report", tag = "targets",
    params(("selector" = Option<String>, Query, description = "Only targets whose labels match (kubectl syntax)")),
    responses((status = 200, description = "DEPLOYED.md", content_type = "text/markdown", body = String),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn report(State(c): State<Coordinator>, _op: Operator, q: QueryMap) -> ApiResult<Response> {
    q.only(&["selector"])?;
    let selector = q
        .text("selector")?
        .map(dockfra_common::selector::Selector::parse)
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let md = c.report_markdown(|l| selector.as_ref().is_none_or(|s| s.matches(l)))?;
    Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], md).into_response())
}

/// `dockfra-coord generate caddy|systemd|compose` for the served projects (or one target):
/// Caddyfile sites per published port, systemd units for ssh_raw apps, a minimal compose file.
#[utoipa::path(get, path = "/api/generate/{kind}", tag = "targets",
    params(("kind" = String, Path, description = "caddy, systemd or compose", pattern = "^(caddy|systemd|compose)$"),
        ("target" = Option<String>, Query, description = "Only this target", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
        ("domain" = Option<String>, Query, description = "caddy: sites are SERVICE.DOMAIN (default localhost)",
            pattern = "^[A-Za-z0-9.-]{1,253}$"),
        ("upstream" = Option<String>, Query, description = "caddy: the host Caddy reaches the services on",
            pattern = "^[A-Za-z0-9.:-]{1,253}$")),
    responses((status = 200, description = "The file(s)", content_type = "text/plain", body = String),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn generate(
    State(c): State<Coordinator>,
    _op: Operator,
    Path(kind): Path<String>,
    q: QueryMap,
) -> ApiResult<Response> {
    q.only(&["target", "domain", "upstream"])?;
    if !matches!(kind.as_str(), "caddy" | "systemd" | "compose") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no generator {kind:?} (caddy, systemd, compose)"),
        ));
    }
    let target = q.text("target")?.map(target_id).transpose()?.map(str::to_string);
    // The published patterns (`^[A-Za-z0-9.-]{1,253}$`, with `:` for upstream), whichever
    // generator the values are for: a bad value is refused, never passed over.
    let host_like = |key: &str, extra: &str| -> ApiResult<Option<String>> {
        match q.text(key)? {
            Some(v)
                if v.len() > 253
                    || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || ".-".contains(ch) || extra.contains(ch)) =>
            {
                Err(ApiError::bad(format!(
                    "{key} {v:?}: expected a host name ([A-Za-z0-9.-]{}, at most 253)",
                    if extra.is_empty() { "" } else { " and :" }
                )))
            }
            v => Ok(v.map(str::to_string)),
        }
    };
    let domain = host_like("domain", "")?.unwrap_or_else(|| "localhost".into());
    let upstream = host_like("upstream", ":")?;
    let projects = c.projects()?;
    let mut parts = Vec::new();
    for p in projects.list() {
        let targets: Vec<&dockfra_common::config::Target> =
            p.targets.iter().filter(|t| target.as_deref().is_none_or(|id| t.id == id)).collect();
        if targets.is_empty() {
            continue;
        }
        let made = match kind.as_str() {
            "caddy" => crate::generate::caddy(p, &targets, &domain, upstream.as_deref()),
            "systemd" => crate::generate::systemd(p, &targets)
                .map(|units| units.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join("\n")),
            _ => crate::generate::compose_file(p, target.as_ref().and(targets.first().copied())),
        };
        match made {
            Ok(text) => parts.push(text),
            // With one target, its refusal is the answer; over many, a project with nothing to
            // generate is left out.
            // The target's config cannot give this kind.
            Err(e) if target.is_some() => {
                return Err(ApiError::new(StatusCode::CONFLICT, "failed_precondition", format!("{e:#}")))
            }
            Err(_) => {}
        }
    }
    if parts.is_empty() {
        return Err(match &target {
            Some(t) => ApiError::from(tonic::Status::not_found(format!("no target {t:?}"))),
            None => {
                ApiError::from(tonic::Status::failed_precondition(format!("no served target has anything for {kind}")))
            }
        });
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], parts.join("\n")).into_response())
}

/// Validate the served projects as `dockfra-coord validate` does: deploy-targets.yaml and,
/// per target, its compose file; findings name file, targets, service and key.
#[utoipa::path(get, path = "/api/validate", tag = "deploy",
    responses((status = 200, body = crate::validate::Report), (status = 401, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn validate(State(c): State<Coordinator>, _op: Operator) -> ApiResult<Json<crate::validate::Report>> {
    let files = c.inner.project_files.clone();
    let report = tokio::task::spawn_blocking(move || crate::validate::projects(&files))
        .await
        .map_err(|e| ApiError::from(tonic::Status::internal(e.to_string())))?;
    Ok(Json(report))
}

/// Build a release and deliver it. Answers once the deployment is queued; follow it with
/// `GET /api/deployments/{id}/stream`.
#[utoipa::path(post, path = "/api/deploy/{id}", tag = "deploy",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body(content = DeployBody, description = "Optional", content_type = "application/json"),
    responses((status = 202, description = "Queued", body = proto::Deployment), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn deploy(
    State(c): State<Coordinator>,
    op: Operator,
    Path(id): Path<String>,
    RawBody(bytes): RawBody,
) -> ApiResult<(StatusCode, Json<proto::Deployment>)> {
    let id = target_id(&id)?;
    let b: DeployBody = body(&bytes)?;
    let version = b.version.as_deref().map(version_label).transpose()?;
    let order = super::Order { confirm: b.confirm, force: b.force, ..super::Order::by(&op.0.name) };
    let (target, dep) = c.start_deploy(id, version, &order).await?;
    Ok((StatusCode::ACCEPTED, Json(c.launch(target, dep)?)))
}

/// Roll a target back to the previous release, or to a named one its agent keeps.
#[utoipa::path(post, path = "/api/rollback/{id}", tag = "deploy",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body(content = RollbackBody, description = "Optional", content_type = "application/json"),
    responses((status = 202, description = "Queued", body = proto::Deployment), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn rollback(
    State(c): State<Coordinator>,
    op: Operator,
    Path(id): Path<String>,
    RawBody(bytes): RawBody,
) -> ApiResult<(StatusCode, Json<proto::Deployment>)> {
    let id = target_id(&id)?;
    let b: RollbackBody = body(&bytes)?;
    let to = b.to_release.as_deref().map(release_name).transpose()?;
    let order = super::Order { confirm: b.confirm, force: b.force, ..super::Order::by(&op.0.name) };
    let (target, dep) = c.start_rollback(id, to, &order)?;
    Ok((StatusCode::ACCEPTED, Json(c.launch(target, dep)?)))
}

/// Reach the target's agent (push: dial it; pull: when it last polled) and check it can take
/// what this coordinator builds.
#[utoipa::path(post, path = "/api/deploy-test/{id}", tag = "deploy",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses((status = 200, body = proto::DeployTestReport), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 500, body = ApiErrorBody), (status = 503, body = ApiErrorBody)))]
async fn deploy_test(
    State(c): State<Coordinator>,
    op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::DeployTestReport>> {
    let id = target_id(&id)?;
    let r = c.deploy_test_of(id).await?;
    let _ = c.store().event_by(id, "deploy-test", &format!("deploy-test: reachable={}", r.reachable), &op.0.name);
    Ok(Json(r))
}

/// The platforms dockfra knows, whether this build deploys to them, and what each can do.
#[utoipa::path(get, path = "/api/deploy-plugins", tag = "deploy",
    responses((status = 200, body = PluginList), (status = 401, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn plugins(State(c): State<Coordinator>, _op: Operator) -> ApiResult<Json<PluginList>> {
    let agents = c.store().agents()?;
    let plugins = PLUGINS
        .iter()
        .map(|(name, supported, description, caps, keys)| Plugin {
            name: name.to_string(),
            supported: *supported,
            description: description.to_string(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            config_keys: keys.iter().map(|s| s.to_string()).collect(),
            agents: agents
                .iter()
                .filter(|a| !a.revoked && a.facts["platforms"].as_array().into_iter().flatten().any(|p| p == name))
                .map(|a| a.target.clone())
                .collect(),
        })
        .collect();
    Ok(Json(PluginList { plugins }))
}

/// Deployments, newest first.
#[utoipa::path(get, path = "/api/deployments", tag = "history",
    params(
        ("target" = Option<String>, Query, description = "Only this target", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
        ("selector" = Option<String>, Query, description = "Only targets whose labels match (kubectl syntax: k=v, k!=v, k in (a,b), k notin (a,b), k, !k)"),
        ("result" = Option<DeployStatus>, Query, description = "Only deployments with this status"),
        ("since" = Option<u64>, Query, description = "Started at or after (unix seconds)"),
        ("until" = Option<u64>, Query, description = "Started at or before (unix seconds)"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 200, at most 10000)", minimum = 1, maximum = 10000),
    ),
    responses((status = 200, body = proto::DeploymentList), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn history(State(c): State<Coordinator>, _op: Operator, q: QueryMap) -> ApiResult<Json<proto::DeploymentList>> {
    q.only(&["target", "selector", "result", "since", "until", "limit"])?;
    let target = q.text("target")?.map(target_id).transpose()?.unwrap_or_default().to_string();
    let result = q.text("result")?.unwrap_or_default().to_string();
    if !result.is_empty() && !STATUSES.contains(&result.as_str()) {
        return Err(ApiError::bad(format!("result {result:?}: one of {} is expected", STATUSES.join(", "))));
    }
    let limit = q.num("limit", 10_000)?;
    if limit == Some(0) {
        return Err(ApiError::bad("limit=0: ask for at least one"));
    }
    let r = proto::HistoryRequest {
        selector: q.text("selector")?.unwrap_or_default().to_string(),
        target,
        result,
        since_unix: q.num("since", i64::MAX as u64)?.unwrap_or(0),
        until_unix: q.num("until", i64::MAX as u64)?.unwrap_or(0),
        limit: limit.unwrap_or(0) as u32,
    };
    Ok(Json(c.history_of(&r)?))
}

/// One deployment and its events, oldest first.
#[utoipa::path(get, path = "/api/deployments/{id}", tag = "history",
    params(("id" = String, Path, description = "Deployment id", pattern = "^[A-Za-z0-9-]{3,64}$")),
    responses((status = 200, body = proto::DeploymentDetail), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn get_deployment(
    State(c): State<Coordinator>,
    _op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::DeploymentDetail>> {
    Ok(Json(c.deployment_detail(deployment_id(&id)?)?))
}

/// Live progress of one deployment (server-sent events): `snapshot` (a DeploymentDetail),
/// then a `progress` event (a DeployEvent) per step, then `end` (the final Deployment).
#[utoipa::path(get, path = "/api/deployments/{id}/stream", tag = "history",
    params(("id" = String, Path, description = "Deployment id", pattern = "^[A-Za-z0-9-]{3,64}$")),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 500, body = ApiErrorBody)))]
async fn deployment_stream(State(c): State<Coordinator>, _op: Operator, Path(id): Path<String>) -> ApiResult<Response> {
    let id = deployment_id(&id)?.to_string();
    // Subscribe before the snapshot: no step falls between the two.
    let mut sub = c.inner.events.subscribe();
    let detail = c.deployment_detail(&id)?;
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let done = detail.deployment.as_ref().is_some_and(|d| d.done);
        if tx.send(json_event("snapshot", &detail)).await.is_err() {
            return;
        }
        let end = |c: &Coordinator| c.deployment_detail(&id).ok().and_then(|d| d.deployment);
        // A step recorded just before the snapshot was read may still arrive on the
        // broadcast: the snapshot had it, so it is not sent twice.
        let mut in_snapshot: Vec<(String, String)> =
            detail.events.iter().map(|e| (e.kind.clone(), e.message.clone())).collect();
        if !done {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    got = sub.recv() => match got {
                        Ok((_, ev)) if ev.deployment_id == id => {
                            let dup = in_snapshot.iter().position(|(k, m)| *k == ev.phase && *m == ev.message);
                            if let Some(i) = dup {
                                in_snapshot.swap_remove(i);
                            } else if tx.send(json_event("progress", &ev)).await.is_err() {
                                return;
                            }
                            if ev.r#final {
                                break;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // A deployment can also end without an event here (a timeout, an export):
                    // look at its row now and then.
                    _ = tick.tick() => {
                        if end(&c).is_some_and(|d| d.done) {
                            break;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        }
        if let Some(d) = end(&c) {
            let _ = tx.send(json_event("end", &d)).await;
        }
    });
    Ok(sse(rx))
}

/// Live progress of the whole fleet (server-sent events): a `progress` event (a DeployEvent
/// with its target) per step of every deployment.
#[utoipa::path(get, path = "/api/stream", tag = "history",
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String),
        (status = 401, body = ApiErrorBody)))]
async fn fleet_stream(State(c): State<Coordinator>, _op: Operator) -> Response {
    let mut sub = c.inner.events.subscribe();
    let (tx, rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(async move {
        loop {
            // A client that went away ends the task at once, events or not.
            let got = tokio::select! {
                got = sub.recv() => got,
                _ = tx.closed() => return,
            };
            let msg = match got {
                Ok((_, ev)) => json_event("progress", &ev),
                Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(n.to_string()),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    sse(rx)
}

fn json_event<T: Serialize>(name: &str, v: &T) -> SseEvent {
    SseEvent::default().event(name).data(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

fn sse(rx: mpsc::Receiver<SseEvent>) -> Response {
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    let mut r = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// What a fleet deploy does to each target.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetAction {
    Deploy,
    Rollback,
    /// Each chosen target's agent to the dockfra-agent binary for it in the coordinator's
    /// `agent-binaries` dir (its SHA256SUMS checked).
    Upgrade,
}

/// A fleet deploy: the targets a selector names (or all), in waves.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct FleetBody {
    /// kubectl-style selector over the targets' labels (or `all`).
    pub selector: Option<String>,
    #[serde(default)]
    pub all: bool,
    /// deploy (default), rollback (each target to its previous release) or upgrade (each
    /// target's agent to a new dockfra-agent binary).
    pub action: Option<FleetAction>,
    /// These target ids instead of a selector.
    #[serde(default)]
    #[schema(max_items = 10000, value_type = Vec<String>)]
    pub targets: Vec<String>,
    /// upgrade: how long a new agent has to reach the coordinator before the old one comes
    /// back (0: 2 min).
    #[serde(default)]
    #[schema(maximum = 86400000)]
    pub trial_timeout_ms: u64,
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
    pub version: Option<String>,
    /// Targets per wave after the canary (0: all of them in one wave).
    #[serde(default)]
    #[schema(maximum = 100000)]
    pub max_parallel: u32,
    /// "N" or "N%": a first wave that must stay healthy for soak_ms.
    #[schema(pattern = r"^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$")]
    pub canary: Option<String>,
    #[serde(default)]
    #[schema(maximum = 86400000)]
    pub soak_ms: u64,
    #[serde(default)]
    #[schema(maximum = 86400000)]
    pub wave_timeout_ms: u64,
    /// Required when production targets are among them.
    #[serde(default)]
    pub confirm: bool,
    #[serde(default)]
    pub force: bool,
    /// Use the waves deploy-targets.yaml declares (not with canary).
    #[serde(default)]
    pub waves: bool,
    /// A failed wave's targets that took the release roll back.
    #[serde(default)]
    pub auto_rollback: bool,
}

/// Start a fleet deploy. Answers at once with its plan (202); follow it with
/// `GET /api/fleet-deploys/{id}`.
#[utoipa::path(post, path = "/api/fleet-deploys", tag = "deploy",
    request_body(content = FleetBody, content_type = "application/json"),
    responses((status = 202, description = "Started", body = proto::FleetDeployInfo), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn fleet_deploy(
    State(c): State<Coordinator>,
    op: Operator,
    RawBody(bytes): RawBody,
) -> ApiResult<(StatusCode, Json<proto::FleetDeployInfo>)> {
    let b: FleetBody = body(&bytes)?;
    let version = b.version.as_deref().map(version_label).transpose()?.unwrap_or_default().to_string();
    if let Some(c) = &b.canary {
        // As the schema says: 1-999999, or 1%-100%.
        let (num, pct) = c.strip_suffix('%').map(|n| (n, true)).unwrap_or((c.as_str(), false));
        let digits = !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) && !num.starts_with('0');
        let ok = digits && if pct { num.len() <= 2 || num == "100" } else { num.len() <= 6 };
        if !ok {
            return Err(ApiError::bad(format!(
                "canary {c:?}: a number of targets (1-999999) or a percentage (1%-100%)"
            )));
        }
    }
    if b.max_parallel > 100_000 {
        return Err(ApiError::bad("max_parallel: at most 100000"));
    }
    if b.soak_ms > 86_400_000 || b.wave_timeout_ms > 86_400_000 || b.trial_timeout_ms > 86_400_000 {
        return Err(ApiError::bad("soak_ms, wave_timeout_ms and trial_timeout_ms: at most a day (86400000)"));
    }
    if b.targets.len() > 10_000 {
        return Err(ApiError::bad("targets: at most 10000"));
    }
    let r = proto::FleetDeployRequest {
        selector: b.selector.unwrap_or_default(),
        all: b.all,
        action: match b.action {
            Some(FleetAction::Rollback) => "rollback".into(),
            Some(FleetAction::Upgrade) => "upgrade".into(),
            _ => "deploy".into(),
        },
        targets: b.targets,
        binaries: String::new(),
        trial_timeout_ms: b.trial_timeout_ms,
        version,
        max_parallel: b.max_parallel,
        canary: b.canary.unwrap_or_default(),
        soak_ms: b.soak_ms,
        wave_timeout_ms: b.wave_timeout_ms,
        confirm: b.confirm,
        force: b.force,
        waves: b.waves,
        auto_rollback: b.auto_rollback,
    };
    Ok((StatusCode::ACCEPTED, Json(c.create_fleet(&r, &op.0.name)?)))
}

/// Fleet deploys, newest first.
#[utoipa::path(get, path = "/api/fleet-deploys", tag = "deploy",
    responses((status = 200, body = proto::FleetDeployList), (status = 401, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn fleet_deploys(State(c): State<Coordinator>, _op: Operator) -> ApiResult<Json<proto::FleetDeployList>> {
    Ok(Json(c.fleet_list(100)?))
}

/// One fleet deploy: its waves and which target runs what.
#[utoipa::path(get, path = "/api/fleet-deploys/{id}", tag = "deploy",
    params(("id" = String, Path, description = "Fleet deploy id", pattern = "^[A-Za-z0-9-]{3,64}$")),
    responses((status = 200, body = proto::FleetDeployInfo), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn get_fleet_deploy(
    State(c): State<Coordinator>,
    _op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::FleetDeployInfo>> {
    Ok(Json(c.fleet_info(deployment_id(&id)?)?))
}

/// Stop a running fleet deploy: orders already given run on, no further target is ordered.
#[utoipa::path(post, path = "/api/fleet-deploys/{id}/cancel", tag = "deploy",
    params(("id" = String, Path, description = "Fleet deploy id", pattern = "^[A-Za-z0-9-]{3,64}$")),
    responses((status = 200, body = proto::FleetDeployInfo), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn cancel_fleet_deploy(
    State(c): State<Coordinator>,
    op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::FleetDeployInfo>> {
    Ok(Json(c.cancel_fleet(deployment_id(&id)?, &op.0.name)?))
}

/// Enrolled agents.
#[utoipa::path(get, path = "/api/agents", tag = "agents",
    responses((status = 200, body = proto::AgentList), (status = 401, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn agents(State(c): State<Coordinator>, _op: Operator) -> ApiResult<Json<proto::AgentList>> {
    let projects = c.projects().ok();
    Ok(Json(proto::AgentList {
        agents: c
            .store()
            .agents()?
            .iter()
            .map(|a| views::agent_info(a, projects.as_deref(), c.watching(&a.target)))
            .collect(),
    }))
}

/// Revoke a target's agent: its certificate stops working at its next call.
#[utoipa::path(post, path = "/api/agents/{id}/revoke", tag = "agents",
    params(("id" = String, Path, description = "Target id", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses((status = 200, body = proto::AgentInfo), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn revoke_agent(
    State(c): State<Coordinator>,
    op: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<proto::AgentInfo>> {
    Ok(Json(c.revoke_agent_by(target_id(&id)?, &op.0.name)?))
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/api/events", tag = "history",
    params(
        ("target" = Option<String>, Query, description = "Only this target (`-` for coordinator-wide events)",
            pattern = "^(-|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 10000)", minimum = 1, maximum = 10000),
    ),
    responses((status = 200, body = proto::EventList), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn events(State(c): State<Coordinator>, op: Operator, q: QueryMap) -> ApiResult<Json<proto::EventList>> {
    q.only(&["target", "limit"])?;
    let target = q.text("target")?.unwrap_or_default().to_string();
    if !target.is_empty() && target != "-" {
        target_id(&target)?;
    }
    let limit = q.num("limit", 10_000)?;
    if limit == Some(0) {
        return Err(ApiError::bad("limit=0: ask for at least one"));
    }
    let r = proto::EventsRequest { target, limit: limit.unwrap_or(0) as u32 };
    let list = proto::admin_server::Admin::events(&c, as_admin(&op, r)).await?;
    Ok(Json(list.into_inner()))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ApiErrorBody), (status = 500, body = ApiErrorBody)))]
async fn metrics_route(State(c): State<Coordinator>, _op: Operator) -> ApiResult<Response> {
    let text = metrics::render(&c)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dockfra coordinator API", description = "Deploy, watch and roll back the fleet. \
        Authenticate with `Authorization: Bearer <token>` (`dockfra-coord operator token` prints one) \
        or an operator's client certificate."),
    paths(health, whoami, list_targets, get_target, plan, deploy, rollback, deploy_test, plugins, history,
        get_deployment, deployment_stream, fleet_stream, agents, revoke_agent, events, metrics_route,
        fleet_deploy, fleet_deploys, get_fleet_deploy, cancel_fleet_deploy, validate, target_env, check, rollback_plan, report, generate),
    components(schemas(ApiErrorBody, DeployStatus, proto::FleetTarget, proto::Runtime, proto::Facts, proto::DiskUsage, proto::ReleaseInfo,
        proto::Deployment, proto::Event, proto::DeployEvent, proto::FileChange, proto::ServiceChange)),
    modifiers(&Security),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.info.version = dockfra_common::VERSION.to_string();
        // Every selector (query parameters and the fleet deploy's body) with the language's
        // exact pattern, from the parser's own crate.
        let selector = || {
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .min_length(Some(1))
                .pattern(Some(dockfra_common::selector::PATTERN))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten().filter(|p| p.name == "selector") {
                    p.schema = Some(selector().into());
                }
            }
        }
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(body))) =
            openapi.components.as_mut().and_then(|c| c.schemas.get_mut("FleetBody"))
        {
            body.properties.insert("selector".into(), selector().into());
        }
    }
}

/// The OpenAPI document of this API.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into())
}

async fn openapi_route(_op: Operator) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route (GET /api/openapi.json lists them)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method (GET /api/openapi.json lists them)",
    )
}

impl Coordinator {
    /// Deliver a queued deployment in the background and return its row (the API's 202).
    fn launch(&self, target: dockfra_common::config::Target, id: String) -> ApiResult<proto::Deployment> {
        let mut events = self.deliver(target, id.clone(), false, Duration::from_secs(600));
        // The delivery runs whether or not anyone follows it; drain what it says.
        tokio::spawn(async move { while events.next().await.is_some() {} });
        let row = self.store().deployment(&id)?.ok_or_else(|| tonic::Status::not_found(id))?;
        Ok(views::deployment(&row))
    }
}

/// The API's and the dashboard's routes.
pub fn router(c: Coordinator) -> Router {
    let api = Router::new()
        .route("/api/health", get(health))
        .route("/api/whoami", get(whoami))
        .route("/api/openapi.json", get(openapi_route))
        .route("/api/deploy-targets", get(list_targets))
        .route("/api/deploy-targets/{id}", get(get_target))
        .route("/api/deploy-targets/{id}/plan", get(plan))
        .route("/api/deploy-targets/{id}/env", get(target_env))
        .route("/api/deploy/{id}", post(deploy))
        .route("/api/rollback/{id}", post(rollback))
        .route("/api/deploy-test/{id}", post(deploy_test))
        .route("/api/deploy-plugins", get(plugins))
        .route("/api/deployments", get(history))
        .route("/api/deployments/{id}", get(get_deployment))
        .route("/api/deployments/{id}/stream", get(deployment_stream))
        .route("/api/stream", get(fleet_stream))
        .route("/api/fleet-deploys", get(fleet_deploys).post(fleet_deploy))
        .route("/api/fleet-deploys/{id}", get(get_fleet_deploy))
        .route("/api/fleet-deploys/{id}/cancel", post(cancel_fleet_deploy))
        .route("/api/agents", get(agents))
        .route("/api/agents/{id}/revoke", post(revoke_agent))
        .route("/api/events", get(events))
        .route("/api/validate", get(validate))
        .route("/api/check", get(check))
        .route("/api/rollback-plan", get(rollback_plan))
        .route("/api/report", get(report))
        .route("/api/generate/{kind}", get(generate))
        .route("/metrics", get(metrics_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(c);
    super::web::routes().merge(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder().method(method).uri("/api/deploy/edge");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn changes_from_another_site_are_refused() {
        let host = ("host", "deploy.lan:8443");
        assert!(refuse_cross_site(&parts("POST", &[host])).is_ok(), "scripts send no Origin");
        assert!(refuse_cross_site(&parts("POST", &[host, ("origin", "https://deploy.lan:8443")])).is_ok());
        assert!(refuse_cross_site(&parts("POST", &[host, ("origin", "https://DEPLOY.lan:8443")])).is_ok());
        assert!(refuse_cross_site(&parts("POST", &[("host", "d.lan:443"), ("origin", "https://d.lan")])).is_ok());
        assert!(refuse_cross_site(&parts("POST", &[host, ("sec-fetch-site", "same-origin")])).is_ok());
        for bad in [
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "http://deploy.lan:8443")],
            vec![host, ("origin", "null")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
        ] {
            let e = refuse_cross_site(&parts("POST", &bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad:?}");
        }
        // Reading is not a change (and another page cannot see the answer).
        assert!(refuse_cross_site(&parts("GET", &[host, ("origin", "https://evil.example")])).is_ok());
    }

    #[test]
    fn path_and_body_values_are_checked_before_use() {
        for ok in ["edge-rpi3", "a", "prod-vps-01"] {
            assert!(target_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "x-", "Edge", "a_b", "../etc", &"a".repeat(64)] {
            assert!(target_id(bad).is_err(), "{bad}");
        }
        assert!(version_label("1.4.0+build-2").is_ok());
        for bad in ["", "-1", "../x", "a b", &"v".repeat(65)] {
            assert!(version_label(bad).is_err(), "{bad}");
        }
        assert!(release_name("3-1a2b3c4d5e6f").is_ok());
        for bad in ["3", "-1a2b", "x-1a2b", "3-XYZ", "3-1a2b/..", "3-"] {
            assert!(release_name(bad).is_err(), "{bad}");
        }
        assert!(deployment_id("d-1796135692310-cd2662").is_ok());
        assert!(deployment_id("d 1").is_err() && deployment_id("d/../x").is_err());
        assert!(body::<DeployBody>(b"  ").unwrap().version.is_none());
        assert!(body::<DeployBody>(b"[1]").is_err());
        assert!(body::<DeployBody>(br#"{"version": 5}"#).is_err());
    }
}
