//! Feeds arbitrary bytes to the Firecracker API response parser and the
//! fault-message extractor. Nothing may panic; a parsed response never
//! claims more bytes than it was given, and feeding it exactly those bytes
//! parses the same response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::vmm::api::{fault_message_of, parse_response, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let _ = fault_message_of(data);
    if let Ok(Some((resp, used))) = parse_response(data) {
        assert!(used <= data.len());
        assert!(resp.body.len() <= MAX_BODY);
        let _ = fault_message_of(&resp.body);
        let (again, used2) = parse_response(&data[..used])
            .expect("a parsed prefix re-parses")
            .expect("a parsed prefix is complete");
        assert_eq!(
            (again.status, again.body, used2),
            (resp.status, resp.body, used)
        );
    }
});
