//! Netlink lookups and requests the build, host and kernel parts share:
//! link, route and address dumps, one link by name, an acked send, and
//! deleting a host link or a host neighbour entry.

use std::net::Ipv4Addr;

use super::{nl, SlotError};
use crate::netlink::{self, rtnl, MsgBuf, NetlinkError, Socket};

/// Dumps the links of the calling thread's netns.
pub fn dump_links(sock: &mut Socket) -> Result<Vec<rtnl::LinkInfo>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::dump_links(&mut b, seq);
    let msgs = sock.dump(&b, seq)?;
    Ok(msgs
        .iter()
        .filter(|(ty, _)| *ty == rtnl::RTM_NEWLINK)
        .filter_map(|(_, p)| rtnl::parse_link(p))
        .collect())
}

/// One link of the socket's netns looked up by name (`None`: no such
/// link), without dumping every link.
pub fn get_link(sock: &mut Socket, name: &str) -> Result<Option<rtnl::LinkInfo>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::get_link(&mut b, seq, rtnl::Link::Name(name));
    match sock.dump(&b, seq) {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter(|(ty, _)| *ty == rtnl::RTM_NEWLINK)
            .find_map(|(_, p)| rtnl::parse_link(p))),
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// IPv4 routes of the calling thread's netns, every table.
pub fn dump_routes(sock: &mut Socket) -> Result<Vec<rtnl::RouteInfo>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::dump_routes(&mut b, seq);
    Ok(sock
        .dump(&b, seq)?
        .into_iter()
        .filter(|(ty, _)| *ty == rtnl::RTM_NEWROUTE)
        .filter_map(|(_, p)| rtnl::parse_route(&p))
        .collect())
}

/// IPv4 addresses of the calling thread's netns: (ifindex, addr, prefix).
pub fn dump_addrs(sock: &mut Socket) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    b.begin(22, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP, seq)
        .raw(&[rtnl::AF_INET, 0, 0, 0, 0, 0, 0, 0])
        .end();
    let msgs = sock.dump(&b, seq)?;
    let mut out = Vec::new();
    for (ty, p) in msgs {
        if ty != rtnl::RTM_NEWADDR || p.len() < 8 || p[0] != rtnl::AF_INET {
            continue;
        }
        let prefix = p[1];
        let index = u32::from_ne_bytes(p[4..8].try_into().unwrap_or_default());
        for (t, v) in netlink::attrs(&p[8..]) {
            if t == rtnl::IFA_LOCAL && v.len() == 4 {
                out.push((index, Ipv4Addr::new(v[0], v[1], v[2], v[3]), prefix));
            }
        }
    }
    Ok(out)
}

pub(super) fn send_acked(
    sock: &mut Socket,
    b: &MsgBuf,
    seqs: &[u32],
    what: &str,
) -> Result<(), SlotError> {
    let w = what.to_owned();
    sock.request_acked(b, seqs, &|seq| format!("{w} (message {seq})"))
        .map_err(nl(what))
}

/// Removes the host's permanent entry for a clone IP; none is fine (a
/// slot that crashed before it was made, or made by an older wasp).
pub(super) fn del_host_neigh(
    sock: &mut Socket,
    bridge: u32,
    clone_ip: Ipv4Addr,
) -> Result<(), SlotError> {
    let mut b = MsgBuf::new();
    let seq = sock.next_seq(1);
    rtnl::del_neigh(&mut b, seq, bridge, clone_ip);
    match sock.request_acked(&b, &[seq], &|_| {
        format!("delete the neighbour entry for {clone_ip}")
    }) {
        Ok(()) => Ok(()),
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(e) => Err(nl(format!(
            "delete the host's neighbour entry for {clone_ip}"
        ))(e)),
    }
}

pub(super) fn del_host_link(sock: &mut Socket, name: &str) -> Result<(), SlotError> {
    let mut b = MsgBuf::new();
    let seq = sock.next_seq(1);
    rtnl::del_link(&mut b, seq, rtnl::Link::Name(name));
    send_acked(sock, &b, &[seq], &format!("delete host link {name}"))
}
