//! Feeds arbitrary bytes to the stand-in vmstate parser. It must never
//! panic, and whatever it accepts must serialize and parse back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::standin::vmstate::VmState;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = VmState::from_bytes(data, "fuzz") {
        let again =
            VmState::from_bytes(&s.to_bytes(), "fuzz").expect("an accepted vmstate re-parses");
        // f64 fields: NaN cannot come out of JSON, so equality is meaningful.
        assert_eq!(s, again);
    }
});
