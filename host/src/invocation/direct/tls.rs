//! TLS for the direct path, pinned to the certificate the NATS reply advertised.
//!
//! Each [`DirectListener`](super::DirectListener) makes a fresh self-signed certificate when it
//! starts (rcgen, ECDSA P-256) and advertises the SHA-256 of it next to its address and token.
//! A caller accepts exactly that certificate and nothing else: no CA, no names, no expiry to
//! manage, and a peer that answers at the advertised address with any other certificate (or
//! none) is refused before the token is sent. The token then proves, inside the encrypted
//! connection, that the caller learned the endpoint from a lattice reply.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

/// The name both sides use in the handshake (the certificate is pinned, so it is not checked).
const SERVER_NAME: &str = "trellis-direct.invalid";

/// Length of an advertised fingerprint: hex SHA-256.
pub(crate) const FINGERPRINT_LEN: usize = 64;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's certificate and the acceptor that presents it.
pub(crate) struct ServerIdentity {
    /// Hex SHA-256 of the certificate's DER, as advertised.
    pub fingerprint: String,
    /// Accepts TLS connections with the certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerIdentity {
    /// Makes a fresh self-signed certificate and key.
    pub fn generate() -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .context("cannot make the direct path's TLS certificate")?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let fingerprint = fingerprint(&cert);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .context("cannot use the direct path's TLS certificate")?;
        Ok(Self {
            fingerprint,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Hex SHA-256 of a certificate's DER.
pub(crate) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut hex = String::with_capacity(FINGERPRINT_LEN);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Whether `text` looks like an advertised fingerprint (64 lower-case hex digits).
pub(crate) fn is_fingerprint(text: &str) -> bool {
    text.len() == FINGERPRINT_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Opens TLS on `stream`, accepting only the certificate whose SHA-256 is `pinned`.
pub(crate) async fn connect_pinned(
    stream: TcpStream,
    pinned: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = provider();
    let verifier = PinnedCertificate {
        fingerprint: pinned.to_owned(),
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::try_from(SERVER_NAME).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

/// Accepts the one certificate the advertisement named; still checks that the peer holds its
/// key (the handshake signatures), so a copied certificate is not enough.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
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
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_pinned_certificate_is_accepted() {
        let server = ServerIdentity::generate().expect("identity");
        let other = ServerIdentity::generate().expect("identity");
        assert!(is_fingerprint(&server.fingerprint));
        assert_ne!(server.fingerprint, other.fingerprint);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let acceptor = server.acceptor.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = acceptor.accept(stream).await;
            }
        });
        let dial = || async { TcpStream::connect(address).await.expect("connect") };
        assert!(connect_pinned(dial().await, &server.fingerprint)
            .await
            .is_ok());
        let refused = connect_pinned(dial().await, &other.fingerprint)
            .await
            .expect_err("another certificate is refused");
        assert!(refused.to_string().contains("certificate"), "{refused}");
        accept.abort();
    }
}
