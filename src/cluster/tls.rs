//! TLS for the links between nodes, and how a peer proves it holds the
//! cluster secret.
//!
//! Each node makes a self-signed certificate at start, or uses the pair it
//! is given (`--cluster-cert`, `--cluster-key`). Certificates do not say
//! who may join unless a CA is given (`--cluster-ca`: then both ends of a
//! link check the other's certificate against it, mutual TLS, as well as
//! the proof); the secret does. Once the QUIC
//! handshake is done, each side sends an HMAC, under the secret, of keying
//! material exported from this very TLS session ([`proof`]) in its first
//! frame. Someone without the secret cannot compute it, and cannot relay a
//! real node's proof either: a relay in the middle holds two TLS sessions
//! with different exported material. The handshake's own signatures are
//! still checked, so the peer holds the key of the certificate it showed.

use std::path::Path;
use std::sync::Arc;

use ring::hmac;
use rustls::RootCertStore;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

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

/// A node's TLS identity on its links: its certificate chain and key, and
/// the CAs its peers' certificates must chain to, if any. Loaded once at
/// start, shared by every shard's endpoint.
pub struct LinkTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: Option<Arc<RootCertStore>>,
}

impl LinkTls {
    /// A fresh self-signed certificate, no CA.
    pub fn generated() -> Result<LinkTls, String> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| format!("cannot make a link certificate: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        Ok(LinkTls {
            chain: vec![certified.cert.der().clone()],
            key,
            ca: None,
        })
    }

    /// The pair in `cert` and `key` (PEM), with the CAs in `ca` (PEM) if
    /// given; checked by building both configs, so a pair that does not
    /// fit refuses the start.
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<LinkTls, String> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
        let ca_pem = ca.map(read).transpose()?;
        LinkTls::from_pem(
            (&read(cert)?, cert),
            (&read(key)?, key),
            ca_pem.as_deref().zip(ca),
        )
    }

    /// [`LinkTls::load`] from the files' bytes (each with its path, for
    /// errors).
    pub fn from_pem(
        (cert, cert_path): (&[u8], &Path),
        (key, key_path): (&[u8], &Path),
        ca: Option<(&[u8], &Path)>,
    ) -> Result<LinkTls, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in it", cert_path.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let ca = match ca {
            None => None,
            Some((pem, path)) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no CA certificate in it", path.display()));
                }
                Some(Arc::new(roots))
            }
        };
        let tls = LinkTls { chain, key, ca };
        tls.server_crypto()?;
        tls.client_crypto()?;
        Ok(tls)
    }

    /// The TLS side of accepting links.
    pub fn server_crypto(&self) -> Result<rustls::ServerConfig, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
        let builder = match &self.ca {
            None => builder.with_no_client_auth(),
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                    .build()
                    .map_err(|e| format!("the cluster CA: {e}"))?,
            ),
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("the link certificate does not fit its key: {e}"))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The TLS side of dialing links.
    pub fn client_crypto(&self) -> Result<rustls::ClientConfig, String> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
        let mut config = match &self.ca {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth(),
            Some(roots) => builder
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|e| format!("the link certificate does not fit its key: {e}"))?,
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
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
        let tls = LinkTls::generated().unwrap();
        tls.server_crypto().unwrap();
        tls.client_crypto().unwrap();
    }

    #[test]
    fn a_given_pair_and_ca_load_and_a_mismatched_pair_is_refused() {
        let dir = tempdir("tls");
        let ca = test_pki::ca();
        let (cert, key) = test_pki::node(&ca, SERVER_NAME);
        let (_, other_key) = test_pki::node(&ca, SERVER_NAME);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (cert, key, other_key, ca_pem) = (
            write("cert.pem", &cert),
            write("key.pem", &key),
            write("other.pem", &other_key),
            write("ca.pem", &ca.pem()),
        );
        let tls = LinkTls::load(&cert, &key, Some(&ca_pem)).unwrap();
        assert!(tls.ca.is_some());
        assert!(LinkTls::load(&cert, &key, None).is_ok());
        let err = LinkTls::load(&cert, &other_key, None).err().unwrap();
        assert!(err.contains("does not fit"), "{err}");
        let err = LinkTls::load(&dir.join("missing.pem"), &key, None)
            .err()
            .unwrap();
        assert!(err.contains("missing.pem"), "{err}");
        let err = LinkTls::load(&cert, &key, Some(&key)).err().unwrap();
        assert!(err.contains("no CA certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("singyeong-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// A CA and certificates it signs, for tests of given pairs.
#[cfg(test)]
pub(crate) mod test_pki {
    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};

    pub fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A certificate for `name` signed by `ca`, and its key, in PEM.
    pub fn node(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A node's link TLS with a certificate for `name` signed by `signer`,
    /// checking peers against `ca`.
    pub fn link_tls(
        signer: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        ca: &CertifiedIssuer<'static, KeyPair>,
    ) -> super::LinkTls {
        let (cert, key) = node(signer, name);
        let path = std::path::Path::new("test");
        super::LinkTls::from_pem(
            (cert.as_bytes(), path),
            (key.as_bytes(), path),
            Some((ca.pem().as_bytes(), path)),
        )
        .unwrap()
    }
}
