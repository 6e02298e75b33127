//! Ed25519 bundle signatures (ring). The signing key is separate from the CA key: the CA says
//! who may talk, this key says what may run. Verification takes the raw 32-byte public key the
//! agent pinned at enrollment.
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("could not generate an Ed25519 key")]
    Generate,
    #[error("the signing key is not a valid Ed25519 PKCS#8 document")]
    BadKey,
    #[error("bad signature on the {what}")]
    BadSignature { what: &'static str },
}

/// A coordinator's bundle-signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Generate a new key; returns the PKCS#8 document to store (mode 0600).
    pub fn generate_pkcs8() -> Result<Vec<u8>, SignError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()).map_err(|_| SignError::Generate)
    }

    pub fn from_pkcs8(doc: &[u8]) -> Result<Self, SignError> {
        Ed25519KeyPair::from_pkcs8(doc).map(|pair| Self { pair }).map_err(|_| SignError::BadKey)
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// Verify `sig` over `msg` with a raw Ed25519 public key. `what` names the signed thing in the error.
pub fn verify(public_key: &[u8], msg: &[u8], sig: &[u8], what: &'static str) -> Result<(), SignError> {
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, sig)
        .map_err(|_| SignError::BadSignature { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_and_tamper() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let sig = key.sign(b"manifest");
        verify(&key.public_key(), b"manifest", &sig, "manifest").unwrap();
        assert!(verify(&key.public_key(), b"manifesT", &sig, "manifest").is_err());
        let other = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        assert!(verify(&other.public_key(), b"manifest", &sig, "manifest").is_err());
    }
}
