//! Names of things hv manages (VMs, pools, volumes) and volume references (`POOL/NAME`).
//! Names become file and directory names, so the rules are strict.

use std::fmt;
use std::str::FromStr;

use crate::spec::{text_form, SpecError};

/// Checks `[A-Za-z0-9][A-Za-z0-9._-]{0,max-1}`.
fn check_name(kind: &str, field: &str, max: usize, s: &str) -> Result<(), SpecError> {
    let bad = |why: &str| {
        SpecError::new(
            field,
            format!("invalid {kind} name {s:?}: {why}; use 1 to {max} characters from A-Z a-z 0-9 . _ - starting with a letter or digit"),
        )
    };
    let mut chars = s.chars();
    match chars.next() {
        None => return Err(bad("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(bad("it does not start with a letter or digit"))
        }
        Some(_) => {}
    }
    if s.len() > max {
        return Err(bad(&format!("it is longer than {max} characters")));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(bad(&format!("{c:?} is not allowed")));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$m:meta])* $name:ident, $kind:literal, $field:literal, $max:literal, $pattern:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_name($kind, $field, $max, s).map(|()| $name(s.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        text_form!($name, Some($pattern), concat!("A ", $kind, " name"));
    };
}

name_type!(
    /// A VM name: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
    VmName, "VM", "name", 63, "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$");
name_type!(
    /// A storage pool name.
    PoolName, "pool", "pool", 63, "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$");
name_type!(
    /// A volume name: the file's name inside its pool's directory.
    VolName, "volume", "volume", 200, "^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$");

name_type!(
    /// A snapshot name (unique per VM).
    SnapName, "snapshot", "snapshot", 63, "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$");

/// `POOL/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolRef {
    pub pool: PoolName,
    pub name: VolName,
}

impl FromStr for VolRef {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pool, name) = s.split_once('/').ok_or_else(|| {
            SpecError::new(
                "vol",
                format!("invalid volume reference {s:?}; use POOL/NAME, e.g. default/web.qcow2"),
            )
        })?;
        Ok(VolRef {
            pool: pool.parse()?,
            name: name.parse()?,
        })
    }
}

impl fmt::Display for VolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.name)
    }
}

text_form!(
    VolRef,
    Some("^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"),
    "A volume: POOL/NAME"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "db_2.prod", "X9", &"a".repeat(63)] {
            assert!(ok.parse::<VmName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc",
            "a b",
            "-a",
            ".hidden",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            let e = bad.parse::<VmName>().unwrap_err();
            assert_eq!(e.field, "name");
            assert!(e.message.contains("invalid VM name"), "{e}");
        }
        assert!("debian-12.qcow2".parse::<VolName>().is_ok());
        assert!("..".parse::<VolName>().is_err());
        assert!("a/b".parse::<PoolName>().is_err());
    }

    #[test]
    fn vol_refs() {
        let r: VolRef = "default/web.qcow2".parse().unwrap();
        assert_eq!((r.pool.as_str(), r.name.as_str()), ("default", "web.qcow2"));
        assert_eq!(r.to_string(), "default/web.qcow2");
        for bad in ["web.qcow2", "/abs/path", "a/b/c", "a/..", "../x"] {
            assert!(bad.parse::<VolRef>().is_err(), "{bad}");
        }
    }
}
