//! Dynamic batching, after Triton's dynamic batcher: requests waiting for the same model
//! are joined along their leading (batch) dimension, run once in the page, and the
//! outputs are split back per request.
//!
//! Only models whose every input and output has a dynamic leading dimension are batched
//! (decided at load, see [`status_for`]); only requests that agree on everything but the
//! leading dimension (input names, datatypes, the other dimensions, the outputs asked
//! for) share a run. Anything else runs alone: batching never fails a request.
//!
//! The queue has no thread of its own. Every request puts its job in the model's queue
//! and then either gets its answer or the model's slot (as many runs at once per model as the page has workers).
//! Whoever gets the slot spawns a runner that holds it while the queue has work: it waits
//! up to `max_queue_delay` from the oldest job's arrival for the batch to fill (none
//! with a delay of 0), takes up to `max_batch_size` rows of jobs compatible with the
//! oldest, drops jobs whose caller has gone (cancelled, or past its deadline), runs
//! them, and answers each. The runner is its own task, so a caller that gives up never
//! takes other callers' answers with it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use webaccel_api::agent::{BatchingStatus, IoMeta, ModelSpec};
use webaccel_api::wire::{InferRequest, InferResponse};
use webaccel_api::{DataType, ErrorCategory, Tensor};

use crate::error::AgentError;
use crate::page::PageLink;
use crate::page::link::{Hop, PageRun};
use crate::stats::Stats;

/// Whether a model with this spec and metadata is batched: `None` when its spec does
/// not ask for batching, else the settings and, when refused, why.
pub fn status_for(
    spec: &ModelSpec,
    inputs: &[IoMeta],
    outputs: &[IoMeta],
) -> Option<BatchingStatus> {
    if spec.max_batch_size <= 1 {
        return None;
    }
    let refusal = inputs
        .iter()
        .map(|m| ("input", m))
        .chain(outputs.iter().map(|m| ("output", m)))
        .find_map(|(kind, m)| match m.shape.first() {
            _ if m.datatype.is_none() => Some(format!(
                "{kind} '{}' is of type {}, which cannot be batched",
                m.name, m.ort_type
            )),
            Some(&d) if d < 0 => None,
            Some(&d) => Some(format!(
                "{kind} '{}' has shape {:?}: its leading dimension is fixed at {d}, not a dynamic batch dimension",
                m.name, m.shape
            )),
            None => Some(format!(
                "{kind} '{}' is a scalar: it has no batch dimension",
                m.name
            )),
        })
        .or_else(|| inputs.is_empty().then(|| "the model has no inputs".to_owned()));
    Some(BatchingStatus {
        enabled: refusal.is_none(),
        max_batch_size: spec.max_batch_size,
        max_queue_delay_us: spec.max_queue_delay_us,
        reason: refusal,
    })
}

/// What requests must agree on to share a run: per input (sorted by name) its name,
/// datatype and shape past the leading dimension; and the outputs asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchKey {
    inputs: Vec<(String, DataType, Vec<i64>)>,
    outputs: Vec<String>,
}

/// A request's key and rows (its leading dimension), or `None` when it cannot share a
/// run (inputs disagree on the leading dimension, or have none, or it is 0).
fn key_of(req: &InferRequest) -> Option<(BatchKey, usize)> {
    let rows = *req.inputs.first()?.shape.first()?;
    if rows <= 0 {
        return None;
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for t in &req.inputs {
        let (&lead, rest) = t.shape.split_first()?;
        if lead != rows {
            return None;
        }
        inputs.push((t.name.clone(), t.datatype, rest.to_vec()));
    }
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    Some((
        BatchKey {
            inputs,
            outputs: req.outputs.clone(),
        },
        usize::try_from(rows).ok()?,
    ))
}

/// The answer to one request, and the run that produced it.
#[derive(Debug)]
pub struct Ran {
    pub response: InferResponse,
    /// Rows of the run (the sum of the leading dimensions of the requests it joined).
    pub batch_rows: u32,
    /// Requests the run joined (1: the request ran alone).
    pub batch_requests: u32,
    /// When the run left for the page and its answer came back.
    pub hop: Hop,
}

/// A gauge counted up while a value lives.
#[derive(Debug)]
struct Held(Gauge);

impl Held {
    fn new(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug)]
struct Job {
    req: InferRequest,
    key: Option<BatchKey>,
    rows: usize,
    arrived: Instant,
    deadline: Instant,
    timeout: Duration,
    reply: oneshot::Sender<Result<Ran, AgentError>>,
    /// Counts the job in the agent's `queued` gauge while it waits.
    _queued: Held,
}

impl Job {
    /// Whether nobody waits for the answer any more (cancelled, or gave up).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn answer(self, result: Result<Ran, AgentError>) {
        let _ = self.reply.send(result);
    }
}

/// What a runner needs from the agent, owned, so it can outlive the request that
/// started it.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    pub links: watch::Receiver<Option<Arc<PageLink>>>,
    pub stats: Arc<Stats>,
}

/// One model's batching queue.
#[derive(Debug)]
pub struct Batcher {
    model: String,
    max_rows: usize,
    max_delay: Duration,
    queue: Mutex<VecDeque<Job>>,
    arrived: Notify,
}

impl Batcher {
    pub fn new(spec: &ModelSpec) -> Self {
        Self {
            model: spec.name.clone(),
            max_rows: usize::try_from(spec.max_batch_size.max(1)).unwrap_or(usize::MAX),
            max_delay: Duration::from_micros(spec.max_queue_delay_us),
            queue: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock()
    }

    /// Queues `req` and waits for its answer, running batches whenever this caller gets
    /// the model's `slot`. The caller bounds the wait with its own timeout (`timeout`,
    /// from now); dropping the future withdraws the request.
    pub async fn submit(
        self: &Arc<Self>,
        slot: &Arc<Semaphore>,
        ctx: &RunnerContext,
        req: InferRequest,
        timeout: Duration,
    ) -> Result<Ran, AgentError> {
        let (tx, mut rx) = oneshot::channel();
        let (key, rows) = match key_of(&req) {
            Some((k, r)) => (Some(k), r),
            None => (None, 0),
        };
        let now = Instant::now();
        let job = Job {
            req,
            key,
            rows,
            arrived: now,
            deadline: now + timeout,
            timeout,
            reply: tx,
            _queued: Held::new(&ctx.stats.queued),
        };
        self.lock().push_back(job);
        self.arrived.notify_one();
        loop {
            tokio::select! {
                biased;
                answer = &mut rx => {
                    return answer.unwrap_or_else(|_| {
                        Err(AgentError::Internal("the batch runner went away".into()))
                    });
                }
                permit = slot.clone().acquire_owned() => {
                    let permit = permit
                        .map_err(|_| AgentError::Internal("model slot closed".into()))?;
                    if self.lock().is_empty() {
                        // Our job was taken by a runner that has answered it by now.
                        drop(permit);
                        continue;
                    }
                    tokio::spawn(self.clone().run(permit, ctx.clone()));
                }
            }
        }
    }

    /// Runs batches while the queue has work, holding the model's slot.
    async fn run(self: Arc<Self>, _slot: OwnedSemaphorePermit, ctx: RunnerContext) {
        loop {
            self.wait_to_fill().await;
            let batch = self.take();
            if batch.is_empty() {
                return;
            }
            let link = ctx.links.borrow().clone().filter(|l| !l.is_closed());
            let requests = batch.len();
            if requests > 1 {
                ctx.stats.batch(&self.model, requests);
            }
            let _running: Vec<Held> = (0..requests)
                .map(|_| Held::new(&ctx.stats.in_flight))
                .collect();
            execute(link, batch).await;
        }
    }

    /// With a queue delay: waits until the oldest job has waited that long, or enough
    /// compatible rows are waiting to fill a batch.
    async fn wait_to_fill(&self) {
        if self.max_delay.is_zero() {
            return;
        }
        loop {
            let until = {
                let mut queue = self.lock();
                prune(&mut queue);
                let Some(head) = queue.front() else { return };
                let Some(key) = &head.key else { return };
                let rows: usize = queue
                    .iter()
                    .filter(|j| j.key.as_ref() == Some(key))
                    .map(|j| j.rows)
                    .sum();
                if rows >= self.max_rows {
                    return;
                }
                (head.arrived + self.max_delay).min(head.deadline)
            };
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                () = self.arrived.notified() => {}
                () = tokio::time::sleep_until(until.into()) => return,
            }
        }
    }

    /// Takes the next batch: the oldest live job and the compatible jobs after it, up to
    /// `max_rows` rows (one job alone when it has more rows than that).
    fn take(&self) -> Vec<Job> {
        let mut queue = self.lock();
        prune(&mut queue);
        let Some(head) = queue.pop_front() else {
            return Vec::new();
        };
        let mut rows = head.rows;
        let Some(key) = head.key.clone() else {
            return vec![head];
        };
        let mut batch = vec![head];
        let mut i = 0;
        while i < queue.len() && rows < self.max_rows {
            let job = &queue[i];
            if job.key.as_ref() == Some(&key) && rows + job.rows <= self.max_rows {
                rows += job.rows;
                batch.extend(queue.remove(i));
            } else {
                i += 1;
            }
        }
        batch
    }
}

/// Drops jobs nobody waits for, and answers those past their deadline.
fn prune(queue: &mut VecDeque<Job>) {
    let now = Instant::now();
    let mut kept = VecDeque::with_capacity(queue.len());
    for job in queue.drain(..) {
        if job.abandoned() {
            continue;
        }
        if now >= job.deadline {
            let timeout = job.timeout;
            job.answer(Err(AgentError::Deadline(timeout)));
            continue;
        }
        kept.push_back(job);
    }
    *queue = kept;
}

fn unavailable() -> AgentError {
    AgentError::browser(
        ErrorCategory::BrowserUnavailable,
        "the browser is restarting",
    )
}

/// Runs one job alone, within its deadline.
async fn run_alone(link: &PageLink, job: Job) {
    let left = job.deadline.saturating_duration_since(Instant::now());
    let rows = u32::try_from(job.rows.max(1)).unwrap_or(u32::MAX);
    let result = match tokio::time::timeout(left, link.infer(job.req.clone())).await {
        Ok(r) => r.map(|run| Ran {
            response: run.response,
            batch_rows: rows,
            batch_requests: 1,
            hop: run.hop,
        }),
        Err(_) => Err(AgentError::Deadline(job.timeout)),
    };
    job.answer(result);
}

async fn execute(link: Option<Arc<PageLink>>, mut batch: Vec<Job>) {
    let Some(link) = link else {
        for job in batch {
            job.answer(Err(unavailable()));
        }
        return;
    };
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            run_alone(&link, job).await;
        }
        return;
    }
    let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    let total: usize = rows.iter().sum();
    let latest = batch
        .iter()
        .map(|j| j.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let joined = match join(&batch, total, latest) {
        Some(r) => r,
        None => return run_each(&link, batch).await,
    };
    let left = latest.saturating_duration_since(Instant::now());
    let result = match tokio::time::timeout(left, link.infer(joined)).await {
        Ok(r) => r,
        Err(_) => {
            for job in batch {
                let timeout = job.timeout;
                job.answer(Err(AgentError::Deadline(timeout)));
            }
            return;
        }
    };
    match result {
        Ok(PageRun {
            response: resp,
            hop,
        }) => match split(&resp, &rows) {
            Some(parts) => {
                let batch_rows = u32::try_from(total).unwrap_or(u32::MAX);
                let batch_requests = u32::try_from(batch.len()).unwrap_or(u32::MAX);
                for (job, outputs) in batch.into_iter().zip(parts) {
                    let response = InferResponse {
                        model: resp.model.clone(),
                        backend: resp.backend.clone(),
                        compute_ms: resp.compute_ms,
                        page_ms: resp.page_ms,
                        stages: resp.stages,
                        outputs,
                    };
                    job.answer(Ok(Ran {
                        response,
                        batch_rows,
                        batch_requests,
                        hop,
                    }));
                }
            }
            None => {
                tracing::warn!(model = %resp.model, "a batched run's outputs do not split by rows; running the requests one at a time");
                run_each(&link, batch).await;
            }
        },
        // The browser failed underneath: every request would have met the same.
        Err(e @ AgentError::Browser { .. }) => {
            for job in batch {
                job.answer(Err(e.clone()));
            }
        }
        // Anything else may be one request's fault: run them alone, so that it fails
        // only that one.
        Err(e) => {
            tracing::debug!(error = %e, "a batched run failed; running its requests one at a time");
            run_each(&link, batch).await;
        }
    }
}

async fn run_each(link: &PageLink, batch: Vec<Job>) {
    for job in batch {
        if job.abandoned() {
            continue;
        }
        run_alone(link, job).await;
    }
}

/// One request holding the jobs' inputs joined along dimension 0.
fn join(batch: &[Job], total: usize, deadline: Instant) -> Option<InferRequest> {
    let first = batch.first()?;
    let key = first.key.as_ref()?;
    let mut inputs = Vec::with_capacity(key.inputs.len());
    for (name, datatype, rest) in &key.inputs {
        let parts: Vec<&Tensor> = batch
            .iter()
            .map(|j| j.req.inputs.iter().find(|t| &t.name == name))
            .collect::<Option<_>>()?;
        let mut data = BytesMut::with_capacity(parts.iter().map(|t| t.data.len()).sum());
        for t in parts {
            data.extend_from_slice(&t.data);
        }
        let mut shape = Vec::with_capacity(rest.len() + 1);
        shape.push(i64::try_from(total).ok()?);
        shape.extend_from_slice(rest);
        inputs.push(Tensor::from_bytes(name.clone(), *datatype, shape, data.freeze()).ok()?);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    Some(InferRequest {
        model: first.req.model.clone(),
        inputs,
        outputs: key.outputs.clone(),
        timeout_ms: Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)),
        request_id: first.req.request_id.clone(),
    })
}

/// The outputs of a joined run cut back into each request's rows, or `None` when an
/// output does not have the run's rows as its leading dimension.
fn split(resp: &InferResponse, rows: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::with_capacity(resp.outputs.len()); rows.len()];
    for out in &resp.outputs {
        let (&lead, rest) = out.shape.split_first()?;
        if usize::try_from(lead).ok()? != total || total == 0 || out.data.len() % total != 0 {
            return None;
        }
        let row_bytes = out.data.len() / total;
        let mut offset = 0;
        for (part, &n) in parts.iter_mut().zip(rows) {
            let len = n * row_bytes;
            let data: Bytes = out.data.slice(offset..offset + len);
            offset += len;
            let mut shape = Vec::with_capacity(out.shape.len());
            shape.push(i64::try_from(n).ok()?);
            shape.extend_from_slice(rest);
            part.push(Tensor::from_bytes(out.name.clone(), out.datatype, shape, data).ok()?);
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(name: &str, shape: Vec<i64>, vals: &[f32]) -> Tensor {
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(name, DataType::Fp32, shape, Bytes::from(data)).unwrap()
    }

    fn req(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest {
            model: "m".into(),
            inputs,
            ..Default::default()
        }
    }

    fn io(name: &str, shape: Vec<i64>) -> IoMeta {
        IoMeta {
            name: name.into(),
            datatype: Some(DataType::Fp32),
            ort_type: "float32".into(),
            shape,
        }
    }

    fn spec(max: u32) -> ModelSpec {
        let mut s: ModelSpec = "m=file:///m.onnx".parse().unwrap();
        s.max_batch_size = max;
        s
    }

    #[test]
    fn only_models_with_a_dynamic_leading_dimension_everywhere_batch() {
        assert_eq!(status_for(&spec(0), &[], &[]), None);
        assert_eq!(status_for(&spec(1), &[io("x", vec![-1, 4])], &[]), None);
        let ok = status_for(&spec(8), &[io("x", vec![-1, 4])], &[io("y", vec![-1, 2])]).unwrap();
        assert!(ok.enabled && ok.reason.is_none(), "{ok:?}");
        let fixed =
            status_for(&spec(8), &[io("t", vec![1, 8])], &[io("h", vec![1, 8, 16])]).unwrap();
        assert!(!fixed.enabled);
        assert!(fixed.reason.unwrap().contains("input 't' has shape [1, 8]"));
        let out = status_for(&spec(8), &[io("x", vec![-1, 4])], &[io("y", vec![4])]).unwrap();
        assert!(out.reason.unwrap().contains("output 'y'"));
        let scalar = status_for(&spec(8), &[io("x", vec![])], &[io("y", vec![-1])]).unwrap();
        assert!(scalar.reason.unwrap().contains("scalar"));
    }

    #[test]
    fn requests_agree_on_everything_but_the_leading_dimension() {
        let a = key_of(&req(vec![fp32("x", vec![2, 2], &[0.0; 4])])).unwrap();
        let b = key_of(&req(vec![fp32("x", vec![1, 2], &[0.0; 2])])).unwrap();
        let c = key_of(&req(vec![fp32("x", vec![1, 4], &[0.0; 4])])).unwrap();
        assert_eq!((a.1, b.1), (2, 1));
        assert_eq!(a.0, b.0);
        assert_ne!(a.0, c.0);
        // Inputs disagreeing on the leading dimension cannot share a run.
        let odd = req(vec![
            fp32("a", vec![1, 1], &[0.0]),
            fp32("b", vec![2, 1], &[0.0; 2]),
        ]);
        assert!(key_of(&odd).is_none());
        assert!(key_of(&req(vec![fp32("x", vec![0, 2], &[])])).is_none());
    }

    #[test]
    fn split_cuts_rows_back_and_refuses_a_foreign_leading_dimension() {
        let resp = InferResponse {
            model: "m".into(),
            backend: "wasm".into(),
            compute_ms: 0.1,
            page_ms: None,
            stages: Default::default(),
            outputs: vec![fp32("y", vec![3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
        };
        let parts = split(&resp, &[1, 2]).unwrap();
        assert_eq!(parts[0][0], fp32("y", vec![1, 2], &[1.0, 2.0]));
        assert_eq!(parts[1][0], fp32("y", vec![2, 2], &[3.0, 4.0, 5.0, 6.0]));
        assert!(split(&resp, &[1, 1]).is_none());
    }

    #[tokio::test]
    async fn take_joins_compatible_jobs_up_to_the_limit_and_skips_the_rest() {
        let b = Batcher::new(&spec(3));
        let stats = Stats::default();
        let mut answers = Vec::new();
        let shapes: [Vec<i64>; 5] = [vec![1, 2], vec![1, 4], vec![2, 2], vec![1, 2], vec![1, 2]];
        for shape in shapes {
            let n = usize::try_from(shape.iter().product::<i64>()).unwrap();
            let r = req(vec![fp32("x", shape, &vec![0.0; n])]);
            let (key, rows) = key_of(&r).unwrap();
            let (tx, rx) = oneshot::channel();
            answers.push(rx);
            b.lock().push_back(Job {
                req: r,
                key: Some(key),
                rows,
                arrived: Instant::now(),
                deadline: Instant::now() + Duration::from_secs(60),
                timeout: Duration::from_secs(60),
                reply: tx,
                _queued: Held::new(&stats.queued),
            });
        }
        // A cancelled caller: its job is dropped before it runs.
        drop(answers.remove(0));
        let rows = |batch: &[Job]| {
            batch
                .iter()
                .map(|j| j.req.inputs[0].shape.clone())
                .collect::<Vec<_>>()
        };
        // [1,4] is first now, alone with its key.
        assert_eq!(rows(&b.take()), [vec![1, 4]]);
        // Then [2,2] + [1,2] (3 rows); the last [1,2] would make 4.
        assert_eq!(rows(&b.take()), [vec![2, 2], vec![1, 2]]);
        assert_eq!(rows(&b.take()), [vec![1, 2]]);
        assert!(b.take().is_empty());
        assert_eq!(stats.queued.get(), 0);
    }

    #[test]
    fn join_concatenates_by_input_name() {
        let stats = Stats::default();
        let job = |a: f32, order_flipped: bool| {
            let mut inputs = vec![fp32("a", vec![1, 1], &[a]), fp32("b", vec![1, 2], &[a, a])];
            if order_flipped {
                inputs.reverse();
            }
            let r = req(inputs);
            let (key, rows) = key_of(&r).unwrap();
            let (tx, _rx) = oneshot::channel();
            Job {
                req: r,
                key: Some(key),
                rows,
                arrived: Instant::now(),
                deadline: Instant::now() + Duration::from_secs(5),
                timeout: Duration::from_secs(5),
                reply: tx,
                _queued: Held::new(&stats.queued),
            }
        };
        let batch = [job(1.0, false), job(2.0, true)];
        assert_eq!(batch[0].key, batch[1].key);
        let joined = join(&batch, 2, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(joined.inputs[0], fp32("a", vec![2, 1], &[1.0, 2.0]));
        assert_eq!(
            joined.inputs[1],
            fp32("b", vec![2, 2], &[1.0, 1.0, 2.0, 2.0])
        );
    }
}
