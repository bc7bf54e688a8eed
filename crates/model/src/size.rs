//! Sizes with binary units: `512M`, `2G`, `1T`, `4096` (bytes).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes. Parses `512M`, `2G`, `1T`, `64K`, `512MiB`, plain bytes; prints the
/// largest exact binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {why} (use a number with an optional K, M, G or T suffix, e.g. 512M or 2G)")]
pub struct SizeError {
    pub input: String,
    pub why: &'static str,
}

/// Parses a size with binary units (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |why| SizeError {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let n: u64 = digits.parse().map_err(|_| err("the number is too large"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err("unknown unit")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| err("it is too large"))
}

impl FromStr for Size {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if b != 0 && b.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{}", b >> shift, unit);
            }
        }
        write!(f, "{b}")
    }
}

impl schemars::JsonSchema for Size {
    fn schema_name() -> String {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        crate::spec::string_schema(
            "Size",
            Some("^[0-9]+([KMGT](i?B)?|B)?$"),
            "A size with binary units (512M, 2G, 1T) or plain bytes; integers are accepted as bytes",
        )
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: Option<u64>) {
        assert_eq!(parse_size(input).ok(), want, "input {input:?}");
    }

    #[test]
    fn parses_binary_units() {
        check("512M", Some(512 << 20));
        check("2G", Some(2 << 30));
        check("1T", Some(1 << 40));
        check("64k", Some(64 << 10));
        check("4096", Some(4096));
        check("1GiB", Some(1 << 30));
        check(" 3G ", Some(3 << 30));
    }

    #[test]
    fn rejects_garbage() {
        check("", None);
        check("G", None);
        check("-1G", None);
        check("1.5G", None);
        check("12X", None);
        check("99999999999999999999", None);
        check("99999999999T", None);
    }

    #[test]
    fn displays_largest_exact_unit() {
        assert_eq!(Size(512 << 20).to_string(), "512M");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(2 << 30).to_string(), "2G");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    #[test]
    fn error_names_input() {
        let e = parse_size("12X").unwrap_err().to_string();
        assert!(e.contains("\"12X\"") && e.contains("unknown unit"), "{e}");
    }
}
