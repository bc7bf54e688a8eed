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
