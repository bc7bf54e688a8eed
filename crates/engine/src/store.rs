//! Persistence: one SQLite database (WAL) under the state dir holding every VM's spec and the
//! runtime facts needed to re-attach after a daemon restart.

use std::collections::BTreeMap;
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
    /// QEMU was spawned but hvd had not finished attaching to it (saved right after spawn, so
    /// a restarted hvd finds a QEMU that an earlier one was starting).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
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

/// The schema, one migration per version: `MIGRATIONS[n]` takes a database from version `n` to
/// `n + 1` (`PRAGMA user_version`). To change the schema, append one entry; never edit one
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the tables hv had before the schema was versioned (hence IF NOT EXISTS).
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
    // 2: the image registry (images.rs): formats recorded, never guessed again.
    "CREATE TABLE images (
        path TEXT PRIMARY KEY,
        format TEXT NOT NULL,
        origin TEXT NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL
    );",
    // 3: each image's backing link as hv made it ('' none; NULL not known, from before).
    "ALTER TABLE images ADD COLUMN backing TEXT;",
    // 4: users, their grants, hashed tokens and the append-only audit log (access.rs).
    "CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE grants (
            user TEXT NOT NULL REFERENCES users(name),
            role TEXT NOT NULL,
            vm_glob TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (user, role, vm_glob)
        );
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users(name),
            hash BLOB NOT NULL UNIQUE,
            description TEXT,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time_ms INTEGER NOT NULL,
            principal TEXT NOT NULL,
            source TEXT NOT NULL,
            object TEXT NOT NULL,
            action TEXT NOT NULL,
            result TEXT NOT NULL,
            operation_id INTEGER
        );
        CREATE INDEX audit_principal ON audit (principal, id);
        CREATE INDEX audit_object ON audit (object, id);",
];

/// How long a write waits for another connection's lock before it fails.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What makes the stored state unusable: hvd refuses to start rather than guess or skip.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} has schema version {found}, newer than this hvd knows ({known}); run the hvd \
         that wrote it (or a newer one), or restore a backup this version wrote"
    )]
    TooNew {
        path: String,
        found: u32,
        known: u32,
    },
    #[error(
        "cannot read the stored {what} ({field} of {table} row {key}); hvd does not start rather \
         than lose it: fix or delete that row with sqlite3 (after a backup of the database), or \
         run the hvd version that wrote it"
    )]
    BadRow {
        what: &'static str,
        table: &'static str,
        key: String,
        field: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot migrate {path} to schema version {version}")]
    Migrate {
        path: String,
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
}

/// Decodes one stored JSON column, or says which row cannot be read.
/// Runs a write (a commit waits for fsync: milliseconds, up to 100+ ms on a loaded disk) so
/// that it does not hold one of hvd's few async worker threads: on the multi-threaded runtime
/// the worker hands its other tasks (the API's reads) to another thread first. Elsewhere (tests
/// on a current-thread runtime, plain threads) it just runs.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The columns of a snapshot row, as `load_snapshots` and `load_all_snapshots` select them.
type SnapshotColumns = (
    i64,
    String,
    Option<String>,
    i64,
    String,
    String,
    i64,
    Option<String>,
    String,
    String,
);

fn snapshot_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotColumns> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

/// Decodes one snapshot row; a bad field is an error naming the row, never skipped.
fn snapshot_row(c: SnapshotColumns) -> Result<(i64, SnapshotRow)> {
    let (vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data) = c;
    let key = format!("{name:?} of VM id {vm_id}");
    let vm_state = vm_state.parse().map_err(|e: String| StoreError::BadRow {
        what: "snapshot",
        table: "snapshots",
        key: key.clone(),
        field: "vm_state",
        source: e.into(),
    })?;
    let row = SnapshotRow {
        spec: decode(&spec, "snapshot", "snapshots", &key, "spec")?,
        disks: decode(&data, "snapshot", "snapshots", &key, "data")?,
        name,
        parent,
        created_at: created_at as u64,
        vm_state,
        kind,
        memory: memory != 0,
        description,
    };
    Ok((vm_id, row))
}

fn decode<T: serde::de::DeserializeOwned>(
    json: &str,
    what: &'static str,
    table: &'static str,
    key: impl std::fmt::Display,
    field: &'static str,
) -> Result<T> {
    serde_json::from_str(json).map_err(|source| {
        StoreError::BadRow {
            what,
            table,
            key: key.to_string(),
            field,
            source: source.into(),
        }
        .into()
    })
}

/// Brings the schema up to the newest version this hvd knows, refusing a newer one.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as u32;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            known,
        }
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i + 1;
        let err = |source| StoreError::Migrate {
            path: path.display().to_string(),
            version,
            source,
        };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version as u32)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The writes are tiny and few: each is on disk before the operation says it is done.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -512)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn load_all(&self) -> Result<Vec<Row>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, spec, runtime FROM vms ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, spec, runtime) = row?;
            let key = format!("id {id} (VM {name:?})");
            out.push(Row {
                id,
                spec: decode(&spec, "VM definition", "vms", &key, "spec")?,
                runtime: decode(&runtime, "VM runtime record", "vms", &key, "runtime")?,
            });
        }
        Ok(out)
    }

    pub fn insert(&self, spec: &VmSpec) -> Result<i64> {
        off_worker(|| {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO vms (name, spec) VALUES (?1, ?2)",
                params![spec.name.as_str(), to_json(spec)],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    pub fn update_spec(&self, id: i64, spec: &VmSpec) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "UPDATE vms SET spec = ?1 WHERE id = ?2",
                params![to_json(spec), id],
            )?;
            Ok(())
        })
    }

    pub fn update_runtime(&self, id: i64, rt: &RuntimeRecord) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "UPDATE vms SET runtime = ?1 WHERE id = ?2",
                params![to_json(rt), id],
            )?;
            Ok(())
        })
    }

    pub fn delete(&self, id: i64) -> Result<()> {
        off_worker(|| {
            self.conn()
                .execute("DELETE FROM vms WHERE id = ?1", params![id])?;
            Ok(())
        })
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
        // Cached: this runs on every snapshot call and for every VM a start checks for shared
        // images; parsing the statement each time cost more than running it.
        let mut stmt = conn.prepare_cached(
            "SELECT vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data FROM snapshots WHERE vm_id = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map(params![vm_id], snapshot_columns)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(snapshot_row(row?)?.1);
        }
        Ok(out)
    }

    /// Every snapshot of every defined VM, by VM id, in one query (hvd's start reads them all:
    /// one query per VM cost ~10 µs each in statement parsing and file locking).
    pub fn load_all_snapshots(&self) -> Result<BTreeMap<i64, Vec<SnapshotRow>>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data FROM snapshots WHERE vm_id IN (SELECT id FROM vms) ORDER BY vm_id, created_at, rowid",
        )?;
        let rows = stmt.query_map([], snapshot_columns)?;
        let mut out: BTreeMap<i64, Vec<SnapshotRow>> = BTreeMap::new();
        for row in rows {
            let (vm_id, s) = snapshot_row(row?)?;
            out.entry(vm_id).or_default().push(s);
        }
        Ok(out)
    }

    /// Records a snapshot and the VM's runtime record (which names it current) in one
    /// transaction: one commit, so one fsync, and after a crash either both are there or neither.
    pub fn insert_snapshot(&self, vm_id: i64, s: &SnapshotRow, rt: &RuntimeRecord) -> Result<()> {
        off_worker(|| {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            tx.execute(
            "INSERT INTO snapshots (vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![vm_id, s.name, s.parent, s.created_at as i64, s.vm_state.as_str(), s.kind, s.memory as i64, s.description, to_json(&s.spec), to_json(&s.disks)],
        )?;
            tx.execute(
                "UPDATE vms SET runtime = ?1 WHERE id = ?2",
                params![to_json(rt), vm_id],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records several snapshots of one VM in one transaction (a migrated VM's metadata).
    pub fn insert_snapshots(&self, vm_id: i64, rows: &[SnapshotRow]) -> Result<()> {
        off_worker(|| {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            for s in rows {
                tx.execute(
                    "INSERT INTO snapshots (vm_id, name, parent, created_at, vm_state, kind, memory, description, spec, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![vm_id, s.name, s.parent, s.created_at as i64, s.vm_state.as_str(), s.kind, s.memory as i64, s.description, to_json(&s.spec), to_json(&s.disks)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Deletes a snapshot and hands its children to its parent, in one transaction.
    pub fn delete_snapshot(&self, vm_id: i64, name: &str, parent: Option<&str>) -> Result<()> {
        off_worker(|| {
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
        })
    }

    /// Records a snapshot and the VM's new spec together (an external snapshot changes which
    /// files are the disks): after a crash either both are there or neither.
    pub fn insert_snapshot_with_spec(
        &self,
        vm_id: i64,
        s: &SnapshotRow,
        spec: &VmSpec,
    ) -> Result<()> {
        off_worker(|| {
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
        })
    }

    /// Replaces an external snapshot's disk records (after a merge moved images).
    pub fn update_snapshot_disks(
        &self,
        vm_id: i64,
        name: &str,
        disks: &[ExternalDisk],
    ) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "UPDATE snapshots SET data = ?1 WHERE vm_id = ?2 AND name = ?3",
                params![to_json(&disks), vm_id, name],
            )?;
            Ok(())
        })
    }

    pub fn delete_all_snapshots(&self, vm_id: i64) -> Result<()> {
        off_worker(|| {
            self.conn()
                .execute("DELETE FROM snapshots WHERE vm_id = ?1", params![vm_id])?;
            Ok(())
        })
    }
}

impl Store {
    pub fn load_networks(&self) -> Result<Vec<(model::NetworkSpec, bool)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, spec, active FROM networks ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, spec, active) = row?;
            let spec = decode(&spec, "network", "networks", format!("{name:?}"), "spec")?;
            out.push((spec, active != 0));
        }
        Ok(out)
    }

    pub fn insert_network(&self, spec: &model::NetworkSpec) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "INSERT INTO networks (name, spec) VALUES (?1, ?2)",
                params![spec.name.as_str(), to_json(spec)],
            )?;
            Ok(())
        })
    }

    pub fn update_network(&self, spec: &model::NetworkSpec) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "UPDATE networks SET spec = ?1 WHERE name = ?2",
                params![to_json(spec), spec.name.as_str()],
            )?;
            Ok(())
        })
    }

    pub fn set_network_active(&self, name: &str, active: bool) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "UPDATE networks SET active = ?1 WHERE name = ?2",
                params![active as i64, name],
            )?;
            Ok(())
        })
    }

    pub fn delete_network(&self, name: &str) -> Result<()> {
        off_worker(|| {
            self.conn()
                .execute("DELETE FROM networks WHERE name = ?1", params![name])?;
            Ok(())
        })
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
        off_worker(|| {
            self.conn().execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
            Ok(())
        })
    }

    pub fn delete_meta(&self, key: &str) -> Result<()> {
        off_worker(|| {
            self.conn()
                .execute("DELETE FROM meta WHERE key = ?1", params![key])?;
            Ok(())
        })
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
        off_worker(|| {
            self.conn().execute(
                "INSERT INTO pools (name, path, autostart) VALUES (?1, ?2, ?3)",
                params![p.name, p.path.display().to_string(), p.autostart as i64],
            )?;
            Ok(())
        })
    }

    pub fn delete_pool(&self, name: &str) -> Result<()> {
        off_worker(|| {
            self.conn()
                .execute("DELETE FROM pools WHERE name = ?1", params![name])?;
            Ok(())
        })
    }
}

/// What hv knows about one image file: the format it was created, imported or adopted as
/// (never re-guessed from its bytes), who made it, and which file it was (device and inode), so
/// a file replaced behind hv's back is not taken for the recorded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub path: std::path::PathBuf,
    pub format: model::DiskFormat,
    pub origin: ImageOrigin,
    pub dev: u64,
    pub ino: u64,
    /// The backing file hv made it with or last pointed it at: `Some(None)` for none, `None`
    /// where a record from before hv kept links does not know.
    pub backing: Option<Option<std::path::PathBuf>>,
}

/// How an image came to be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOrigin {
    /// hv created the file (volume create, clone, import, `size=` disks).
    Created,
    /// hv created it as an external snapshot's overlay.
    Overlay,
    /// An existing file that a user named (a path disk, a file put in a pool by hand).
    Adopted,
}

impl ImageOrigin {
    fn as_str(self) -> &'static str {
        match self {
            ImageOrigin::Created => "created",
            ImageOrigin::Overlay => "overlay",
            ImageOrigin::Adopted => "adopted",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => ImageOrigin::Created,
            "overlay" => ImageOrigin::Overlay,
            "adopted" => ImageOrigin::Adopted,
            _ => return None,
        })
    }
}

impl Store {
    pub fn image(&self, path: &Path) -> Result<Option<ImageRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT path, format, origin, dev, ino, backing FROM images WHERE path = ?1",
        )?;
        let mut rows = stmt.query_map(params![path.display().to_string()], image_row)?;
        rows.next().transpose()?.transpose()
    }

    /// Images recorded under `dir` (directly in it).
    pub fn images_in(&self, dir: &Path) -> Result<Vec<ImageRow>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT path, format, origin, dev, ino, backing FROM images")?;
        let rows = stmt.query_map([], image_row)?;
        let mut out = Vec::new();
        for r in rows {
            let r = r??;
            if r.path.parent() == Some(dir) {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn put_image(&self, r: &ImageRow) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
            "INSERT OR REPLACE INTO images (path, format, origin, dev, ino, backing) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.path.display().to_string(),
                r.format.as_str(),
                r.origin.as_str(),
                r.dev as i64,
                r.ino as i64,
                r.backing.as_ref().map(|b| b
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default())
            ],
        )?;
            Ok(())
        })
    }

    pub fn delete_image(&self, path: &Path) -> Result<()> {
        off_worker(|| {
            self.conn().execute(
                "DELETE FROM images WHERE path = ?1",
                params![path.display().to_string()],
            )?;
            Ok(())
        })
    }
}

fn image_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ImageRow>> {
    let path: String = r.get(0)?;
    let format: String = r.get(1)?;
    let origin: String = r.get(2)?;
    let bad = |what: &str, v: &str| {
        crate::EngineError::Internal(format!(
            "the image record of {path} has an unknown {what} {v:?}; this hvd is older than the database"
        ))
    };
    let row = (|| {
        Ok(ImageRow {
            path: std::path::PathBuf::from(&path),
            format: format.parse().map_err(|_| bad("format", &format))?,
            origin: ImageOrigin::parse(&origin).ok_or_else(|| bad("origin", &origin))?,
            dev: r.get::<_, i64>(3)? as u64,
            ino: r.get::<_, i64>(4)? as u64,
            backing: r
                .get::<_, Option<String>>(5)?
                .map(|b| (!b.is_empty()).then(|| std::path::PathBuf::from(b))),
        })
    })();
    Ok(row)
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database under a directory of its own, removed on drop.
    struct TempDb(std::path::PathBuf);

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn db() -> (TempDb, std::path::PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hv-store-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hv.db");
        (TempDb(dir), path)
    }

    /// Opens a store on a database that `sql` prepared.
    fn check(sql: &str) -> (TempDb, std::path::PathBuf, Result<Store>) {
        let (dir, path) = db();
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        let store = Store::open(&path);
        (dir, path, store)
    }

    const SPEC: &str = r#"{"name":"a"}"#;

    #[test]
    fn an_unversioned_database_is_migrated_and_keeps_its_rows() {
        let (_dir, path, store) = check(&format!(
            "{} INSERT INTO vms (name, spec) VALUES ('a', '{SPEC}');",
            MIGRATIONS[0]
        ));
        let store = store.unwrap();
        let rows = store.load_all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].spec.name.as_str(), "a");
        let v: u32 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        // Opening again applies nothing twice.
        drop(store);
        assert_eq!(Store::open(&path).unwrap().load_all().unwrap().len(), 1);
    }

    #[test]
    fn a_database_newer_than_this_hvd_is_refused() {
        let (_dir, _, store) = check("PRAGMA user_version = 999;");
        let e = store.err().unwrap().to_string();
        assert!(e.contains("schema version 999, newer"), "{e}");
    }

    #[test]
    fn a_vm_row_that_does_not_read_is_refused_and_named() {
        for (spec, runtime, field) in [
            ("{not json", "{}", "spec"),
            (SPEC, "{\"pid\":\"x\"}", "runtime"),
        ] {
            let (_dir, _, store) = check(&format!(
                "{} INSERT INTO vms (name, spec, runtime) VALUES ('a', '{SPEC}', '{{}}');
                 INSERT INTO vms (name, spec, runtime) VALUES ('broken', '{spec}', '{runtime}');",
                MIGRATIONS[0]
            ));
            let e = store.unwrap().load_all().err().unwrap().to_string();
            assert!(
                e.contains(&format!("{field} of vms row id 2 (VM \"broken\")")),
                "{e}"
            );
            assert!(e.contains("sqlite3"), "says what to do: {e}");
        }
    }

    #[test]
    fn network_and_snapshot_rows_that_do_not_read_are_refused() {
        let (_dir, _, store) = check(&format!(
            "{} INSERT INTO networks (name, spec) VALUES ('n', '{{\"mode\":1}}');
             INSERT INTO snapshots (vm_id, name, created_at, vm_state, kind, memory, spec)
                VALUES (1, 's', 0, 'running', 'internal', 0, '[]');",
            MIGRATIONS[0]
        ));
        let store = store.unwrap();
        let e = store.load_networks().err().unwrap().to_string();
        assert!(e.contains("networks row \"n\""), "{e}");
        let e = store.load_snapshots(1).err().unwrap().to_string();
        assert!(e.contains("snapshots row \"s\" of VM id 1"), "{e}");
    }

    #[test]
    fn sqlite_waits_for_locks_and_syncs_every_commit() {
        let (_dir, path) = db();
        let store = Store::open(&path).unwrap();
        let conn = store.conn();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let busy: i64 = conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(busy, BUSY_TIMEOUT.as_millis() as i64);
    }
}
