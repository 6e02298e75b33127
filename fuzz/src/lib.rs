//! What the fuzz targets share: fixed test keys, the fixed agent policy, and the harness
//! steps that turn fuzz bytes into inputs that get past the signatures (signing documents
//! and rotation statements with the fixed keys, fixing tar header checksums). Test keys
//! only: they sign nothing outside the fuzzers and their seeds.
use dockfra_common::bundle::{self, Policy, Watermark};
use dockfra_common::proto;
use dockfra_common::sign::{Context, SigningKey};

/// PKCS#8 documents of three fixed Ed25519 test keys. K0 is the key the agent pins; K1
/// and K2 are what rotation statements may move it to.
const KEYS: [&str; 3] = [
    "3051020101300506032b6570042204200131aa192493645d31c03118925b93381717e8231b45b1bf57880c1f86b8d215812100721fb250b7cbaae78d87a5488e286f04be858081087b3e22139fd9f19ab1a4e8",
    "3051020101300506032b6570042204208368b7bfa72758e8e704ca3bd165d8e45eb569bbb44958e224ef62d1c1096a058121002614568cb223397a3830b7b8d22df42a4057aa7693d510fc0124ab523420c998",
    "3051020101300506032b65700422042064ccf4bc8cdd8e3c5ed8c4528ad4f241b115750c3789871300c789fcb2f847eb812100e9e54958c4bf7d75f4914c5858b8ca0d4b8d2ac78c5bab40ccf375e598ef9d3b",
];

/// The target name the fixed policy accepts.
pub const ME: &str = "edge";
/// The agent's clock in the fixed policy.
pub const NOW: u64 = 1_000_000;
/// Placeholder in a desired-state section that becomes the manifest section's sha256.
pub const BUNDLE_ID: &str = "@BUNDLE@";
/// Section separator in multi-document inputs (never inside a JSON document).
pub const SEPARATOR: &[u8] = b"\n--\n";

/// The fixed test key `i` (0, 1 or 2).
pub fn key(i: usize) -> SigningKey {
    SigningKey::from_pkcs8(&hex::decode(KEYS[i]).expect("hex")).expect("pkcs8")
}

/// The fixed keys and their public halves.
pub fn keys() -> Vec<(SigningKey, Vec<u8>)> {
    (0..KEYS.len())
        .map(|i| {
            let k = key(i);
            let pk = k.public_key();
            (k, pk)
        })
        .collect()
}

/// The agent's policy in every target: pinned to K0, target `edge`, one release and one order
/// seen, order age and lifetime limits set.
pub fn policy(pinned: &[u8]) -> Policy<'_> {
    Policy {
        me: ME,
        signing_key: pinned,
        mark: Watermark { last_desired_sequence: 1, current_release_sequence: 1 },
        release_floors: None,
        now: NOW,
        max_order_lifetime: Some(30 * 86_400),
        max_order_age: Some(86_400),
    }
}

/// Split `data` at [`SEPARATOR`].
pub fn sections(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&rest[..i]);
        rest = &rest[i + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

fn replace(data: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// A rotation statement from fuzz bytes: `@K0@`, `@K1@`, `@K2@` become the fixed keys' hex;
/// each side is signed by the fixed key its `old_key` / `new_key` names (K0 when none).
pub fn signed_rotation(keys: &[(SigningKey, Vec<u8>)], statement: &[u8]) -> proto::SignedKeyRotation {
    let mut statement = statement.to_vec();
    for (i, (_, pk)) in keys.iter().enumerate() {
        statement = replace(&statement, &format!("@K{i}@"), &hex::encode(pk));
    }
    let named = |field: &str| -> &SigningKey {
        let v: Option<serde_json::Value> = serde_json::from_slice(&statement).ok();
        let hex_key = v.as_ref().and_then(|v| v.get(field)).and_then(|k| k.as_str()).unwrap_or("");
        keys.iter().find(|(_, pk)| hex::encode(pk) == hex_key).map_or(&keys[0].0, |(k, _)| k)
    };
    proto::SignedKeyRotation {
        old_signature: named("old_key").sign(Context::KeyRotation, &statement),
        new_signature: named("new_key").sign(Context::KeyRotation, &statement),
        statement,
    }
}

/// An assignment from fuzz bytes: sections manifest, desired state, then rotation statements.
/// The documents are signed with the key the rotation chain leads to from K0 (K0 when the
/// chain is refused or leads to no fixed key), so verification gets past the signatures.
pub fn signed_assignment(keys: &[(SigningKey, Vec<u8>)], data: &[u8]) -> proto::Assignment {
    let parts = sections(data);
    let manifest = parts[0].to_vec();
    let desired = parts.get(1).copied().unwrap_or_default();
    let desired = replace(desired, BUNDLE_ID, &dockfra_common::sha256_hex(&manifest));
    let rotations: Vec<_> = parts.iter().skip(2).map(|s| signed_rotation(keys, s)).collect();
    let end = bundle::follow_rotations(&keys[0].1, &rotations).ok().flatten();
    let signer = keys.iter().find(|(_, pk)| Some(pk) == end.as_ref()).map_or(&keys[0].0, |(k, _)| k);
    proto::Assignment {
        desired: Some(proto::SignedDesiredState {
            signature: signer.sign(Context::DesiredState, &desired),
            payload: desired,
        }),
        manifest: Some(proto::SignedManifest { signature: signer.sign(Context::Manifest, &manifest), manifest }),
        rotations,
    }
}

/// Rewrite the checksum of every tar header in `data` (following the size fields from one
/// header to the next), so that mutations reach the archive reader instead of stopping at
/// the checksum test.
pub fn fix_tar_checksums(data: &mut [u8]) {
    let mut at = 0usize;
    while at + 512 <= data.len() {
        let h = &mut data[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = std::str::from_utf8(&h[124..136])
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok())
            .unwrap_or(0);
        let Some(next) =
            usize::try_from(size.div_ceil(512).saturating_mul(512)).ok().and_then(|n| at.checked_add(512 + n))
        else {
            break;
        };
        at = next;
    }
}
