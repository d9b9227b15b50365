//! The guest behaviour the stand-in models: the guest a boot records (from
//! the kernel command line), the pages a resume dirties, and the JSON merge
//! patch `PATCH /mmds` applies.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::standin::vmstate::GuestState;

/// The guest behaviour a booted (not loaded) stand-in VM records in its
/// snapshots: wasp's slot defaults, overridable from the kernel command line
/// (`ip=CLIENT::GW:NETMASK`, `wasp.ready_port=`, `wasp.agent_port=`,
/// `wasp.dirty=`).
pub fn guest_from_boot_args(args: Option<&str>) -> GuestState {
    let mut g = GuestState {
        ip: crate::paths::DEFAULT_GUEST_IP.to_string(),
        prefix_len: crate::paths::DEFAULT_TAP_PREFIX,
        gateway: crate::paths::DEFAULT_TAP_IP.to_string(),
        ready_port: 22,
        agent_port: 8080,
        dirty_fraction: 0.01,
    };
    for word in args.unwrap_or("").split_whitespace() {
        if let Some(v) = word.strip_prefix("ip=") {
            let f: Vec<&str> = v.split(':').collect();
            if let Some(ip) = f.first().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                g.ip = ip.to_string();
            }
            if let Some(gw) = f.get(2).and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                g.gateway = gw.to_string();
            }
            if let Some(mask) = f.get(3).and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                g.prefix_len = u32::from(mask).count_ones() as u8;
            }
        } else if let Some(v) = word.strip_prefix("wasp.ready_port=") {
            g.ready_port = v.parse().unwrap_or(g.ready_port);
        } else if let Some(v) = word.strip_prefix("wasp.agent_port=") {
            g.agent_port = v.parse().unwrap_or(g.agent_port);
        } else if let Some(v) = word.strip_prefix("wasp.dirty=") {
            g.dirty_fraction = v
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .unwrap_or(g.dirty_fraction);
        }
    }
    g
}

/// Writes one byte in `ceil(pages * fraction)` pages spread evenly over
/// `mem`, so that many pages become private (anonymous) copies. Returns the
/// number of pages written.
pub fn dirty_fraction(mem: &mut [u8], page: usize, fraction: f64, salt: u8) -> usize {
    let pages = mem.len() / page;
    if pages == 0 || fraction <= 0.0 {
        return 0;
    }
    let n = ((pages as f64 * fraction.min(1.0)).ceil() as usize).clamp(1, pages);
    let stride = pages / n;
    for i in 0..n {
        let off = i * stride * page + page - 1;
        mem[off] = mem[off].wrapping_add(salt.max(1));
    }
    n
}

/// A JSON merge patch (RFC 7396), as Firecracker's `PATCH /mmds` applies.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}
