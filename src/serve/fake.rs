//! A recording [`Backend`] for tests of the HTTP layer (routing, checks,
//! auth, metrics, logs) without root, namespaces or VMMs: it keeps
//! clones in a map, records every call (secret values as `***`), and can
//! be told to refuse spawns as overloaded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::api::{PoolBody, SnapshotBody, SpawnSpec};
use super::backend::{Backend, BackendError, PoolInfo, Readiness, SnapshotInfo};
use crate::engine::batch::{CloneReport, PhasesMs, SpawnReport, Summary};
use crate::engine::{Capacity, CloneState, LiveClone, ReapCause, Reaped};
use crate::pipeline::pool::PoolStatus;
use crate::pipeline::ring::DriverKind;
use crate::pipeline::storage::probe::Strategy;
use crate::state::CloneRecord;
use crate::vmm::VmmFate;

/// The fake.
#[derive(Debug)]
pub struct FakeBackend {
    /// Every call, one line each (`spawn snap count=2 env=[A,B]`).
    pub calls: Mutex<Vec<String>>,
    clones: Mutex<BTreeMap<String, LiveClone>>,
    snapshots: Mutex<Vec<SnapshotInfo>>,
    pool: Mutex<PoolStatus>,
    seq: AtomicUsize,
    /// Spawns are refused as overloaded while set.
    pub overloaded: AtomicBool,
    exits: Mutex<Vec<crossbeam::channel::Sender<Reaped>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeBackend {
    /// A fake with one snapshot, `snap`, and a pool `default` of 4 free
    /// slots.
    pub fn new() -> Self {
        let f = Self {
            calls: Mutex::default(),
            clones: Mutex::default(),
            snapshots: Mutex::default(),
            pool: Mutex::new(PoolStatus {
                free: 0,
                in_use: 0,
                size: 0,
                low_water: 0,
                high_water: 0,
                refill_failures: 0,
            }),
            seq: AtomicUsize::new(0),
            overloaded: AtomicBool::new(false),
            exits: Mutex::default(),
        };
        lock(&f.snapshots).push(SnapshotInfo {
            name: "snap".into(),
            dir: "/fake/snap".into(),
            vmm: "standin".into(),
            vmm_version: "0".into(),
            mem_mib: 16,
            vcpus: 1,
            drives: 1,
        });
        *lock(&f.pool) = PoolStatus {
            free: 4,
            in_use: 0,
            size: 4,
            low_water: 0,
            high_water: 8,
            refill_failures: 0,
        };
        f
    }

    fn record(&self, line: String) {
        lock(&self.calls).push(line);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn reap(&self, c: LiveClone, cause: ReapCause) -> Reaped {
        let r = Reaped {
            id: c.record.id.clone(),
            pid: c.record.pid,
            slot: c.record.slot,
            vmm: VmmFate::Terminated,
            status: Some(0),
            errors: Vec::new(),
            cause,
        };
        lock(&self.exits).retain(|tx| tx.send(r.clone()).is_ok());
        r
    }

    /// Ends a clone as if its TTL ran out (reported on `exits`).
    pub fn expire(&self, id: &str) -> Option<Reaped> {
        let c = lock(&self.clones).remove(id)?;
        Some(self.reap(c, ReapCause::TtlExpired))
    }
}

fn record(id: &str, i: usize, snapshot: &str) -> CloneRecord {
    CloneRecord {
        id: id.to_owned(),
        pid: 100_000 + i as i32,
        pid_start: 1,
        vmm: "standin".into(),
        netns: format!("wasp-fake-{i}"),
        slot: i as u32,
        pool: "default".into(),
        host_netns: None,
        clone_ip: std::net::Ipv4Addr::new(10, 0, 0, 2 + (i % 250) as u8),
        ready_port: None,
        api_sock: format!("/fake/{id}.sock").into(),
        clone_dir: format!("/fake/{id}").into(),
        snapshot: snapshot.into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        cgroup: None,
        jail_dir: None,
        request: None,
        labels: BTreeMap::new(),
        expires_at_ms: None,
        paused: false,
    }
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for FakeBackend {
    fn vmm(&self) -> &str {
        "standin"
    }

    fn spawn(&self, spec: SpawnSpec) -> Result<SpawnReport, BackendError> {
        let keys: Vec<&str> = spec.env.keys().collect();
        self.record(format!(
            "spawn {} count={} env=[{}] ttl={:?} labels={:?}",
            spec.snapshot,
            spec.count,
            keys.join(","),
            spec.ttl.map(|d| d.as_secs()),
            spec.labels
        ));
        if self.overloaded.load(Ordering::Relaxed) {
            return Err(BackendError::Overloaded {
                detail: format!("the fake holds 0 more clones, asked {}", spec.count),
                retry_after_s: 3,
            });
        }
        if !lock(&self.snapshots)
            .iter()
            .any(|s| s.name == spec.snapshot)
        {
            return Err(BackendError::Invalid(format!(
                "no snapshot named {:?}",
                spec.snapshot
            )));
        }
        let tag = format!("f{:05}", self.seq.fetch_add(1, Ordering::Relaxed));
        let mut rows = Vec::new();
        for i in 0..spec.count {
            let id = format!("{tag}-{i}");
            let mut rec = record(&id, i, &spec.snapshot);
            rec.labels = spec.labels.clone();
            rec.request = Some(tag.clone());
            let live = LiveClone {
                request: tag.clone(),
                labels: spec.labels.clone(),
                state: CloneState::Running,
                expires_at_ms: spec.ttl.map(|t| t.as_millis() as u64),
                record: rec.clone(),
            };
            lock(&self.clones).insert(id.clone(), live);
            rows.push(CloneReport {
                id,
                netns: Some(rec.netns),
                clone_ip: Some(rec.clone_ip),
                pid: Some(rec.pid),
                host_netns: None,
                ready_port: None,
                phases_ms: PhasesMs {
                    slot: 0.01,
                    storage: 0.2,
                    launch: 0.6,
                    socket: 0.3,
                    load: 1.0,
                    mmds: 0.1,
                    resume: 0.1,
                    ready: 0.5,
                },
                total_ms: 2.81,
                bytes_copied: 0,
                wasp_cpu_ms: 0.3,
                ok: true,
                error: None,
                failed_phase: None,
            });
        }
        Ok(SpawnReport {
            summary: Summary {
                wall_ms: 3.0,
                ready: rows.len(),
                failed: 0,
                p50: 2.81,
                p99: 2.81,
                driver: DriverKind::Syscalls,
                driver_fallback_reason: None,
                storage_strategy: Strategy::Reflink,
                mem_bytes_copied: 0,
                disk_bytes_copied: 0,
                driver_cpu_ms: 0.1,
                admission_cpu_ms: 0.1,
            },
            clones: rows,
        })
    }

    fn list(&self) -> Vec<LiveClone> {
        lock(&self.clones).values().cloned().collect()
    }

    fn get(&self, id: &str) -> Option<LiveClone> {
        lock(&self.clones).get(id).cloned()
    }

    fn kill(&self, id: &str) -> Result<Reaped, BackendError> {
        self.record(format!("kill {id}"));
        let c = lock(&self.clones)
            .remove(id)
            .ok_or_else(|| BackendError::NotFound(format!("no live clone {id}")))?;
        Ok(self.reap(c, ReapCause::Killed))
    }

    fn kill_matching(&self, labels: &BTreeMap<String, String>) -> Vec<Reaped> {
        self.record(format!("kill_matching {labels:?}"));
        let ids: Vec<String> = lock(&self.clones)
            .values()
            .filter(|c| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .map(|c| c.record.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.kill(id).ok()).collect()
    }

    fn pause(&self, id: &str) -> Result<LiveClone, BackendError> {
        self.record(format!("pause {id}"));
        let mut m = lock(&self.clones);
        let c = m
            .get_mut(id)
            .ok_or_else(|| BackendError::NotFound(format!("no live clone {id}")))?;
        if c.state == CloneState::Paused {
            return Err(BackendError::Conflict(format!("clone {id} is paused")));
        }
        c.state = CloneState::Paused;
        Ok(c.clone())
    }

    fn resume(&self, id: &str) -> Result<LiveClone, BackendError> {
        self.record(format!("resume {id}"));
        let mut m = lock(&self.clones);
        let c = m
            .get_mut(id)
            .ok_or_else(|| BackendError::NotFound(format!("no live clone {id}")))?;
        if c.state == CloneState::Running {
            return Err(BackendError::Conflict(format!("clone {id} is running")));
        }
        c.state = CloneState::Running;
        Ok(c.clone())
    }

    fn set_ttl(&self, id: &str, ttl: Option<Duration>) -> Result<LiveClone, BackendError> {
        self.record(format!("set_ttl {id} {:?}", ttl.map(|d| d.as_secs())));
        let mut m = lock(&self.clones);
        let c = m
            .get_mut(id)
            .ok_or_else(|| BackendError::NotFound(format!("no live clone {id}")))?;
        c.expires_at_ms = ttl.map(|t| t.as_millis() as u64);
        c.record.expires_at_ms = c.expires_at_ms;
        Ok(c.clone())
    }

    fn snapshots(&self) -> Vec<SnapshotInfo> {
        lock(&self.snapshots).clone()
    }

    fn add_snapshot(&self, body: SnapshotBody) -> Result<SnapshotInfo, BackendError> {
        self.record(format!(
            "add_snapshot {} {} adopt={}",
            body.name,
            body.dir,
            body.adopt.is_some()
        ));
        if !std::path::Path::new(&body.dir).is_absolute() {
            return Err(BackendError::Invalid(format!(
                "dir {:?} is not absolute",
                body.dir
            )));
        }
        let s = SnapshotInfo {
            name: body.name,
            dir: body.dir.into(),
            vmm: "standin".into(),
            vmm_version: "0".into(),
            mem_mib: 16,
            vcpus: 1,
            drives: 1,
        };
        lock(&self.snapshots).push(s.clone());
        Ok(s)
    }

    fn pools(&self) -> Vec<PoolInfo> {
        vec![PoolInfo {
            name: "default".into(),
            status: *lock(&self.pool),
        }]
    }

    fn set_pool(&self, name: &str, body: &PoolBody) -> Result<PoolInfo, BackendError> {
        self.record(format!(
            "set_pool {name} {:?} {:?} {:?}",
            body.size, body.low_water, body.high_water
        ));
        if name != "default" {
            return Err(BackendError::NotFound(format!("no pool {name}")));
        }
        let mut p = lock(&self.pool);
        if let Some(s) = body.size {
            p.size = s;
            p.free = s;
        }
        if let Some(l) = body.low_water {
            p.low_water = l;
        }
        if let Some(h) = body.high_water {
            p.high_water = h;
        }
        Ok(PoolInfo {
            name: name.into(),
            status: *p,
        })
    }

    fn capacity(&self) -> Capacity {
        let clones = lock(&self.clones).len();
        Capacity {
            free_slots: 4,
            pool_slots: 4 + clones,
            max_slots: 1000,
            clones,
            mem_available_bytes: 1 << 30,
            mem_per_clone_bytes: crate::engine::MEM_PER_CLONE_BYTES,
            fds_open: 10,
            fd_limit: 1024,
            clones_possible: 100,
        }
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            warm: true,
            adopted: 0,
            reclaimed: 0,
        }
    }

    fn exits(&self) -> Option<crossbeam::channel::Receiver<Reaped>> {
        let (tx, rx) = crossbeam::channel::unbounded();
        lock(&self.exits).push(tx);
        Some(rx)
    }

    fn shutdown(&self, kill_clones: bool) -> (usize, usize) {
        self.record(format!("shutdown kill={kill_clones}"));
        let ids: Vec<String> = lock(&self.clones).keys().cloned().collect();
        if kill_clones {
            for id in &ids {
                if let Some(c) = lock(&self.clones).remove(id) {
                    self.reap(c, ReapCause::Shutdown);
                }
            }
            (ids.len(), 0)
        } else {
            (0, ids.len())
        }
    }
}
