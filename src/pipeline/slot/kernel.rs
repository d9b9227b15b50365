//! [`Kernel`], the real [`SlotOps`]: host set-up and attach, slot build
//! on the worker threads, recycle (tap check, conntrack flush), destroy
//! and the scan reconcile uses.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use super::build::{fill_slot, Bridge, BuildSteps};
use super::host::{
    ensure_bridge, host_has_egress, remove_host_objects, set_connect_uids, set_egress,
};
use super::links::{del_host_neigh, dump_links, get_link, send_acked};
use super::workers::{Dispatch, Workers};
use super::{
    io_err, nl, Found, HostNet, Layout, Slot, SlotError, SlotNet, SlotOps, BRIDGE_ALIAS, VETH0,
};
use crate::netlink::{self, rtnl, MsgBuf, NetlinkError, Socket};
use crate::pipeline::lease::{Lease, LEASE_DIR};
use crate::pipeline::registry::Registry;
use crate::sys::{netns, tap};

/// The real kernel implementation.
pub struct Kernel {
    net: SlotNet,
    host_ns: OwnedFd,
    /// The host bridge (index 0 and no MAC when attached to a host side
    /// without one).
    bridge: Bridge,
    /// Route sockets bound in the host netns, reused across builds.
    host_socks: Mutex<Vec<Socket>>,
    /// The host netns's `/proc/sys/net/ipv6/conf` (`None` without IPv6,
    /// and for a Kernel that only attaches): each host veth's
    /// `disable_ipv6` is written through it from the slot's worker.
    host_v6conf: Option<Arc<File>>,
    /// Namespace worker threads for build and recycle.
    workers: OnceLock<Workers>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("net", &self.net)
            .field("bridge_index", &self.bridge.index)
            .finish_non_exhaustive()
    }
}

/// The host netns's IPv6 per-device sysctl directory, `None` when the
/// kernel has no IPv6 there (or it cannot be opened: the slots then keep
/// only their `addrgenmode none`).
fn open_v6conf(host_ns: &OwnedFd) -> Option<Arc<File>> {
    match netns::run_in(host_ns, || File::open("/proc/sys/net/ipv6/conf")).and_then(|r| r) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the host's /proc/sys/net/ipv6/conf; host veths keep IPv6");
            None
        }
    }
}

/// Runs `f` in the host netns (a fresh thread when it is a named one).
fn in_ns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> Result<T, SlotError> {
    netns::run_in(ns, f).map_err(io_err("enter the host netns"))
}

impl Kernel {
    /// Prepares the host side: enters or creates the host netns, checks the
    /// CIDR against the host's addresses, creates (or adopts) the bridge
    /// with the gateway address, and optional egress masquerade. Fails with
    /// one clear error and leaves nothing half-built.
    ///
    /// Egress: with an uplink, the masquerade is made and this pool's slots
    /// forward out of the clone CIDR. Without one, a masquerade an earlier
    /// setup made for the host netns (`pool warm --egress-uplink`) is the
    /// pool's egress setting, and the slots built here get egress too, so
    /// a later `spawn` builds slots like the warmed ones.
    ///
    /// Connect uids: [`HostNet::connect_uids`] is applied to the host table
    /// each time (the rule is replaced, or removed for
    /// [`ConnectUids::Any`](super::ConnectUids::Any)).
    pub fn setup(mut net: SlotNet, host: &HostNet) -> Result<Kernel, SlotError> {
        keep_recorded_layout(&mut net, host);
        // An egress uplink means the slots must forward to it too.
        net.egress |= host.egress_uplink.is_some();
        net.validate()?;
        // Every slot needs a tap: fail once, before building anything.
        tap::check_tun().map_err(io_err(
            "cannot open /dev/net/tun, so no slot can get its tap; load the tun module (modprobe tun) and run as root",
        ))?;
        // One process at a time makes or checks the host side.
        let _setup = crate::pipeline::lease::host_setup_lock(Path::new(LEASE_DIR))
            .map_err(io_err(format!("lock {LEASE_DIR}/host-setup.lock")))?;
        // A pool one process owns alone is recorded before anything is
        // made: killed at any point from here on, what it made is found
        // again (and removed) by a plain `wasp reconcile`.
        let owned_reg = match (&host.registry, host.owner) {
            (Some(dir), Some(_)) => {
                let reg = Registry::at(dir);
                let will_create = host.netns.as_deref().is_some_and(|n| !netns::exists(n));
                reg.put(net.registry_entry(host, will_create))
                    .map_err(|source| SlotError::Registry {
                        pool: net.pool.clone(),
                        source,
                    })?;
                Some(reg)
            }
            _ => None,
        };
        let mut created = None;
        let host_ns = match &host.netns {
            Some(name) => {
                if !netns::exists(name) {
                    match netns::create_named(name) {
                        Ok(()) => created = Some(name.clone()),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            if let Some(reg) = &owned_reg {
                                let _ = reg.remove(&net.pool);
                            }
                            return Err(io_err(format!("create host netns {name}"))(e));
                        }
                    }
                }
                match netns::open_named(name) {
                    Ok(fd) => fd,
                    Err(e) => {
                        if let Some(name) = &created {
                            let _ = netns::delete_named(name);
                        }
                        if let Some(reg) = &owned_reg {
                            let _ = reg.remove(&net.pool);
                        }
                        return Err(io_err(format!("open host netns {name}"))(e));
                    }
                }
            }
            None => netns::open_current().map_err(io_err("open the current netns"))?,
        };
        let r = (|| {
            let bridge = in_ns(&host_ns, || ensure_bridge(&net))??;
            let rest = (|| {
                let egress = match &host.egress_uplink {
                    Some(up) => {
                        let owned = created.is_some();
                        in_ns(&host_ns, || set_egress(&net, up, owned))??;
                        true
                    }
                    None => in_ns(&host_ns, host_has_egress)??,
                };
                in_ns(&host_ns, || set_connect_uids(&net, &host.connect_uids))??;
                Ok(egress)
            })();
            match rest {
                Ok(egress) => Ok((bridge, egress)),
                Err(e) => {
                    let n = net.clone();
                    let _ = in_ns(&host_ns, move || remove_host_objects(&n));
                    Err(e)
                }
            }
        })();
        let ((bridge_index, bridge_mac), egress) = match r {
            Ok(i) => i,
            Err(e) => {
                // Nothing half-built: a host netns made just now goes too.
                if let Some(name) = created {
                    let _ = netns::delete_named(&name);
                }
                if let Some(reg) = &owned_reg {
                    let _ = reg.remove(&net.pool);
                }
                return Err(e);
            }
        };
        net.egress |= egress;
        // Found again by `pool status` and `reconcile` without --pool.
        if let Some(dir) = &host.registry {
            let entry = net.registry_entry(host, created.is_some());
            if let Err(e) = Registry::at(dir).put(entry) {
                tracing::warn!(
                    "pool {}: {}; it is found only with --pool",
                    net.pool,
                    crate::error::chain(&e)
                );
            }
        }
        let host_v6conf = open_v6conf(&host_ns);
        let k = Kernel {
            net,
            host_ns,
            bridge: Bridge {
                index: bridge_index,
                mac: Some(bridge_mac),
            },
            host_socks: Mutex::new(Vec::new()),
            host_v6conf,
            workers: OnceLock::new(),
        };
        Ok(k)
    }

    /// Attaches to an existing host side without creating anything (for
    /// status, reconcile and drain). A missing bridge is fine (index 0).
    pub fn attach(mut net: SlotNet, host: &HostNet) -> Result<Kernel, SlotError> {
        keep_recorded_layout(&mut net, host);
        net.validate()?;
        let host_ns = match &host.netns {
            Some(name) => netns::open_named(name).map_err(io_err(format!(
                "open host netns {name} (does it exist? `ip netns list` shows it)"
            )))?,
            None => netns::open_current().map_err(io_err("open the current netns"))?,
        };
        let bridge = net.bridge.clone();
        let (bridge_index, bridge_mac) = in_ns(&host_ns, move || {
            let mut sock = Socket::route().map_err(nl("open a route socket"))?;
            let links = dump_links(&mut sock).map_err(nl("list host links"))?;
            Ok::<_, SlotError>(
                links
                    .iter()
                    .find(|l| l.name == bridge && l.alias.as_deref() == Some(BRIDGE_ALIAS))
                    .map(|l| (l.index, l.address))
                    .unwrap_or((0, None)),
            )
        })??;
        Ok(Kernel {
            net,
            host_ns,
            bridge: Bridge {
                index: bridge_index,
                mac: bridge_mac,
            },
            host_socks: Mutex::new(Vec::new()),
            host_v6conf: None,
            workers: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn net(&self) -> &SlotNet {
        &self.net
    }

    fn host_sock(&self) -> Result<Socket, SlotError> {
        if let Some(s) = self.host_socks.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(s);
        }
        in_ns(&self.host_ns, Socket::route)?.map_err(nl("open a route socket in the host netns"))
    }

    fn put_host_sock(&self, s: Socket) {
        if let Ok(mut v) = self.host_socks.lock() {
            v.push(s);
        }
    }

    /// Removes the bridge (if wasp's) and wasp's host nft table. Slots are
    /// not touched (drain them first).
    pub fn remove_host(&self) -> Result<(), SlotError> {
        let net = self.net.clone();
        in_ns(&self.host_ns, move || remove_host_objects(&net))?
    }

    fn build_inner(
        &self,
        n: u32,
        host: &mut Socket,
        steps: &mut BuildSteps,
    ) -> Result<Slot, SlotError> {
        let net = &self.net;
        let slot = net.slot(n)?;
        let bridge = self.bridge;
        let t = std::time::Instant::now();
        let v6 = self.host_v6conf.as_deref();
        let r = netns::create_named_with(&slot.netns, netns::Owner::Wasp, || {
            steps.netns = crate::stats::ms(t.elapsed());
            fill_slot(net, bridge, &slot, host, v6, steps)
        });
        match r {
            Ok(()) => Ok(slot),
            Err(netns::CreateError::Inner(e)) => Err(e),
            Err(netns::CreateError::Io(e)) => Err(create_ns_err(&slot.netns, e)),
        }
    }

    /// The worker threads, started on first use.
    fn workers(&self) -> &Workers {
        self.workers.get_or_init(|| Workers::start(&self.host_ns))
    }
}

/// [`SlotNet::keep_recorded_layout`] with the pool's record in `host`'s
/// registry, saying so when it changes the layout.
fn keep_recorded_layout(net: &mut SlotNet, host: &HostNet) {
    let Some(dir) = &host.registry else {
        return;
    };
    let recorded = Registry::at(dir).get(&net.pool).ok().flatten();
    if let Some(asked) = net.keep_recorded_layout(recorded.as_ref()) {
        tracing::warn!(
            "pool {} was built with the {} layout and keeps it ({asked} asked for); drain the pool to change its layout",
            net.pool,
            net.layout
        );
    }
}

fn create_ns_err(name: &str, e: io::Error) -> SlotError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        SlotError::NameTaken {
            netns: name.to_owned(),
        }
    } else {
        io_err(format!("create netns {name}"))(e)
    }
}

/// Recycle checks on the calling thread, which is inside the slot netns:
/// the tap must be free, then conntrack is flushed.
fn recycle_here(tap_name: &str, netns_name: &str) -> Result<(), SlotError> {
    if !tap::is_free(tap_name).map_err(io_err("check the tap"))? {
        return Err(SlotError::TapBusy {
            tap: tap_name.to_owned(),
            netns: netns_name.to_owned(),
        });
    }
    let mut s = Socket::netfilter().map_err(nl("open a ctnetlink socket"))?;
    let mut b = MsgBuf::new();
    let seq = s.next_seq(1);
    conntrack_flush_msg(&mut b, seq);
    match s.request_acked(&b, &[seq], &|_| "flush conntrack".into()) {
        Ok(()) => Ok(()),
        // Nothing tracked yet.
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(e) => Err(nl(format!("flush conntrack in {}", netns_name))(e)),
    }
}

/// Deletes `veth0` (and so its peer) inside slot netns `name`, if there.
fn delete_veth0_in(name: &str) -> Result<(), SlotError> {
    let ns = netns::open_named(name).map_err(io_err(format!("open netns {name}")))?;
    let r = netns::run_in(&ns, || -> Result<(), SlotError> {
        let mut s = Socket::route().map_err(nl("open a route socket in the slot"))?;
        let Some(l) = get_link(&mut s, VETH0).map_err(nl("look up veth0"))? else {
            return Ok(());
        };
        let mut b = MsgBuf::new();
        let seq = s.next_seq(1);
        rtnl::del_link(&mut b, seq, rtnl::Link::Index(l.index));
        send_acked(&mut s, &b, &[seq], &format!("delete veth0 in {name}"))
    });
    match r {
        Ok(r) => r,
        // Killed between making the name and mounting the namespace on
        // it: an empty file, no namespace, nothing inside to delete.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(io_err(format!("enter netns {name}"))(e)),
    }
}

/// `IPCTNL_MSG_CT_DELETE` without attributes: flush the conntrack table
/// (built with netlink-packet-netfilter).
pub fn conntrack_flush_msg(b: &mut MsgBuf, seq: u32) {
    use netlink_packet_netfilter::conntrack::ConntrackMessage;
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    let m = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        ConntrackMessage::Delete(Vec::new()),
    );
    b.push(netlink::NLM_F_REQUEST | netlink::NLM_F_ACK, seq, m);
}

impl Kernel {
    /// Builds slot `n` like [`SlotOps::build`] and says where the time
    /// went.
    pub fn build_timed(&self, n: u32) -> Result<(Slot, BuildSteps), SlotError> {
        let slot = self.net.slot(n)?;
        let net = self.net.clone();
        let bridge = self.bridge;
        let v6 = self.host_v6conf.clone();
        let r = self.workers().call(move |cx| {
            let mut steps = BuildSteps::default();
            let r = (|| {
                // Opened (once) while the thread is still in the host netns.
                cx.host()?;
                let t = std::time::Instant::now();
                netns::create_named_here(&slot.netns, &cx.home)
                    .map_err(|e| create_ns_err(&slot.netns, e))?;
                steps.netns = crate::stats::ms(t.elapsed());
                let r = fill_slot(&net, bridge, &slot, cx.host()?, v6.as_deref(), &mut steps);
                if r.is_err() {
                    // Leave the namespace before removing it.
                    let _ = netns::enter(&cx.home);
                    let _ = netns::delete_named(&slot.netns);
                }
                r
            })();
            r.map(|()| (slot, steps))
        });
        match r {
            Ok(r) => r,
            Err(Dispatch::Died) => Err(SlotError::Io {
                what: format!("build slot {n}"),
                source: io::Error::other("the slot worker thread panicked"),
            }),
            Err(Dispatch::NoWorker) => {
                let mut host = self.host_sock()?;
                let mut steps = BuildSteps::default();
                let r = self.build_inner(n, &mut host, &mut steps);
                self.put_host_sock(host);
                r.map(|s| (s, steps))
            }
        }
    }
}

impl SlotOps for Kernel {
    fn build(&self, n: u32) -> Result<Slot, SlotError> {
        self.build_timed(n).map(|(s, _)| s)
    }

    fn recycle(&self, slot: &Slot) -> Result<(), SlotError> {
        let open = || {
            netns::open_named(&slot.netns)
                .map_err(io_err(format!("open slot netns {}", slot.netns)))
        };
        let ns = open()?;
        let tap_name = self.net.tap.clone();
        let name = slot.netns.clone();
        // On a worker thread (it goes home afterwards), else a fresh one.
        let r = self.workers().call(move |_cx| {
            netns::enter(&ns)?;
            Ok(recycle_here(&tap_name, &name))
        });
        let r = match r {
            Ok(r) => r,
            Err(Dispatch::Died) => {
                return Err(SlotError::Io {
                    what: format!("recycle slot {}", slot.index),
                    source: io::Error::other("the slot worker thread panicked"),
                })
            }
            Err(Dispatch::NoWorker) => {
                netns::run_in(open()?, || recycle_here(&self.net.tap, &slot.netns))
            }
        };
        r.map_err(io_err("enter the slot netns"))?
    }

    fn destroy(&self, n: u32) -> Result<(), SlotError> {
        let mut errs = Vec::new();
        let name = self.net.netns_name(n);
        let veth = self.net.host_veth(n);
        let alias = self.net.alias(n);
        // The host end, only if it carries our mark.
        let mut host_end_deleted = false;
        match self.host_sock() {
            Ok(mut s) => {
                // One lookup by name, not a dump of every host link.
                match get_link(&mut s, &veth) {
                    Ok(Some(l)) if l.alias.as_deref() == Some(alias.as_str()) => {
                        // By the index just checked; deleting the host end
                        // also removes veth0 inside.
                        let mut b = MsgBuf::new();
                        let seq = s.next_seq(1);
                        rtnl::del_link(&mut b, seq, rtnl::Link::Index(l.index));
                        match send_acked(&mut s, &b, &[seq], &format!("delete host link {veth}")) {
                            Ok(()) => host_end_deleted = true,
                            Err(e) => errs.push(e),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => errs.push(nl(format!("look up host link {veth}"))(e)),
                }
                // Routed: the entry (and the route) went with the host end.
                let on_bridge = self.bridge.index != 0 && self.net.layout == Layout::Bridge;
                if let (Ok(ip), true) = (self.net.clone_ip(n), on_bridge) {
                    if let Err(e) = del_host_neigh(&mut s, self.bridge.index, ip) {
                        errs.push(e);
                    }
                }
                self.put_host_sock(s);
            }
            Err(e) => errs.push(e),
        }
        if !host_end_deleted && netns::exists(&name) {
            // A slot killed before its host end was marked: the pair is
            // removed from inside the namespace (ours by its name), now,
            // rather than by the kernel's asynchronous namespace cleanup,
            // which would leave the host end on the bridge for a while.
            if let Err(e) = delete_veth0_in(&name) {
                errs.push(e);
            }
        }
        if netns::exists(&name) {
            if let Err(e) = netns::delete_named(&name) {
                errs.push(io_err(format!("delete netns {name}"))(e));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(SlotError::Teardown(errs))
        }
    }

    /// Deleting a link waits for RCU grace periods in the kernel, not for
    /// the CPU: several threads overlap those waits.
    fn destroy_many(&self, ns: &[u32]) -> Vec<Result<(), SlotError>> {
        const THREADS: usize = 8;
        if ns.len() < 2 {
            return ns.iter().map(|n| self.destroy(*n)).collect();
        }
        let per = ns.len().div_ceil(THREADS);
        std::thread::scope(|s| {
            let hs: Vec<_> = ns
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().map(|n| self.destroy(*n)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    fn scan(&self) -> Result<Vec<Found>, SlotError> {
        let mut found: std::collections::BTreeMap<u32, Found> = Default::default();
        let blank = |index| Found {
            index,
            has_netns: false,
            host_veth: None,
            on_bridge: false,
        };
        for name in netns::list_named().map_err(io_err("list /run/netns"))? {
            if let Some(i) = self.net.index_of_netns(&name) {
                found.entry(i).or_insert_with(|| blank(i)).has_netns = true;
            }
        }
        let mut s = self.host_sock()?;
        let links = dump_links(&mut s).map_err(nl("list host links"));
        self.put_host_sock(s);
        for l in links? {
            let Some(i) = l.alias.as_deref().and_then(|a| self.net.index_of_alias(a)) else {
                continue;
            };
            let f = found.entry(i).or_insert_with(|| blank(i));
            // Wired: a bridge port of the pool's bridge, or (routed) on no
            // bridge at all.
            f.on_bridge = match self.net.layout {
                Layout::Bridge => l.master == Some(self.bridge.index),
                Layout::Routed => l.master.is_none(),
            };
            f.host_veth = Some(l.name);
        }
        Ok(found.into_values().collect())
    }

    fn describe(&self, n: u32) -> Result<Slot, SlotError> {
        Ok(Slot {
            index: n,
            netns: self.net.netns_name(n),
            clone_ip: self.net.clone_ip(n)?,
            host_veth: self.net.host_veth(n),
        })
    }

    fn lease(&self, n: u32) -> Result<Option<Lease>, SlotError> {
        // An index past the CIDR ends the search for a free one.
        self.net.clone_ip(n)?;
        let netns = self.net.netns_name(n);
        Lease::try_take(Path::new(LEASE_DIR), &netns)
            .map_err(io_err(format!("take the lease of slot {netns}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conntrack_flush_is_the_bare_ctnetlink_delete() {
        let mut b = MsgBuf::new();
        conntrack_flush_msg(&mut b, 7);
        // nlmsghdr: length 20, type CTNETLINK << 8 | CT_DELETE, flags
        // REQUEST | ACK, seq 7, pid 0; nfgenmsg: AF_INET, version 0, res 0.
        let want: [u8; 20] = [
            20, 0, 0, 0, 0x02, 0x01, 0x05, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
        ];
        assert_eq!(b.as_bytes(), &want);
    }
}
