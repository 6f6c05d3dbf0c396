//! A team of spinning threads for the decode step's parallel passes.
//!
//! A decode step is a chain of ~150 short parallel passes (one per fused projection, plus the
//! attention's), each tens of microseconds on the 135M shape. Through rayon each pass is a
//! fork-join over small tasks: idle workers yield and fall asleep between passes and are woken
//! through the kernel, and every task starts a new stream through memory, which the hardware
//! prefetchers take a while to follow. Here instead:
//! - the team's workers spin on one atomic word between passes (for [`SPIN`] after the last
//!   one, then park), and the calling thread takes part in the pass, like llama.cpp's pool;
//! - each participant owns one contiguous range of the pass (`n / participants` items) and
//!   claims it from the front a `grain` at a time, so its weights are one stream; one that runs
//!   out steals the back half of the fullest range left, so the pass still ends together
//!   (a participant that never shows up, a worker descheduled, simply has its range stolen).
//!
//! [`run_ranges`] is the entry point; it falls back to rayon when the team is busy (another
//! thread dispatching, or a pass dispatched from inside a pass).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next pass before it parks. Between a decode step's
/// passes and between steps (sampling, detokenizing) the gaps are microseconds; after a
/// generation the worker parks within this time and costs nothing.
const SPIN: Duration = Duration::from_millis(2);

/// Bit 0 of the word: the pass is open to new participants.
const OPEN: u64 = 1;

type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

struct Team {
    /// `generation << 32 | OPEN`: workers watch it for a new pass.
    word: AtomicU64,
    /// Per participant (the dispatcher is 0): its unclaimed range, `start << 32 | end`.
    slots: Vec<AtomicU64>,
    /// Items a claim from the front takes.
    grain: AtomicUsize,
    /// The running pass: a pointer to a [`Job`] on the dispatcher's stack, alive while the pass
    /// has unfinished items or participants inside.
    job: AtomicPtr<()>,
    /// Items of the running pass finished.
    done: AtomicUsize,
    /// Workers inside the running pass.
    inside: AtomicUsize,
    panicked: AtomicBool,
    /// Per worker: parked, or about to park (the dispatcher then unparks it).
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    /// Held by the dispatching thread; the last generation dispatched.
    dispatch: Mutex<u32>,
}

fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Option<&'static Team>> = OnceLock::new();
    *TEAM.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        if workers == 0 {
            return None;
        }
        let team: &'static Team = Box::leak(Box::new(Team {
            word: AtomicU64::new(0),
            slots: (0..=workers).map(|_| AtomicU64::new(0)).collect(),
            grain: AtomicUsize::new(1),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            dispatch: Mutex::new(0),
        }));
        let mut threads = Vec::with_capacity(workers);
        for me in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-team-{me}"))
                .spawn(move || team.work(me));
            match spawned {
                Ok(handle) => threads.push(handle.thread().clone()),
                // Ranges of workers that never come are stolen; the pass still completes.
                Err(_) => break,
            }
        }
        let _ = team.threads.set(threads);
        Some(team)
    })
}

fn pack(start: usize, end: usize) -> u64 {
    (start as u64) << 32 | end as u64
}

fn unpack(v: u64) -> (usize, usize) {
    ((v >> 32) as usize, (v & 0xffff_ffff) as usize)
}

impl Team {
    /// A worker's life: wait for a new generation, take part in its pass, again.
    fn work(&self, me: usize) {
        let mut seen = 0u32;
        loop {
            let mut since = Instant::now();
            let mut spins = 0u32;
            let word = loop {
                let w = self.word.load(Ordering::Acquire);
                if (w >> 32) as u32 != seen {
                    break w;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) && since.elapsed() > SPIN {
                    self.sleeping[me].store(true, Ordering::SeqCst);
                    if (self.word.load(Ordering::SeqCst) >> 32) as u32 == seen {
                        std::thread::park();
                    }
                    self.sleeping[me].store(false, Ordering::SeqCst);
                    since = Instant::now();
                }
            };
            seen = (word >> 32) as u32;
            if word & OPEN == 0 {
                continue;
            }
            // Enter, then check that the pass is still open: the dispatcher closes it before
            // waiting for `inside` to drop to zero, so either it waits for this worker or the
            // worker sees it closed (both sides sequentially consistent).
            self.inside.fetch_add(1, Ordering::SeqCst);
            if self.word.load(Ordering::SeqCst) == word {
                self.take_part(me + 1);
            }
            self.inside.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Claims and runs items until every range is empty: the own range from the front, then
    /// the back half of the fullest range left.
    fn take_part(&self, me: usize) {
        // SAFETY: the caller is the dispatcher or a worker inside an open pass; the dispatcher
        // waits for both before the job's closure goes away.
        let job = unsafe { *(self.job.load(Ordering::Acquire) as *const Job<'_>) };
        let grain = self.grain.load(Ordering::Relaxed).max(1);
        let run = |a: usize, b: usize| {
            if catch_unwind(AssertUnwindSafe(|| job(a, b))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(b - a, Ordering::AcqRel);
        };
        loop {
            // From the front of the own range.
            let own = &self.slots[me];
            let mut v = own.load(Ordering::Acquire);
            loop {
                let (a, b) = unpack(v);
                if a >= b {
                    break;
                }
                let c = (a + grain).min(b);
                match own.compare_exchange_weak(v, pack(c, b), Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        run(a, c);
                        v = own.load(Ordering::Acquire);
                    }
                    Err(now) => v = now,
                }
            }
            // The back half of the fullest other range (all of it when a grain or less).
            let Some((victim, v)) = self
                .slots
                .iter()
                .enumerate()
                .filter(|&(p, _)| p != me)
                .map(|(p, s)| (p, s.load(Ordering::Acquire)))
                .filter(|&(_, v)| unpack(v).0 < unpack(v).1)
                .max_by_key(|&(_, v)| unpack(v).1 - unpack(v).0)
            else {
                return;
            };
            let (a, b) = unpack(v);
            let mid = if b - a > grain { a + (b - a) / 2 } else { a };
            if self.slots[victim]
                .compare_exchange(v, pack(a, mid), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // Nobody claims from an empty range, so the own slot is free to refill.
                own.store(pack(mid, b), Ordering::Release);
            }
        }
    }
}

/// Runs `f(a, b)` over disjoint ranges `a..b` that together cover `0..n`, in parallel on the
/// team and the calling thread, `grain` items a call at most (fewer at a range's end); returns
/// when all have finished. A panic in `f` is raised again here once every call has returned.
pub(crate) fn run_ranges(n: usize, grain: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let grain = grain.max(1);
    if n == 0 {
        return;
    }
    let Some(team) = team().filter(|_| n > grain && n <= u32::MAX as usize) else {
        return rayon_ranges(n, grain, f);
    };
    let mut last = match team.dispatch.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return rayon_ranges(n, grain, f),
    };
    let gen = last.wrapping_add(1).max(1);
    *last = gen;
    let parts = team.slots.len();
    for (p, s) in team.slots.iter().enumerate() {
        s.store(pack(p * n / parts, (p + 1) * n / parts), Ordering::Relaxed);
    }
    team.grain.store(grain, Ordering::Relaxed);
    team.done.store(0, Ordering::Relaxed);
    team.panicked.store(false, Ordering::Relaxed);
    let job: Job<'_> = f;
    team.job
        .store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
    team.word.store((gen as u64) << 32 | OPEN, Ordering::SeqCst);
    if let Some(threads) = team.threads.get() {
        for (s, t) in team.sleeping.iter().zip(threads) {
            if s.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
    }
    team.take_part(0);
    while team.done.load(Ordering::Acquire) < n {
        std::hint::spin_loop();
    }
    team.word.store((gen as u64) << 32, Ordering::SeqCst);
    while team.inside.load(Ordering::SeqCst) > 0 {
        std::hint::spin_loop();
    }
    if team.panicked.load(Ordering::Acquire) {
        drop(last);
        resume_unwind(Box::new("a parallel task panicked"));
    }
}

fn rayon_ranges(n: usize, grain: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    use rayon::prelude::*;
    if n <= grain {
        return f(0, n);
    }
    (0..n.div_ceil(grain))
        .into_par_iter()
        .for_each(|i| f(i * grain, ((i + 1) * grain).min(n)));
}

/// Runs `f(a, &mut y[a..b])` over disjoint ranges covering `y`, `grain` elements a call at most,
/// each participant streaming one contiguous range (see the module documentation).
pub(crate) fn for_ranges<T: Send>(y: &mut [T], grain: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let (len, base) = (y.len(), SendPtr(y.as_mut_ptr()));
    run_ranges(len, grain, &|a, b| {
        // SAFETY: the ranges handed out are disjoint and within `y`, which stays borrowed
        // mutably until `run_ranges` returns.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(a), b - a) };
        f(a, part)
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint parts of one slice to the calls of one `run_ranges`.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_in_ranges_of_at_most_a_grain() {
        for n in [0usize, 1, 2, 3, 17, 1000, 100_003] {
            for grain in [1usize, 7, 64, 5000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                run_ranges(n, grain, &|a, b| {
                    assert!(
                        a < b && b - a <= grain && b <= n,
                        "{a}..{b} of {n} by {grain}"
                    );
                    for h in &hits[a..b] {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{n} {grain}"
                );
            }
        }
    }

    #[test]
    fn ranges_cover_the_slice() {
        let mut z = vec![0usize; 1001];
        for_ranges(&mut z, 10, |a, part| {
            for (i, v) in part.iter_mut().enumerate() {
                *v = a + i + 1;
            }
        });
        assert!(z.iter().enumerate().all(|(i, &v)| v == i + 1));
    }

    #[test]
    fn concurrent_and_nested_dispatches_finish() {
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        run_ranges(8, 1, &|a, b| {
                            for i in a..b {
                                run_ranges(4, 1, &|c, d| {
                                    for j in c..d {
                                        sum.fetch_add(i * 4 + j, Ordering::Relaxed);
                                    }
                                });
                            }
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), (0..32).sum::<usize>());
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_call_panics_the_caller_and_the_team_goes_on() {
        let r = catch_unwind(|| {
            run_ranges(16, 1, &|a, _| {
                if a == 5 {
                    panic!("item five");
                }
            })
        });
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        run_ranges(16, 1, &|a, b| {
            sum.fetch_add((a..b).sum::<usize>(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), (0..16).sum::<usize>());
    }
}
