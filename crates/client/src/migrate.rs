//! Live migration calls (issue 12): the CLI's `POST /v1/vms/{name}/migrate` on the source hvd,
//! and what a source hvd asks of the target (`/v1/migrations/incoming...`). The raw tunnels
//! are opened by the caller (hvd, asynchronously) from [`Client::raw_endpoint`].

use std::sync::Arc;

use api::migrate::paths;
use api::{
    IncomingReady, IncomingRequest, IncomingStatus, MigrateRequest, MigrationProgress, VmInfo,
};

use crate::{Client, Result};

/// What a raw (upgraded) connection to a remote hvd needs: its TLS configuration (trusting
/// only the pinned certificate), host, port and the `Authorization` value (a secret: the
/// `Debug` form redacts it).
#[derive(Clone)]
pub struct RawEndpoint {
    pub tls: Arc<rustls::ClientConfig>,
    pub host: String,
    pub port: u16,
    pub authorization: String,
}

impl std::fmt::Debug for RawEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `hv migrate`: runs the migration on this (source) hvd; returns its final figures.
    pub fn migrate(&self, name: &str, req: &MigrateRequest) -> Result<MigrationProgress> {
        self.call("POST", &paths::vm_migrate(name), Some(req))
    }
    pub fn incoming_prepare(&self, req: &IncomingRequest) -> Result<IncomingReady> {
        self.call("POST", paths::INCOMING, Some(req))
    }
    pub fn incoming_status(&self, id: &str) -> Result<IncomingStatus> {
        self.call("GET", &paths::incoming(id), None::<&()>)
    }
    pub fn incoming_finish(&self, id: &str) -> Result<VmInfo> {
        self.call(
            "POST",
            &paths::incoming_finish(id),
            Some(&serde_json::json!({})),
        )
    }
    pub fn incoming_abort(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>("DELETE", &paths::incoming(id), None::<&()>)
            .map(drop)
    }
    /// For an HTTPS client: how to open a raw connection to the same hvd.
    pub fn raw_endpoint(&self) -> Option<RawEndpoint> {
        self.remote.as_ref().map(|r| r.raw_endpoint())
    }
}
