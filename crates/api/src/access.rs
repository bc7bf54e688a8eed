//! Users, grants, tokens, the audit log and the server certificate (remote access).

use serde::{Deserialize, Serialize};

/// A role on all VMs (`vm: null`) or on the VMs whose names match a glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantInfo {
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// A VM name glob (`web-*`); absent: all VMs, and for admin the host too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserInfo {
    pub name: String,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    /// Whether a password is set (for the web login).
    pub has_password: bool,
    pub grants: Vec<GrantInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

/// `POST /v1/users`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub name: String,
    /// Stored only as an Argon2id hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /v1/users/{user}/password`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenInfo {
    /// Names the token in `hv token list|revoke`; not the secret.
    pub id: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `POST /v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub user: String,
    /// Lifetime in seconds; absent: the token does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenCreated {
    pub token: String,
    pub info: TokenInfo,
}

/// One audit record. Append-only: the API has no way to change or delete one.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    pub id: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// A user name, or `uid:N` for a caller on the Unix socket.
    pub principal: String,
    /// `unix`, or the client's `ip:port`.
    pub source: String,
    /// `vm/NAME`, `network/NAME`, `pool/NAME`, `user/NAME`, `host`, ...
    pub object: String,
    /// The right used (`VM.PowerMgmt`) and what was done (`start`).
    pub action: String,
    /// `ok`, or the error code.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditList {
    pub records: Vec<AuditRecord>,
}

/// `GET /v1/audit` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Unix time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
}

/// `GET /v1/host/cert`
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostCert {
    /// `SHA256:` and the hex SHA-256 of the server certificate (DER), as `hv remote add
    /// --fingerprint` takes it.
    pub fingerprint: String,
    /// The server certificate, PEM.
    pub pem: String,
}

/// `POST /v1/login`: a user name and password for a token that lasts `TokenCreated.info`'s
/// lifetime (12 hours).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

/// The answer to `POST /v1/session` (a browser login): the session itself travels in an
/// `hv_session` cookie (`Secure; HttpOnly; SameSite=Strict`) that scripts cannot read; changes
/// made with it must also send `X-HV-CSRF: csrf`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionInfo {
    pub user: String,
    pub csrf: String,
    pub expires_ms: u64,
}
