//! The processes of one job: data-parallel training and sharded evaluation across processes and
//! machines, on MPI (docs/DISTRIBUTED.md).
//!
//! Launched by `mpirun -np N rectok …` (or SLURM's `srun`), a binary built with the `mpi` feature
//! joins the job's MPI world: [`world`] says its rank and size, and the collectives below (sums
//! over flat buffers, broadcasts, gathers, agreement on failure) are MPI's. Without the feature,
//! or started without a launcher, the world is this process alone and every collective is the
//! identity, so single-process code needs no second path.
//!
//! Only the main thread calls MPI (`MPI_THREAD_FUNNELED`); worker threads never do.
//!
//! **Failure.** A rank whose work fails where the others can learn of it (a training step, a
//! setup phase) says so through [`World::agree`], so every rank stops at the same point and rank
//! 0 can save a checkpoint. Any other failure ends the job: [`finish`] waits a few seconds for the
//! other ranks to reach the end too and otherwise calls `MPI_Abort`, which stops them all — a
//! failing rank never leaves the others waiting in a collective. The control points ([`World::agree`],
//! [`World::agree_signal`], [`World::root_decides`], [`World::check_same`]) are all one small
//! all-reduce carrying their kind, so ranks at different control points find out and end the job
//! at once; work that may fail on one rank is followed by a control point before any other
//! collective.

use anyhow::{Result, anyhow};
use std::sync::OnceLock;

/// Elements per all-reduce call: large enough that a step needs few calls (rectok_b's 172M
/// gradients take 6), small enough that the receive buffer stays modest (128 MiB).
pub const BUCKET_ELEMENTS: usize = 1 << 25;

/// This process's place in its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

static WORLD: OnceLock<World> = OnceLock::new();

const SINGLE: World = World { rank: 0, size: 1, local_rank: 0, local_size: 1 };

/// The world of this process (a single process until [`init`] joined a larger one).
pub fn world() -> &'static World {
    WORLD.get().unwrap_or(&SINGLE)
}

/// A world of this process alone, for work that one rank does by itself inside a job (a
/// training run's online evaluation on rank 0).
pub fn single() -> &'static World {
    &SINGLE
}

/// Whether an MPI launcher started this process (`mpirun`, `mpiexec`, `srun --mpi=pmix|pmi2`).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// The number of processes the launcher says it started, where it says (`None`: not said).
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|n| n.trim().parse().ok()))
}

/// Joins the job's MPI world when a launcher started this process (call first in `main`, before
/// any other thread exists). A build without the `mpi` feature runs a one-process launch as
/// usual and refuses a larger one: N copies of a single-process run would each train alone and
/// overwrite each other's files.
pub fn init() -> Result<()> {
    if !launched_by_mpi() {
        return Ok(());
    }
    imp::init(launched_size())
}

/// Ends this process's part in the job and returns the exit status to use: with status 0 it
/// waits for every rank to finish; otherwise it waits ten seconds for them and then aborts
/// the whole job (`MPI_Abort`), so that ranks waiting on this one stop too.
pub fn finish(code: i32) -> i32 {
    imp::finish(code)
}

impl World {
    /// This process's rank, 0 ≤ rank < size.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank among the processes of this machine (the GPU index a rank takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Processes on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Rank 0, the one that writes checkpoints, metrics, grids and exports.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// More than one process.
    pub fn is_multi(&self) -> bool {
        self.size > 1
    }

    /// `(start, len)` of this rank's part of `n` items: near-equal contiguous slices in rank
    /// order (a rank may get none when `n` < size).
    pub fn part(&self, n: usize) -> (usize, usize) {
        let (a, b) = (self.rank * n / self.size, (self.rank + 1) * n / self.size);
        (a, b - a)
    }

    /// Sums `data` element-wise over the ranks, in place (flat buckets of [`BUCKET_ELEMENTS`];
    /// every rank passes a buffer of the same length).
    pub fn sum_f32(&self, data: &mut [f32]) {
        if self.is_multi() {
            imp::sum_f32(data);
        }
    }

    /// Sums `data` element-wise over the ranks, in place.
    pub fn sum_f64(&self, data: &mut [f64]) {
        if self.is_multi() {
            imp::sum_f64(data);
        }
    }

    /// Element-wise maximum of `data` over the ranks, in place.
    pub fn max_u64(&self, data: &mut [u64]) {
        if self.is_multi() {
            imp::max_u64(data);
        }
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        if !self.is_multi() {
            return bytes;
        }
        let mut len = [bytes.len() as u64];
        imp::broadcast_u64(&mut len);
        let mut buf = if self.is_root() { bytes } else { vec![0u8; len[0] as usize] };
        imp::broadcast_u8(&mut buf);
        buf
    }

    /// Rank 0's `data` on every rank, in place (same length everywhere).
    pub fn broadcast_f32(&self, data: &mut [f32]) {
        if self.is_multi() {
            for chunk in data.chunks_mut(BUCKET_ELEMENTS) {
                imp::broadcast_f32(chunk);
            }
        }
    }

    /// Every rank's `local` values concatenated in rank order, on rank 0 (`None` elsewhere).
    pub fn gather_f32(&self, local: &[f32]) -> Option<Vec<f32>> {
        if !self.is_multi() {
            return Some(local.to_vec());
        }
        imp::gather(local, self.is_root())
    }

    /// Every rank's `local` values concatenated in rank order, on rank 0 (`None` elsewhere).
    pub fn gather_f64(&self, local: &[f64]) -> Option<Vec<f64>> {
        if !self.is_multi() {
            return Some(local.to_vec());
        }
        imp::gather(local, self.is_root())
    }

    /// The maximum of `value` over the ranks, at a control point of kind `kind`. The kind
    /// travels with the value: ranks that reached different control points (a bug, or an error
    /// path one rank took alone) end the job at once instead of misreading each other's values.
    fn control(&self, kind: u64, value: u64) -> u64 {
        if !self.is_multi() {
            return value;
        }
        let mut d = [value, kind, !kind];
        imp::max_u64(&mut d);
        if d[1] != kind || d[2] != !kind {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "error: rank {}: the processes of the job reached different points of the work; ending the job",
                self.rank
            );
            imp::abort(70);
        }
        d[0]
    }

    /// Makes one rank's failure every rank's: each passes its own outcome; if any rank failed,
    /// every rank gets an error (its own, or one naming the rank that failed) — so all ranks stop
    /// at the same point. A single process gets its outcome back.
    pub fn agree<T>(&self, outcome: Result<T>) -> Result<T> {
        if !self.is_multi() {
            return outcome;
        }
        // The lowest failing rank is named: max over (size − rank).
        let failed = self.control(1, if outcome.is_err() { (self.size - self.rank) as u64 } else { 0 });
        match (outcome, failed) {
            (Ok(v), 0) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(_), f) => Err(anyhow!(RankFailed { rank: self.size - f as usize })),
        }
    }

    /// The agreed stop signal of the ranks (the largest signal number any rank received; 0: none),
    /// so that every rank stops after the same step.
    pub fn agree_signal(&self, signal: Option<i32>) -> Option<i32> {
        Some(self.control(2, signal.unwrap_or(0).max(0) as u64) as i32).filter(|&s| s != 0)
    }

    /// Rank 0's `flag` on every rank (a decision rank 0 makes from what it sees, e.g. of the
    /// run folder). A control point, so it can follow work that may have failed on one rank.
    pub fn root_decides(&self, flag: bool) -> bool {
        self.control(6, u64::from(self.is_root() && flag)) != 0
    }

    /// Fails unless every rank passes the same `digest` (say, of a buffer layout about to be
    /// reduced): mismatched buffers would make a collective read past their ends.
    pub fn check_same(&self, what: &str, digest: u64) -> Result<()> {
        // Both reductions on every rank (no short circuit: each is a collective).
        let (max, max_not) = (self.control(3, digest), self.control(4, !digest));
        let same = max == digest && max_not == !digest;
        if self.control(5, u64::from(!same)) != 0 {
            return Err(anyhow!("{what} differs between the ranks (rank {} and another)", self.rank));
        }
        Ok(())
    }

    /// Runs `step(k)` for `k` in `0..count` in lockstep with the other ranks, which run `rounds`
    /// rounds in all (the most steps any rank has): before each round the ranks agree on a stop
    /// signal, after it on failure, so a signal or an error anywhere stops every rank at the same
    /// round, with [`crate::signals::Interrupted`] (`doing` says what) or the error. A single
    /// process checks for a signal before each step.
    pub fn lockstep(
        &self,
        count: usize,
        rounds: usize,
        doing: &str,
        mut step: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        if !self.is_multi() {
            for k in 0..count {
                crate::signals::check(doing)?;
                step(k)?;
            }
            return Ok(());
        }
        for k in 0..rounds.max(count) {
            if let Some(signal) = self.agree_signal(crate::signals::requested()) {
                return Err(crate::signals::interrupted(signal, doing).into());
            }
            self.agree(if k < count { step(k) } else { Ok(()) })?;
        }
        Ok(())
    }
}

/// Another rank failed; its own error line (`error: rank N: …`) says why.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank} of the job failed (its own error line says why)")]
pub struct RankFailed {
    /// The lowest failing rank.
    pub rank: usize,
}

/// FNV-1a over `bytes` (layout digests).
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(not(feature = "mpi"))]
mod imp {
    use anyhow::{Result, bail};

    pub fn init(size: Option<usize>) -> Result<()> {
        match size {
            Some(n) if n > 1 => bail!(
                "started as one of {n} processes by an MPI launcher (mpirun / srun), but this rectok was built \
                 without MPI: build it with `cargo build --release --features mpi` (docs/DISTRIBUTED.md)"
            ),
            _ => Ok(()),
        }
    }

    pub fn abort(code: i32) -> ! {
        std::process::exit(code)
    }

    pub fn finish(code: i32) -> i32 {
        code
    }

    // A single process never reaches the collectives (`World::is_multi` is false).
    pub fn sum_f32(_: &mut [f32]) {}
    pub fn sum_f64(_: &mut [f64]) {}
    pub fn max_u64(_: &mut [u64]) {}
    pub fn broadcast_u64(_: &mut [u64]) {}
    pub fn broadcast_u8(_: &mut [u8]) {}
    pub fn broadcast_f32(_: &mut [f32]) {}
    pub fn gather<T: Clone>(local: &[T], _: bool) -> Option<Vec<T>> {
        Some(local.to_vec())
    }
}

#[cfg(feature = "mpi")]
mod imp {
    use super::{BUCKET_ELEMENTS, WORLD, World};
    use anyhow::{Result, anyhow};
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;
    use std::sync::Mutex;

    /// How long a failing rank waits for the others to reach the end before aborting the job.
    const ABORT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

    /// The MPI environment, finalised by [`finish`].
    struct Universe(#[allow(dead_code)] mpi::environment::Universe);
    // SAFETY: only the main thread initialises, uses and finalises MPI (MPI_THREAD_FUNNELED); the
    // mutex only moves the handle between `init` and `finish`.
    unsafe impl Send for Universe {}
    static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

    fn comm() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    pub fn init(_: Option<usize>) -> Result<()> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow!("MPI was initialised twice"))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        // Ranks sharing a machine: the GPU index and the CPU threads of each.
        let node = world.split_shared(rank as i32);
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        *UNIVERSE.lock().expect("MPI universe") = Some(Universe(universe));
        WORLD.set(World { rank, size, local_rank, local_size }).map_err(|_| anyhow!("the MPI world was set twice"))?;
        Ok(())
    }

    pub fn finish(code: i32) -> i32 {
        let Some(universe) = UNIVERSE.lock().expect("MPI universe").take() else { return code };
        let world = comm();
        // A non-blocking barrier, so that a failing rank can give up on ranks that never come.
        let mut request = world.immediate_barrier();
        let started = std::time::Instant::now();
        loop {
            match request.test() {
                Ok(_) => break,
                Err(pending) => request = pending,
            }
            if code != 0 && started.elapsed() > ABORT_AFTER {
                std::mem::forget(request);
                world.abort(code);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(universe);
        code
    }

    pub fn sum_f32(data: &mut [f32]) {
        let world = comm();
        let mut recv = vec![0f32; data.len().min(BUCKET_ELEMENTS)];
        for chunk in data.chunks_mut(BUCKET_ELEMENTS) {
            let recv = &mut recv[..chunk.len()];
            world.all_reduce_into(&*chunk, recv, SystemOperation::sum());
            chunk.copy_from_slice(recv);
        }
    }

    pub fn sum_f64(data: &mut [f64]) {
        let world = comm();
        let mut recv = vec![0f64; data.len()];
        world.all_reduce_into(&*data, &mut recv[..], SystemOperation::sum());
        data.copy_from_slice(&recv);
    }

    pub fn max_u64(data: &mut [u64]) {
        let world = comm();
        let mut recv = vec![0u64; data.len()];
        world.all_reduce_into(&*data, &mut recv[..], SystemOperation::max());
        data.copy_from_slice(&recv);
    }

    pub fn broadcast_u64(data: &mut [u64]) {
        comm().process_at_rank(0).broadcast_into(data);
    }

    pub fn broadcast_u8(data: &mut [u8]) {
        comm().process_at_rank(0).broadcast_into(data);
    }

    pub fn broadcast_f32(data: &mut [f32]) {
        comm().process_at_rank(0).broadcast_into(data);
    }

    /// Gathers in rounds of at most `i32::MAX / size` elements per rank, so that MPI's 32-bit
    /// counts and displacements never overflow however much each rank sends.
    pub fn gather<T: mpi::datatype::Equivalence + Default + Clone>(local: &[T], root: bool) -> Option<Vec<T>> {
        let world = comm();
        let size = world.size() as usize;
        let chunk = (i32::MAX as usize / size).min(1 << 26);
        let mut rounds = [local.len().div_ceil(chunk) as u64];
        max_u64(&mut rounds);
        let root_process = world.process_at_rank(0);
        let mut per_rank: Vec<Vec<T>> = vec![Vec::new(); if root { size } else { 0 }];
        for k in 0..rounds[0] as usize {
            let piece = &local[(k * chunk).min(local.len())..((k + 1) * chunk).min(local.len())];
            let n = piece.len() as i32;
            let mut counts = vec![0i32; size];
            world.all_gather_into(&n, &mut counts[..]);
            if root {
                let displs: Vec<i32> =
                    counts.iter().scan(0i32, |acc, &c| Some(std::mem::replace(acc, *acc + c))).collect();
                let mut all = vec![T::default(); counts.iter().map(|&c| c as usize).sum()];
                {
                    let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                    root_process.gather_varcount_into_root(piece, &mut partition);
                }
                for (r, (&c, &d)) in counts.iter().zip(&displs).enumerate() {
                    per_rank[r].extend_from_slice(&all[d as usize..(d + c) as usize]);
                }
            } else {
                root_process.gather_varcount_into(piece);
            }
        }
        root.then(|| per_rank.concat())
    }

    pub fn abort(code: i32) -> ! {
        comm().abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_items_in_rank_order() {
        let parts: Vec<_> =
            (0..3).map(|rank| World { rank, size: 3, local_rank: rank, local_size: 3 }.part(10)).collect();
        assert_eq!(parts, vec![(0, 3), (3, 3), (6, 4)]);
        assert_eq!(World { rank: 0, size: 4, local_rank: 0, local_size: 4 }.part(2), (0, 0));
    }

    /// A build without MPI runs a one-process launch (SLURM's `srun -n1` with PMIx sets the
    /// launcher's variables too) and refuses a larger one.
    #[cfg(not(feature = "mpi"))]
    #[test]
    fn without_mpi_only_a_larger_launch_is_refused() {
        assert!(imp::init(None).is_ok() && imp::init(Some(1)).is_ok());
        let e = imp::init(Some(4)).unwrap_err().to_string();
        assert!(e.contains("one of 4 processes") && e.contains("--features mpi"), "{e}");
    }

    #[test]
    fn a_single_process_is_its_own_world() {
        let w = world();
        assert_eq!((w.rank(), w.size(), w.is_root(), w.is_multi()), (0, 1, true, false));
        let mut x = [1.5f32, -2.0];
        w.sum_f32(&mut x);
        assert_eq!(x, [1.5, -2.0]);
        assert_eq!(w.broadcast_bytes(b"abc".to_vec()), b"abc");
        assert_eq!(w.gather_f32(&[1.0, 2.0]), Some(vec![1.0, 2.0]));
        assert!(w.agree(Err::<(), _>(anyhow!("boom"))).is_err());
        assert_eq!(w.agree_signal(Some(15)), Some(15));
        assert!(w.check_same("layout", 7).is_ok());
    }
}
