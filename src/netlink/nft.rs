//! nf_tables over NETLINK_NETFILTER: batch framing and table messages.
//!
//! Every change is sent as one atomic batch: `NFNL_MSG_BATCH_BEGIN`, the
//! messages, `NFNL_MSG_BATCH_END`. The kernel applies all or none of it.

use super::{MsgBuf, NetlinkError, Socket, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

/// `NFNL_SUBSYS_NFTABLES`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFT_MSG_NEWTABLE`.
pub const NFT_MSG_NEWTABLE: u16 = 0;
/// `NFT_MSG_GETTABLE`.
pub const NFT_MSG_GETTABLE: u16 = 1;
/// `NFT_MSG_DELTABLE`.
pub const NFT_MSG_DELTABLE: u16 = 2;
/// `NFTA_TABLE_NAME`.
pub const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_TABLE_FLAGS`.
pub const NFTA_TABLE_FLAGS: u16 = 2;
/// `NFPROTO_INET`.
pub const NFPROTO_INET: u8 = 1;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u8 = 2;

/// The netlink message type of an nf_tables message.
pub const fn msg_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// `struct nfgenmsg`: family, version 0, resource id (big endian).
pub fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

/// Builds an atomic batch. Messages added between [`Batch::new`] and
/// [`Batch::finish`] get consecutive sequence numbers.
#[derive(Debug)]
pub struct Batch {
    buf: MsgBuf,
    first_seq: u32,
    next_seq: u32,
    labels: Vec<(u32, String)>,
}

impl Batch {
    /// Starts a batch whose BATCH_BEGIN carries `seq`.
    pub fn new(seq: u32) -> Self {
        let mut buf = MsgBuf::new();
        buf.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq)
            .raw(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES))
            .end();
        Self {
            buf,
            first_seq: seq,
            next_seq: seq + 1,
            labels: Vec::new(),
        }
    }

    /// Starts one nf_tables message in the batch and returns its builder.
    /// Close it with `.end()`.
    pub fn msg(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        what: impl Into<String>,
    ) -> &mut MsgBuf {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.labels.push((seq, what.into()));
        self.buf
            .begin(msg_type(msg), NLM_F_REQUEST | NLM_F_ACK | flags, seq)
            .raw(&nfgenmsg(family, 0));
        &mut self.buf
    }

    /// Adds `NEWTABLE family name` (creating it if missing).
    pub fn new_table(&mut self, family: u8, name: &str) -> &mut Self {
        self.msg(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            family,
            format!("add table {name}"),
        )
        .attr_str(NFTA_TABLE_NAME, name)
        .attr_be32(NFTA_TABLE_FLAGS, 0)
        .end();
        self
    }

    /// Adds `DELTABLE family name`.
    pub fn del_table(&mut self, family: u8, name: &str) -> &mut Self {
        self.msg(NFT_MSG_DELTABLE, 0, family, format!("delete table {name}"))
            .attr_str(NFTA_TABLE_NAME, name)
            .end();
        self
    }

    /// Closes the batch and returns the bytes, the sequence numbers that
    /// expect acks, and the label of each.
    pub fn finish(mut self) -> (MsgBuf, Vec<u32>, Vec<(u32, String)>) {
        let end_seq = self.next_seq;
        self.buf
            .begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq)
            .raw(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES))
            .end();
        let seqs = (self.first_seq + 1..end_seq).collect();
        (self.buf, seqs, self.labels)
    }

    /// Sends the batch on `sock` and waits for every ack.
    pub fn commit(self, sock: &mut Socket) -> Result<(), NetlinkError> {
        let (buf, seqs, labels) = self.finish();
        sock.request_acked(&buf, &seqs, &|seq| {
            labels
                .iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, l)| l.clone())
                .unwrap_or_else(|| format!("nf_tables message {seq}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `nft --debug=netlink add table inet wasp_probe` and
    /// nlmon: NEWTABLE with name and flags 0, framed by a batch.
    #[test]
    fn new_table_batch_is_byte_exact() {
        let mut b = Batch::new(1);
        b.new_table(NFPROTO_INET, "wasp_probe");
        let (buf, seqs, _) = b.finish();
        assert_eq!(seqs, vec![2]);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // BATCH_BEGIN: len 20, type 0x10, flags REQUEST, seq 1
            &[20, 0, 0, 0, 0x10, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
            &[0, 0, 0, 10],
            // NEWTABLE: len 44, type 0x0a00, flags REQUEST|ACK|CREATE, seq 2
            &[44, 0, 0, 0, 0x00, 0x0a, 0x05, 0x04, 2, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0],
            // NFTA_TABLE_NAME "wasp_probe\0" (len 15, padded to 16)
            &[15, 0, 1, 0], b"wasp_probe\0", &[0],
            // NFTA_TABLE_FLAGS be32 0
            &[8, 0, 2, 0, 0, 0, 0, 0],
            // BATCH_END: seq 3
            &[20, 0, 0, 0, 0x11, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0, 0, 10],
        ].concat();
        assert_eq!(buf.as_bytes(), &want[..]);
    }
}
