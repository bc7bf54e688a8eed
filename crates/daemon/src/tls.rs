//! hvd's TLS: the server certificate (minted with its own CA at first start, or the user's
//! `--tls-cert`/`--tls-key`) and a rustls configuration that speaks TLS 1.2 and 1.3 only.
//! Keys are files of mode 0600 in the state dir.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The server's certificate chain and key, and what `hv host cert` shows.
pub struct ServerCert {
    pub config: Arc<rustls::ServerConfig>,
    pub info: api::HostCert,
}

/// `SHA256:` and the hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: String = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("SHA256:{hex}")
}

/// Writes a file atomically with the given mode (temp + fsync + rename).
fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))?;
    Ok(())
}

fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// Mints a CA and a server certificate signed by it, for `localhost`, the host name and
/// the loopback addresses (plus `extra_ips`, the addresses hvd listens on).
fn mint(dir: &Path, extra_ips: &[std::net::IpAddr]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let year = this_year();
    let ca_key = KeyPair::generate().context("cannot make the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "hv CA (minted by hvd)");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the CA")?;

    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut names = vec!["localhost".to_string()];
    if !host.is_empty() && host != "localhost" {
        names.push(host.clone());
    }
    let key = KeyPair::generate().context("cannot make the server key")?;
    let mut p = CertificateParams::new(names)?;
    p.distinguished_name.push(
        DnType::CommonName,
        if host.is_empty() {
            "hvd".to_string()
        } else {
            host
        },
    );
    let mut ips: Vec<std::net::IpAddr> = vec![
        std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ];
    ips.extend(extra_ips.iter().filter(|ip| !ip.is_unspecified()));
    ips.dedup();
    p.subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let cert = p
        .signed_by(&key, &ca_cert, &ca_key)
        .context("cannot sign the server certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_private(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_private(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write_private(
        &dir.join("server.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    // The chain: the server certificate, then its CA.
    let chain = format!("{}{}", cert.pem(), ca_cert.pem());
    write_private(&dir.join("server.pem"), chain.as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "minted hvd's CA and server certificate");
    Ok(())
}

/// Where hvd keeps the certificate it minted.
pub fn minted_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

/// Loads the user's certificate, or hvd's own (minting it at first start).
pub fn load(
    state_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    listen: &[std::net::SocketAddr],
) -> Result<ServerCert> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let dir = minted_dir(state_dir);
            if !dir.join("server.pem").exists() || !dir.join("server.key").exists() {
                let ips: Vec<_> = listen.iter().map(|a| a.ip()).collect();
                mint(&dir, &ips)?;
            }
            (dir.join("server.pem"), dir.join("server.key"))
        }
        _ => anyhow::bail!(
            "--tls-cert and --tls-key go together: give both, or neither (hvd then mints its own)"
        ),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow::anyhow!("cannot read certificates from {}: {e}", cert_path.display())
        })?;
    let Some(leaf) = certs.first() else {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    };
    let info = api::HostCert {
        fingerprint: fingerprint(leaf),
        pem: String::from_utf8_lossy(
            &std::fs::read(&cert_path)
                .with_context(|| format!("cannot read {}", cert_path.display()))?,
        )
        .into_owned(),
    };
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow::anyhow!("cannot read the private key {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("cannot set the TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "{} and {} are not a certificate and its key",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerCert {
        config: Arc::new(config),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn minted_keys_are_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("hv-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load(&dir, None, None, &[]).expect("mint");
        assert!(a.info.fingerprint.starts_with("SHA256:") && a.info.fingerprint.len() == 7 + 64);
        for key in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(minted_dir(&dir).join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let b = load(&dir, None, None, &[]).expect("reload");
        assert_eq!(
            a.info.fingerprint, b.info.fingerprint,
            "a restart keeps the certificate"
        );
        assert!(load(&dir, Some(Path::new("/nonexistent")), None, &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
