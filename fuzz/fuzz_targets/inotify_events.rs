//! Feeds arbitrary bytes to the inotify event record parser. It must never
//! panic and never yield more events than whole 16-byte headers fit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::sys::inotify::parse_events;

fuzz_target!(|data: &[u8]| {
    let ev = parse_events(data);
    assert!(ev.len() <= data.len() / 16);
});
