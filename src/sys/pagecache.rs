//! io_uring file reads and fadvise, for page-cache warm-up.
//!
//! Buffer lifetimes: an SQE carries a raw pointer to a buffer the kernel
//! writes into until its CQE arrives. Every buffer here is owned by the
//! function that submits it and is kept alive until the matching CQE has
//! been reaped. The functions never return while an SQE is in flight: on
//! an error they stop submitting and drain the ring first. If draining
//! itself fails (the ring is broken), the buffers are leaked on purpose
//! rather than freed under the kernel.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

/// Which of the warm-up opcodes the kernel supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opcodes {
    /// `IORING_OP_READ`.
    pub read: bool,
    /// `IORING_OP_FADVISE`.
    pub fadvise: bool,
}

/// Sets up a ring and asks the kernel which opcodes it supports.
pub fn probe_opcodes() -> io::Result<Opcodes> {
    let ring = IoUring::new(2)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    Ok(Opcodes {
        read: probe.is_supported(opcode::Read::CODE),
        fadvise: probe.is_supported(opcode::Fadvise::CODE),
    })
}

/// Reads every byte of `files` through io_uring with `depth` reads of
/// `chunk` bytes in flight, discarding the data (the point is the page
/// cache). Returns the bytes read.
pub fn read_files(files: &[&File], chunk: usize, depth: usize) -> io::Result<u64> {
    let depth = depth.clamp(1, 256);
    let chunk = chunk.clamp(4096, 1 << 26);
    let mut ring = IoUring::new(depth as u32)?;
    let sizes = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()))
        .collect::<io::Result<Vec<u64>>>()?;
    // Owned here; outlives every SQE (see the module docs).
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; chunk]).collect();
    let mut free: Vec<usize> = (0..depth).collect();
    let (mut file, mut off) = (0usize, 0u64);
    let mut in_flight = 0usize;
    let mut total = 0u64;
    let mut err: Option<io::Error> = None;
    loop {
        while err.is_none() {
            while file < files.len() && off >= sizes[file] {
                file += 1;
                off = 0;
            }
            if file >= files.len() {
                break;
            }
            let Some(slot) = free.pop() else { break };
            let len = (sizes[file] - off).min(chunk as u64) as u32;
            let sqe = opcode::Read::new(
                types::Fd(files[file].as_raw_fd()),
                bufs[slot].as_mut_ptr(),
                len,
            )
            .offset(off)
            .build()
            .user_data(slot as u64);
            // SAFETY: the SQE points into bufs[slot], which holds `chunk >=
            // len` bytes and is not touched or freed until this SQE's CQE is
            // reaped (the slot is off the free list until then, and the
            // function drains every in-flight SQE before returning). The fd
            // is borrowed from `files`, alive for the whole call.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                free.push(slot);
                break;
            }
            in_flight += 1;
            off += u64::from(len);
        }
        if in_flight == 0 {
            break;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                // The kernel may still own buffers: never free them.
                std::mem::forget(bufs);
                return Err(e);
            }
        }
        for cqe in ring.completion() {
            in_flight -= 1;
            free.push(cqe.user_data() as usize);
            if cqe.result() < 0 {
                err.get_or_insert(io::Error::from_raw_os_error(-cqe.result()));
            } else {
                total += cqe.result() as u64;
            }
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Submits one `IORING_OP_FADVISE(WILLNEED)` per file and waits for all of
/// them. The kernel starts readahead and returns: the data may still be
/// arriving when this returns. No buffers are involved.
pub fn fadvise_willneed_files(files: &[&File]) -> io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut ring = IoUring::new(files.len().next_power_of_two().min(256) as u32)?;
    let mut err = None;
    for batch in files.chunks(256) {
        for (i, f) in batch.iter().enumerate() {
            let sqe = opcode::Fadvise::new(types::Fd(f.as_raw_fd()), 0, libc::POSIX_FADV_WILLNEED)
                .build()
                .user_data(i as u64);
            // SAFETY: FADVISE carries no buffer; the fd is borrowed from
            // `files` and outlives the wait below.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let mut left = batch.len();
        while left > 0 {
            match ring.submit_and_wait(left) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                left -= 1;
                if cqe.result() < 0 {
                    err.get_or_insert(io::Error::from_raw_os_error(-cqe.result()));
                }
            }
        }
    }
    err.map_or(Ok(()), Err)
}

/// `posix_fadvise(DONTNEED)` over the whole file: drops its clean cached
/// pages (pages mapped by a running process stay). Used to measure a cold
/// warm-up of wasp's own files.
pub fn fadvise_dontneed(f: &File) -> io::Result<()> {
    super::fs::fadvise(f, libc::POSIX_FADV_DONTNEED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_every_byte_of_several_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (i, len) in [0usize, 1, 4096, 100_000].iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            File::create(&p)
                .unwrap()
                .write_all(&vec![7u8; *len])
                .unwrap();
            paths.push(p);
        }
        let files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
        let refs: Vec<&File> = files.iter().collect();
        match read_files(&refs, 8192, 3) {
            Ok(n) => assert_eq!(n, 1 + 4096 + 100_000),
            // io_uring can be disabled by sysctl; then the caller falls back.
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
        if let Ok(ops) = probe_opcodes() {
            if ops.fadvise {
                fadvise_willneed_files(&refs).unwrap();
            }
        }
        fadvise_dontneed(&files[3]).unwrap();
    }
}
