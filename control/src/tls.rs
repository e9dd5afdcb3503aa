//! TLS to agents, trusted by pin: the control plane accepts exactly the certificate whose
//! SHA-256 fingerprint was registered with the shadow, whoever signed it. A self-signed
//! agent certificate is therefore as safe as a CA-issued one, and a CA that issues a
//! certificate for the agent's name to somebody else gains nothing.

use crate::{Error, Result};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use std::{sync::Arc, time::Duration};

/// Normalises a pin as operators paste it: 64 hex digits, colons allowed (the form
/// `openssl x509 -noout -fingerprint -sha256` prints), any case.
pub fn parse_pin(pin: &str) -> Result<String> {
    let pin = pin.trim();
    let pin = pin.strip_prefix("sha256:").unwrap_or(pin);
    let pin: String = pin.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if pin.len() == 64 && pin.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(pin)
    } else {
        Err(Error::BadRequest(
            "a TLS pin is the SHA-256 fingerprint of the agent's certificate: 64 hex digits".into(),
        ))
    }
}

/// The pin of a DER certificate.
pub fn pin_of(certificate: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, certificate))
}

/// The pin of the first certificate in a PEM file's text.
pub fn pin_of_pem(pem: &str) -> Result<String> {
    use rustls::pki_types::pem::PemObject;
    let certificate =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| Error::BadRequest(format!("not a PEM certificate: {err}")))?;
    Ok(pin_of(certificate.as_ref()))
}

#[derive(Debug)]
struct PinnedCertificate {
    pin: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if pin_of(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the agent's certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    // The handshake signature proves the agent holds the pinned certificate's key; without
    // these checks anybody who copied the (public) certificate could pose as the agent.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An HTTP client that talks only to the agent holding the certificate with this pin.
/// With `timeout` `None` only connecting is bounded (for event streams that never end).
pub fn pinned_client(pin: &str, timeout: Option<Duration>) -> Result<reqwest::Client> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCertificate {
        pin: pin.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Internal(err.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let builder = crate::shadows::agent_client()
        .use_preconfigured_tls(config)
        .connect_timeout(timeout.unwrap_or(Duration::from_secs(10)));
    match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
    .build()
    .map_err(|err| Error::Internal(format!("TLS client: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalised_and_checked() {
        let colons = "CD:88:68:23:8C:65:5D:83:57:BD:5D:FC:50:FA:63:32:13:C3:E9:0F:7C:0F:E8:49:A0:C3:92:4A:39:D2:35:1C";
        let plain = "cd8868238c655d8357bd5dfc50fa633213c3e90f7c0fe849a0c3924a39d2351c";
        assert_eq!(parse_pin(colons).unwrap(), plain);
        assert_eq!(parse_pin(&format!("sha256:{plain}")).unwrap(), plain);
        assert!(parse_pin(&plain[..62]).is_err());
        assert!(parse_pin(&format!("{}zz", &plain[..62])).is_err());
    }
}
