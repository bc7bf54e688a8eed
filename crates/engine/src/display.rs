//! The VM's screen: the private VNC socket hvd's browser console connects to, and
//! screenshots.
//!
//! Every running VM has a private run directory, `STATE/run/ID.d`, that belongs to its QEMU
//! uid and has mode 0700, so only that uid and root (hvd) can enter it; the directories above
//! it get a search-only ACL entry for that uid while QEMU runs (see `confine.rs`). Unless the
//! VM has `graphics = none`, QEMU listens there for VNC (`vnc.sock`, bound by QEMU itself);
//! screendumps are written there too, then read and removed by hvd. The paths follow from the
//! VM's id alone, so a restarted hvd (re-attach, orphan adoption) finds them without records.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::GraphicsSpec;

use crate::error::{EngineError, Result};
use crate::vm::Vm;
use crate::Engine;

impl Engine {
    /// The VM's private run directory (VNC socket, screendumps).
    pub(crate) fn private_dir(&self, vm_id: i64) -> PathBuf {
        self.inner.cfg.run_dir().join(format!("{vm_id}.d"))
    }

    /// Where the VM's QEMU listens for hvd's VNC connection.
    pub(crate) fn vnc_socket_path(&self, vm_id: i64) -> PathBuf {
        self.private_dir(vm_id).join("vnc.sock")
    }

    /// Makes a fresh, empty private directory for the VM's QEMU (owned by its uid, 0700) and
    /// lets that uid reach it. Before a start.
    pub(crate) fn prepare_private_dir(&self, vm: &Vm) -> Result<()> {
        let dir = self.private_dir(vm.id);
        remove_private_dir(&dir);
        let ids = self.qemu_ids(vm.id)?;
        let host = |what: &str, e: std::io::Error| {
            EngineError::Host(format!("cannot {what} {}: {e}", dir.display()))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| host("create", e))?;
        std::os::unix::fs::chown(&dir, Some(ids.uid), Some(ids.gid))
            .map_err(|e| host("give the VM's QEMU uid", e))?;
        // The run dir and the directories above it are private: QEMU may pass through them.
        self.grant(
            vm,
            &self.inner.cfg.run_dir(),
            host_storage::access::Access::Search,
        )
    }

    /// The VM's private VNC socket, for hvd's browser console (`/v1/vms/{name}/vnc`). An error
    /// when the VM has no console (`graphics = none`) or its QEMU is not running.
    pub fn vnc_socket(&self, name: &str) -> Result<PathBuf> {
        let vm = self.get(name)?;
        let (running, graphics) = {
            let st = vm.lock();
            (st.pidfd.is_some(), st.spec.graphics.clone())
        };
        let path = self.vnc_socket_path(vm.id);
        // What QEMU bound there: a socket of its uid, not a link it put there (a compromised
        // QEMU could point hvd, which connects as root, at another socket). `connect_vnc`
        // also checks the peer of the connection itself.
        let uid = self.qemu_ids(vm.id)?.uid;
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket() && m.uid() == uid
        });
        if running && ours {
            return Ok(path);
        }
        if graphics == GraphicsSpec::None || running {
            return Err(no_console(name));
        }
        Err(EngineError::WrongState(format!(
            "VM {name} is not running, so it has no screen; start it with hv start {name}"
        )))
    }
}

impl Engine {
    /// Connects to the VM's private VNC socket (see [`vnc_socket`](Self::vnc_socket)) and
    /// checks that the peer is the VM's QEMU (its uid, `SO_PEERCRED`), so nothing QEMU did to
    /// its directory can make hvd talk to another socket as root.
    pub async fn connect_vnc(&self, name: &str) -> Result<tokio::net::UnixStream> {
        let path = self.vnc_socket(name)?;
        let uid = self.qemu_ids(self.get(name)?.id)?.uid;
        let s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
            EngineError::Qemu(format!(
                "cannot connect to the VNC server of VM {name} ({}): {e}",
                path.display()
            ))
        })?;
        let peer = s.peer_cred().map_err(|e| {
            EngineError::Host(format!("cannot ask who serves {}: {e}", path.display()))
        })?;
        if peer.uid() != uid {
            return Err(EngineError::Qemu(format!(
                "the VNC socket of VM {name} is served by uid {}, not by its QEMU (uid {uid}); refusing it",
                peer.uid()
            )));
        }
        Ok(s)
    }
}

/// The error for a VM without a graphical console.
pub(crate) fn no_console(name: &str) -> EngineError {
    EngineError::WrongState(format!(
        "VM {name} has no graphical console (graphics none); redefine it with --graphics console"
    ))
}

/// Removes a VM's private directory and what QEMU left in it (a directory that is not there
/// is fine). `remove_dir_all` does not follow symlinks a compromised QEMU may have put there.
pub(crate) fn remove_private_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the VM's private run directory")
        }
    }
}

/// A screenshot and when it was finished.
pub(crate) struct Shot {
    done: Instant,
    png: Arc<Vec<u8>>,
}

/// The oldest cached screenshot a caller may accept.
pub const MAX_SCREENSHOT_AGE: Duration = Duration::from_secs(60);
/// A screendump bigger than this is refused (QEMU's VGA tops out far below).
const MAX_SCREENDUMP_BYTES: u64 = 64 << 20;
/// How long QEMU may take for one screendump.
const SCREENDUMP_TIMEOUT: Duration = Duration::from_secs(20);

/// Distinct screendump file names within this hvd.
static SHOTS: AtomicU64 = AtomicU64::new(0);

impl Engine {
    /// A PNG of the VM's screen (QMP `screendump`). Concurrent callers share one screendump; a
    /// caller that accepts a shot up to `max_age` old gets the last one when it is that young,
    /// so many watchers cost one screendump per interval.
    pub async fn screenshot(&self, name: &str, max_age: Duration) -> Result<Arc<Vec<u8>>> {
        if max_age > MAX_SCREENSHOT_AGE {
            return Err(EngineError::Invalid(format!(
                "max_age_ms {} is too large; use 0 to {}",
                max_age.as_millis(),
                MAX_SCREENSHOT_AGE.as_millis()
            )));
        }
        let vm = self.get(name)?;
        let asked = Instant::now();
        let mut cache = vm.screen.lock().await;
        let running = vm.lock().qmp.is_some();
        if let Some(shot) = cache.as_ref().filter(|_| running) {
            // Taken while this caller waited, or young enough for it.
            if shot.done >= asked || asked.duration_since(shot.done) <= max_age {
                return Ok(shot.png.clone());
            }
        }
        let png = Arc::new(self.screendump(&vm).await?);
        *cache = Some(Shot {
            done: Instant::now(),
            png: png.clone(),
        });
        Ok(png)
    }

    /// One QMP `screendump` into the VM's private directory, read back and removed.
    async fn screendump(&self, vm: &Vm) -> Result<Vec<u8>> {
        let qmp = vm.qmp().map_err(|_| {
            EngineError::WrongState(format!(
                "VM {} is not running, so it has no screen; start it with hv start {}",
                vm.name, vm.name
            ))
        })?;
        let uid = self.qemu_ids(vm.id)?.uid;
        let file = self.private_dir(vm.id).join(format!(
            "shot-{}.png",
            SHOTS.fetch_add(1, Ordering::Relaxed)
        ));
        let args = serde_json::json!({ "filename": file.display().to_string(), "format": "png" });
        let r =
            tokio::time::timeout(SCREENDUMP_TIMEOUT, qmp.execute("screendump", Some(args))).await;
        let read = match r {
            Ok(Ok(_)) => read_screendump(&file, uid),
            Ok(Err(e)) => Err(EngineError::Qemu(format!("screendump failed: {e}"))),
            Err(_) => Err(EngineError::Timeout(format!(
                "QEMU did not take a screenshot of VM {} within {} s",
                vm.name,
                SCREENDUMP_TIMEOUT.as_secs()
            ))),
        };
        let _ = std::fs::remove_file(&file);
        read
    }
}

/// Reads a screendump QEMU wrote: a regular file of QEMU's uid (not a link a compromised QEMU
/// put there to make hvd read a file of root's), of bounded size, that is a PNG.
fn read_screendump(file: &Path, uid: u32) -> Result<Vec<u8>> {
    let bad = |why: String| EngineError::Qemu(format!("the screendump {}: {why}", file.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| bad(format!("cannot be opened: {e}")))?;
    let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.uid() != uid {
        return Err(bad("is not a regular file of the VM's QEMU".into()));
    }
    if meta.len() > MAX_SCREENDUMP_BYTES {
        return Err(bad(format!("is {} bytes, more than a screen", meta.len())));
    }
    let mut png = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_SCREENDUMP_BYTES)
        .read_to_end(&mut png)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(bad("is not a PNG".into()));
    }
    Ok(png)
}

/// How long each key of a combination is held (QEMU's default; firmware and SysRq need it).
const COMBO_HOLD_MS: u32 = 100;
/// How long each key is held when typing text (quicker; still seen by every guest here).
const TEXT_HOLD_MS: u32 = 20;
/// QEMU queues timed key events and silently drops them beyond 1024 queue entries (about 100
/// combinations): keys go in chunks this big, each given the time QEMU takes to play it.
const KEY_CHUNK: usize = 32;

impl Engine {
    /// Presses key combinations, or types text, on the VM's keyboard (QMP `send-key`, one
    /// command per combination). Validated whole before anything is sent. Returns how many
    /// combinations were sent. Concurrent requests for one VM do not interleave. Text is typed
    /// at about 40 characters a second (the longest, 4096 characters, takes about 2 minutes).
    pub async fn send_keys(&self, name: &str, req: &api::KeysRequest) -> Result<api::KeysSent> {
        let combos = kvm::keys::plan(req.keys.as_deref(), req.text.as_deref())
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let hold = if req.text.is_some() {
            TEXT_HOLD_MS
        } else {
            COMBO_HOLD_MS
        };
        let vm = self.get(name)?;
        let _typing = vm.keys.lock().await;
        let qmp = vm.qmp().map_err(|_| {
            EngineError::WrongState(format!(
                "VM {name} is not running, so it has no keyboard; start it with hv start {name}"
            ))
        })?;
        let mut sent = 0u32;
        for (i, chunk) in combos.chunks(KEY_CHUNK).enumerate() {
            if i > 0 {
                // Pacing, not polling: QEMU reports nothing when its key queue has drained.
                let played = KEY_CHUNK as u64 * u64::from(hold) * 5 / 4;
                tokio::time::sleep(Duration::from_millis(played)).await;
            }
            for c in chunk {
                qmp.execute("send-key", Some(kvm::keys::send_key_args(c, hold)))
                    .await
                    .map_err(|e| {
                        EngineError::Qemu(format!(
                            "send-key failed after {sent} of {} key events: {e}",
                            combos.len()
                        ))
                    })?;
                sent += 1;
            }
        }
        Ok(api::KeysSent { sent })
    }
}
