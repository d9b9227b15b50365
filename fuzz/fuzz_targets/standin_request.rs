//! Feeds arbitrary bytes to the stand-in's HTTP request parser. Nothing may
//! panic; a parsed request never claims more bytes than it was given, and
//! feeding it exactly those bytes parses the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::standin::http::{parse_request, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = parse_request(data) {
        assert!(used <= data.len());
        assert!(req.body.len() <= MAX_BODY);
        let (again, used2) = parse_request(&data[..used])
            .expect("a parsed prefix re-parses")
            .expect("a parsed prefix is complete");
        assert_eq!((again, used2), (req, used));
    }
});
