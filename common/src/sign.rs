//! Ed25519 signatures (ring). The signing key is separate from the CA key: the CA says who may
//! talk, this key says what may run. Verification takes the raw 32-byte public key the agent
//! pinned at enrollment.
//!
//! Every signature is made over `dockfra/<context>\0<payload>`, with one context per kind of
//! signed document, so a signature over a desired state can never be taken for one over a
//! manifest or a key rotation (and the other way round), whatever bytes an attacker puts in
//! front of a verifier.
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

/// What a signature is over. The context is part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    DesiredState,
    Manifest,
    KeyRotation,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::DesiredState => "desired state",
            Context::Manifest => "manifest",
            Context::KeyRotation => "key rotation",
        }
    }

    fn tag(self) -> &'static [u8] {
        match self {
            Context::DesiredState => b"dockfra/desired-state/v2\0",
            Context::Manifest => b"dockfra/manifest/v2\0",
            Context::KeyRotation => b"dockfra/key-rotation/v1\0",
        }
    }

    /// The bytes a signature in this context covers.
    pub fn message(self, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.tag().len() + payload.len());
        m.extend_from_slice(self.tag());
        m.extend_from_slice(payload);
        m
    }
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

    /// Sign `payload` in `context`.
    pub fn sign(&self, context: Context, payload: &[u8]) -> Vec<u8> {
        self.pair.sign(&context.message(payload)).as_ref().to_vec()
    }
}

/// Verify `sig` over `payload` in `context` with a raw Ed25519 public key.
pub fn verify(public_key: &[u8], context: Context, payload: &[u8], sig: &[u8]) -> Result<(), SignError> {
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&context.message(payload), sig)
        .map_err(|_| SignError::BadSignature { what: context.name() })
}

/// Short fingerprint of a public key for messages: the first 16 hex digits of its sha256.
pub fn fingerprint(public_key: &[u8]) -> String {
    crate::sha256_hex(public_key)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_and_tamper() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let sig = key.sign(Context::Manifest, b"manifest");
        verify(&key.public_key(), Context::Manifest, b"manifest", &sig).unwrap();
        assert!(verify(&key.public_key(), Context::Manifest, b"manifesT", &sig).is_err());
        let other = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        assert!(verify(&other.public_key(), Context::Manifest, b"manifest", &sig).is_err());
    }

    /// The same bytes signed as one kind of document never verify as another.
    #[test]
    fn contexts_are_distinct() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let all = [Context::DesiredState, Context::Manifest, Context::KeyRotation];
        for a in all {
            let sig = key.sign(a, b"{}");
            for b in all {
                assert_eq!(verify(&key.public_key(), b, b"{}", &sig).is_ok(), a == b, "{a:?} vs {b:?}");
            }
        }
        // Nor does a plain signature over the payload (the format before contexts).
        let pair = Ed25519KeyPair::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let plain = pair.sign(b"{}");
        assert!(verify(pair.public_key().as_ref(), Context::Manifest, b"{}", plain.as_ref()).is_err());
    }
}
