//! `read_archive` (offline bundles) on tar bytes whose header checksums the harness fixes;
//! the callbacks do what `dockfra-agent apply` does, cheaply: verify the documents against
//! the fixed pinned key, then hash-check each blob against the size the manifest gives it.
#![no_main]
use dockfra_common::bundle::{read_archive, verify_assignment, BundleError};
use dockfra_fuzz::{fix_tar_checksums, key, policy};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::OnceLock;

static PINNED: OnceLock<Vec<u8>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let pinned = PINNED.get_or_init(|| key(0).public_key());
    let mut data = data.to_vec();
    fix_tar_checksums(&mut data);
    let sizes = RefCell::new(BTreeMap::new());
    let _ = read_archive(
        &data[..],
        |a| {
            *sizes.borrow_mut() = verify_assignment(&a, &policy(pinned))?.manifest.blob_sizes();
            Ok(sizes.borrow().clone())
        },
        |digest, r| {
            let limit = sizes.borrow()[digest.as_str()];
            let mut buf = Vec::new();
            r.take(limit + 1).read_to_end(&mut buf).map_err(|e| BundleError::Archive(e.to_string()))?;
            let actual = dockfra_common::sha256_hex(&buf);
            if buf.len() as u64 != limit || actual != digest.as_str() {
                return Err(BundleError::BlobHash { digest: digest.to_string(), actual });
            }
            Ok(())
        },
    );
});
