//! Dynamic batching: one bounded queue and one worker thread per model. The worker takes the
//! oldest job, gathers jobs of the same kind (equal [`Batchable::key`]) that arrive within the
//! batch window until the batch holds `max_batch` items, drops jobs whose client has gone, runs
//! the rest in one call off the async runtime, and answers each job on its own channel.

use super::error::ApiError;
use super::metrics::Metrics;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A job a model's worker can batch.
pub trait Batchable: Send + 'static {
    /// Jobs with equal keys can run in one batch (same route, same settings).
    type Key: PartialEq;
    /// This job's key.
    fn key(&self) -> Self::Key;
    /// Items the job adds to a batch (the samples of a generate request; 1 for an image).
    fn size(&self) -> usize {
        1
    }
}

/// How a worker batches.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most items in one batch (`--max-batch`); a larger single job still runs, alone.
    pub max_batch: usize,
    /// How long the oldest job waits for company (`--batch-window-ms`).
    pub window: Duration,
    /// Most jobs waiting (`--queue`); over it, 503.
    pub queue: usize,
}

struct Job<R, O> {
    request: R,
    reply: oneshot::Sender<Result<O, ApiError>>,
}

/// The queue in front of one model's worker thread.
pub struct Batcher<R, O> {
    name: &'static str,
    tx: SyncSender<Job<R, O>>,
    depth: Arc<AtomicUsize>,
    queue: usize,
}

impl<R: Batchable, O: Send + 'static> Batcher<R, O> {
    /// Starts the worker thread `name`, which runs `process` on each batch: one result per
    /// request, in order. A panic inside `process` answers the batch with 500 and the worker goes
    /// on. The thread ends once the batcher is dropped and its queue is empty.
    pub fn start(
        name: &'static str,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
        process: impl FnMut(Vec<R>) -> Vec<Result<O, ApiError>> + Send + 'static,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = sync_channel(settings.queue);
        let depth = Arc::new(AtomicUsize::new(0));
        metrics.register_queue(name, depth.clone());
        let worker_depth = depth.clone();
        let handle = std::thread::Builder::new()
            .name(format!("rectok-{name}"))
            .spawn(move || run_worker(name, rx, settings, worker_depth, metrics, process))?;
        Ok((Self { name, tx, depth, queue: settings.queue }, handle))
    }

    /// Queues `request` and waits for its result: 503 `overloaded` when the queue is full, 503
    /// `timeout` after `timeout` (the job is then dropped unrun if it has not started). Dropping
    /// the returned future (the client went away) also drops the job.
    pub async fn submit(&self, request: R, timeout: Duration) -> Result<O, ApiError> {
        if self.depth.fetch_add(1, Ordering::SeqCst) >= self.queue {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::overloaded(self.name));
        }
        let (reply, answer) = oneshot::channel();
        if let Err(e) = self.tx.try_send(Job { request, reply }) {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            return Err(match e {
                TrySendError::Full(_) => ApiError::overloaded(self.name),
                TrySendError::Disconnected(_) => ApiError::shutting_down(),
            });
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::internal(format!("the {} worker stopped", self.name))),
            Err(_) => Err(ApiError::timeout(timeout.as_secs_f64())),
        }
    }
}

fn run_worker<R: Batchable, O>(
    name: &'static str,
    rx: Receiver<Job<R, O>>,
    settings: BatchSettings,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    mut process: impl FnMut(Vec<R>) -> Vec<Result<O, ApiError>>,
) {
    // Jobs of another kind that arrived while a batch was gathering: they go first next time.
    let mut held: VecDeque<Job<R, O>> = VecDeque::new();
    loop {
        let first = match held.pop_front() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let key = first.request.key();
        let mut size = first.request.size();
        let mut batch = vec![first];
        let fits =
            |job: &Job<R, O>, size: usize| job.request.key() == key && size + job.request.size() <= settings.max_batch;
        let mut i = 0;
        while i < held.len() && size < settings.max_batch {
            if fits(&held[i], size) {
                let job = held.remove(i).expect("index in range");
                size += job.request.size();
                batch.push(job);
            } else {
                i += 1;
            }
        }
        let deadline = Instant::now() + settings.window;
        while size < settings.max_batch {
            // Jobs already queued join at once; then the window bounds the wait.
            let next = match rx.try_recv() {
                Ok(job) => Ok(job),
                Err(_) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(job) if fits(&job, size) => {
                    size += job.request.size();
                    batch.push(job);
                }
                Ok(job) => held.push_back(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        depth.fetch_sub(batch.len(), Ordering::SeqCst);
        let (live, gone): (Vec<_>, Vec<_>) = batch.into_iter().partition(|job| !job.reply.is_closed());
        if !gone.is_empty() {
            metrics.record_cancelled(name, gone.len());
        }
        if live.is_empty() {
            continue;
        }
        metrics.record_batch(name, live.iter().map(|job| job.request.size()).sum());
        let (requests, replies): (Vec<R>, Vec<_>) = live.into_iter().map(|job| (job.request, job.reply)).unzip();
        let n = requests.len();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(requests))) {
            Ok(results) if results.len() == n => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Ok(results) => {
                let message = format!("the {name} worker returned {} results for {n} jobs", results.len());
                for reply in replies {
                    let _ = reply.send(Err(ApiError::internal(message.clone())));
                }
            }
            Err(payload) => {
                let message = match payload.downcast::<crate::device::DeviceFailure>() {
                    Ok(failure) => failure.to_string(),
                    Err(other) => {
                        let text = other
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| other.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        format!("the {name} worker failed: {text}")
                    }
                };
                tracing::error!("{message}");
                for reply in replies {
                    let _ = reply.send(Err(ApiError::internal(message.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(u32, usize);
    impl Batchable for Item {
        type Key = u32;
        fn key(&self) -> u32 {
            self.0
        }
        fn size(&self) -> usize {
            self.1
        }
    }

    fn settings(max_batch: usize, window_ms: u64, queue: usize) -> BatchSettings {
        BatchSettings { max_batch, window: Duration::from_millis(window_ms), queue }
    }

    #[test]
    fn same_kind_jobs_share_batches_up_to_the_limit_and_kinds_never_mix() {
        let metrics = Arc::new(Metrics::default());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let (batcher, worker) =
            Batcher::start("test", settings(4, 200, 64), metrics.clone(), move |items: Vec<Item>| {
                log.lock().unwrap().push(items.iter().map(|i| (i.0, i.1)).collect::<Vec<_>>());
                items.iter().map(|i| Ok(i.0 * 10)).collect()
            })
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let results = rt.block_on(async {
            let timeout = Duration::from_secs(10);
            let jobs = [Item(1, 1), Item(1, 2), Item(2, 1), Item(1, 1), Item(1, 1)].map(|i| batcher.submit(i, timeout));
            let [a, b, c, d, e] = jobs;
            tokio::join!(a, b, c, d, e)
        });
        assert_eq!(results, (Ok(10), Ok(10), Ok(20), Ok(10), Ok(10)));
        drop(batcher);
        worker.join().unwrap();
        let batches = seen.lock().unwrap().clone();
        // Kind 1 fills a batch of 4 items (1 + 2 + 1), the last kind-1 job runs next, kind 2 alone.
        assert!(batches.contains(&vec![(1, 1), (1, 2), (1, 1)]), "{batches:?}");
        assert!(batches.contains(&vec![(2, 1)]), "{batches:?}");
        assert!(batches.iter().all(|b| b.iter().map(|i| i.1).sum::<usize>() <= 4 && b.iter().all(|i| i.0 == b[0].0)));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 5);
    }

    #[test]
    fn a_full_queue_answers_503_and_a_panic_answers_500() {
        let metrics = Arc::new(Metrics::default());
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate_rx);
        let (batcher, worker) = Batcher::start("test", settings(1, 0, 1), metrics, move |items: Vec<Item>| {
            gate.lock().unwrap().recv().unwrap();
            assert!(items[0].0 != 7, "boom");
            items.iter().map(|i| Ok(i.0)).collect()
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let timeout = Duration::from_secs(10);
            // Job 7 runs (and waits at the gate), job 2 takes the queue's one place, job 3 finds
            // it full.
            let a = batcher.submit(Item(7, 1), timeout);
            let b = async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                batcher.submit(Item(2, 1), timeout).await
            };
            let c = async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                batcher.submit(Item(3, 1), timeout).await
            };
            let release = async {
                tokio::time::sleep(Duration::from_millis(120)).await;
                gate_tx.send(()).unwrap();
                gate_tx.send(()).unwrap();
            };
            let (a, b, c, ()) = tokio::join!(a, b, c, release);
            assert_eq!(a.unwrap_err().status.as_u16(), 500);
            assert_eq!(b, Ok(2));
            let c = c.unwrap_err();
            assert_eq!((c.status.as_u16(), c.code), (503, "overloaded"));
        });
        drop(batcher);
        worker.join().unwrap();
    }
}
