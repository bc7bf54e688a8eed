//! Who is calling, and may they: the one place where hvd authenticates and authorizes.
//!
//! The serve loop tags every connection with its [`Peer`]. [`guard`] runs before every route:
//! it turns the peer (and a bearer token on TLS) into a [`auth::Principal`], looks up the
//! route's declared rule in [`RULES`], asks [`auth::Principal::decide`], and answers 401, 403 or
//! 404 (a VM the caller may not see does not exist for them) before any handler runs. Handlers
//! never check rights; list handlers only filter with [`Caller::sees`]. Every request that
//! changes something is audited: by `routes::op` with its operation id, or here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use api::ErrorCode;
use auth::{Action, Decision, Object, Principal};
use axum::body::Body;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engine::{Access, AuditEntry, Engine};

use crate::routes::ApiError;

/// The connection a request came on, tagged by the serve loop.
#[derive(Debug, Clone)]
pub enum Peer {
    /// The Unix socket; `admin` when the uid is root or in the admin group.
    Unix { uid: u32, admin: bool },
    /// A TLS connection from this address.
    Tls { addr: std::net::SocketAddr },
}

/// What the guard needs.
#[derive(Clone)]
pub struct Guard {
    pub engine: Engine,
    pub access: Arc<Access>,
}

/// The authenticated caller of the current request, passed down for audit and list filtering.
#[derive(Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// The token (or session) the caller authenticated with, if any.
    pub token_id: Option<String>,
    access: Arc<Access>,
    action: Action,
    /// What the audit log names as the object (`vm/web-1`, `network/lan`, `user/alice`).
    object: String,
    /// Set once this request's change is in the audit log (by its operation).
    audited: Arc<AtomicBool>,
}

tokio::task_local! {
    /// The caller of the request this task serves (set by [`guard`] around the handler).
    pub static CALLER: Caller;
}

/// The caller of the request this task serves; `None` outside [`guard`].
pub fn current() -> Option<Caller> {
    CALLER.try_with(Caller::clone).ok()
}

impl Caller {
    /// For a session that stays open (a console): whether `r` ends this caller's access. A
    /// local admin's socket access is not a credential that can be revoked.
    pub fn revoked_by(&self, r: &engine::Revocation) -> bool {
        match (r, &self.principal.who) {
            (engine::Revocation::Token(id), _) => self.token_id.as_deref() == Some(id.as_str()),
            (engine::Revocation::User(u), auth::Who::User { name, .. }) => u == name,
            (engine::Revocation::User(_), auth::Who::LocalAdmin { .. }) => false,
        }
    }

    /// Revocations from now on (see [`revoked_by`](Self::revoked_by)).
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<engine::Revocation> {
        self.access.revocations()
    }

    /// Whether the caller may see a VM (lists and event streams leave out the others).
    pub fn sees(&self, vm: &str) -> bool {
        self.principal
            .may(Action::VmAudit, &Object::Vm(vm.to_string()))
    }

    /// Whether the caller may see an operation's target (`vm/NAME`, `network/NAME`, ...).
    pub fn sees_target(&self, target: &str) -> bool {
        match target.strip_prefix("vm/") {
            Some(vm) => self.sees(vm),
            None => self.principal.may(Action::HostAudit, &Object::Global),
        }
    }

    /// Appends this request's audit record (once).
    /// Appends an entry for something the request started that is not its own outcome (a
    /// console session attaching and detaching); any number of them.
    pub fn audit_event(&self, what: &str, result: &str) {
        let entry = AuditEntry {
            principal: self.principal.audit_name(),
            source: self.principal.source.clone(),
            object: self.object.clone(),
            action: format!("{} {what}", self.action),
            result: result.to_string(),
            operation_id: None,
        };
        if let Err(e) = self.access.audit(&entry) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    pub fn audit(&self, what: &str, result: &str, operation_id: Option<u64>) {
        if self.audited.swap(true, Ordering::SeqCst) {
            return;
        }
        let entry = AuditEntry {
            principal: self.principal.audit_name(),
            source: self.principal.source.clone(),
            object: self.object.clone(),
            action: format!("{} {what}", self.action),
            result: result.to_string(),
            operation_id,
        };
        if let Err(e) = self.access.audit(&entry) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    /// An audit hook for an operation: the operation records its id and outcome when it
    /// finishes, whatever its connection does meanwhile (the guard then records nothing).
    pub fn audit_operation(
        &self,
        kind: &str,
        target: &str,
    ) -> impl FnOnce(u64, Result<(), &engine::EngineError>) + Send + 'static {
        self.audited.store(true, Ordering::SeqCst);
        let me = Caller {
            audited: Default::default(),
            object: target.to_string(),
            ..self.clone()
        };
        let kind = kind.to_string();
        move |id, r| {
            let result = match r {
                Ok(()) => "ok",
                Err(e) => e.code().as_str(),
            };
            me.audit(&kind, result, Some(id));
        }
    }
}

/// How a route names its object.
#[derive(Debug, Clone, Copy)]
pub enum On {
    /// Not a VM: the host, networks, pools, users, the audit log.
    Global,
    /// The VM in the `{name}` path parameter.
    Vm,
    /// The VM named in the request body's spec (define); host paths in it need `HostPaths`.
    NewVm,
    /// The `{name}` VM; host paths in the body (a spec, a disk, a medium) need `HostPaths`.
    VmWithPaths,
    /// The target of the `{id}` operation.
    Operation,
}

/// The rule of one route: which right it needs, on what.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub action: Action,
    pub on: On,
    /// Only reads, though its right is one that changes things (listing what a change may
    /// pick from): a session needs no CSRF header for it, and it is not audited as a change.
    pub reads: bool,
}

const fn rule(action: Action, on: On) -> Rule {
    Rule {
        action,
        on,
        reads: false,
    }
}

/// A [`rule`] for a route that only reads.
const fn read(action: Action, on: On) -> Rule {
    Rule {
        action,
        on,
        reads: true,
    }
}

impl Rule {
    /// Whether a request to the route changes nothing.
    pub fn is_read(&self) -> bool {
        self.reads || self.action.is_read()
    }
}

/// Every route's rule, by method and path as the router (and the OpenAPI document) spell it.
/// A route missing here is refused for everyone but a local admin, and fails the test that
/// walks the OpenAPI route list.
#[rustfmt::skip]
pub const RULES: &[(&str, &str, Rule)] = {
    use Action::*;
    use On::*;
    &[
        ("get", "/v1/ping", rule(Authenticated, Global)),
        ("get", "/v1/openapi.json", rule(Authenticated, Global)),
        ("get", "/v1/host/check", rule(HostAudit, Global)),
        ("get", "/v1/host/cert", rule(Authenticated, Global)),
        ("get", "/v1/host/backup", rule(HostAdmin, Global)),
        ("post", "/v1/login", rule(Login, Global)),
        ("post", "/v1/session", rule(Login, Global)),
        ("delete", "/v1/session", rule(Logout, Global)),
        ("get", "/", rule(Public, Global)),
        ("get", "/ui", rule(Public, Global)),
        ("get", "/ui/", rule(Public, Global)),
        ("get", "/ui/{*path}", rule(Public, Global)),
        ("post", "/v1/host/bridges", rule(HostAdmin, Global)),
        ("delete", "/v1/host/bridges/{bridge}", rule(HostAdmin, Global)),
        ("get", "/v1/events", rule(Authenticated, Global)),
        ("get", "/v1/stats", rule(Authenticated, Global)),
        ("get", "/metrics", rule(MetricsRead, Global)),
        ("get", "/v1/vms/{name}/stats", rule(VmAudit, Vm)),
        ("get", "/v1/vms", rule(Authenticated, Global)),
        ("post", "/v1/vms", rule(VmAllocate, NewVm)),
        ("get", "/v1/vms/{name}", rule(VmAudit, Vm)),
        ("put", "/v1/vms/{name}", rule(VmConfig, VmWithPaths)),
        ("delete", "/v1/vms/{name}", rule(VmAllocate, Vm)),
        ("post", "/v1/vms/{name}/start", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/shutdown", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/reboot", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/destroy", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/reset", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/pause", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/resume", rule(VmPowerMgmt, Vm)),
        ("post", "/v1/vms/{name}/undefine", rule(VmAllocate, Vm)),
        ("post", "/v1/vms/{name}/autostart", rule(VmConfig, Vm)),
        ("post", "/v1/vms/{name}/wait", rule(VmAudit, Vm)),
        ("get", "/v1/vms/{name}/showcmd", rule(VmAudit, Vm)),
        ("get", "/v1/vms/{name}/console/log", rule(VmConsole, Vm)),
        ("get", "/v1/vms/{name}/console", rule(VmConsole, Vm)),
        ("get", "/v1/vms/{name}/vnc", rule(VmConsole, Vm)),
        ("get", "/v1/vms/{name}/control", rule(VmConsole, Vm)),
        ("post", "/v1/vms/{name}/control", rule(VmConsoleInput, Vm)),
        ("get", "/v1/consoles", rule(Authenticated, Global)),
        ("post", "/v1/vms/{name}/disks", rule(VmConfig, VmWithPaths)),
        ("post", "/v1/vms/{name}/disks/{target}/detach", rule(VmConfig, Vm)),
        ("post", "/v1/vms/{name}/nics", rule(VmConfig, Vm)),
        ("post", "/v1/vms/{name}/nics/{mac}/detach", rule(VmConfig, Vm)),
        ("get", "/v1/vms/{name}/resources", rule(VmAudit, Vm)),
        ("post", "/v1/vms/{name}/resources", rule(VmConfig, Vm)),
        // Defines a VM not named in the path: allocation on all VMs.
        ("post", "/v1/vms/{name}/clone", rule(VmAllocate, Global)),
        ("post", "/v1/vms/{name}/migrate", rule(VmMigrate, Vm)),
        ("post", "/v1/migrations/incoming", rule(HostAdmin, Global)),
        ("get", "/v1/migrations/incoming/{id}", rule(HostAdmin, Global)),
        ("delete", "/v1/migrations/incoming/{id}", rule(HostAdmin, Global)),
        ("post", "/v1/migrations/incoming/{id}/finish", rule(HostAdmin, Global)),
        ("get", "/v1/migrations/incoming/{id}/tunnel/{channel}", rule(HostAdmin, Global)),
        ("post", "/v1/vms/{name}/media", rule(VmMedia, VmWithPaths)),
        ("post", "/v1/vms/{name}/media/eject", rule(VmMedia, Vm)),
        // Lists what VM.Media may insert, so it needs that right, but it only reads.
        ("get", "/v1/vms/{name}/media/choices", read(VmMedia, Vm)),
        ("put", "/v1/vms/{name}/media/upload", rule(VmMedia, Vm)),
        // Also needs VmMedia, checked by the handler with the same decide (one rule per route).
        ("post", "/v1/vms/{name}/media/boot", rule(VmPowerMgmt, Vm)),
        ("get", "/v1/vms/{name}/screenshot", rule(VmConsole, Vm)),
        ("post", "/v1/vms/{name}/keys", rule(VmConsoleInput, Vm)),
        ("get", "/v1/vms/{name}/snapshots", rule(VmAudit, Vm)),
        ("post", "/v1/vms/{name}/snapshots", rule(VmSnapshot, Vm)),
        ("get", "/v1/vms/{name}/snapshots/current", rule(VmAudit, Vm)),
        ("get", "/v1/vms/{name}/snapshots/{snap}", rule(VmAudit, Vm)),
        ("delete", "/v1/vms/{name}/snapshots/{snap}", rule(VmSnapshotDelete, Vm)),
        ("post", "/v1/vms/{name}/snapshots/{snap}/revert", rule(VmSnapshot, Vm)),
        ("get", "/v1/networks", rule(NetworkAudit, Global)),
        ("post", "/v1/networks", rule(NetworkAdmin, Global)),
        ("get", "/v1/networks/{net}", rule(NetworkAudit, Global)),
        ("delete", "/v1/networks/{net}", rule(NetworkAdmin, Global)),
        ("post", "/v1/networks/{net}/start", rule(NetworkAdmin, Global)),
        ("post", "/v1/networks/{net}/stop", rule(NetworkAdmin, Global)),
        ("post", "/v1/networks/{net}/autostart", rule(NetworkAdmin, Global)),
        ("get", "/v1/networks/{net}/leases", rule(NetworkAudit, Global)),
        ("get", "/v1/networks/{net}/forwards", rule(NetworkAudit, Global)),
        ("post", "/v1/networks/{net}/forwards", rule(NetworkAdmin, Global)),
        ("delete", "/v1/networks/{net}/forwards/{proto}/{port}", rule(NetworkAdmin, Global)),
        ("get", "/v1/networks/{net}/reservations", rule(NetworkAudit, Global)),
        ("post", "/v1/networks/{net}/reservations", rule(NetworkAdmin, Global)),
        ("delete", "/v1/networks/{net}/reservations/{key}", rule(NetworkAdmin, Global)),
        ("get", "/v1/operations", rule(OperationRead, Global)),
        ("get", "/v1/operations/{id}", rule(OperationRead, Operation)),
        ("post", "/v1/operations/{id}/cancel", rule(OperationCancel, Operation)),
        ("get", "/v1/pools", rule(StorageAudit, Global)),
        ("post", "/v1/pools", rule(StorageAdmin, Global)),
        ("get", "/v1/pools/{pool}", rule(StorageAudit, Global)),
        ("delete", "/v1/pools/{pool}", rule(StorageAdmin, Global)),
        ("post", "/v1/pools/{pool}/undefine", rule(StorageAdmin, Global)),
        ("get", "/v1/pools/{pool}/volumes", rule(StorageAudit, Global)),
        ("post", "/v1/pools/{pool}/volumes", rule(StorageAdmin, Global)),
        ("post", "/v1/pools/{pool}/import", rule(StorageAdmin, Global)),
        ("get", "/v1/pools/{pool}/volumes/{vol}", rule(StorageAudit, Global)),
        ("delete", "/v1/pools/{pool}/volumes/{vol}", rule(StorageAdmin, Global)),
        ("post", "/v1/pools/{pool}/volumes/{vol}/clone", rule(StorageAdmin, Global)),
        ("post", "/v1/pools/{pool}/volumes/{vol}/resize", rule(StorageAdmin, Global)),
        ("get", "/v1/pools/{pool}/volumes/{vol}/data", rule(StorageAdmin, Global)),
        ("put", "/v1/pools/{pool}/volumes/{vol}/data", rule(StorageAdmin, Global)),
        ("get", "/v1/pools/{pool}/volumes/{vol}/stream", rule(StorageAdmin, Global)),
        ("put", "/v1/pools/{pool}/volumes/{vol}/stream", rule(StorageAdmin, Global)),
        ("get", "/v1/users", rule(UserAdmin, Global)),
        ("post", "/v1/users", rule(UserAdmin, Global)),
        ("get", "/v1/users/{user}", rule(UserAdmin, Global)),
        ("delete", "/v1/users/{user}", rule(UserAdmin, Global)),
        ("post", "/v1/users/{user}/password", rule(UserAdmin, Global)),
        ("post", "/v1/users/{user}/grants", rule(UserAdmin, Global)),
        ("post", "/v1/users/{user}/grants/revoke", rule(UserAdmin, Global)),
        ("get", "/v1/tokens", rule(UserAdmin, Global)),
        ("post", "/v1/tokens", rule(UserAdmin, Global)),
        ("delete", "/v1/tokens/{id}", rule(UserAdmin, Global)),
        ("get", "/v1/audit", rule(AuditRead, Global)),
    ]
};

/// The rule of a route, if it declares one.
pub fn rule_of(method: &Method, path: &str) -> Option<Rule> {
    let m = method.as_str().to_ascii_lowercase();
    RULES
        .iter()
        .find(|(rm, rp, _)| *rm == m && *rp == path)
        .map(|(_, _, r)| *r)
}

fn refuse(code: ErrorCode, msg: impl Into<String>) -> Response {
    let mut r = ApiError(code, msg.into()).into_response();
    if code == ErrorCode::Unauthenticated {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"hv\""),
        );
    }
    r
}

/// Bodies the guard reads to find a route's object (specs, disks, media) are small JSON.
const MAX_INSPECTED_BODY: usize = 4 << 20;

/// The host files a spec names (disks that are not pool volumes, kernel, initrd, CD-ROM).
fn spec_host_paths(spec: &model::VmSpec) -> Vec<String> {
    let mut out = Vec::new();
    for d in &spec.disks {
        if d.vol.is_none() && !d.path.as_os_str().is_empty() {
            out.push(d.path.display().to_string());
        }
    }
    if let Some(k) = &spec.kernel {
        out.push(k.path.display().to_string());
        out.extend(k.initrd.iter().map(|i| i.display().to_string()));
    }
    if spec.cdrom.is_some() && spec.cdrom_vol().is_none() {
        out.extend(spec.cdrom.iter().map(|c| c.display().to_string()));
    }
    out
}

/// Host paths a request body names, for the routes whose rule is [`On::NewVm`] or
/// [`On::VmWithPaths`]. An unreadable body names none: the handler refuses it.
fn host_paths(path: &str, body: &[u8]) -> Vec<String> {
    let spec_paths = spec_host_paths;
    if path == "/v1/vms" {
        serde_json::from_slice::<api::CreateVmRequest>(body)
            .map(|r| spec_paths(&r.spec))
            .unwrap_or_default()
    } else if path == "/v1/vms/{name}" {
        serde_json::from_slice::<model::VmSpec>(body)
            .map(|s| spec_paths(&s))
            .unwrap_or_default()
    } else if path.ends_with("/disks") {
        serde_json::from_slice::<api::AttachDiskRequest>(body)
            .ok()
            .filter(|r| r.disk.vol.is_none() && !r.disk.path.as_os_str().is_empty())
            .map(|r| vec![r.disk.path.display().to_string()])
            .unwrap_or_default()
    } else if path.ends_with("/media") {
        serde_json::from_slice::<api::MediaRequest>(body)
            .ok()
            .filter(|r| {
                let p = std::path::Path::new(&r.source);
                p.is_absolute() || r.source.parse::<model::VolRef>().is_err()
            })
            .map(|r| vec![r.source])
            .unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// How the audit log names a request's object: the VM, else the object its path names.
fn audit_label(object: &Object, matched: &str, params: &HashMap<String, String>) -> String {
    if let Object::Vm(name) = object {
        return format!("vm/{name}");
    }
    let p = |k: &str| params.get(k).map(String::as_str);
    match (
        p("user"),
        p("net"),
        p("pool"),
        p("vol"),
        p("id"),
        p("bridge"),
    ) {
        (Some(u), ..) => format!("user/{u}"),
        (_, Some(n), ..) => format!("network/{n}"),
        (_, _, Some(pool), Some(vol), ..) => format!("volume/{pool}/{vol}"),
        (_, _, Some(pool), ..) => format!("pool/{pool}"),
        (.., Some(id), _) if matched.starts_with("/v1/tokens") => format!("token/{id}"),
        (.., Some(id), _) => format!("operation/{id}"),
        (.., Some(b)) => format!("host/{b}"),
        _ => object.to_string(),
    }
}

/// The `Origin` of a WebSocket upgrade when it is not this server (`Host`). Browsers send
/// `Origin` with every WebSocket; a page elsewhere must not drive a console with the user's
/// credentials. Clients that send no `Origin` (the CLI) are not browsers.
fn is_websocket(h: &header::HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn foreign_origin(h: &header::HeaderMap) -> Option<String> {
    let upgrade = is_websocket(h);
    let origin = h.get(header::ORIGIN)?.to_str().unwrap_or("(not text)");
    if !upgrade {
        return None;
    }
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    (origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host)).then(|| origin.to_string())
}

/// The session cookie's name (`Secure; HttpOnly; SameSite=Strict`).
pub const SESSION_COOKIE: &str = "hv_session";
/// The header a session's changes must carry (its value comes with the session).
pub const CSRF_HEADER: &str = "x-hv-csrf";

/// The CSRF value of a session: derived from its token, so nothing more is stored, and
/// unguessable without it.
pub fn csrf_of(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("hv-csrf\0{token}").as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn csrf_ok(h: &header::HeaderMap, token: &str) -> bool {
    let want = csrf_of(token);
    h.get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|got| {
            got.len() == want.len()
                && got
                    .bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

/// The session token in a `Cookie` header.
fn session_cookie(h: &header::HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whether a request's route only reads (by its declared right; unknown routes do not).
fn req_is_read(req: &Request) -> bool {
    req.extensions()
        .get::<MatchedPath>()
        .and_then(|m| rule_of(req.method(), m.as_str()))
        .is_some_and(|r| r.is_read())
}

/// Records a refused attempt to change something without valid credentials (never the token).
fn audit_unauthenticated(g: &Guard, req: &Request, addr: std::net::SocketAddr, why: &str) {
    let Some(matched) = req.extensions().get::<MatchedPath>() else {
        return;
    };
    let Some(rule) = rule_of(req.method(), matched.as_str()) else {
        return;
    };
    if rule.is_read() {
        return;
    }
    let entry = AuditEntry {
        principal: format!("({why})"),
        source: addr.to_string(),
        object: req.uri().path().to_string(),
        action: format!("{} {} {}", rule.action, req.method(), matched.as_str()),
        result: ErrorCode::Unauthenticated.as_str().to_string(),
        operation_id: None,
    };
    if let Err(e) = g.access.audit(&entry) {
        tracing::error!(error = %e, "cannot append to the audit log");
    }
}

/// Authenticates the caller, authorizes the route, and runs it with [`CALLER`] set.
pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Some(peer) = req.extensions().get::<Peer>().cloned() else {
        return refuse(ErrorCode::Internal, "the connection has no peer");
    };
    // Logging in is how a caller gets credentials: its handler checks the password. The web
    // UI's static files hold no data (HEAD runs a GET handler).
    let login = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| {
            rule_of(req.method(), m.as_str()).or_else(|| {
                (req.method() == Method::HEAD)
                    .then(|| rule_of(&Method::GET, m.as_str()))
                    .flatten()
                    .filter(|r| r.action == Action::Public)
            })
        })
        .is_some_and(|r| matches!(r.action, Action::Login | Action::Public));
    if login {
        return next.run(req).await;
    }
    let mut token_id = None;
    let principal = match peer {
        Peer::Unix { uid, admin: true } => Principal::local(uid),
        Peer::Unix { uid, admin: false } => {
            return refuse(
                ErrorCode::Forbidden,
                format!("uid {uid} may not use hvd's socket: only root and members of hvd's --admin-group may"),
            )
        }
        Peer::Tls { addr } => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(token)
                })
                .map(|t| t.trim().to_string());
            let cookie = session_cookie(req.headers());
            let (token, by_cookie) = match (bearer, cookie) {
                (Some(t), _) => (t, false),
                (None, Some(t)) => (t, true),
                (None, None) => {
                    audit_unauthenticated(&g, &req, addr, "no token");
                    return refuse(
                        ErrorCode::Unauthenticated,
                        "this API needs Authorization: Bearer TOKEN (an admin makes one with hv token create USER) or a session (POST /v1/session)",
                    );
                }
            };
            match g.access.check_token(&token) {
                Ok(Some(owner)) => {
                    // A browser sends its cookie with any request, also one another site
                    // triggers: changes need the session's CSRF header as well.
                    // WebSockets cannot carry that header: their Origin must be this server.
                    let ws = is_websocket(req.headers());
                    if by_cookie && ws && req.headers().get(header::ORIGIN).is_none() {
                        return refuse(
                            ErrorCode::Forbidden,
                            "a WebSocket with a session cookie needs an Origin header",
                        );
                    }
                    if by_cookie && !ws && !req_is_read(&req) && !csrf_ok(req.headers(), &token) {
                        return refuse(
                            ErrorCode::Forbidden,
                            format!("a change with a session cookie needs the {CSRF_HEADER} header from POST /v1/session"),
                        );
                    }
                    token_id = Some(owner.token_id);
                    Principal {
                        who: auth::Who::User {
                            name: owner.user,
                            grants: owner.grants,
                        },
                        source: addr.to_string(),
                    }
                }
                Ok(None) => {
                    audit_unauthenticated(&g, &req, addr, "bad token");
                    return refuse(
                        ErrorCode::Unauthenticated,
                        "the token or session is unknown, expired or revoked; log in again, or ask an admin for a new token (hv token create)",
                    );
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    let Some(matched) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        // No route: the fallback answers 404 to an authenticated caller.
        return next.run(req).await;
    };
    let method = req.method().clone();
    if let Some(origin) = foreign_origin(req.headers()) {
        return refuse(
            ErrorCode::Forbidden,
            format!("a WebSocket from origin {origin} is refused: only pages served by this hvd may open one"),
        );
    }
    let local_admin = matches!(principal.who, auth::Who::LocalAdmin { .. });
    // HEAD runs a GET handler, so it needs what the GET needs.
    let rule = rule_of(&method, &matched).or_else(|| {
        (method == Method::HEAD)
            .then(|| rule_of(&Method::GET, &matched))
            .flatten()
    });
    let Some(rule) = rule else {
        let allowed: Vec<String> = RULES
            .iter()
            .filter(|(_, p, _)| *p == matched.as_str())
            .map(|(m, _, _)| m.to_ascii_uppercase())
            .collect();
        if !allowed.is_empty() {
            let mut r = refuse(
                ErrorCode::MethodNotAllowed,
                format!("{matched} takes {}, not {method}", allowed.join(", ")),
            );
            if let Ok(v) = header::HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            return r;
        }
        if !local_admin {
            return refuse(
                ErrorCode::Forbidden,
                format!("{method} {matched} declares no right, so only local admins may call it"),
            );
        }
        tracing::error!(%method, path = %matched, "route declares no right");
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let params: HashMap<String, String> =
        match axum::RequestPartsExt::extract::<RawPathParams>(&mut parts).await {
            Ok(p) => p
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Err(_) => HashMap::new(),
        };
    let mut checks: Vec<(Action, Object)> = Vec::new();
    let mut body = Some(body);
    let object = match rule.on {
        On::Global => Object::Global,
        On::Vm => Object::Vm(params.get("name").cloned().unwrap_or_default()),
        On::Operation => {
            let target = params
                .get("id")
                .and_then(|id| id.parse::<u64>().ok())
                .and_then(|id| g.engine.operations().get(id).ok())
                .map(|op| op.target);
            match target.as_deref().map(|t| t.strip_prefix("vm/")) {
                Some(Some(vm)) => Object::Vm(vm.to_string()),
                // An operation on the host, a network or a pool shows only to those who see them.
                Some(None) => {
                    checks.push((Action::HostAudit, Object::Global));
                    Object::Global
                }
                None => Object::Global,
            }
        }
        On::NewVm | On::VmWithPaths => {
            let bytes = match axum::body::to_bytes(
                body.take().unwrap_or_else(Body::empty),
                MAX_INSPECTED_BODY,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    return refuse(
                        ErrorCode::InvalidArgument,
                        format!("cannot read the request body: {e}"),
                    )
                }
            };
            // Paths the VM already has (an admin of all VMs gave them) may stay.
            let kept: Vec<String> = params
                .get("name")
                .and_then(|n| g.engine.info(n).ok())
                .and_then(|i| i.spec)
                .map(|s| spec_host_paths(&s))
                .unwrap_or_default();
            let new_paths: Vec<String> = host_paths(&matched, &bytes)
                .into_iter()
                .filter(|p| !kept.contains(p))
                .collect();
            if !new_paths.is_empty() {
                tracing::debug!(paths = ?new_paths, "request names new host paths");
                checks.push((Action::HostPaths, Object::Global));
            }
            let object = if matches!(rule.on, On::NewVm) {
                serde_json::from_slice::<api::CreateVmRequest>(&bytes)
                    .map(|r| Object::Vm(r.spec.name.to_string()))
                    .unwrap_or(Object::Global)
            } else {
                Object::Vm(params.get("name").cloned().unwrap_or_default())
            };
            body = Some(Body::from(bytes));
            object
        }
    };
    checks.insert(0, (rule.action, object.clone()));
    for (action, on) in &checks {
        match principal.decide(*action, on) {
            Decision::Allow => {}
            d => {
                let (code, msg) = match (d, on) {
                    // A VM's name is not hidden by refusing to create it.
                    (Decision::Hidden, Object::Vm(name)) if !matches!(rule.on, On::NewVm) => (
                        ErrorCode::NotFound,
                        engine::EngineError::NoSuchVm(name.clone()).to_string(),
                    ),
                    (_, _) if *action == Action::HostPaths => (
                        ErrorCode::Forbidden,
                        "only an admin of all VMs may name host paths; use pool volumes (vol=POOL/NAME)".to_string(),
                    ),
                    _ => (
                        ErrorCode::Forbidden,
                        format!("{} may not {action} on {on}", principal.audit_name()),
                    ),
                };
                if !action.is_read() {
                    let denied = Caller {
                        principal: Arc::new(principal.clone()),
                        token_id: None,
                        access: g.access.clone(),
                        action: *action,
                        object: audit_label(on, &matched, &params),
                        audited: Default::default(),
                    };
                    denied.audit(&format!("{method} {matched}"), code.as_str(), None);
                }
                return refuse(code, msg);
            }
        }
    }
    let caller = Caller {
        principal: Arc::new(principal),
        token_id,
        access: g.access.clone(),
        action: rule.action,
        object: audit_label(&object, &matched, &params),
        audited: Default::default(),
    };
    let req = Request::from_parts(parts, body.unwrap_or_else(Body::empty));
    let mutating = !rule.is_read();
    let what = format!("{method} {matched}");
    let c = caller.clone();
    let resp = CALLER.scope(caller, next.run(req)).await;
    if mutating {
        let result = if resp.status().is_success() || resp.status().is_informational() {
            "ok".to_string()
        } else {
            format!("http {}", resp.status().as_u16())
        };
        c.audit(&what, &result, None);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_route_declares_a_right() {
        let mut missing = Vec::new();
        for r in crate::openapi::routes() {
            let m: Method = r.method.to_uppercase().parse().expect("method");
            if rule_of(&m, r.path).is_none() {
                missing.push(format!("{} {}", r.method, r.path));
            }
        }
        assert!(
            missing.is_empty(),
            "routes without a rule in authz::RULES: {missing:?}"
        );
        assert!(
            rule_of(&Method::POST, "/v1/vms/{name}/nonexistent").is_none(),
            "a route missing from RULES has no rule"
        );
    }

    #[test]
    fn every_rule_names_a_documented_route() {
        let docs: Vec<(String, String)> = crate::openapi::routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        for (m, p, _) in RULES {
            assert!(
                docs.contains(&(m.to_string(), p.to_string())),
                "{m} {p} has a rule but is not in the OpenAPI route list"
            );
        }
    }

    #[test]
    fn websockets_from_other_origins_are_foreign() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = header::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    header::HeaderValue::from_str(v).expect("value"),
                );
            }
            m
        };
        let ws = [("upgrade", "websocket"), ("host", "hv.example:8443")];
        let with = |origin: &str| {
            let mut v = ws.to_vec();
            v.push(("origin", origin));
            foreign_origin(&h(&v))
        };
        assert_eq!(with("https://hv.example:8443"), None);
        assert_eq!(with("https://HV.example:8443"), None);
        assert_eq!(
            with("https://evil.example"),
            Some("https://evil.example".into())
        );
        assert_eq!(
            with("https://hv.example:8444"),
            Some("https://hv.example:8444".into())
        );
        assert_eq!(with("null"), Some("null".into()));
        assert_eq!(foreign_origin(&h(&ws)), None, "no Origin: not a browser");
        assert_eq!(
            foreign_origin(&h(&[("host", "a"), ("origin", "https://b")])),
            None,
            "not a WebSocket"
        );
    }

    #[test]
    fn host_paths_are_found_in_specs_disks_and_media() {
        let disk = br#"{"disk":{"path":"/etc/shadow"}}"#;
        assert_eq!(
            host_paths("/v1/vms/{name}/disks", disk),
            vec!["/etc/shadow"]
        );
        let vol = br#"{"disk":{"vol":"default/a.qcow2"}}"#;
        assert!(host_paths("/v1/vms/{name}/disks", vol).is_empty());
        assert_eq!(
            host_paths("/v1/vms/{name}/media", br#"{"source":"/tmp/x.iso"}"#),
            vec!["/tmp/x.iso"]
        );
        assert!(host_paths("/v1/vms/{name}/media", br#"{"source":"default/x.iso"}"#).is_empty());
        let create = br#"{"spec":{"name":"a","disks":[{"path":"/dev/sda"}]}}"#;
        assert_eq!(host_paths("/v1/vms", create), vec!["/dev/sda"]);
        let create = br#"{"spec":{"name":"a","disks":[{"vol":"default/a.qcow2"}]}}"#;
        assert!(host_paths("/v1/vms", create).is_empty());
    }
}
