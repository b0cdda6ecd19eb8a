//! The executor: dedicated worker threads fed by a bounded queue. A worker batches queued jobs of the same
//! model (up to `max_batch` inputs, waiting at most `linger` for more), checks cancellation between chunks so
//! that a preempted job stops within one chunk, and reports each job's share of the compute time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmesh_protocol::ModelId;
use tokio::sync::{mpsc, oneshot};

use super::{InferenceError, Model, Registry};

/// Most inputs in one job.
pub const MAX_JOB_INPUTS: usize = 4096;

/// A flag that cancels a job (cheap to clone; shared by the job and whoever may preempt it).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Asks the job to stop; it returns [`InferenceError::Cancelled`] at its next chunk boundary.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a finished job returns.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutput {
    /// One output per input, in order.
    pub outputs: Vec<Vec<u8>>,
    /// The job's share of the compute time of the batches it ran in.
    pub compute: Duration,
}

/// Where a job's partial output goes while it runs (see [`Model::run_batch_until`]).
pub type PartialSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

struct Task {
    model: Arc<dyn Model>,
    inputs: Vec<Vec<u8>>,
    cancel: CancelFlag,
    partial: Option<PartialSink>,
    reply: Reply,
}

/// Where a job's answer goes. The job leaves the queue depth exactly once: just before its answer, or when
/// it is dropped unanswered (a full or stopped queue, a panicking batch, a worker that ends).
struct Reply {
    tx: Option<oneshot::Sender<Result<JobOutput, InferenceError>>>,
    depth: Arc<AtomicUsize>,
}

impl Reply {
    fn send(mut self, result: Result<JobOutput, InferenceError>) {
        if let Some(tx) = self.tx.take() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(result);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Executor settings.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorConfig {
    /// Worker threads.
    pub workers: usize,
    /// Threads each worker's forward passes use, in a pool of its own with the worker itself one of
    /// them. 0: a lone worker uses the process-wide pool (every core), several share the cores out
    /// (cores / workers each, at least one).
    pub threads_per_worker: usize,
    /// Jobs that may wait in the queue.
    pub queue: usize,
    /// Most inputs run in one forward pass (also the cancellation granularity).
    pub max_batch: usize,
    /// How long a worker waits for more jobs of the same model before running a batch.
    pub linger: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            threads_per_worker: 0,
            queue: 256,
            max_batch: 64,
            linger: Duration::from_millis(1),
        }
    }
}

/// Runs inference jobs on worker threads.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::Sender<Task>,
    workers: usize,
    registry: Arc<Registry>,
    depth: Arc<AtomicUsize>,
    passes: Arc<AtomicUsize>,
}

/// What an executor has run so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Forward passes (each over at most `max_batch` inputs, from one or several jobs).
    pub passes: usize,
    /// Jobs waiting or running.
    pub queued: usize,
}

impl Executor {
    /// Starts the worker threads; they stop when every `Executor` clone is dropped.
    pub fn start(registry: Registry, cfg: ExecutorConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        for i in 0..cfg.workers.max(1) {
            let (rx, passes) = (rx.clone(), passes.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || worker(rx, passes, cfg));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an inference worker");
            }
        }
        Self {
            tx,
            workers: cfg.workers.max(1),
            registry: Arc::new(registry),
            depth,
            passes,
        }
    }

    /// Forward passes run so far, and jobs waiting or running.
    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats {
            passes: self.passes.load(Ordering::Relaxed),
            queued: self.depth.load(Ordering::Relaxed),
        }
    }

    /// Worker threads (jobs, or batches of jobs, that run at once).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The models this executor runs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Jobs waiting or running.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Validates the inputs and queues the job; waits for room in the queue and for the result.
    pub async fn run(
        &self,
        model: &ModelId,
        inputs: Vec<Vec<u8>>,
        cancel: CancelFlag,
    ) -> Result<JobOutput, InferenceError> {
        self.run_streaming(model, inputs, cancel, None).await
    }

    /// [`Executor::run`], handing the job's partial output (for a model that [`streams`](Model::streams))
    /// to `partial` as it grows: the bytes of its first input's output so far.
    pub async fn run_streaming(
        &self,
        model: &ModelId,
        inputs: Vec<Vec<u8>>,
        cancel: CancelFlag,
        partial: Option<PartialSink>,
    ) -> Result<JobOutput, InferenceError> {
        let model = self
            .registry
            .get(model)
            .ok_or_else(|| InferenceError::UnknownModel(model.to_string()))?;
        if inputs.len() > MAX_JOB_INPUTS {
            return Err(InferenceError::Oversize {
                got: inputs.len(),
                max: MAX_JOB_INPUTS,
            });
        }
        for input in &inputs {
            model.check_input(input)?;
        }
        let (tx, rx) = oneshot::channel();
        self.depth.fetch_add(1, Ordering::Relaxed);
        let reply = Reply {
            tx: Some(tx),
            depth: self.depth.clone(),
        };
        // A task the queue refuses is dropped with its reply, which takes it off the depth.
        if self
            .tx
            .send(Task {
                model,
                inputs,
                cancel,
                partial,
                reply,
            })
            .await
            .is_err()
        {
            return Err(InferenceError::Stopped);
        }
        rx.await.map_err(|_| InferenceError::Stopped)?
    }

    /// [`Executor::run`] for callers outside the async runtime.
    pub fn run_blocking(&self, model: &ModelId, inputs: Vec<Vec<u8>>) -> Result<JobOutput, InferenceError> {
        futures::executor::block_on(self.run(model, inputs, CancelFlag::default()))
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Task>>>, passes: Arc<AtomicUsize>, cfg: ExecutorConfig) {
    let threads = match (cfg.threads_per_worker, cfg.workers) {
        (0, 0 | 1) => 0,
        (0, workers) => (std::thread::available_parallelism().map_or(1, usize::from) / workers).max(1),
        (n, _) => n,
    };
    let pool = match threads {
        0 => None,
        n => match rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .use_current_thread()
            .build()
        {
            Ok(pool) => Some(pool),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build an inference worker's own thread pool: it shares the process's");
                None
            }
        },
    };
    let mut held: VecDeque<Task> = VecDeque::new();
    loop {
        // Take the first job (one held back from the last round, or the next in the queue).
        let first = match held.pop_front() {
            Some(t) => t,
            None => match rx.lock().ok().and_then(|mut r| r.blocking_recv()) {
                Some(t) => t,
                None => return,
            },
        };
        let model_id = first.model.id();
        let mut batch = vec![first];
        let mut inputs: usize = batch[0].inputs.len();
        // Jobs of this model held back from earlier rounds join first, in their order.
        let mut i = 0;
        while i < held.len() && inputs < cfg.max_batch {
            if held[i].model.id() == model_id
                && let Some(t) = held.remove(i)
            {
                inputs += t.inputs.len();
                batch.push(t);
            } else {
                i += 1;
            }
        }
        let deadline = Instant::now() + cfg.linger;
        // Gather more jobs of the same model while the batch has room and the linger time lasts (and this
        // worker holds back fewer jobs of other models than the queue takes).
        while inputs < cfg.max_batch && held.len() < cfg.queue.max(1) {
            // `try_lock`: another worker may hold the queue while it waits for a job; waiting for it
            // here, with a batch in hand that nobody else will run, would deadlock both.
            let next = rx.try_lock().ok().and_then(|mut r| r.try_recv().ok());
            match next {
                Some(t) if t.model.id() == model_id => {
                    inputs += t.inputs.len();
                    batch.push(t);
                }
                Some(t) => held.push_back(t),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(100)),
                None => break,
            }
        }
        let jobs = batch.len();
        let run = || run_batch(batch, cfg.max_batch, &passes);
        // A model that panics fails its batch (the callers see `Stopped`), not the worker.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &pool {
            Some(pool) => pool.install(run),
            None => run(),
        }));
        if ran.is_err() {
            tracing::error!(jobs, "an inference batch panicked; its jobs failed");
        }
    }
}

fn run_batch(tasks: Vec<Task>, max_batch: usize, passes: &AtomicUsize) {
    let model = tasks[0].model.clone();
    let mut live: Vec<Task> = Vec::with_capacity(tasks.len());
    for t in tasks {
        if t.cancel.is_cancelled() {
            t.reply.send(Err(InferenceError::Cancelled));
        } else {
            live.push(t);
        }
    }
    // Flatten the inputs of all jobs; remember which job each belongs to.
    let all: Vec<(usize, &[u8])> = live
        .iter()
        .enumerate()
        .flat_map(|(j, t)| t.inputs.iter().map(move |i| (j, i.as_slice())))
        .collect();
    let mut outputs: Vec<Vec<Vec<u8>>> = live.iter().map(|t| Vec::with_capacity(t.inputs.len())).collect();
    let mut compute = vec![Duration::ZERO; live.len()];
    let mut failed: Option<InferenceError> = None;
    for chunk in all.chunks(max_batch.max(1)) {
        if chunk.iter().all(|(j, _)| live[*j].cancel.is_cancelled()) {
            continue;
        }
        let started = Instant::now();
        passes.fetch_add(1, Ordering::Relaxed);
        // A long batch (text generation) stops between tokens once every job of the chunk is cancelled.
        let stop = || chunk.iter().all(|(j, _)| live[*j].cancel.is_cancelled());
        // Each job's partial output goes to its own sink (a job of several inputs reports its first).
        let partial = |i: usize, bytes: &[u8]| {
            let Some(&(j, input)) = chunk.get(i) else { return };
            let first = live[j]
                .inputs
                .first()
                .is_some_and(|f| std::ptr::eq(f.as_slice(), input));
            if let (true, Some(sink)) = (first, live[j].partial.as_ref()) {
                sink(bytes);
            }
        };
        let inputs: Vec<&[u8]> = chunk.iter().map(|(_, i)| *i).collect();
        let result = model.run_batch_until(&inputs, &stop, &partial);
        let spent = started.elapsed();
        match result {
            // Only this chunk's jobs were cancelled: they are answered `Cancelled` below, the rest go on.
            Err(InferenceError::Cancelled) if stop() => continue,
            Ok(outs) => {
                for ((j, _), out) in chunk.iter().zip(outs) {
                    outputs[*j].push(out);
                    compute[*j] += spent / chunk.len() as u32;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for ((task, outs), compute) in live.into_iter().zip(outputs).zip(compute) {
        let result = if task.cancel.is_cancelled() {
            Err(InferenceError::Cancelled)
        } else if let Some(e) = &failed {
            Err(e.clone())
        } else {
            Ok(JobOutput {
                outputs: outs,
                compute,
            })
        };
        task.reply.send(result);
    }
}
