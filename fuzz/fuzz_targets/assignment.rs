//! `verify_assignment` (and through it `follow_rotations`) on a manifest, a desired state and
//! rotation statements from the fuzz input, signed with fixed test keys so the checks after
//! the signatures run too (see `dockfra_fuzz::signed_assignment` for the input layout).
#![no_main]
use dockfra_common::bundle::{verify_assignment, BundleError};
use dockfra_fuzz::{keys, policy, signed_assignment, ME};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static KEYS: OnceLock<Vec<(dockfra_common::sign::SigningKey, Vec<u8>)>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(keys);
    let a = signed_assignment(keys, data);
    if let Ok(v) = verify_assignment(&a, &policy(&keys[0].1)) {
        assert_eq!(v.bundle_id, dockfra_common::sha256_hex(&a.manifest.as_ref().unwrap().manifest));
        assert_eq!((v.desired.target.as_str(), v.manifest.target.as_str()), (ME, ME));
        v.manifest.validate().expect("a verified manifest is valid");
        let _ = v.release_name();
    }
    // Pinned to a key that signed nothing, the same documents must be refused.
    let stranger = [7u8; 32];
    let r = verify_assignment(&a, &policy(&stranger));
    assert!(
        matches!(
            r,
            Err(BundleError::Signature(_)
                | BundleError::Rotation(_)
                | BundleError::Limit(_)
                | BundleError::Malformed { .. })
        ),
        "{r:?}"
    );
});
