//! A small synchronous netlink layer: message building, one socket per
//! namespace, sequence-checked acks.
//!
//! Messages are built byte for byte by [`MsgBuf`] so that golden tests can
//! compare them with what `ip` and `nft` send. A [`Socket`] is opened inside
//! its target namespace (run the constructor on a thread that is in it, see
//! [`crate::sys::netns::run_in`]) and stays bound there.

pub mod nft;
pub mod rtnl;

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable};
use netlink_sys::{protocols, Socket as RawSocket, SocketAddr};
use thiserror::Error;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT`.
pub const NLM_F_ROOT: u16 = 0x100;
/// `NLM_F_MATCH`.
pub const NLM_F_MATCH: u16 = 0x200;
/// `NLM_F_DUMP`.
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// `NLM_F_REPLACE`.
pub const NLM_F_REPLACE: u16 = 0x100;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub const NLM_F_APPEND: u16 = 0x800;
/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;

/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;

/// Netlink header size.
pub const NLMSG_HDRLEN: usize = 16;

/// Rounds up to netlink's 4-byte alignment.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Errors of the netlink layer.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// Opening or binding the socket failed.
    #[error("cannot open netlink socket (protocol {protocol})")]
    Open {
        /// Netlink protocol number.
        protocol: isize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending failed.
    #[error("netlink send failed")]
    Send(#[source] io::Error),
    /// Receiving failed.
    #[error("netlink receive failed")]
    Recv(#[source] io::Error),
    /// The kernel refused a request with an errno.
    #[error("the kernel refused netlink request seq {seq} ({what})")]
    Kernel {
        /// Sequence number of the refused message.
        seq: u32,
        /// What the request was, for the error chain.
        what: String,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A reply could not be parsed.
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

/// A byte buffer of one or more netlink messages.
#[derive(Debug, Default, Clone)]
pub struct MsgBuf {
    buf: Vec<u8>,
    /// Start of the message being built.
    msg_start: Option<usize>,
}

impl MsgBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a message with the given type, flags and sequence number.
    /// The port id is 0 (the kernel fills it in).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> &mut Self {
        assert!(self.msg_start.is_none(), "begin() inside an open message");
        self.msg_start = Some(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }

    /// Appends one message built with the netlink-packet crates
    /// (`RouteNetlinkMessage`, `NetfilterMessage`): the crate's
    /// `NetlinkMessage` writes the header (length and type from the
    /// payload, then `flags` and `seq`, port id 0) and the payload straight
    /// into this buffer, after the messages already in it.
    pub fn push<T: NetlinkSerializable>(&mut self, flags: u16, seq: u32, payload: T) -> &mut Self {
        assert!(self.msg_start.is_none(), "push() inside an open message");
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(payload),
        );
        m.header.flags = flags;
        m.header.sequence_number = seq;
        m.finalize();
        let at = self.buf.len();
        self.buf.resize(at + m.buffer_len(), 0);
        m.serialize(&mut self.buf[at..]);
        self.pad();
        self
    }

    /// Appends raw bytes (a fixed family header), padded to 4 bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0u8, n));
    }

    /// Appends an attribute with a raw payload.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A u8 attribute.
    pub fn attr_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.attr(ty, &[v])
    }

    /// A native-endian u16 attribute.
    pub fn attr_u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A native-endian u32 attribute.
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A big-endian u32 attribute (nf_tables uses network order).
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A big-endian u64 attribute.
    pub fn attr_be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Opens a nested attribute; close it with [`MsgBuf::nest_end`].
    pub fn nest_begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Opens a nested attribute *without* `NLA_F_NESTED`, as iproute2 does
    /// for rtnetlink (the kernel accepts both); close it with
    /// [`MsgBuf::nest_end`].
    pub fn nest_begin_plain(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        at
    }

    /// Closes a nested attribute opened at `at`.
    pub fn nest_end(&mut self, at: usize) -> &mut Self {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Finishes the current message, writing its length.
    pub fn end(&mut self) -> &mut Self {
        let start = self.msg_start.take().expect("end() without begin()");
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The bytes built so far.
    pub fn as_bytes(&self) -> &[u8] {
        assert!(self.msg_start.is_none(), "message still open");
        &self.buf
    }

    /// Clears the buffer for reuse.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.msg_start = None;
    }
}

/// One parsed netlink message header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct RawMsg<'a> {
    /// Message type.
    pub ty: u16,
    /// Flags.
    pub flags: u16,
    /// Sequence number.
    pub seq: u32,
    /// Payload after the header.
    pub payload: &'a [u8],
}

/// Splits a buffer into netlink messages. Stops with an error at the first
/// malformed header rather than reading past it.
pub fn split_msgs(mut buf: &[u8]) -> Result<Vec<RawMsg<'_>>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NetlinkError::Malformed("message length out of bounds"));
        }
        out.push(RawMsg {
            ty: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// Iterates over the attributes in `buf` as `(type without flags, payload)`.
/// Malformed trailing bytes end the iteration.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 is an ack).
pub fn error_code(payload: &[u8]) -> Result<i32, NetlinkError> {
    if payload.len() < 4 {
        return Err(NetlinkError::Malformed("short NLMSG_ERROR"));
    }
    Ok(i32::from_ne_bytes(payload[0..4].try_into().unwrap()))
}

/// A netlink socket bound in the namespace it was opened in.
pub struct Socket {
    sock: RawSocket,
    seq: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("seq", &self.seq).finish()
    }
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's namespace.
    pub fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let open = || -> io::Result<RawSocket> {
            let mut s = RawSocket::new(protocol)?;
            s.bind(&SocketAddr::new(0, 0))?;
            // Extended acks make errors name the offending attribute.
            let _ = s.set_ext_ack(true);
            Ok(s)
        };
        let sock = open().map_err(|source| NetlinkError::Open { protocol, source })?;
        Ok(Self {
            sock,
            seq: 1,
            rx: vec![0u8; 64 * 1024],
        })
    }

    /// NETLINK_ROUTE.
    pub fn route() -> Result<Self, NetlinkError> {
        Self::open(protocols::NETLINK_ROUTE)
    }

    /// NETLINK_NETFILTER.
    pub fn netfilter() -> Result<Self, NetlinkError> {
        Self::open(protocols::NETLINK_NETFILTER)
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    /// Sends the whole buffer in one datagram.
    pub fn send(&self, msgs: &MsgBuf) -> Result<(), NetlinkError> {
        let bytes = msgs.as_bytes();
        let n = self.sock.send(bytes, 0).map_err(NetlinkError::Send)?;
        if n != bytes.len() {
            return Err(NetlinkError::Send(io::Error::other("short netlink send")));
        }
        Ok(())
    }

    /// Sends `msgs` and waits for the acks of every sequence number in
    /// `seqs` (each message must carry `NLM_F_ACK`). The first kernel error
    /// is returned, labelled with `what(seq)`; the remaining acks are still
    /// drained so the socket stays in step.
    pub fn request_acked(
        &mut self,
        msgs: &MsgBuf,
        seqs: &[u32],
        what: &dyn Fn(u32) -> String,
    ) -> Result<(), NetlinkError> {
        self.send(msgs)?;
        let mut pending: Vec<u32> = seqs.to_vec();
        let mut first_err = None;
        while !pending.is_empty() {
            let n = self
                .sock
                .recv(&mut &mut self.rx[..], 0)
                .map_err(NetlinkError::Recv)?;
            for m in split_msgs(&self.rx[..n])? {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(m.payload)?;
                if let Some(i) = pending.iter().position(|s| *s == m.seq) {
                    pending.swap_remove(i);
                } else {
                    continue;
                }
                if code != 0 && first_err.is_none() {
                    first_err = Some(NetlinkError::Kernel {
                        seq: m.seq,
                        what: what(m.seq),
                        source: io::Error::from_raw_os_error(-code),
                    });
                    // After an error in an nf_tables batch the kernel aborts
                    // the batch and acks nothing further.
                    if m.seq != 0 {
                        pending.retain(|s| *s < m.seq);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends messages that carry no `NLM_F_ACK` (an nf_tables batch as
    /// `nft` sends it) and collects the errors the kernel queued. Netlink
    /// requests to the kernel are processed synchronously inside `send`,
    /// so every error is already queued when it returns: the queue is
    /// drained without blocking, as libnftables does. The first error is
    /// returned, labelled with `what(seq)`.
    pub fn request_errors_only(
        &mut self,
        msgs: &MsgBuf,
        what: &dyn Fn(u32) -> String,
    ) -> Result<(), NetlinkError> {
        self.send(msgs)?;
        let mut first_err = None;
        loop {
            let n = match self.sock.recv(&mut &mut self.rx[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(NetlinkError::Recv(e)),
            };
            for m in split_msgs(&self.rx[..n])? {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(m.payload)?;
                if code != 0 && first_err.is_none() {
                    first_err = Some(NetlinkError::Kernel {
                        seq: m.seq,
                        what: what(m.seq),
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends a dump request and collects every reply message's payload
    /// (type, bytes) until `NLMSG_DONE`.
    pub fn dump(&mut self, msgs: &MsgBuf, seq: u32) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        self.send(msgs)?;
        let mut out = Vec::new();
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.rx[..], 0)
                .map_err(NetlinkError::Recv)?;
            for m in split_msgs(&self.rx[..n])? {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(m.payload)?;
                        if code != 0 {
                            return Err(NetlinkError::Kernel {
                                seq,
                                what: "dump".into(),
                                source: io::Error::from_raw_os_error(-code),
                            });
                        }
                        return Ok(out);
                    }
                    NLMSG_NOOP => {}
                    ty => out.push((ty, m.payload.to_vec())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_splits_messages() {
        let mut b = MsgBuf::new();
        b.begin(16, NLM_F_REQUEST | NLM_F_ACK, 7)
            .raw(&[1, 2, 3])
            .attr_str(3, "lo")
            .end();
        let n = b.nest_begin(9);
        let _ = n;
        // close the nest then the message in a second message to test both
        let mut b2 = MsgBuf::new();
        b2.begin(17, NLM_F_REQUEST, 8);
        let at = b2.nest_begin(2);
        b2.attr_u32(1, 5);
        b2.nest_end(at).end();
        let msgs = split_msgs(b2.as_bytes()).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, 17);
        assert_eq!(msgs[0].seq, 8);
        let outer: Vec<_> = attrs(msgs[0].payload).collect();
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, 2);
        let inner: Vec<_> = attrs(outer[0].1).collect();
        assert_eq!(inner, vec![(1u16, &5u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn split_rejects_bad_lengths() {
        let mut bad = vec![0u8; 16];
        bad[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(split_msgs(&bad).is_err());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(split_msgs(&bad).is_err());
    }

    #[test]
    fn attrs_stops_on_garbage() {
        let garbage = [0xffu8, 0xff, 1, 0, 9];
        assert_eq!(attrs(&garbage).count(), 0);
    }
}
