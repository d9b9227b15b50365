//! Feeds arbitrary bytes to the netlink reply parsers: `split_msgs`, `attrs`
//! (one level of nesting), `error_code` and the RTM_NEWLINK dump parser
//! `rtnl::parse_link`. Nothing may panic, and every slice handed back must
//! lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::netlink::rtnl::parse_link;
use wasp::netlink::{attrs, error_code, split_msgs, NLMSG_ERROR, NLMSG_HDRLEN};

fuzz_target!(|data: &[u8]| {
    let Ok(msgs) = split_msgs(data) else { return };
    let mut total = 0usize;
    for m in &msgs {
        total += NLMSG_HDRLEN + m.payload.len();
        if m.ty == NLMSG_ERROR {
            let _ = error_code(m.payload);
        }
        let mut seen = 0usize;
        for (_, p) in attrs(m.payload) {
            seen += 4 + p.len();
            for (_, q) in attrs(p) {
                assert!(q.len() <= p.len());
            }
        }
        assert!(seen <= m.payload.len());
        let link = parse_link(m.payload);
        assert_eq!(link.is_some(), m.payload.len() >= 16);
    }
    assert!(total <= data.len());
});
