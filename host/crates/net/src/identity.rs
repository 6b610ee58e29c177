//! Host identity: one ed25519 key per host, its printable peer id, and the TLS 1.3 set-up
//! that makes the key *be* the identity — raw public keys (RFC 7250) on both sides, custom
//! verifiers that accept exactly one key, check the handshake signature with it, and
//! compare it with the expected id and the `allow` list. No CA, no X.509, no dates.
//!
//! Key file: PEM `PRIVATE KEY`, an RFC 8410 PKCS#8 ed25519 key (`openssl pkey -in FILE
//! -pubout` reads it). Peer id: the 32-byte public key in RFC 4648 base32, lowercase, no
//! padding — 52 characters, valid as a DNS label, so it can ride in the TLS server name.

use ring::rand::SecureRandom;
use ring::signature::KeyPair;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
pub use wasmwire_broker::Allow;
pub use wasmwire_wire::PeerId;

/// DER prefix of an ed25519 PKCS#8 v1 private key (RFC 8410); the 32 seed bytes follow.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The TLS server name a dialer sends when it does not know the peer id in advance.
pub const ANY_PEER: &str = "wasmwire";

/// Why a key file or a peer id was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file holds no usable ed25519 key.
    #[error("{}: not an ed25519 key ({reason}); make one with `wasmwire keygen {}`", path.display(), path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `keygen` would overwrite an existing key.
    #[error("{} already exists: a host key is never overwritten (delete it first if you mean to change this host's id)", .0.display())]
    Exists(PathBuf),
    /// The randomness source failed.
    #[error("cannot generate a key: the system randomness source failed")]
    Random,
}

/// A host's key pair.
pub struct Identity {
    /// The public side: the peer id.
    pub id: PeerId,
    pkcs8: Vec<u8>,
}

impl Identity {
    /// A new random key.
    pub fn generate() -> Result<Identity, IdentityError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| IdentityError::Random)?;
        Identity::from_seed(&seed).ok_or(IdentityError::Random)
    }

    fn from_seed(seed: &[u8; 32]) -> Option<Identity> {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
        let id = PeerId(pair.public_key().as_ref().try_into().ok()?);
        let mut pkcs8 = PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed);
        Some(Identity { id, pkcs8 })
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let text = std::fs::read(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: &str| IdentityError::BadKey {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(&text)
            .map_err(|e| bad(&format!("no PEM PRIVATE KEY block: {e}")))?;
        let der = der.secret_pkcs8_der();
        // RFC 8410 v1 is what we write; OpenSSL writes the same for `genpkey -algorithm ed25519`.
        let seed: &[u8; 32] = der
            .strip_prefix(&PKCS8_PREFIX[..])
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("expected a PKCS#8 ed25519 key"))?;
        Identity::from_seed(seed).ok_or_else(|| bad("the key bytes are invalid"))
    }

    /// Writes a new key to `path` with mode 0600. Never overwrites an existing file.
    pub fn create(path: &Path) -> Result<Identity, IdentityError> {
        let identity = Identity::generate()?;
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            data_encoding::BASE64.encode(&identity.pkcs8)
        );
        file.write_all(pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(identity)
    }

    /// Reads the key at `path`, creating it first if there is no file. Says whether it made it.
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), IdentityError> {
        match Identity::create(path) {
            Ok(i) => Ok((i, true)),
            Err(IdentityError::Exists(_)) => Ok((Identity::load(path)?, false)),
            Err(e) => Err(e),
        }
    }

    fn certified_key(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, rustls::Error> {
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                self.pkcs8.clone(),
            )))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(self.id.spki())],
            key,
        )))
    }
}

/// The one crypto provider wasmwire uses, chosen explicitly (never the process default,
/// which panics when two providers are compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings for accepting connections: our raw key, clients must present theirs.
pub fn server_config(
    identity: &Identity,
    allow: Arc<Allow>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let key = identity.certified_key(&provider)?;
    let verifier = Arc::new(PeerVerifier {
        allow,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(key),
        ));
    config.alpn_protocols = vec![wasmwire_wire::ALPN.to_vec()];
    Ok(config)
}

/// TLS settings for dialling: our raw key, and the expected peer id (if any) is read from
/// the server name of each dial.
pub fn client_config(
    identity: &Identity,
    allow: Arc<Allow>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let key = identity.certified_key(&provider)?;
    let verifier = Arc::new(PeerVerifier {
        allow,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(key),
        ));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The peer id of a connection's raw public key, as quinn hands it out.
pub fn peer_of(identity: Option<Box<dyn std::any::Any>>) -> Option<PeerId> {
    let certs = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match certs.as_slice() {
        [one] => PeerId::from_spki(one),
        _ => None,
    }
}

/// Checks the other side's raw public key on both ends of a handshake.
#[derive(Debug)]
struct PeerVerifier {
    allow: Arc<Allow>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// Logs and counts a refused handshake.
    fn refuse(&self, reason: String) -> rustls::Error {
        self.allow.count_refusal();
        refuse(reason)
    }
}

/// Refused handshakes are logged through one gate for the whole process: a scan of bad
/// identities must not flood the log (each is still counted in `handshakes_refused`).
pub(crate) static HANDSHAKE_LOG: super::log_gate::LogGate =
    super::log_gate::LogGate::new(10, std::time::Duration::from_secs(10));

fn refuse(reason: String) -> rustls::Error {
    if let Some(held_back) = HANDSHAKE_LOG.admit() {
        if held_back > 0 {
            tracing::warn!(target: "wasmwire::net", held_back, "handshake refused: {reason} (and {held_back} more not logged)");
        } else {
            tracing::warn!(target: "wasmwire::net", "handshake refused: {reason}");
        }
    }
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

impl PeerVerifier {
    fn check(
        &self,
        key: &CertificateDer<'_>,
        others: &[CertificateDer<'_>],
        expected: Option<&str>,
    ) -> Result<(), rustls::Error> {
        if !others.is_empty() {
            return Err(self.refuse(format!(
                "the peer presented {} keys; exactly one is allowed",
                others.len() + 1
            )));
        }
        let Some(id) = PeerId::from_spki(key) else {
            return Err(self.refuse("the peer's key is not an ed25519 public key".into()));
        };
        if let Some(want) = expected.filter(|w| *w != ANY_PEER)
            && id.to_string() != want
        {
            return Err(self.refuse(format!(
                "peer {id} is not the peer dialled: expected {want}"
            )));
        }
        if !self.allow.permits(&id) {
            return Err(self.refuse(format!("peer {id} is not in `allow`")));
        }
        Ok(())
    }

    fn signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(key.as_ref()),
            dss,
            &self.algorithms,
        )
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = match server_name {
            ServerName::DnsName(name) => Some(name.as_ref()),
            _ => None,
        };
        self.check(end_entity, intermediates, expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, None)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_created_private_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("wasmwire-id-{}", std::process::id()));
        let path = dir.join("sub/host.key");
        let _ = std::fs::remove_dir_all(&dir);
        let (made, created) = Identity::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = Identity::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(made.id, again.id);
        assert!(matches!(
            Identity::create(&path),
            Err(IdentityError::Exists(_))
        ));
        std::fs::write(dir.join("junk.key"), "hello").unwrap();
        assert!(matches!(
            Identity::load(&dir.join("junk.key")),
            Err(IdentityError::BadKey { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn spki_round_trips() {
        let id = Identity::generate().unwrap().id;
        assert_eq!(PeerId::from_spki(&id.spki()), Some(id));
        assert_eq!(PeerId::from_spki(&id.spki()[1..]), None);
    }
}
