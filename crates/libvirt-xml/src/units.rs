//! libvirt's memory units (`<memory unit='GiB'>`): KiB when absent.

/// Bytes of `value` in `unit` (libvirt's spellings; `None` means KiB). `Err` says why.
pub fn parse_memory(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let scale: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "E" | "EiB" => 1 << 60,
        u => {
            return Err(format!(
                "unknown memory unit {u:?}; libvirt's units are b, bytes, KB, k, KiB, MB, M, MiB, GB, G, GiB, TB, T, TiB, PB, P, PiB, EB, E, EiB"
            ))
        }
    };
    let v = value.trim();
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a whole number"));
    }
    let n: u64 = v.parse().map_err(|_| format!("{v:?} is too large"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{v} {} is too large", unit.unwrap_or("KiB")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_libvirts() {
        for (v, u, bytes) in [
            ("1048576", None, 1u64 << 30),
            ("1048576", Some("KiB"), 1 << 30),
            ("1048576", Some("k"), 1 << 30),
            ("1073741824", Some("b"), 1 << 30),
            ("1073741824", Some("bytes"), 1 << 30),
            ("1000", Some("KB"), 1_000_000),
            ("512", Some("MB"), 512_000_000),
            ("512", Some("M"), 512 << 20),
            ("512", Some("MiB"), 512 << 20),
            ("2", Some("GB"), 2_000_000_000),
            ("2", Some("G"), 2 << 30),
            ("2", Some("GiB"), 2 << 30),
            ("1", Some("TB"), 1_000_000_000_000),
            ("1", Some("T"), 1 << 40),
            ("1", Some("TiB"), 1 << 40),
        ] {
            assert_eq!(parse_memory(v, u), Ok(bytes), "{v} {u:?}");
        }
        assert!(parse_memory("1", Some("kb"))
            .unwrap_err()
            .contains("unknown memory unit"));
        assert!(parse_memory("1", Some("")).is_err());
        assert!(parse_memory("-1", None).is_err());
        assert!(parse_memory("1.5", Some("G")).is_err());
        assert!(parse_memory("99999999999", Some("EiB"))
            .unwrap_err()
            .contains("too large"));
        assert!(parse_memory("99999999999999999999999", None).is_err());
    }
}
