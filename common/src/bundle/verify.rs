//! Signing and verifying orders (coordinator and agent side): both documents in their own
//! signature contexts, the key-rotation chain, and every check an order must pass before
//! anything touches the disk.
use std::collections::BTreeSet;

use super::*;
use crate::proto;
use crate::sign::{self, Context, SignError};

/// Sign a manifest and a desired state (coordinator side), with the rotation chain that leads
/// from older keys to `key`.
pub fn sign_assignment(
    key: &sign::SigningKey,
    desired: &DesiredState,
    manifest_bytes: Vec<u8>,
    rotations: &[proto::SignedKeyRotation],
) -> proto::Assignment {
    let payload = serde_json::to_vec(desired).expect("desired state serializes");
    proto::Assignment {
        desired: Some(proto::SignedDesiredState { signature: key.sign(Context::DesiredState, &payload), payload }),
        manifest: Some(proto::SignedManifest {
            signature: key.sign(Context::Manifest, &manifest_bytes),
            manifest: manifest_bytes,
        }),
        rotations: rotations.to_vec(),
    }
}

/// Make the statement that moves trust from `old` to `new` (coordinator side).
pub fn sign_rotation(
    old: &sign::SigningKey,
    new: &sign::SigningKey,
    number: u32,
    now: u64,
) -> proto::SignedKeyRotation {
    let statement = serde_json::to_vec(&KeyRotation {
        format: 1,
        number,
        old_key: hex::encode(old.public_key()),
        new_key: hex::encode(new.public_key()),
        issued_unix: now,
    })
    .expect("rotation serializes");
    proto::SignedKeyRotation {
        old_signature: old.sign(Context::KeyRotation, &statement),
        new_signature: new.sign(Context::KeyRotation, &statement),
        statement,
    }
}

/// Follow a rotation chain from the `pinned` key: each step must name the current key as its
/// old key and carry valid signatures by both keys. Statements that do not start at the
/// current key are ignored (another branch, or steps this agent took already). Returns the key
/// at the end of the chain, or `None` when no statement moves the pinned key.
pub fn follow_rotations(pinned: &[u8], chain: &[proto::SignedKeyRotation]) -> Result<Option<Vec<u8>>, BundleError> {
    if chain.len() > MAX_ROTATIONS {
        return Err(BundleError::Rotation(format!("{} statements (at most {MAX_ROTATIONS})", chain.len())));
    }
    let mut current = pinned.to_vec();
    let mut seen = BTreeSet::from([hex::encode(pinned)]);
    loop {
        let here = hex::encode(&current);
        let mut next = None;
        for s in chain {
            if s.statement.len() as u64 > 4096 {
                return Err(BundleError::Rotation("statement over 4 KiB".into()));
            }
            let r: KeyRotation = serde_json::from_slice(&s.statement)
                .map_err(|e| BundleError::Rotation(format!("statement is not valid: {e}")))?;
            if r.old_key != here {
                continue;
            }
            let new = hex::decode(&r.new_key)
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| BundleError::Rotation(format!("rotation {} names no valid new key", r.number)))?;
            sign::verify(&current, Context::KeyRotation, &s.statement, &s.old_signature).map_err(|_| {
                BundleError::Rotation(format!("rotation {} is not signed by the key it replaces", r.number))
            })?;
            sign::verify(&new, Context::KeyRotation, &s.statement, &s.new_signature)
                .map_err(|_| BundleError::Rotation(format!("rotation {} is not signed by its new key", r.number)))?;
            next = Some(new);
            break;
        }
        match next {
            Some(k) if seen.insert(hex::encode(&k)) => current = k,
            Some(_) => return Err(BundleError::Rotation("the chain loops back to a key it left".into())),
            None => break,
        }
    }
    Ok((current != pinned).then_some(current))
}

/// Verify an assignment under `policy`: the key (following a rotation chain from the pinned
/// one), both signatures in their own contexts, formats, target, app, bundle id, expiry and
/// age, replay, fast-forward and downgrade, and the manifest's own checks. Nothing is written;
/// callers act only on the returned [`Verified`].
pub fn verify_assignment(a: &proto::Assignment, policy: &Policy<'_>) -> Result<Verified, BundleError> {
    let sd =
        a.desired.as_ref().ok_or(BundleError::Malformed { what: "assignment", reason: "no desired state".into() })?;
    let sm = a.manifest.as_ref().ok_or(BundleError::Malformed { what: "assignment", reason: "no manifest".into() })?;
    if sd.payload.len() as u64 > MAX_DOC_SIZE || sm.manifest.len() as u64 > MAX_DOC_SIZE {
        return Err(BundleError::Limit("manifest or desired state over 16 MiB".into()));
    }
    let rotated_to = follow_rotations(policy.signing_key, &a.rotations)?;
    let key = rotated_to.as_deref().unwrap_or(policy.signing_key);
    sign::verify(key, Context::DesiredState, &sd.payload, &sd.signature)?;
    sign::verify(key, Context::Manifest, &sm.manifest, &sm.signature)?;
    let dv: serde_json::Value = serde_json::from_slice(&sd.payload)
        .map_err(|e| BundleError::Malformed { what: "desired state", reason: e.to_string() })?;
    check_version("desired state", &dv)?;
    let desired: DesiredState = serde_json::from_value(dv)
        .map_err(|e| BundleError::Malformed { what: "desired state", reason: e.to_string() })?;
    let manifest = Manifest::parse(&sm.manifest)?;
    let bundle_id = crate::sha256_hex(&sm.manifest);
    let me = policy.me;
    if desired.target != me {
        return Err(BundleError::WrongTarget { expected: me.into(), found: desired.target });
    }
    if manifest.target != me {
        return Err(BundleError::WrongTarget { expected: me.into(), found: manifest.target });
    }
    if manifest.app != desired.app {
        return Err(BundleError::WrongApp { desired: desired.app, manifest: manifest.app });
    }
    if desired.bundle_id != bundle_id {
        return Err(BundleError::BundleMismatch { named: desired.bundle_id, actual: bundle_id });
    }
    let now = policy.now;
    if desired.expires_unix <= now {
        return Err(BundleError::Expired { expires_unix: desired.expires_unix, now });
    }
    if let Some(max) = policy.max_order_lifetime {
        let lifetime = desired.expires_unix.saturating_sub(desired.issued_unix);
        if lifetime > max {
            return Err(BundleError::TooLong { lifetime, max });
        }
    }
    if let Some(max) = policy.max_order_age {
        let age = now.saturating_sub(desired.issued_unix);
        if age > max {
            return Err(BundleError::TooOld { age, max });
        }
    }
    let mark = policy.mark;
    if desired.sequence <= mark.last_desired_sequence {
        return Err(BundleError::Replay { got: desired.sequence, last: mark.last_desired_sequence });
    }
    if manifest.sequence > desired.sequence {
        return Err(BundleError::FastForward { manifest: manifest.sequence, desired: desired.sequence });
    }
    let release_floor = match policy.release_floors {
        Some(floors) => floors.get(&manifest.app).copied().unwrap_or(0),
        None => mark.current_release_sequence,
    };
    if desired.action == Action::Deploy && manifest.sequence <= release_floor {
        return Err(BundleError::OldRelease { got: manifest.sequence, last: release_floor });
    }
    manifest.validate()?;
    let signed = SignedDocs {
        desired: sd.payload.clone(),
        desired_signature: sd.signature.clone(),
        manifest: sm.manifest.clone(),
        manifest_signature: sm.signature.clone(),
    };
    Ok(Verified { desired, manifest, bundle_id, signed, rotated_to })
}

/// Re-verify a kept release's manifest (`dockfra-agent verify`): its signature by one of
/// `keys` (the pinned key and those it replaced), and that its bytes name `bundle_id`.
pub fn verify_manifest(keys: &[Vec<u8>], bytes: &[u8], signature: &[u8]) -> Result<Manifest, BundleError> {
    if !keys.iter().any(|k| sign::verify(k, Context::Manifest, bytes, signature).is_ok()) {
        return Err(BundleError::Signature(SignError::BadSignature { what: "manifest" }));
    }
    Manifest::parse(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn verification_refuses_what_it_must() {
        let key = key();
        let pk = key.public_key();
        let mark = Watermark::default();
        let a = signed(&key, 5, Action::Deploy, 100);
        let v = verify_assignment(&a, &policy(&pk, mark, 50)).unwrap();
        assert_eq!(v.bundle_id, crate::sha256_hex(&a.manifest.as_ref().unwrap().manifest));
        assert!(v.rotated_to.is_none());
        let other = Policy { me: "t2", ..policy(&pk, mark, 50) };
        assert!(matches!(verify_assignment(&a, &other), Err(BundleError::WrongTarget { .. })));
        assert!(matches!(verify_assignment(&a, &policy(&pk, mark, 100)), Err(BundleError::Expired { .. })));
        let seen = Watermark { last_desired_sequence: 5, current_release_sequence: 0 };
        assert!(matches!(verify_assignment(&a, &policy(&pk, seen, 50)), Err(BundleError::Replay { .. })));
        let newer = Watermark { last_desired_sequence: 1, current_release_sequence: 1 };
        assert!(matches!(verify_assignment(&a, &policy(&pk, newer, 50)), Err(BundleError::OldRelease { .. })));
        let rb = signed(&key, 6, Action::Rollback, 100);
        verify_assignment(&rb, &policy(&pk, newer, 50)).unwrap();
        // An agent hosting several apps holds a deploy to its own app's newest release only.
        let floors = std::collections::BTreeMap::from([("app".to_string(), 0), ("other".to_string(), 9)]);
        let per_app = Policy { release_floors: Some(&floors), ..policy(&pk, newer, 50) };
        verify_assignment(&a, &per_app).unwrap();
        let floors = std::collections::BTreeMap::from([("app".to_string(), 1)]);
        let per_app = Policy { release_floors: Some(&floors), ..policy(&pk, mark, 50) };
        assert!(matches!(verify_assignment(&a, &per_app), Err(BundleError::OldRelease { got: 1, last: 1 })));
        let mut tampered = a.clone();
        tampered.manifest.as_mut().unwrap().manifest[10] ^= 1;
        assert!(matches!(verify_assignment(&tampered, &policy(&pk, mark, 50)), Err(BundleError::Signature(_))));
        // The two signatures cannot be swapped: each is bound to its own kind of document.
        let mut swapped = a.clone();
        let (d, m) = (swapped.desired.as_mut().unwrap(), swapped.manifest.as_mut().unwrap());
        std::mem::swap(&mut d.signature, &mut m.signature);
        assert!(matches!(verify_assignment(&swapped, &policy(&pk, mark, 50)), Err(BundleError::Signature(_))));
        // Age and lifetime limits.
        let limited = Policy { max_order_age: Some(30), ..policy(&pk, mark, 50) };
        assert!(matches!(verify_assignment(&a, &limited), Err(BundleError::TooOld { age: 50, max: 30 })));
        let short = Policy { max_order_lifetime: Some(60), ..policy(&pk, mark, 50) };
        assert!(matches!(verify_assignment(&a, &short), Err(BundleError::TooLong { lifetime: 100, max: 60 })));
        // Fast-forward: a manifest whose sequence is above its order's.
        let m = Manifest { sequence: 9, ..manifest(vec![file("a")]) };
        let ff = sign_assignment(&key, &desired_for(&m, 5, Action::Rollback, 0, 100), m.canonical_bytes(), &[]);
        assert!(matches!(verify_assignment(&ff, &policy(&pk, mark, 50)), Err(BundleError::FastForward { .. })));
        // Mix and match: the desired state of one app with the manifest of another.
        let other_app = Manifest { app: "other".into(), ..manifest(vec![file("a")]) };
        let mut d = desired_for(&other_app, 5, Action::Deploy, 0, 100);
        d.app = "app".into();
        let mixed = sign_assignment(&key, &d, other_app.canonical_bytes(), &[]);
        assert!(matches!(verify_assignment(&mixed, &policy(&pk, mark, 50)), Err(BundleError::WrongApp { .. })));
    }

    #[test]
    fn key_rotation_chains() {
        let (k1, k2, k3) = (key(), key(), key());
        let r1 = sign_rotation(&k1, &k2, 1, 10);
        let r2 = sign_rotation(&k2, &k3, 2, 20);
        let m = manifest(vec![file("a")]);
        let d = desired_for(&m, 5, Action::Deploy, 0, 100);
        let chain = vec![r1.clone(), r2.clone()];
        let a = sign_assignment(&k3, &d, m.canonical_bytes(), &chain);
        let pk1 = k1.public_key();
        // An agent pinned to k1 follows k1 -> k2 -> k3.
        let v = verify_assignment(&a, &policy(&pk1, Watermark::default(), 50)).unwrap();
        assert_eq!(v.rotated_to, Some(k3.public_key()));
        // One pinned to k3 already needs no move.
        let pk3 = k3.public_key();
        assert!(verify_assignment(&a, &policy(&pk3, Watermark::default(), 50)).unwrap().rotated_to.is_none());
        // After moving to k3, a document signed by the rotated-out k1 is refused.
        let old = sign_assignment(&k1, &d, m.canonical_bytes(), &chain);
        assert!(matches!(
            verify_assignment(&old, &policy(&pk3, Watermark::default(), 50)),
            Err(BundleError::Signature(_))
        ));
        // A statement the old key did not sign moves nothing: refused.
        let mallory = key();
        let mut forged = sign_rotation(&mallory, &mallory, 1, 10);
        let stmt = KeyRotation {
            format: 1,
            number: 1,
            old_key: hex::encode(&pk1),
            new_key: hex::encode(mallory.public_key()),
            issued_unix: 1,
        };
        forged.statement = serde_json::to_vec(&stmt).unwrap();
        forged.new_signature = mallory.sign(Context::KeyRotation, &forged.statement);
        forged.old_signature = mallory.sign(Context::KeyRotation, &forged.statement);
        let evil = sign_assignment(&mallory, &d, m.canonical_bytes(), &[forged]);
        assert!(matches!(
            verify_assignment(&evil, &policy(&pk1, Watermark::default(), 50)),
            Err(BundleError::Rotation(_))
        ));
        // A rotation signature is no document signature and the other way round.
        let mut crossed = r1.clone();
        crossed.old_signature = k1.sign(Context::Manifest, &r1.statement);
        assert!(follow_rotations(&pk1, &[crossed]).is_err());
        // A loop back is refused.
        let back = sign_rotation(&k2, &k1, 2, 20);
        assert!(follow_rotations(&pk1, &[r1, back]).is_err());
    }
}
