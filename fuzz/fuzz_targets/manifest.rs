//! Feeds arbitrary bytes to the snapshot manifest parser. It must never
//! panic, and whatever it accepts must serialize and parse back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::snapshot::manifest::{Manifest, MAX_MANIFEST_SIZE};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_bytes(data, "fuzz") {
        let bytes = m.to_bytes();
        if bytes.len() as u64 <= MAX_MANIFEST_SIZE {
            let again =
                Manifest::from_bytes(&bytes, "fuzz").expect("an accepted manifest re-parses");
            assert_eq!(m, again);
        }
    }
});
