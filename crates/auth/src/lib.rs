//! Callers and rights as data: who is asking ([`Principal`]), what they were granted
//! ([`Grant`]: a [`Role`] on all VMs or on a name glob), what a route does ([`Action`]) and on
//! what ([`Object`]), and the one pure function that decides ([`decide`]). No I/O: the daemon
//! extracts the principal and the engine stores the grants.

use std::fmt;
use std::str::FromStr;

/// Who made a request, kept for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub who: Who,
    /// Where the request came from: `unix` for the local socket, else the peer's `ip:port`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A uid on the Unix socket that hvd accepted as an administrator (root or a member of the
    /// admin group).
    LocalAdmin { uid: u32 },
    /// A user authenticated by a token, with the grants they hold.
    User { name: String, grants: Vec<Grant> },
}

impl Principal {
    pub fn local(uid: u32) -> Principal {
        Principal {
            who: Who::LocalAdmin { uid },
            source: "unix".into(),
        }
    }

    /// How the audit log names this caller: `uid:0` or the user name.
    pub fn audit_name(&self) -> String {
        match &self.who {
            Who::LocalAdmin { uid } => format!("uid:{uid}"),
            Who::User { name, .. } => name.clone(),
        }
    }

    /// May this caller do `action` on `object`? See [`decide`].
    pub fn decide(&self, action: Action, object: &Object) -> Decision {
        match &self.who {
            Who::LocalAdmin { .. } => Decision::Allow,
            Who::User { grants, .. } => decide(grants, action, object),
        }
    }

    pub fn may(&self, action: Action, object: &Object) -> bool {
        self.decide(action, object) == Decision::Allow
    }
}

/// Bundles of rights, as the issue defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// List and info of the granted VMs, console output and screen.
    Viewer,
    /// Viewer plus power, console input, media, snapshot create and revert.
    Operator,
    /// Everything; on all VMs also define/undefine, host paths, networks, pools, users, audit.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The rights this role bundles.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match action {
            Login | Public | Authenticated | Logout | OperationRead | VmAudit | VmConsole => true,
            VmConsoleInput | VmPowerMgmt | VmMedia | VmSnapshot | OperationCancel => {
                self >= Role::Operator
            }
            VmSnapshotDelete | VmConfig | VmAllocate | VmMigrate | HostPaths | HostAudit
            | HostAdmin | NetworkAudit | NetworkAdmin | StorageAudit | StorageAdmin | UserAdmin
            | AuditRead | MetricsRead => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("unknown role {0:?}: use viewer, operator or admin")]
    Role(String),
    #[error("invalid VM glob {0:?}: use VM name characters and * or ? (e.g. 'web-*')")]
    Glob(String),
}

impl FromStr for Role {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Role, ParseError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(ParseError::Role(s.to_string())),
        }
    }
}

/// A role on all VMs (`vm_glob: None`) or on the VMs whose names match a glob. Only a grant on
/// all VMs reaches objects that are not VMs (host, networks, pools, users, audit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub role: Role,
    pub vm_glob: Option<String>,
}

impl Grant {
    pub fn new(role: Role, vm_glob: Option<&str>) -> Result<Grant, ParseError> {
        if let Some(g) = vm_glob {
            check_glob(g)?;
        }
        Ok(Grant {
            role,
            vm_glob: vm_glob.map(str::to_string),
        })
    }

    fn covers(&self, object: &Object) -> bool {
        match (object, &self.vm_glob) {
            (_, None) => true,
            (Object::Vm(name), Some(glob)) => glob_match(glob, name),
            (Object::Global, Some(_)) => false,
        }
    }
}

/// A VM glob is VM-name characters plus `*` and `?`.
pub fn check_glob(g: &str) -> Result<(), ParseError> {
    let ok = !g.is_empty()
        && g.len() <= 64
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?'));
    if ok {
        Ok(())
    } else {
        Err(ParseError::Glob(g.to_string()))
    }
}

/// Shell-style matching: `*` any run of characters, `?` one character, the rest literally.
pub fn glob_match(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// What a route does, named as operators know rights (after Proxmox's privileges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Anyone, before authentication: logging in (checked by password, rate-limited).
    Login,
    /// Anyone, without credentials: the web UI's static files (they hold no data).
    Public,
    /// Any authenticated caller (ping, the API document).
    Authenticated,
    /// End one's own session (any authenticated caller; audited).
    Logout,
    /// See a VM: list, info, showcmd, snapshots, console log, waits, its events.
    VmAudit,
    /// Watch a VM's console.
    VmConsole,
    /// Type on a VM's console.
    VmConsoleInput,
    /// Start, shutdown, reboot, destroy, reset, pause, resume.
    VmPowerMgmt,
    /// Insert and eject CD-ROM media.
    VmMedia,
    /// Create and revert snapshots.
    VmSnapshot,
    VmSnapshotDelete,
    /// Change a VM's definition: spec, disks, NICs, autostart.
    VmConfig,
    /// Define and undefine VMs.
    VmAllocate,
    /// Move a VM to another host (`hv migrate`): admin only, since the VM leaves this host.
    VmMigrate,
    /// Name host paths (not pool volumes) in a VM's disks, kernel or media.
    HostPaths,
    HostAudit,
    /// Change the host: bridges.
    HostAdmin,
    NetworkAudit,
    NetworkAdmin,
    StorageAudit,
    StorageAdmin,
    /// Users, grants and tokens.
    UserAdmin,
    AuditRead,
    /// See operations (of the objects the caller may see).
    OperationRead,
    OperationCancel,
    /// Scrape `GET /metrics` (figures of every VM and of hvd): a grant on all VMs.
    MetricsRead,
}

impl Action {
    /// The right's name in the audit log and in messages (`VM.PowerMgmt` style).
    pub fn as_str(self) -> &'static str {
        use Action::*;
        match self {
            Login => "Login",
            Public => "Public",
            Authenticated => "Authenticated",
            Logout => "Logout",
            VmAudit => "VM.Audit",
            VmConsole => "VM.Console",
            VmConsoleInput => "VM.Console.Input",
            VmPowerMgmt => "VM.PowerMgmt",
            VmMedia => "VM.Media",
            VmSnapshot => "VM.Snapshot",
            VmSnapshotDelete => "VM.Snapshot.Delete",
            VmConfig => "VM.Config",
            VmAllocate => "VM.Allocate",
            VmMigrate => "VM.Migrate",
            HostPaths => "Host.Paths",
            HostAudit => "Host.Audit",
            HostAdmin => "Host.Admin",
            NetworkAudit => "Network.Audit",
            NetworkAdmin => "Network.Admin",
            StorageAudit => "Storage.Audit",
            StorageAdmin => "Storage.Admin",
            UserAdmin => "User.Admin",
            AuditRead => "Audit.Read",
            OperationRead => "Operation.Read",
            OperationCancel => "Operation.Cancel",
            MetricsRead => "Metrics.Read",
        }
    }
}

impl Action {
    /// Whether the action only reads (not audited); everything else changes something or
    /// reaches into a VM (console sessions) and is audited.
    pub fn is_read(self) -> bool {
        use Action::*;
        matches!(
            self,
            Login
                | Public
                | Authenticated
                | VmAudit
                | VmConsole
                | HostAudit
                | NetworkAudit
                | StorageAudit
                | AuditRead
                | OperationRead
                | MetricsRead
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action is done on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Vm(String),
    /// Everything that is not a VM: the host, networks, pools, users, the audit log.
    Global,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Vm(n) => write!(f, "vm/{n}"),
            Object::Global => f.write_str("host"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The caller sees the object but lacks the right: 403.
    Forbidden,
    /// The caller may not even see the object: answer as if it did not exist (404).
    Hidden,
}

/// The one decision: may a user holding `grants` do `action` on `object`?
///
/// A grant counts when it covers the object (a glob grant covers only matching VMs) and its
/// role bundles the action. A VM the grants do not let the caller see is [`Decision::Hidden`].
pub fn decide(grants: &[Grant], action: Action, object: &Object) -> Decision {
    let holds = |a: Action| grants.iter().any(|g| g.covers(object) && g.role.allows(a));
    // Any grant at all lets a user reach the API and its own operations.
    if matches!(action, Action::Login | Action::Public | Action::Logout) {
        return Decision::Allow;
    }
    if matches!(action, Action::Authenticated | Action::OperationRead)
        && matches!(object, Object::Global)
    {
        return if grants.is_empty() {
            Decision::Forbidden
        } else {
            Decision::Allow
        };
    }
    if holds(action) {
        Decision::Allow
    } else if matches!(object, Object::Vm(_)) && !holds(Action::VmAudit) {
        Decision::Hidden
    } else {
        Decision::Forbidden
    }
}

/// Failed logins of one key (a user name, or a source address) and the backoff they earned:
/// [`Backoff::FREE`] failures are free, then each further attempt must wait twice as long
/// after the last failure as the one before (1 s, 2 s, 4 s ... up to [`Backoff::MAX_MS`]).
/// Pure: the caller passes the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    pub failures: u32,
    pub last_failure_ms: u64,
}

impl Backoff {
    pub const FREE: u32 = 5;
    pub const MAX_MS: u64 = 15 * 60 * 1000;

    /// How long from `now_ms` until the next attempt may be checked (0: now).
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        if self.failures < Self::FREE {
            return 0;
        }
        let step = (self.failures - Self::FREE).min(20);
        let delay = (1000u64 << step).min(Self::MAX_MS);
        (self.last_failure_ms + delay).saturating_sub(now_ms)
    }

    pub fn fail(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.last_failure_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Decision::*;

    fn g(role: &str, glob: Option<&str>) -> Grant {
        Grant::new(role.parse().expect("role"), glob).expect("grant")
    }

    fn vm(n: &str) -> Object {
        Object::Vm(n.into())
    }

    #[test]
    fn decisions_follow_the_role_table() {
        let viewer_all = [g("viewer", None)];
        let op_web = [g("operator", Some("web-*"))];
        let admin_web = [g("admin", Some("web-*"))];
        let admin_all = [g("admin", None)];
        let mixed = [g("viewer", None), g("operator", Some("db-?"))];
        #[rustfmt::skip]
        let table: &[(&[Grant], Action, Object, Decision)] = &[
            (&viewer_all, VmAudit, vm("db-1"), Allow),
            (&viewer_all, VmConsole, vm("db-1"), Allow),
            (&viewer_all, VmConsoleInput, vm("db-1"), Forbidden),
            (&viewer_all, VmPowerMgmt, vm("db-1"), Forbidden),
            (&viewer_all, VmAllocate, Object::Global, Forbidden),
            (&viewer_all, NetworkAudit, Object::Global, Forbidden),
            (&viewer_all, Authenticated, Object::Global, Allow),
            (&op_web, VmPowerMgmt, vm("web-1"), Allow),
            (&op_web, VmMedia, vm("web-1"), Allow),
            (&op_web, VmSnapshot, vm("web-1"), Allow),
            (&op_web, VmConsoleInput, vm("web-1"), Allow),
            (&op_web, VmSnapshotDelete, vm("web-1"), Forbidden),
            (&op_web, VmConfig, vm("web-1"), Forbidden),
            (&op_web, VmPowerMgmt, vm("db-1"), Hidden),
            (&op_web, VmAudit, vm("db-1"), Hidden),
            (&op_web, VmPowerMgmt, vm("web"), Hidden),
            (&op_web, StorageAdmin, Object::Global, Forbidden),
            (&op_web, OperationRead, Object::Global, Allow),
            (&admin_web, VmConfig, vm("web-2"), Allow),
            (&admin_web, VmAllocate, vm("web-2"), Allow),
            (&admin_web, HostPaths, Object::Global, Forbidden),
            (&admin_web, UserAdmin, Object::Global, Forbidden),
            (&admin_web, VmAudit, vm("db-1"), Hidden),
            (&admin_all, HostPaths, Object::Global, Allow),
            (&admin_all, UserAdmin, Object::Global, Allow),
            (&admin_all, VmAllocate, vm("anything"), Allow),
            (&mixed, VmPowerMgmt, vm("db-1"), Allow),
            (&mixed, VmPowerMgmt, vm("db-10"), Forbidden),
            (&mixed, VmPowerMgmt, vm("web-1"), Forbidden),
            (&[], Authenticated, Object::Global, Forbidden),
            (&[], VmAudit, vm("web-1"), Hidden),
        ];
        for (grants, action, object, want) in table {
            assert_eq!(
                decide(grants, *action, object),
                *want,
                "{grants:?} {action} {object}"
            );
        }
    }

    #[test]
    fn failed_logins_earn_a_doubling_backoff() {
        let mut b = Backoff::default();
        for _ in 0..Backoff::FREE {
            assert_eq!(b.wait_ms(1_000), 0);
            b.fail(1_000);
        }
        assert_eq!(b.wait_ms(1_000), 1_000, "the sixth attempt waits 1 s");
        assert_eq!(b.wait_ms(2_000), 0);
        b.fail(2_000);
        assert_eq!(b.wait_ms(2_000), 2_000);
        b.fail(4_000);
        assert_eq!(b.wait_ms(4_500), 3_500);
        for _ in 0..40 {
            b.fail(10_000);
        }
        assert_eq!(b.wait_ms(10_000), Backoff::MAX_MS);
        assert_eq!(decide(&[], Action::Login, &Object::Global), Decision::Allow);
    }

    #[test]
    fn a_local_admin_may_do_everything() {
        let p = Principal::local(0);
        assert!(p.may(HostPaths, &Object::Global));
        assert!(p.may(VmAllocate, &vm("x")));
        assert_eq!(p.audit_name(), "uid:0");
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (glob, name, want) in [
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("web-*", "db-1", false),
            ("*", "x", true),
            ("w?b", "web", true),
            ("w?b", "wb", false),
            ("*-1", "web-1", true),
            ("*-1", "web-10", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(glob, name), want, "{glob} {name}");
        }
    }

    #[test]
    fn bad_roles_and_globs_are_refused() {
        assert_eq!("root".parse::<Role>(), Err(ParseError::Role("root".into())));
        assert!(Grant::new(Role::Viewer, Some("web/*")).is_err());
        assert!(Grant::new(Role::Viewer, Some("")).is_err());
        assert!(Grant::new(Role::Viewer, Some("web-*")).is_ok());
    }
}
