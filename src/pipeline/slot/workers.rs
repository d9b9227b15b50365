//! The namespace worker threads of a [`super::Kernel`]: long-lived
//! threads that build and recycle slots, living in the host netns between
//! jobs, so no thread is spawned per slot.

use std::os::fd::OwnedFd;

use crossbeam::channel::{bounded, unbounded, Receiver, Sender};

use super::{nl, SlotError};
use crate::netlink::Socket;
use crate::sys::netns;

/// A job for a namespace worker thread: it may move the thread anywhere,
/// the worker moves it home (the host netns) afterwards.
type Job = Box<dyn FnOnce(&mut WorkerCtx) + Send>;

/// What a namespace worker thread owns.
pub(super) struct WorkerCtx {
    /// The host netns, where the thread lives between jobs.
    pub(super) home: OwnedFd,
    /// A route socket bound in the host netns (opened on first use).
    host: Option<Socket>,
}

impl WorkerCtx {
    pub(super) fn host(&mut self) -> Result<&mut Socket, SlotError> {
        if self.host.is_none() {
            self.host = Some(Socket::route().map_err(nl("open a route socket in the host netns"))?);
        }
        Ok(self.host.as_mut().expect("just set"))
    }
}

/// Long-lived threads that build and recycle slots, so no thread is
/// spawned per slot: each creates a namespace with `unshare` on itself and
/// returns to the host netns with `setns` afterwards. They are Kernel's
/// own threads; no caller's thread ever changes namespace.
pub(super) struct Workers {
    tx: Option<Sender<Job>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// Why a job did not run on a worker.
pub(super) enum Dispatch {
    /// No worker is left: run the job another way.
    NoWorker,
    /// The worker died (panicked) while running it.
    Died,
}

impl Workers {
    pub(super) fn start(host_ns: &OwnedFd) -> Workers {
        let (tx, rx) = unbounded::<Job>();
        let count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut handles = Vec::new();
        for i in 0..count {
            let Ok(home) = host_ns.try_clone() else {
                continue;
            };
            let rx = rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("wasp-slot-{i}"))
                .spawn(move || Self::run(home, rx));
            if let Ok(h) = h {
                handles.push(h);
            }
        }
        Workers {
            tx: Some(tx),
            handles,
        }
    }

    fn run(home: OwnedFd, rx: Receiver<Job>) {
        if netns::enter(&home).is_err() {
            return;
        }
        let mut cx = WorkerCtx { home, host: None };
        while let Ok(job) = rx.recv() {
            let panicked =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut cx))).is_err();
            // Home again; a thread that cannot get home stops working.
            if netns::enter(&cx.home).is_err() {
                return;
            }
            if panicked {
                // The socket may be mid-request: start afresh.
                cx.host = None;
            }
        }
    }

    /// Runs `f` on a worker and waits for its result.
    pub(super) fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WorkerCtx) -> T + Send + 'static,
    ) -> Result<T, Dispatch> {
        let Some(tx) = &self.tx else {
            return Err(Dispatch::NoWorker);
        };
        let (rtx, rrx) = bounded(1);
        let job: Job = Box::new(move |cx| {
            let _ = rtx.send(f(cx));
        });
        tx.send(job).map_err(|_| Dispatch::NoWorker)?;
        rrx.recv().map_err(|_| Dispatch::Died)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.tx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
