//! Persistence: one SQLite database (WAL) under the state dir holding every VM's spec and the
//! runtime facts needed to re-attach after a daemon restart.

use std::path::Path;
use std::sync::Mutex;

use model::VmSpec;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What hvd must remember about a VM's current run to re-attach after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeRecord {
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub accel: Option<String>,
    #[serde(default)]
    pub accel_reason: Option<String>,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub crash: Option<api::CrashInfo>,
    /// Ephemeral overlays to delete when this run ends.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// The snapshot the VM's current state descends from.
    #[serde(default)]
    pub current_snapshot: Option<String>,
    /// Taps hv made for this run's NICs (removed when QEMU ends).
    #[serde(default)]
    pub taps: Vec<String>,
    /// Paths this run's QEMU uid was given access to (taken back when QEMU ends).
    #[serde(default)]
    pub grants: Vec<String>,
    /// The boot id of the host when a user last stopped the VM: autostart skips it in that boot.
    #[serde(default)]
    pub user_stopped_boot: Option<String>,
}

pub struct Row {
    pub id: i64,
    pub spec: VmSpec,
    pub runtime: RuntimeRecord,
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -512)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS vms (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL UNIQUE,
                spec TEXT NOT NULL,
                runtime TEXT NOT NULL DEFAULT '{}'
            );
            CREATE TABLE IF NOT EXISTS snapshots (
                vm_id INTEGER NOT NULL,
                name TEXT NOT NULL,
                parent TEXT,
                created_at INTEGER NOT NULL,
                vm_state TEXT NOT NULL,
                kind TEXT NOT NULL,
                memory INTEGER NOT NULL,
                description TEXT,
                spec TEXT NOT NULL,
                data TEXT NOT NULL DEFAULT '{}',
                PRIMARY KEY (vm_id, name)
            );
            CREATE TABLE IF NOT EXISTS networks (
                name TEXT PRIMARY KEY,
                spec TEXT NOT NULL,
                active INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS pools (
                name TEXT PRIMARY KEY,
                path TEXT NOT NULL UNIQUE,
                autostart INTEGER NOT NULL DEFAULT 0
            );",
        )?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn load_all(&self) -> Result<Vec<Row>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, spec, runtime FROM vms ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, spec, runtime) = row?;
            match serde_json::from_str::<VmSpec>(&spec) {
                Ok(spec) => out.push(Row {
                    id,
                    spec,
                    runtime: serde_json::from_str(&runtime).unwrap_or_default(),
                }),
                Err(e) => {
                    tracing::error!(id, error = %e, "skipping a VM whose stored spec does not parse")
                }
            }
        }
        Ok(out)
    }

    pub fn insert(&self, spec: &VmSpec) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO vms (name, spec) VALUES (?1, ?2)",
            params![spec.name.as_str(), to_json(spec)],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn update_spec(&self, id: i64, spec: &VmSpec) -> Result<()> {
        self.conn().execute(
            "UPDATE vms SET spec = ?1 WHERE id = ?2",
            params![to_json(spec), id],
        )?;
        Ok(())
    }

    pub fn update_runtime(&self, id: i64, rt: &RuntimeRecord) -> Result<()> {
        self.conn().execute(
            "UPDATE vms SET runtime = ?1 WHERE id = ?2",
            params![to_json(rt), id],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM vms WHERE id = ?1", params![id])?;
        Ok(())
    }
}

/// One snapshot's metadata.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub name: String,
    pub parent: Option<String>,
    pub created_at: u64,
    pub vm_state: model::VmState,
    pub kind: String,
    pub memory: bool,
    pub description: Option<String>,
    pub spec: VmSpec,
    /// For external snapshots: which image froze and which overlay took over, per disk.
    pub disks: Vec<ExternalDisk>,
}

/// One disk of an external snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalDisk {
    pub target: String,
    /// The image that holds the disk's state at the snapshot (read-only from then on).
    pub image: std::path::PathBuf,
    pub image_format: model::DiskFormat,
    /// The overlay created on top of it.
    pub overlay: std::path::PathBuf,
}

impl Store {
    pub fn load_snapshots(&self, vm_id: i64) -> Result<Vec<SnapshotRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, parent, created_at, vm_state, kind, memory, description, spec, data FROM snapshots WHERE vm_id = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map(params![vm_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, parent, created_at, vm_state, kind, memory, description, spec, data) = row?;
            let Ok(spec) = serde_json::from_str::<VmSpec>(&spec) else {
                continue;
            };
            out.push(SnapshotRow {
                name,
                parent,
                created_at: created_at as u64,
                vm_state: vm_state.parse().unwrap_or(model::VmState::Shutoff),
                kind,
                memory: memory != 0,
                description,
                spec,
                disks: serde_json::from_str(&data).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    pub fn insert_snapshot(&self, vm_id: i64, s: &SnapshotRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO snapshots (vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![vm_id, s.name, s.parent, s.created_at as i64, s.vm_state.as_str(), s.kind, s.memory as i64, s.description, to_json(&s.spec), to_json(&s.disks)],
        )?;
        Ok(())
    }

    /// Deletes a snapshot and hands its children to its parent, in one transaction.
    pub fn delete_snapshot(&self, vm_id: i64, name: &str, parent: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE snapshots SET parent = ?1 WHERE vm_id = ?2 AND parent = ?3",
            params![parent, vm_id, name],
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE vm_id = ?1 AND name = ?2",
            params![vm_id, name],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a snapshot and the VM's new spec together (an external snapshot changes which
    /// files are the disks): after a crash either both are there or neither.
    pub fn insert_snapshot_with_spec(
        &self,
        vm_id: i64,
        s: &SnapshotRow,
        spec: &VmSpec,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO snapshots (vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![vm_id, s.name, s.parent, s.created_at as i64, s.vm_state.as_str(), s.kind, s.memory as i64, s.description, to_json(&s.spec), to_json(&s.disks)],
        )?;
        tx.execute(
            "UPDATE vms SET spec = ?1 WHERE id = ?2",
            params![to_json(spec), vm_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces an external snapshot's disk records (after a merge moved images).
    pub fn update_snapshot_disks(
        &self,
        vm_id: i64,
        name: &str,
        disks: &[ExternalDisk],
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE snapshots SET data = ?1 WHERE vm_id = ?2 AND name = ?3",
            params![to_json(&disks), vm_id, name],
        )?;
        Ok(())
    }

    pub fn delete_all_snapshots(&self, vm_id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE vm_id = ?1", params![vm_id])?;
        Ok(())
    }
}

impl Store {
    pub fn load_networks(&self) -> Result<Vec<(model::NetworkSpec, bool)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT spec, active FROM networks ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (spec, active) = row?;
            match serde_json::from_str(&spec) {
                Ok(spec) => out.push((spec, active != 0)),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a network whose stored spec does not parse")
                }
            }
        }
        Ok(out)
    }

    pub fn insert_network(&self, spec: &model::NetworkSpec) -> Result<()> {
        self.conn().execute(
            "INSERT INTO networks (name, spec) VALUES (?1, ?2)",
            params![spec.name.as_str(), to_json(spec)],
        )?;
        Ok(())
    }

    pub fn update_network(&self, spec: &model::NetworkSpec) -> Result<()> {
        self.conn().execute(
            "UPDATE networks SET spec = ?1 WHERE name = ?2",
            params![to_json(spec), spec.name.as_str()],
        )?;
        Ok(())
    }

    pub fn set_network_active(&self, name: &str, active: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE networks SET active = ?1 WHERE name = ?2",
            params![active as i64, name],
        )?;
        Ok(())
    }

    pub fn delete_network(&self, name: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM networks WHERE name = ?1", params![name])?;
        Ok(())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM meta WHERE key = ?1", params![key])?;
        Ok(())
    }
}

/// A directory pool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    pub path: std::path::PathBuf,
    pub autostart: bool,
}

impl Store {
    pub fn load_pools(&self) -> Result<Vec<PoolRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, path, autostart FROM pools ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(PoolRow {
                name: r.get(0)?,
                path: std::path::PathBuf::from(r.get::<_, String>(1)?),
                autostart: r.get::<_, i64>(2)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_pool(&self, p: &PoolRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO pools (name, path, autostart) VALUES (?1, ?2, ?3)",
            params![p.name, p.path.display().to_string(), p.autostart as i64],
        )?;
        Ok(())
    }

    pub fn delete_pool(&self, name: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM pools WHERE name = ?1", params![name])?;
        Ok(())
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string())
}
