//! A VM's UUID: the SMBIOS system UUID QEMU gives the guest (`-uuid`), in the canonical
//! `8-4-4-4-12` lowercase hex form. hv makes a random (version 4) one at define when the spec
//! has none, keeps it, and refuses two VMs with one UUID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmUuid([u8; 16]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a UUID; give 32 hex digits as 8-4-4-4-12, e.g. 0b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4f")]
pub struct UuidError(String);

impl VmUuid {
    /// A version 4 UUID from 16 random bytes.
    pub fn from_random(mut b: [u8; 16]) -> Self {
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        VmUuid(b)
    }
}

impl fmt::Display for VmUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for VmUuid {
    type Err = UuidError;
    fn from_str(s: &str) -> Result<Self, UuidError> {
        let bad = || UuidError(s.chars().take(64).collect());
        let groups: Vec<&str> = s.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            if !pair.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(VmUuid(out))
    }
}

impl Serialize for VmUuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VmUuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for VmUuid {
    fn schema_name() -> String {
        "VmUuid".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        crate::spec::string_schema(
            "VmUuid",
            Some("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
            "The VM's SMBIOS system UUID (8-4-4-4-12 hex)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses_bad_forms() {
        let u: VmUuid = "0B7D3F4E-6a1c-4d2b-9f3e-5c8a1b2d3e4f".parse().unwrap();
        assert_eq!(u.to_string(), "0b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4f");
        for bad in [
            "",
            "0b7d3f4e6a1c4d2b9f3e5c8a1b2d3e4f",
            "0b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4",
            "0b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4g",
            "+b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4f",
            "0b7d3f4e-6a1c-4d2b-9f3e-5c8a1b2d3e4f,x=1",
        ] {
            assert!(bad.parse::<VmUuid>().is_err(), "{bad}");
        }
        let r = VmUuid::from_random([0xff; 16]).to_string();
        assert_eq!(&r[14..15], "4");
        assert_eq!(&r[19..20], "b");
    }
}
