//! The OpenAPI 3 document, generated from the route table below and the `api` types' JSON
//! schemas. `GET /v1/openapi.json` serves it; a test keeps `docs/openapi.json` equal to it
//! (`HV_UPDATE_GOLDEN=1 cargo test -p daemon openapi` rewrites the file) and another checks
//! that the router answers every documented route.

use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One documented route.
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<SchemaFn>,
    /// Success status and body schema (`None`: no JSON body).
    pub response: (u16, Option<SchemaFn>),
    /// A non-JSON success body (`text`, `ndjson`, `websocket`).
    pub raw: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<SchemaFn>,
    status: u16,
    response: Option<SchemaFn>,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        summary,
        request,
        response: (status, response),
        raw: None,
    }
}

/// Every route the daemon serves.
#[rustfmt::skip]
pub fn routes() -> Vec<RouteDoc> {
    use api::*;
    let raw = |media: &'static str, d: RouteDoc| RouteDoc { raw: Some(media), ..d };
    vec![
        r("get", "/v1/ping", "Liveness and version", None, 200, None),
        r("get", "/v1/openapi.json", "This document", None, 200, None),
        r("get", "/v1/host/check", "Host checks and the accelerator decision", None, 200, Some(s::<HostReport>)),
        r("post", "/v1/host/bridges", "Make an interface the port of a new bridge that takes its addresses and routes (rolled back on failure)", Some(s::<BridgeIfaceRequest>), 200, Some(s::<BridgeChange>)),
        r("delete", "/v1/host/bridges/{bridge}", "Give a bridge's addresses and routes back to its one port and delete it", None, 200, Some(s::<BridgeChange>)),
        raw("application/x-ndjson", r("get", "/v1/events", "The numbered event log, one JSON Event per line, or Server-Sent Events with id lines when the request accepts text/event-stream (query: since=ID replays the retained events after ID first, 0 all retained, also from Last-Event-ID; type=KIND[,KIND]; vm=NAME). A first record {\"event\":\"gap\",\"oldest\":N} says events after since and before N are no longer retained. Only events about objects the caller may see", None, 200, Some(s::<Event>))),
        raw("application/openmetrics-text", r("get", "/metrics", "Prometheus figures (OpenMetrics text): API requests and latency by route, operations, events, VMs by state, networks, and per running VM its CPU time, memory, disk and NIC counters (labels vm, disk, nic). Needs Metrics.Read (admin on all VMs)", None, 200, None)),
        r("get", "/v1/stats", "Live figures of every running VM the caller may see (CPU %, RSS, disk and NIC counters)", None, 200, Some(s::<StatsList>)),
        r("get", "/v1/vms/{name}/stats", "Live figures of a running VM: CPU % since the previous sample, QEMU's RSS, disk I/O (query-blockstats) and NIC counters (its taps)", None, 200, Some(s::<VmStats>)),
        r("get", "/v1/vms", "List VMs", None, 200, Some(s::<VmList>)),
        r("post", "/v1/vms", "Define a VM, optionally starting it", Some(s::<CreateVmRequest>), 201, Some(s::<VmInfo>)),
        r("get", "/v1/vms/{name}", "One VM, with its spec", None, 200, Some(s::<VmInfo>)),
        r("put", "/v1/vms/{name}", "Replace a VM's spec", Some(s::<model::VmSpec>), 200, Some(s::<VmInfo>)),
        r("delete", "/v1/vms/{name}", "Undefine (query: remove_storage, force)", None, 204, None),
        r("post", "/v1/vms/{name}/start", "Start", Some(s::<StartRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/shutdown", "ACPI shutdown and wait; timeout error if the guest ignores it", Some(s::<ShutdownRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/reboot", "Graceful shutdown, then start", Some(s::<ShutdownRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/destroy", "Hard power-off", None, 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/reset", "Hard reset", None, 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/pause", "Pause the vCPUs", None, 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/resume", "Resume", None, 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/undefine", "Undefine", Some(s::<UndefineRequest>), 204, None),
        r("post", "/v1/vms/{name}/autostart", "Turn autostart on or off", Some(s::<AutostartRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/wait", "Wait for a state or console output", Some(s::<WaitRequest>), 200, Some(s::<WaitResponse>)),
        r("get", "/v1/vms/{name}/showcmd", "The QEMU command line", None, 200, Some(s::<ShowCmd>)),
        raw("application/octet-stream", r("get", "/v1/vms/{name}/console/log", "Console output since the VM last started (query: follow)", None, 200, None)),
        raw("websocket", r("get", "/v1/vms/{name}/console", "Serial console (WebSocket upgrade, binary frames; query: history, to start with the recent output); input reaches the guest only from the holder of control (a caller with VM.Console.Input takes free control)", None, 101, None)),
        raw("websocket", r("get", "/v1/vms/{name}/vnc", "Graphical console: WebSocket (subprotocol binary) carrying RFB 3.8, security None; shared, and only the holder of control's input passes", None, 101, None)),
        r("get", "/v1/vms/{name}/control", "Who holds control of the VM's consoles, who watches, who asked, and what the caller may do", None, 200, Some(s::<ControlState>)),
        r("post", "/v1/vms/{name}/control", "Take, request, release or give control of the VM's consoles", Some(s::<ControlRequest>), 200, Some(s::<ControlState>)),
        r("get", "/v1/consoles", "The control state of the consoles of every VM the caller may see", None, 200, Some(s::<ConsoleList>)),
        r("post", "/v1/vms/{name}/disks", "Attach a disk (live and/or in the definition)", Some(s::<AttachDiskRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/disks/{target}/detach", "Detach a disk by target (vdb, sda, ...)", Some(s::<DetachDiskRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/nics", "Attach a NIC (live and/or in the definition)", Some(s::<AttachNicRequest>), 200, Some(s::<NicAttached>)),
        r("post", "/v1/vms/{name}/nics/{mac}/detach", "Detach a NIC by MAC", Some(s::<DetachNicRequest>), 200, Some(s::<VmInfo>)),
        r("get", "/v1/vms/{name}/resources", "Current and maximum vCPUs and memory: the definition's and, while it runs, the live ones (query-cpus-fast, query-balloon)", None, 200, Some(s::<ResourcesInfo>)),
        r("post", "/v1/vms/{name}/resources", "Change vCPUs (hotplug up to max_vcpus) and/or memory (balloon up to max_memory), live and/or in the definition", Some(s::<ResizeRequest>), 200, Some(s::<ResourcesInfo>)),
        r("post", "/v1/vms/{name}/clone", "Full copy of a stopped VM under a new name: every writable disk copied, new MACs, read-only media shared; nothing left on failure", Some(s::<CloneRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/migrate", "Live-migrate the running VM to another hvd (url, a token with Host.Admin there, its pinned fingerprint): an operation of kind migrate, cancellable, whose OperationInfo.migration shows the progress; answers the final figures. Needs VM.Migrate", Some(s::<api::MigrateRequest>), 200, Some(s::<api::MigrationProgress>)),
        r("post", "/v1/migrations/incoming", "Target side of a migration: run the pre-checks (every refusal named) and, unless check_only, define the VM and start its QEMU waiting for the stream. Needs Host.Admin", Some(s::<api::IncomingRequest>), 200, Some(s::<api::IncomingReady>)),
        r("get", "/v1/migrations/incoming/{id}", "The state of an incoming migration (so a source whose finish answer was lost learns who owns the VM). Needs Host.Admin", None, 200, Some(s::<api::IncomingStatus>)),
        r("delete", "/v1/migrations/incoming/{id}", "Abort an incoming migration: no QEMU, no definition, nothing it made is left. Needs Host.Admin", None, 200, None),
        r("post", "/v1/migrations/incoming/{id}/finish", "The target takes the VM over (continues the guest unless it was paused; definition, snapshots and autostart become its own). Needs Host.Admin", None, 200, Some(s::<VmInfo>)),
        raw("application/octet-stream", r("get", "/v1/migrations/incoming/{id}/tunnel/{channel}", "A raw byte tunnel to one channel (memory) of the incoming QEMU: needs Upgrade: hv-migration; after the 101 the connection carries the channel both ways. Needs Host.Admin", None, 101, None)),
        r("post", "/v1/vms/{name}/media", "Insert a medium into the CD-ROM drive", Some(s::<MediaRequest>), 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/media/eject", "Eject the CD-ROM medium (the drive stays)", None, 200, Some(s::<VmInfo>)),
        r("post", "/v1/vms/{name}/media/boot", "Boot from the CD-ROM medium: first in the boot order (kept in the spec; live through bootindex) and reset a running VM. Needs VM.PowerMgmt and VM.Media", Some(s::<MediaBootRequest>), 200, Some(s::<VmInfo>)),
        r("get", "/v1/vms/{name}/media/choices", "The media that can go into this VM's CD-ROM drive (raw volumes in the pools that no VM has as a disk and no volume is backed by) and the pools a medium may be uploaded to. Needs only VM.Media on this VM", None, 200, Some(s::<MediaChoices>)),
        r("put", "/v1/vms/{name}/media/upload", "Upload a new medium (query: pool, volume NAME.iso or NAME.img, insert=true to put it into the drive) as an application/octet-stream body with a Content-Length (at most 16 GiB and the pool's free space) into a NEW raw volume, durable before the answer; an existing volume is never replaced (409), and a body that ends early or stalls leaves nothing behind. Needs only VM.Media on this VM", None, 200, Some(s::<MediumInfo>)),
        raw("image/png", r("get", "/v1/vms/{name}/screenshot", "A PNG of the VM's screen (QMP screendump; query: max_age_ms, 0 to 60000, accepts a shot that young)", None, 200, None)),
        r("post", "/v1/vms/{name}/keys", "Press key combinations or type text (US layout) on the VM's keyboard; needs control of the console, or nobody holding it", Some(s::<KeysRequest>), 200, Some(s::<KeysSent>)),
        r("get", "/v1/vms/{name}/snapshots", "List a VM's snapshots (a tree through parent/children)", None, 200, Some(s::<SnapshotList>)),
        r("post", "/v1/vms/{name}/snapshots", "Create a snapshot (with RAM on a running VM)", Some(s::<CreateSnapshotRequest>), 201, Some(s::<SnapshotInfo>)),
        r("get", "/v1/vms/{name}/snapshots/current", "The snapshot the current state descends from (null: none)", None, 200, Some(s::<Option<SnapshotInfo>>)),
        r("get", "/v1/vms/{name}/snapshots/{snap}", "One snapshot, with the spec it restores", None, 200, Some(s::<SnapshotInfo>)),
        r("delete", "/v1/vms/{name}/snapshots/{snap}", "Delete a snapshot (its children move up)", None, 204, None),
        r("post", "/v1/vms/{name}/snapshots/{snap}/revert", "Revert disks (and RAM, and the spec) in place", None, 200, Some(s::<SnapshotInfo>)),
        r("get", "/v1/networks", "List networks", None, 200, Some(s::<NetworkList>)),
        r("post", "/v1/networks", "Define a network (nat, isolated, bridge)", Some(s::<model::NetworkSpec>), 201, Some(s::<NetworkInfo>)),
        r("get", "/v1/networks/{net}", "One network", None, 200, Some(s::<NetworkInfo>)),
        r("delete", "/v1/networks/{net}", "Delete a stopped network no VM uses", None, 204, None),
        r("post", "/v1/networks/{net}/start", "Bring up its bridge, firewall table and dnsmasq", None, 200, Some(s::<NetworkInfo>)),
        r("post", "/v1/networks/{net}/stop", "Tear down exactly what hv made for it", None, 200, Some(s::<NetworkInfo>)),
        r("post", "/v1/networks/{net}/autostart", "Start the network when hvd starts (or not)", Some(s::<AutostartRequest>), 200, Some(s::<NetworkInfo>)),
        r("get", "/v1/networks/{net}/leases", "DHCP leases, with the VM that holds each", None, 200, Some(s::<LeaseList>)),
        r("get", "/v1/networks/{net}/forwards", "Port forwards into VMs", None, 200, Some(s::<ForwardList>)),
        r("post", "/v1/networks/{net}/forwards", "Forward a host port to a VM (pins its address)", Some(s::<AddForwardRequest>), 200, Some(s::<ForwardList>)),
        r("delete", "/v1/networks/{net}/forwards/{proto}/{port}", "Remove a port forward", None, 200, Some(s::<ForwardList>)),
        r("get", "/v1/networks/{net}/reservations", "Fixed DHCP addresses", None, 200, Some(s::<ReservationList>)),
        r("post", "/v1/networks/{net}/reservations", "Reserve an address for a MAC or a VM's NIC (dnsmasq restarted)", Some(s::<AddReservationRequest>), 200, Some(s::<ReservationList>)),
        r("delete", "/v1/networks/{net}/reservations/{key}", "Remove the reservation of a MAC or a VM (by name)", None, 200, Some(s::<ReservationList>)),
        r("get", "/v1/operations", "Running and recent operations (the work of mutating requests, owned by hvd)", None, 200, Some(s::<OperationList>)),
        r("get", "/v1/operations/{id}", "One operation", None, 200, Some(s::<OperationInfo>)),
        r("post", "/v1/operations/{id}/cancel", "Cancel a running operation that can stop without leaving anything half-done", None, 200, Some(s::<OperationInfo>)),
        r("get", "/v1/pools", "List storage pools", None, 200, Some(s::<PoolList>)),
        r("post", "/v1/pools", "Create a directory pool", Some(s::<CreatePoolRequest>), 201, Some(s::<PoolInfo>)),
        r("get", "/v1/pools/{pool}", "One pool with capacity, allocation and available bytes", None, 200, Some(s::<PoolInfo>)),
        r("delete", "/v1/pools/{pool}", "Delete a pool (query: force); only files hv created are deleted", None, 204, None),
        r("post", "/v1/pools/{pool}/undefine", "Forget a pool and keep its directory and files", None, 204, None),
        r("get", "/v1/pools/{pool}/volumes", "List a pool's volumes", None, 200, Some(s::<VolList>)),
        r("post", "/v1/pools/{pool}/volumes", "Create a volume (or a qcow2 overlay on a backing image)", Some(s::<CreateVolRequest>), 201, Some(s::<VolInfo>)),
        r("post", "/v1/pools/{pool}/import", "Copy a host image file into the pool", Some(s::<ImportVolRequest>), 201, Some(s::<VolInfo>)),
        r("get", "/v1/pools/{pool}/volumes/{vol}", "One volume", None, 200, Some(s::<VolInfo>)),
        r("delete", "/v1/pools/{pool}/volumes/{vol}", "Delete a volume (refused while used or backing another)", None, 204, None),
        r("post", "/v1/pools/{pool}/volumes/{vol}/clone", "Full or linked clone", Some(s::<CloneVolRequest>), 201, Some(s::<VolInfo>)),
        r("post", "/v1/pools/{pool}/volumes/{vol}/resize", "Resize (live when a running VM uses it)", Some(s::<ResizeVolRequest>), 200, Some(s::<VolInfo>)),
        raw("application/octet-stream", r("get", "/v1/pools/{pool}/volumes/{vol}/data", "Download the volume's bytes", None, 200, None)),
        r("put", "/v1/pools/{pool}/volumes/{vol}/data", "Upload the volume's bytes as an application/octet-stream body, replacing them atomically once durable", None, 200, Some(s::<VolInfo>)),
        raw("application/octet-stream", r("get", "/v1/pools/{pool}/volumes/{vol}/stream", "Download as a raw stream: needs Upgrade: hv-volume-data; a 101 whose hv-data-length header counts the raw bytes that follow", None, 101, None)),
        r("put", "/v1/pools/{pool}/volumes/{vol}/stream", "Upload as a raw stream: needs Upgrade: hv-volume-data and an hv-data-length header; raw bytes after the 101, answered by an HTTP/1.1 response (VolInfo or an error) on the same connection once durable", None, 200, Some(s::<VolInfo>)),
        raw("application/x-tar", r("get", "/v1/host/backup", "A consistent online copy of hv's database (SQLite backup API) and the VM metadata kept beside it (not disk images, not logs) as a tar archive to extract into an empty state dir; it holds password and token hashes and hvd's TLS key: Host.Admin on the whole host", None, 200, None)),
        r("get", "/v1/host/cert", "The HTTPS listener's certificate and its SHA-256 fingerprint", None, 200, Some(s::<HostCert>)),
        r("post", "/v1/login", "Trade a user name and password for a 12-hour token (no credentials needed; failures back off per user and address)", Some(s::<LoginRequest>), 200, Some(s::<TokenCreated>)),
        r("post", "/v1/session", "Browser login: sets an hv_session cookie (Secure, HttpOnly, SameSite=Strict); changes made with it need the X-HV-CSRF header it answers", Some(s::<LoginRequest>), 200, Some(s::<SessionInfo>)),
        r("delete", "/v1/session", "Log out: revoke the caller's session (or token) and clear the cookie", None, 204, None),
        r("get", "/v1/users", "List users with their grants", None, 200, Some(s::<UserList>)),
        r("post", "/v1/users", "Add a user (the password is stored as an Argon2id hash)", Some(s::<CreateUserRequest>), 201, Some(s::<UserInfo>)),
        r("get", "/v1/users/{user}", "One user with their grants", None, 200, Some(s::<UserInfo>)),
        r("delete", "/v1/users/{user}", "Remove a user, their grants and tokens", None, 204, None),
        r("post", "/v1/users/{user}/password", "Set a user's password", Some(s::<PasswordRequest>), 204, None),
        r("post", "/v1/users/{user}/grants", "Grant a role on all VMs or on a VM name glob", Some(s::<GrantInfo>), 200, Some(s::<UserInfo>)),
        r("post", "/v1/users/{user}/grants/revoke", "Revoke a grant", Some(s::<GrantInfo>), 200, Some(s::<UserInfo>)),
        r("get", "/v1/tokens", "List API tokens (never their secrets)", None, 200, Some(s::<TokenList>)),
        r("post", "/v1/tokens", "Make an API token; the answer is the only time its secret is shown", Some(s::<CreateTokenRequest>), 201, Some(s::<TokenCreated>)),
        r("delete", "/v1/tokens/{id}", "Revoke a token (at once)", None, 200, Some(s::<TokenInfo>)),
        r("get", "/", "Redirects (303) to the web UI at /ui/ (no credentials needed)", None, 303, None),
        r("get", "/ui", "Redirects (303) to /ui/ (no credentials needed)", None, 303, None),
        raw("text/html", r("get", "/ui/", "The web UI's first page (static; no credentials needed: the data comes from the API)", None, 200, None)),
        raw("*/*", r("get", "/ui/{*path}", "A static file of the web UI (HTML, JS modules, CSS, vendored noVNC and xterm.js), with a strict CSP; 404 for anything else", None, 200, None)),
        r("get", "/v1/audit", "The audit log, oldest first (query: user, vm, since_ms); append-only", None, 200, Some(s::<AuditList>)),
    ]
}

/// A name: what hv accepts for VMs, pools, networks and snapshots.
const NAME: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";
const MAC: &str = "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$";

/// The schema of a path parameter, as strict as hvd is.
fn param_schema(path: &str, param: &str) -> Value {
    match param {
        "name" | "pool" | "net" | "snap" => json!({ "type": "string", "pattern": NAME }),
        "vol" => json!({ "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$" }),
        "user" => json!({ "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$" }),
        "mac" => json!({ "type": "string", "pattern": MAC }),
        "key" => json!({ "type": "string", "pattern": format!("({MAC})|({NAME})") }),
        "proto" => json!({ "type": "string", "enum": ["tcp", "udp"] }),
        "port" => json!({ "type": "integer", "minimum": 1, "maximum": 65535 }),
        "id" if path.starts_with("/v1/tokens") => {
            json!({ "type": "string", "pattern": "^[0-9a-f]{12}$" })
        }
        "id" => json!({ "type": "string", "pattern": "^[0-9]{1,19}$" }),
        "target" => json!({ "type": "string", "pattern": "^[a-z]{1,8}$" }),
        "bridge" => json!({ "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$" }),
        _ => json!({ "type": "string" }),
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let error = s::<api::ErrorBody>(&mut g);
    let mut paths = Map::new();
    for route in routes() {
        // OpenAPI spells the router's catch-all `{*path}` as a plain `{path}` parameter.
        let doc_path = route.path.replace("{*", "{");
        let mut op = Map::new();
        op.insert("summary".into(), json!(route.summary));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{}_{}",
                route.method,
                match doc_path.trim_start_matches("/v1/").trim_start_matches('/') {
                    "" => "root",
                    p => p,
                }
                .replace(['/', '.'], "_")
                .replace(['{', '}'], "")
            )),
        );
        let params: Vec<Value> = ["path", "name", "target", "snap", "net", "proto", "port", "key", "mac", "bridge", "pool", "vol", "id", "user"]
            .iter()
            .filter(|p| doc_path.contains(&format!("{{{p}}}")))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": param_schema(route.path, p) }))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        let public = route.path == "/" || route.path.starts_with("/ui");
        if public
            || route.path == "/v1/login"
            || (route.path == "/v1/session" && route.method == "post")
        {
            // Routes that need no credentials: login hands them out; the UI holds no data.
            op.insert("security".into(), json!([]));
        }
        if let Some(req) = route.request {
            op.insert("requestBody".into(), json!({ "required": true, "content": { "application/json": { "schema": req(&mut g) } } }));
        }
        let (status, body) = route.response;
        let mut ok = json!({ "description": route.summary });
        if let Some(b) = body {
            let media = route.raw.unwrap_or("application/json");
            ok["content"] = json!({ media: { "schema": b(&mut g) } });
        } else if let Some(media) = route.raw.filter(|m| *m != "websocket") {
            ok["content"] =
                json!({ media: { "schema": { "type": "string", "format": "binary" } } });
        }
        op.insert("responses".into(), json!({
            status.to_string(): ok,
            "default": { "description": "An error with a stable code", "content": { "application/json": { "schema": error.clone() } } },
        }));
        let entry = paths.entry(doc_path).or_insert_with(|| json!({}));
        entry[route.method] = Value::Object(op);
    }
    let schemas: Map<String, Value> = g
        .take_definitions()
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect();
    json!({
        "openapi": "3.0.3",
        "info": { "title": "hv API", "version": "1.0", "description": "hvd's REST/JSON API on its Unix socket and, with --listen, over HTTPS (Authorization: Bearer TOKEN). Missing or bad credentials answer 401 (unauthenticated), missing rights 403 (forbidden), VMs the caller may not see 404. Change log: docs/api-changelog.md." },
        "paths": paths,
        "security": [ { "bearer": [] } ],
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "A token from hv token create (HTTPS listener; the Unix socket authenticates by uid)" } },
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_document_is_checked_in() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let got = serde_json::to_string_pretty(&super::document()).expect("serializes") + "\n";
        // A stale document means an API change: add an entry to docs/api-changelog.md too.
        testkit::golden::assert_golden(&path, &got);
    }
}
