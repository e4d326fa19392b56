//! The event loops. `threads = 1` is one current-thread tokio runtime that does everything.
//! `threads = N > 1` is N worker threads, each with a current-thread runtime of its own, plus a
//! control runtime on the main thread: the Envoy and pingora model. The control runtime runs
//! the accept loops, the admin listener, health checks, reload and signals; each accepted
//! client connection is handed to the worker with the fewest open connections and lives there
//! for its whole life, with its backend connections (each worker keeps its own idle lists, see
//! [`index`]). No work stealing and no cross-thread wake-up on the request path: measured
//! 20% less CPU per request and 37% more requests per second than tokio's multi-thread
//! scheduler with two threads (docs/PERFORMANCE.md, "Threads and pinning").
//!
//! The workers are process-wide, like the runtime itself: [`runtime`] starts them once, and
//! code that runs without them (tests, a runtime built elsewhere) sees no workers and spawns
//! on the runtime it runs on.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle, Runtime};

/// The worker threads' name, as `top -H` and `/proc/PID/task/*/comm` show it.
pub const THREAD_NAME: &str = "stickyd-worker";

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker threads, each with its runtime's handle and its count of open connections.
#[derive(Debug)]
pub struct Workers {
    workers: Box<[Worker]>,
    /// Where the search for the least loaded worker starts, turning, so ties spread.
    next: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    open: AtomicUsize,
}

/// A client connection's claim on the worker that serves it: the worker's open count goes
/// down when this is dropped.
#[derive(Debug)]
pub struct Assigned {
    worker: &'static Worker,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.worker.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Assigned {
    /// The runtime to spawn the connection's task on.
    pub fn handle(&self) -> &Handle {
        &self.worker.handle
    }
}

impl Workers {
    /// The worker with the fewest open client connections; ties go round in turn.
    pub fn assign(&'static self) -> Assigned {
        let count = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let worker = (0..count)
            .map(|turn| &self.workers[(start + turn) % count])
            .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
            .expect("at least two workers");
        worker.open.fetch_add(1, Ordering::Relaxed);
        Assigned { worker }
    }
}

/// The workers, when [`runtime`] started them (`threads > 1`).
pub fn installed() -> Option<&'static Workers> {
    WORKERS.get()
}

/// How many event loops serve connections: the worker count, or 1 without workers.
pub fn count() -> usize {
    installed().map_or(1, |workers| workers.workers.len())
}

/// The index (`0..count()`) of the worker this thread is; 0 on any other thread. Per-worker
/// state (the backend idle lists) is indexed by it, so a connection made on a worker is used
/// by that worker only.
pub fn index() -> usize {
    INDEX.get()
}

/// The runtime for `threads` event loops (`None`: one per core the process may use). With
/// one, it is a current-thread runtime that the calling thread runs. With more, it is the
/// control runtime (current-thread, on the calling thread), and the worker threads are
/// started and installed. With `pin`, the one thread, or each worker, is pinned to a core,
/// round-robin over the process's CPU affinity mask (`taskset`, systemd `CPUAffinity=`); the
/// control thread is not pinned.
///
/// # Errors
/// The runtime's I/O error (no threads, no epoll).
///
/// # Panics
/// When workers were started before in this process.
pub fn runtime(threads: Option<usize>, pin: bool) -> std::io::Result<Runtime> {
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1);
    if threads == 1 {
        if let Some(&core) = cores.first() {
            pin_to(core);
        }
    } else {
        let workers = (0..threads)
            .map(|index| start_worker(index, cores.get(index % cores.len().max(1)).copied()))
            .collect::<std::io::Result<Box<[Worker]>>>()?;
        WORKERS
            .set(Workers {
                workers,
                next: AtomicUsize::new(0),
            })
            .expect("the workers start once per process");
    }
    Builder::new_current_thread().enable_all().build()
}

/// Starts worker `index` on a thread of its own, which runs its runtime for the rest of the
/// process's life.
fn start_worker(index: usize, core: Option<core_affinity::CoreId>) -> std::io::Result<Worker> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            if let Some(core) = core {
                pin_to(core);
            }
            INDEX.set(index);
            match Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    let _ = sender.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(error) => {
                    let _ = sender.send(Err(error));
                }
            }
        })?;
    let handle = receiver
        .recv()
        .map_err(|_| std::io::Error::other("a worker thread ended before its runtime started"))??;
    Ok(Worker {
        handle,
        open: AtomicUsize::new(0),
    })
}

fn pin_to(core: core_affinity::CoreId) {
    if !core_affinity::set_for_current(core) {
        tracing::warn!(
            core = core.id,
            "cannot pin a thread to its core; it runs unpinned"
        );
    }
}
