//! Certificate pinning for hvd's HTTPS listener. hvd signs its certificate with a CA it minted
//! itself, so WebPKI verification cannot vouch for it; instead the client accepts exactly the
//! leaf certificate whose SHA-256 fingerprint it pinned (trust on first use, as ssh does), and
//! still checks that the server holds that certificate's key (the handshake signature).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// `SHA256:` and the lowercase hex SHA-256 of a certificate's DER, as `hv host cert` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: String = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("SHA256:{hex}")
}

/// A fingerprint as a user may paste it (`SHA256:` optional, any case, `:` between bytes
/// allowed), in the form [`fingerprint`] prints; `None` when it is not 32 hex bytes.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    let hex = s
        .strip_prefix("SHA256:")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    let hex: String = hex
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| format!("SHA256:{hex}"))
}

/// Accepts the server certificate whose fingerprint is `pinned` (any certificate when `None`:
/// the first contact of `hv remote add`), and records the fingerprint it was shown.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub(crate) fn new(
        pinned: Option<String>,
        seen: Arc<Mutex<Option<String>>>,
        provider: Arc<CryptoProvider>,
    ) -> PinVerifier {
        PinVerifier {
            pinned,
            seen,
            provider,
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity.as_ref());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(got.clone());
        }
        match &self.pinned {
            Some(p) if *p != got => Err(rustls::Error::General(format!(
                "the server certificate {got} is not the pinned {p}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.2/1.3 client configuration that trusts only the pinned certificate.
pub(crate) fn client_config(
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
) -> std::result::Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier::new(pinned, seen, provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_fingerprints_are_normalized_and_bad_ones_refused() {
        let hex = "ab".repeat(32);
        let want = format!("SHA256:{hex}");
        assert_eq!(normalize_fingerprint(&want).as_deref(), Some(&*want));
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", hex.to_uppercase())).as_deref(),
            Some(&*want)
        );
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons).as_deref(), Some(&*want));
        assert_eq!(normalize_fingerprint("SHA256:abcd"), None);
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
    }
}
