//! TLS for the links between nodes, and how a peer proves it holds the
//! cluster secret.
//!
//! Each node makes a self-signed certificate at start. Certificates do not
//! say who may join (there is no CA to ask); the secret does. Once the QUIC
//! handshake is done, each side sends an HMAC, under the secret, of keying
//! material exported from this very TLS session ([`proof`]) in its first
//! frame. Someone without the secret cannot compute it, and cannot relay a
//! real node's proof either: a relay in the middle holds two TLS sessions
//! with different exported material. The handshake's own signatures are
//! still checked, so the peer holds the key of the certificate it showed.

use std::sync::Arc;

use ring::hmac;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The ALPN protocol of a link; also names the link protocol's version.
pub const ALPN: &[u8] = b"singyeong-link/1";
/// The name a dialer asks for (every node's certificate carries it).
pub const SERVER_NAME: &str = "singyeong-node";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-singyeong-link-proof";

/// Which end of a link computes a proof: the two differ, so a proof sent
/// back to its sender proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Acceptor,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh self-signed certificate and its key.
pub fn generate_certificate() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| format!("cannot make a link certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    Ok((certified.cert.der().clone(), key))
}

/// The TLS side of accepting links.
pub fn server_crypto(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("the link certificate does not fit its key: {e}"))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The TLS side of dialing links.
pub fn client_crypto() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier = AnyCertificate(provider.signature_verification_algorithms);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Accepts any certificate, because the secret proof, not the
/// certificate, admits a peer; checks the handshake's signatures as usual.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// What `side` of a link sends to prove it holds `secret`, given the
/// keying material exported from the link's TLS session.
pub fn proof(secret: &[u8], exported: &[u8; 32], side: Side) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(exported);
    ctx.update(match side {
        Side::Dialer => b"dialer",
        Side::Acceptor => b"acceptor",
    });
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// The keying material both ends of a QUIC connection's TLS session share.
pub fn exported(session: &dyn quinn_proto::crypto::Session) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    session
        .export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_differ_by_side_secret_and_session() {
        let session = [7u8; 32];
        let p = proof(b"secret secret secret", &session, Side::Dialer);
        assert_eq!(p, proof(b"secret secret secret", &session, Side::Dialer));
        assert_ne!(p, proof(b"secret secret secret", &session, Side::Acceptor));
        assert_ne!(p, proof(b"secret secret secreT", &session, Side::Dialer));
        assert_ne!(p, proof(b"secret secret secret", &[8u8; 32], Side::Dialer));
    }

    #[test]
    fn a_generated_certificate_makes_both_configs() {
        let (cert, key) = generate_certificate().unwrap();
        server_crypto(cert, key).unwrap();
        client_crypto().unwrap();
    }
}
