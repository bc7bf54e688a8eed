//! Remote access data: users (Argon2id password hashes), their grants, API tokens (only a
//! SHA-256 of each is kept, looked up by that hash, so checking a token costs one indexed
//! read and no Argon2) and the append-only audit log. Its own subject with its own SQLite
//! connection to hv's database; it knows nothing of VMs.

use std::path::Path;
use std::sync::Mutex;

use api::{AuditList, AuditQuery, AuditRecord, GrantInfo, TokenCreated, TokenInfo, UserInfo};
use auth::{Grant, Role};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::now_ms;

/// Prefix of every token, so that leaked tokens are recognisable (and greppable).
const TOKEN_PREFIX: &str = "hvt_";

/// Users, grants, tokens and the audit log.
pub struct Access {
    conn: Mutex<Connection>,
    /// Tells open sessions (consoles) that their credentials or rights went away.
    revocations: tokio::sync::broadcast::Sender<Revocation>,
    /// Where each audit record is also published as an `audit` event (once set).
    events: std::sync::OnceLock<crate::EventLog>,
}

/// What ends sessions that are already open: a revoked token, or a user removed or with
/// fewer grants (their sessions end; they may open new ones with what they still hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Token(String),
    User(String),
}

/// A token checked against the database.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user: String,
    pub token_id: String,
    pub grants: Vec<Grant>,
}

/// One audit entry to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub principal: String,
    pub source: String,
    pub object: String,
    pub action: String,
    pub result: String,
    pub operation_id: Option<u64>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| EngineError::Host(format!("cannot read random bytes: {e}")))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Equal without an early exit on the first difference.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "invalid user name {name:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit (64 at most)"
        )))
    }
}

fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.is_empty() {
        return Err(EngineError::Invalid("the password is empty".into()));
    }
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| EngineError::Internal(format!("password salt: {e}")))?;
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| EngineError::Internal(format!("password hash: {e}")))
}

/// Argon2id with RFC 9106's second recommended setting (64 MiB, 3 passes): one check takes
/// tens of milliseconds on purpose, so guessing passwords is slow even without the backoff. A
/// stored hash carries its own parameters, so verification follows what it was made with.
fn argon2() -> Result<argon2::Argon2<'static>> {
    let params = argon2::Params::new(64 * 1024, 3, 1, None)
        .map_err(|e| EngineError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

fn no_such_user(name: &str) -> EngineError {
    EngineError::NotFound(format!(
        "user {name:?} does not exist (hv user list shows the users)"
    ))
}

impl Access {
    /// Opens the access tables in hv's database (migrated to this hvd's schema first; the
    /// tables are migration 4 in `store.rs`). The audit table has no UPDATE or DELETE anywhere
    /// in hv: it is append-only.
    pub fn open(db: &Path) -> Result<Access> {
        let mut conn = Connection::open(db)?;
        // rusqlite waits up to 5 s for the other connection (the VM store's) to finish a write.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        crate::store::migrate(&mut conn, db)?;
        Ok(Access {
            conn: Mutex::new(conn),
            revocations: tokio::sync::broadcast::channel(64).0,
            events: std::sync::OnceLock::new(),
        })
    }

    /// Revocations from now on.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    fn revoked(&self, r: Revocation) {
        let _ = self.revocations.send(r);
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn user_add(&self, name: &str, password: Option<&str>) -> Result<UserInfo> {
        check_user_name(name)?;
        let hash = password.map(hash_password).transpose()?;
        let now = now_ms();
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO users (name, password_hash, created_ms) VALUES (?1, ?2, ?3)",
            params![name, hash, now as i64],
        )?;
        if n == 0 {
            return Err(EngineError::AlreadyExists(format!(
                "user {name:?} already exists (hv user passwd changes the password)"
            )));
        }
        self.user(name)
    }

    pub fn user(&self, name: &str) -> Result<UserInfo> {
        let row: Option<(i64, bool)> = self
            .conn()
            .query_row(
                "SELECT created_ms, password_hash IS NOT NULL FROM users WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (created, has_password) = row.ok_or_else(|| no_such_user(name))?;
        Ok(UserInfo {
            name: name.to_string(),
            created_ms: created as u64,
            has_password,
            grants: self.grants(name)?.iter().map(grant_info).collect(),
        })
    }

    pub fn users(&self) -> Result<Vec<UserInfo>> {
        let names: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT name FROM users ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        names.iter().map(|n| self.user(n)).collect()
    }

    /// Removes a user with their grants and tokens (their tokens stop working at once).
    pub fn user_remove(&self, name: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM tokens WHERE user = ?1", [name])?;
        tx.execute("DELETE FROM grants WHERE user = ?1", [name])?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(no_such_user(name));
        }
        tx.commit()?;
        self.revoked(Revocation::User(name.to_string()));
        Ok(())
    }

    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let hash = hash_password(password)?;
        let n = self.conn().execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, hash],
        )?;
        if n == 0 {
            return Err(no_such_user(name));
        }
        Ok(())
    }

    /// Checks a password (Argon2id, slow by design). For the web login.
    pub fn check_password(&self, name: &str, password: &str) -> Result<bool> {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let stored: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(Some(stored)) = stored else {
            // As slow as a real check, so that timing does not tell which users exist.
            let _ = hash_password(password);
            return Ok(false);
        };
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| EngineError::Internal(format!("stored password hash: {e}")))?;
        Ok(argon2()?
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    }

    pub fn grants(&self, name: &str) -> Result<Vec<Grant>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT role, vm_glob FROM grants WHERE user = ?1 ORDER BY role, vm_glob")?;
        let rows = stmt.query_map([name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (role, glob) = row?;
            let role: Role = role
                .parse()
                .map_err(|e| EngineError::Internal(format!("stored grant: {e}")))?;
            out.push(Grant {
                role,
                vm_glob: (!glob.is_empty()).then_some(glob),
            });
        }
        Ok(out)
    }

    pub fn grant(&self, name: &str, grant: &Grant) -> Result<UserInfo> {
        self.user(name)?;
        self.conn().execute(
            "INSERT OR IGNORE INTO grants (user, role, vm_glob) VALUES (?1, ?2, ?3)",
            params![
                name,
                grant.role.as_str(),
                grant.vm_glob.as_deref().unwrap_or("")
            ],
        )?;
        self.user(name)
    }

    pub fn revoke(&self, name: &str, grant: &Grant) -> Result<UserInfo> {
        self.user(name)?;
        let n = self.conn().execute(
            "DELETE FROM grants WHERE user = ?1 AND role = ?2 AND vm_glob = ?3",
            params![
                name,
                grant.role.as_str(),
                grant.vm_glob.as_deref().unwrap_or("")
            ],
        )?;
        if n == 0 {
            return Err(EngineError::NotFound(format!(
                "user {name:?} has no {} grant on {} (hv user list shows the grants)",
                grant.role,
                grant.vm_glob.as_deref().unwrap_or("all VMs")
            )));
        }
        self.revoked(Revocation::User(name.to_string()));
        self.user(name)
    }

    /// Makes a token for `user`. The secret is in the answer only; the database keeps its hash.
    pub fn token_create(
        &self,
        user: &str,
        expires_secs: Option<u64>,
        description: Option<String>,
    ) -> Result<TokenCreated> {
        self.user(user)?;
        if expires_secs == Some(0) {
            return Err(EngineError::Invalid(
                "a token must live longer than 0 seconds".into(),
            ));
        }
        let secret = format!("{TOKEN_PREFIX}{}", hex(&random_bytes::<32>()?));
        let id = hex(&random_bytes::<6>()?);
        let now = now_ms();
        let expires = expires_secs.map(|s| now.saturating_add(s.saturating_mul(1000)));
        self.conn().execute(
            "INSERT INTO tokens (id, user, hash, description, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                user,
                token_hash(&secret),
                description,
                now as i64,
                expires.map(|e| e as i64)
            ],
        )?;
        Ok(TokenCreated {
            token: secret,
            info: TokenInfo {
                id,
                user: user.to_string(),
                description,
                created_ms: now,
                expires_ms: expires,
            },
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, user, description, created_ms, expires_ms FROM tokens ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                user: r.get(1)?,
                description: r.get(2)?,
                created_ms: r.get::<_, i64>(3)? as u64,
                expires_ms: r.get::<_, Option<i64>>(4)?.map(|e| e as u64),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a token: it stops working at once (revoked tokens are deleted).
    pub fn token_revoke(&self, id: &str) -> Result<TokenInfo> {
        let info = self
            .tokens()?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "token {id:?} does not exist (hv token list shows the tokens)"
                ))
            })?;
        self.conn()
            .execute("DELETE FROM tokens WHERE id = ?1", [id])?;
        self.revoked(Revocation::Token(id.to_string()));
        Ok(info)
    }

    /// The user a token belongs to, with their grants; `None` for an unknown or expired token.
    pub fn check_token(&self, token: &str) -> Result<Option<TokenOwner>> {
        let hash = token_hash(token);
        let row: Option<(String, String, Vec<u8>, Option<i64>)> = self
            .conn()
            .query_row(
                "SELECT id, user, hash, expires_ms FROM tokens WHERE hash = ?1",
                [&hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((token_id, user, stored, expires)) = row else {
            return Ok(None);
        };
        if !ct_eq(&stored, &hash) || expires.is_some_and(|e| (e as u64) <= now_ms()) {
            return Ok(None);
        }
        let grants = self.grants(&user)?;
        Ok(Some(TokenOwner {
            user,
            token_id,
            grants,
        }))
    }

    /// Appends one audit record.
    /// Publishes every audit record from now on as an `audit` event in `log` too.
    pub fn publish_to(&self, log: crate::EventLog) {
        let _ = self.events.set(log);
    }

    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (time_ms, principal, source, object, action, result, operation_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now_ms() as i64,
                e.principal,
                e.source,
                e.object,
                e.action,
                e.result,
                e.operation_id.map(|i| i as i64)
            ],
        )?;
        if let Some(log) = self.events.get() {
            log.publish(
                e.object.strip_prefix("vm/").unwrap_or(""),
                api::EventKind::Audit {
                    principal: e.principal.clone(),
                    source: e.source.clone(),
                    object: e.object.clone(),
                    action: e.action.clone(),
                    result: e.result.clone(),
                    operation_id: e.operation_id,
                },
            );
        }
        Ok(())
    }

    /// Audit records, oldest first.
    pub fn audit_list(&self, q: &AuditQuery) -> Result<AuditList> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, time_ms, principal, source, object, action, result, operation_id FROM audit
             WHERE (?1 IS NULL OR principal = ?1)
               AND (?2 IS NULL OR object = 'vm/' || ?2)
               AND (?3 IS NULL OR time_ms >= ?3)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![q.user, q.vm, q.since_ms.map(|s| s as i64)], |r| {
            Ok(AuditRecord {
                id: r.get::<_, i64>(0)? as u64,
                time_ms: r.get::<_, i64>(1)? as u64,
                principal: r.get(2)?,
                source: r.get(3)?,
                object: r.get(4)?,
                action: r.get(5)?,
                result: r.get(6)?,
                operation_id: r.get::<_, Option<i64>>(7)?.map(|i| i as u64),
            })
        })?;
        Ok(AuditList {
            records: rows.collect::<rusqlite::Result<_>>()?,
        })
    }
}

fn grant_info(g: &Grant) -> GrantInfo {
    GrantInfo {
        role: g.role.as_str().to_string(),
        vm: g.vm_glob.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempdir::Dir, Access) {
        let d = tempdir::Dir::new();
        let a = Access::open(&d.0.join("hv.db")).expect("open");
        (d, a)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "hv-access-{}-{}",
                    std::process::id(),
                    super::hex(&super::random_bytes::<6>().expect("random"))
                ));
                std::fs::create_dir_all(&p).expect("mkdir");
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_checked_by_hash() {
        let (d, a) = open();
        a.user_add("alice", None).expect("add");
        a.grant(
            "alice",
            &Grant::new(Role::Operator, Some("web-*")).expect("grant"),
        )
        .expect("grant");
        let t = a
            .token_create("alice", None, Some("ci".into()))
            .expect("token");
        assert!(t.token.starts_with(TOKEN_PREFIX) && t.token.len() == 4 + 64);
        let owner = a.check_token(&t.token).expect("check").expect("known");
        assert_eq!(owner.user, "alice");
        assert_eq!(owner.grants.len(), 1);
        assert!(a.check_token("hvt_nope").expect("check").is_none());
        // The secret is nowhere in the database file.
        drop(a);
        let db = std::fs::read(d.0.join("hv.db")).expect("read db");
        let wal = std::fs::read(d.0.join("hv.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(!bytes
                .windows(t.token.len())
                .any(|w| w == t.token.as_bytes()));
        }
    }

    #[test]
    fn revoked_expired_and_orphaned_tokens_stop_working() {
        let (_d, a) = open();
        a.user_add("bob", None).expect("add");
        let t = a.token_create("bob", None, None).expect("token");
        a.token_revoke(&t.info.id).expect("revoke");
        assert!(a.check_token(&t.token).expect("check").is_none());
        let t = a.token_create("bob", Some(1), None).expect("token");
        a.conn()
            .execute(
                "UPDATE tokens SET expires_ms = 1 WHERE id = ?1",
                [&t.info.id],
            )
            .expect("age it");
        assert!(a.check_token(&t.token).expect("check").is_none());
        let t = a.token_create("bob", None, None).expect("token");
        a.user_remove("bob").expect("remove");
        assert!(a.check_token(&t.token).expect("check").is_none());
    }

    #[test]
    fn passwords_are_argon2id_hashes() {
        let (_d, a) = open();
        a.user_add("carol", Some("s3cret")).expect("add");
        let stored: String = a
            .conn()
            .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
            .expect("row");
        assert!(
            stored.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"),
            "{stored}"
        );
        assert!(a.check_password("carol", "s3cret").expect("check"));
        assert!(!a.check_password("carol", "wrong").expect("check"));
        assert!(!a.check_password("nobody", "s3cret").expect("check"));
        a.set_password("carol", "other").expect("passwd");
        assert!(a.check_password("carol", "other").expect("check"));
    }

    #[test]
    fn bad_user_names_and_duplicates_are_refused() {
        let (_d, a) = open();
        assert!(a.user_add("a b", None).is_err());
        assert!(a.user_add("-x", None).is_err());
        a.user_add("dave", None).expect("add");
        assert_eq!(
            a.user_add("dave", None).map(|_| ()).map_err(|e| e.code()),
            Err(api::ErrorCode::AlreadyExists)
        );
        assert!(a.token_create("nobody", None, None).is_err());
    }

    #[test]
    fn vm_writes_wait_for_an_access_write_instead_of_failing() {
        let (d, a) = open();
        let store = crate::store::Store::open(&d.0.join("hv.db")).expect("store");
        let conn = a.conn();
        conn.execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO users (name, created_ms) VALUES ('x', 0);",
        )
        .expect("hold the write lock");
        let writer = std::thread::spawn(move || store.set_meta("k", "v"));
        // Hold the lock for a while, as a slow audit append would.
        std::thread::sleep(std::time::Duration::from_millis(300));
        conn.execute_batch("COMMIT").expect("commit");
        let r = writer.join().expect("writer thread");
        assert!(r.is_ok(), "the VM store gave up instead of waiting: {r:?}");
    }

    #[test]
    fn audit_filters_by_user_vm_and_time() {
        let (_d, a) = open();
        for (p, o) in [
            ("uid:0", "vm/web-1"),
            ("alice", "vm/web-1"),
            ("alice", "network/lan"),
        ] {
            a.audit(&AuditEntry {
                principal: p.into(),
                source: "unix".into(),
                object: o.into(),
                action: "VM.PowerMgmt start".into(),
                result: "ok".into(),
                operation_id: Some(7),
            })
            .expect("audit");
        }
        let q = |user: Option<&str>, vm: Option<&str>| {
            a.audit_list(&AuditQuery {
                user: user.map(str::to_string),
                vm: vm.map(str::to_string),
                since_ms: None,
            })
            .expect("list")
            .records
            .len()
        };
        assert_eq!(q(None, None), 3);
        assert_eq!(q(Some("alice"), None), 2);
        assert_eq!(q(Some("alice"), Some("web-1")), 1);
        assert_eq!(q(None, Some("web-1")), 2);
        let later = a
            .audit_list(&AuditQuery {
                since_ms: Some(now_ms() + 60_000),
                ..Default::default()
            })
            .expect("list");
        assert!(later.records.is_empty());
    }
}
