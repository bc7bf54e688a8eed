//! `hv user ...`, `hv token ...`, `hv audit` and `hv host cert`: who may use hvd remotely,
//! with which rights, and what they did.

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use client::Client;

use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (with --password-stdin, a password for the web login is read from stdin).
    Add {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Users and their grants.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove a user with their grants and tokens.
    Remove { name: String },
    /// Set a user's password, read from stdin.
    Passwd { name: String },
    /// Grant a role (viewer, operator, admin) on all VMs or on the VMs matching --vm GLOB.
    Grant {
        name: String,
        role: String,
        #[arg(long)]
        vm: Option<String>,
    },
    /// Revoke a grant (the same role and --vm as it was granted with).
    Revoke {
        name: String,
        role: String,
        #[arg(long)]
        vm: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make an API token for USER and print it once (hvd keeps only its hash).
    Create {
        user: String,
        /// Lifetime: 30d, 12h, 90m, 3600s (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Tokens (never their secrets).
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke { id: String },
}

/// `30d`, `12h`, `90m`, `3600s` or plain seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: use e.g. 30d, 12h, 90m or 3600s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("invalid duration {s:?}: the unit must be s, m, h, d or w"),
    };
    n.checked_mul(mult)
        .filter(|n| *n > 0)
        .with_context(|| format!("invalid duration {s:?}: must be more than 0 and not huge"))
}

fn read_password() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read the password from stdin")?;
    let p = s.strip_suffix('\n').unwrap_or(&s);
    let p = p.strip_suffix('\r').unwrap_or(p);
    if p.is_empty() {
        bail!("the password on stdin is empty");
    }
    Ok(p.to_string())
}

pub fn user(c: &Client, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            password_stdin,
        } => {
            let password = password_stdin.then(read_password).transpose()?;
            let u = c.user_add(&api::CreateUserRequest { name, password })?;
            println!(
                "user {} added; give them rights with: hv user grant {} viewer|operator|admin [--vm GLOB]",
                u.name, u.name
            );
        }
        UserCmd::List { format } => {
            let users = c.users()?;
            if !output::structured(format, &users)? {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        let grants: Vec<String> = u
                            .grants
                            .iter()
                            .map(|g| format!("{}:{}", g.role, g.vm.as_deref().unwrap_or("*")))
                            .collect();
                        vec![
                            u.name.clone(),
                            if u.has_password { "yes" } else { "no" }.into(),
                            if grants.is_empty() {
                                "-".into()
                            } else {
                                grants.join(",")
                            },
                        ]
                    })
                    .collect();
                print!("{}", output::table(&["NAME", "PASSWORD", "GRANTS"], &rows));
            }
        }
        UserCmd::Remove { name } => {
            c.user_remove(&name)?;
            println!("user {name} removed, with their grants and tokens");
        }
        UserCmd::Passwd { name } => {
            c.user_passwd(&name, &read_password()?)?;
            println!("password of {name} set");
        }
        UserCmd::Grant { name, role, vm } => {
            let u = c.user_grant(
                &name,
                &api::GrantInfo {
                    role: role.clone(),
                    vm: vm.clone(),
                },
            )?;
            println!(
                "{} is {role} of {}",
                u.name,
                vm.as_deref()
                    .map(|g| format!("VMs {g}"))
                    .unwrap_or("all VMs".into())
            );
        }
        UserCmd::Revoke { name, role, vm } => {
            c.user_revoke(
                &name,
                &api::GrantInfo {
                    role: role.clone(),
                    vm: vm.clone(),
                },
            )?;
            println!(
                "{name} is no longer {role} of {}",
                vm.as_deref()
                    .map(|g| format!("VMs {g}"))
                    .unwrap_or("all VMs".into())
            );
        }
    }
    Ok(())
}

fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let (y, m, d) = civil(days as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in UTC (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn token(c: &Client, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            user,
            expires,
            description,
        } => {
            let expires_secs = expires.as_deref().map(parse_duration_secs).transpose()?;
            let t = c.token_create(&api::CreateTokenRequest {
                user,
                expires_secs,
                description,
            })?;
            eprintln!(
                "token {} for {} (shown only now; hvd keeps only its hash):",
                t.info.id, t.info.user
            );
            println!("{}", t.token);
        }
        TokenCmd::List { format } => {
            let tokens = c.tokens()?;
            if !output::structured(format, &tokens)? {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.user.clone(),
                            when(t.created_ms),
                            t.expires_ms.map(when).unwrap_or("never".into()),
                            t.description.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(&["ID", "USER", "CREATED", "EXPIRES", "DESCRIPTION"], &rows)
                );
            }
        }
        TokenCmd::Revoke { id } => {
            let t = c.token_revoke(&id)?;
            println!("token {} of {} revoked", t.id, t.user);
        }
    }
    Ok(())
}

/// `hv audit`: `since` is a duration ago (`1h`, `2d`) or Unix seconds.
pub fn audit(
    c: &Client,
    user: Option<String>,
    vm: Option<String>,
    since: Option<String>,
    format: Format,
) -> Result<()> {
    let since_ms = match since {
        None => None,
        Some(s) if s.len() >= 9 && s.chars().all(|c| c.is_ascii_digit()) => {
            Some(s.parse::<u64>().context("invalid --since")? * 1000)
        }
        Some(s) => {
            let ago = parse_duration_secs(&s)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Some(now.saturating_sub(ago * 1000))
        }
    };
    let records = c.audit(&api::AuditQuery { user, vm, since_ms })?;
    if !output::structured(format, &records)? {
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| {
                vec![
                    when(r.time_ms),
                    r.principal.clone(),
                    r.source.clone(),
                    r.object.clone(),
                    r.action.clone(),
                    r.result.clone(),
                    r.operation_id.map(|i| i.to_string()).unwrap_or("-".into()),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(
                &["TIME", "WHO", "FROM", "OBJECT", "ACTION", "RESULT", "OP"],
                &rows
            )
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        for (s, want) in [
            ("30d", 2_592_000),
            ("12h", 43_200),
            ("90m", 5400),
            ("45", 45),
            ("1w", 604_800),
        ] {
            assert_eq!(super::parse_duration_secs(s).expect(s), want, "{s}");
        }
        for bad in ["", "d", "0d", "3y", "-1h", "99999999999999999999d"] {
            assert!(super::parse_duration_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(super::when(0), "1970-01-01 00:00:00");
        assert_eq!(super::when(1_796_163_976_000), "2026-12-01 22:26:16");
    }
}
