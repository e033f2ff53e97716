//! Where queries run, and how they are stopped.
//!
//! - [`DeadlinePlanner`] plans as DataFusion does, then puts a [`DeadlineExec`] above every operator
//!   of the physical plan. Each checks the query's deadline every time its operator is asked for a
//!   batch, so a CPU-bound operator (a cross join feeding a sort, say) stops within one batch of the
//!   deadline, on whatever thread it runs, and frees its core. Dropping a stream alone does not: a
//!   task that never yields never sees that it was cancelled.
//! - [`QueryThreads`] is a tokio runtime of its own for query work, with bigger stacks, so a query
//!   that keeps every core busy cannot stop the threads that accept connections, answer `/healthz`
//!   or consume Kafka. Its [`Admission`] lets at most K queries run at once; the rest wait in line
//!   for a while, then are refused as busy.
//! - [`Answer`] holds a query's result with the memory it takes reserved from the shared pool, and
//!   renders it within what is left, so a result is bounded by the memory limit like any operator.

use std::fmt;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::{Stream, StreamExt};

use crate::output::{self, Format};
use crate::{Limits, SqlError};

/// The error a [`DeadlineExec`] ends its stream with. Its text is the one users see, whichever
/// entry point the query came through.
#[derive(Debug)]
pub struct DeadlinePassed(pub Duration);

impl fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SqlError::TimeLimit(self.0))
    }
}

impl std::error::Error for DeadlinePassed {}

/// Whether `e` is (or wraps) the deadline's error.
pub fn is_deadline(e: &DataFusionError) -> bool {
    e.to_string().contains(DEADLINE_WORDS)
}

/// Words of the time-limit message, to recognise it once an error has become text.
pub const DEADLINE_WORDS: &str = "ran longer than the time limit";

/// Bumped by [`cancel_running`]: every operator of a plan made before the bump ends its stream at
/// its next batch.
static CANCELS: AtomicU64 = AtomicU64::new(0);

/// Stops every query of this process that is running now, as its deadline would, at each
/// operator's next batch. A query worker serves one Postgres connection, whose client's cancel
/// request this is; queries planned afterwards are not affected.
pub fn cancel_running() {
    CANCELS.fetch_add(1, Ordering::SeqCst);
}

/// The error an operator ends with when its query was cancelled.
#[derive(Debug)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("canceling statement due to user request")
    }
}

impl std::error::Error for Cancelled {}

/// Plans like DataFusion's default planner, then bounds every operator by the query's deadline
/// (the moment of planning plus the time limit) and by [`cancel_running`].
#[derive(Debug)]
pub struct DeadlinePlanner {
    pub time: Duration,
}

#[async_trait]
impl QueryPlanner for DeadlinePlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let deadline = Instant::now() + self.time;
        let epoch = CANCELS.load(Ordering::SeqCst);
        let plan = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session)
            .await?;
        with_deadline_and_epoch(plan, deadline, self.time, epoch)
    }
}

/// Puts a [`DeadlineExec`] above every operator of `plan`.
pub fn with_deadline(
    plan: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    limit: Duration,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    with_deadline_and_epoch(plan, deadline, limit, CANCELS.load(Ordering::SeqCst))
}

fn with_deadline_and_epoch(
    plan: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    limit: Duration,
    epoch: u64,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let wrapped: Arc<dyn ExecutionPlan> =
            Arc::new(DeadlineExec::new(node, deadline, limit, epoch));
        Ok(Transformed::yes(wrapped))
    })
    .map(|t| t.data)
}

/// An operator's output, ended with [`DeadlinePassed`] once the deadline has passed.
#[derive(Debug)]
pub struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    limit: Duration,
    /// [`CANCELS`] when the plan was made.
    epoch: u64,
    properties: Arc<PlanProperties>,
}

impl DeadlineExec {
    fn new(input: Arc<dyn ExecutionPlan>, deadline: Instant, limit: Duration, epoch: u64) -> Self {
        let properties = input.properties().clone();
        DeadlineExec {
            input,
            deadline,
            limit,
            epoch,
            properties,
        }
    }
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeadlineExec")
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "DeadlineExec has one child".into(),
            ));
        }
        Ok(Arc::new(DeadlineExec::new(
            children.swap_remove(0),
            self.deadline,
            self.limit,
            self.epoch,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if Instant::now() >= self.deadline {
            return Err(passed(self.limit));
        }
        Ok(Box::pin(DeadlineStream {
            inner: self.input.execute(partition, context)?,
            deadline: self.deadline,
            limit: self.limit,
            epoch: self.epoch,
            done: false,
            held: Vec::new(),
        }))
    }
}

fn passed(limit: Duration) -> DataFusionError {
    DataFusionError::External(Box::new(DeadlinePassed(limit)))
}

struct DeadlineStream {
    inner: SendableRecordBatchStream,
    deadline: Instant,
    limit: Duration,
    epoch: u64,
    done: bool,
    /// Memory that functions reserved for values of the batch last returned (see [`hold`]).
    held: Vec<MemoryReservation>,
}

thread_local! {
    /// Where [`hold`] puts a reservation while an operator computes a batch on this thread.
    static HELD: std::cell::RefCell<Option<Vec<MemoryReservation>>> =
        const { std::cell::RefCell::new(None) };
}

/// Keeps `reservation` until the operator computing the current batch is asked for its next one,
/// so a value built by a function stays counted while the batch holding it is in use. Outside
/// an operator it is released at once.
pub fn hold(reservation: MemoryReservation) {
    HELD.with(|held| {
        if let Some(v) = held.borrow_mut().as_mut() {
            v.push(reservation);
        }
    });
}

impl Stream for DeadlineStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.held.clear();
        if Instant::now() >= self.deadline {
            self.done = true;
            return Poll::Ready(Some(Err(passed(self.limit))));
        }
        if CANCELS.load(Ordering::Relaxed) != self.epoch {
            self.done = true;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(Cancelled)))));
        }
        let outer = HELD.with(|held| held.replace(Some(Vec::new())));
        let polled = self.inner.poll_next_unpin(cx);
        let mine = HELD.with(|held| held.replace(outer));
        self.held = mine.unwrap_or_default();
        polled
    }
}

impl RecordBatchStream for DeadlineStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// At most K queries at once; the next waits up to a while for a turn, then is refused.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<tokio::sync::Semaphore>,
    running: usize,
    wait: Duration,
}

/// A turn to run one query; the next in line goes when it is dropped.
pub type Turn = tokio::sync::OwnedSemaphorePermit;

impl Admission {
    pub fn new(running: usize, wait: Duration) -> Self {
        let running = running.max(1);
        Admission {
            slots: Arc::new(tokio::sync::Semaphore::new(running)),
            running,
            wait,
        }
    }

    /// Waits for a turn, or says the server is busy.
    pub async fn turn(&self) -> Result<Turn, SqlError> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(turn)) => Ok(turn),
            _ => Err(SqlError::Busy {
                running: self.running,
                waited: self.wait,
            }),
        }
    }
}

/// A runtime of its own for query work (planning and every operator), created on first use.
pub struct QueryThreads {
    threads: usize,
    runtime: OnceLock<Option<tokio::runtime::Runtime>>,
}

impl fmt::Debug for QueryThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueryThreads({})", self.threads)
    }
}

/// Stack of a query thread: planning and evaluating a deep expression recurses.
/// Most blocking threads (file reads) the query runtime starts.
const BLOCKING_THREADS: usize = 8;

const QUERY_STACK: usize = 32 << 20;

impl QueryThreads {
    pub fn new(threads: usize) -> Self {
        QueryThreads {
            threads: threads.max(1),
            runtime: OnceLock::new(),
        }
    }

    /// The runtime's handle; `None` if it could not be started (then work runs where it is).
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.threads)
                    // File reads run on blocking threads, which get the same big stacks: a
                    // query over many Parquet parts started dozens of them (a GiB of address
                    // space in a worker whose address space is capped).
                    .max_blocking_threads(BLOCKING_THREADS)
                    .thread_name("earshot-query")
                    .thread_stack_size(QUERY_STACK)
                    .enable_all()
                    .build()
                    .inspect_err(|e| {
                        eprintln!("warning: cannot start the query threads ({e}); queries share the serving threads")
                    })
                    .ok()
            })
            .as_ref()
            .map(|rt| rt.handle().clone())
    }

    /// Runs `work` on the query threads and waits for it. If the caller stops waiting, the work is
    /// aborted (and its operators stop at their next batch).
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, SqlError> {
        let Some(handle) = self.handle() else {
            return Ok(work.await);
        };
        let task = handle.spawn(work);
        let abort = AbortOnDrop(task.abort_handle());
        let out = task
            .await
            .map_err(|e| SqlError::Query(format!("the query stopped: {e}")));
        drop(abort);
        out
    }

    /// Wraps `inner` so that it is polled on the query threads, its items passed on through a
    /// small buffer. Dropping the returned stream stops the work.
    pub fn forward<S>(&self, inner: S, buffer: usize) -> Pin<Box<dyn Stream<Item = S::Item> + Send>>
    where
        S: Stream + Send + 'static,
        S::Item: Send + 'static,
    {
        let Some(handle) = self.handle() else {
            return Box::pin(inner);
        };
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        let task = handle.spawn(async move {
            let mut inner = std::pin::pin!(inner);
            while let Some(item) = inner.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        let abort = AbortOnDrop(task.abort_handle());
        Box::pin(futures::stream::unfold(
            (rx, abort),
            |(mut rx, abort)| async move { rx.recv().await.map(|item| (item, (rx, abort))) },
        ))
    }

    /// Runs `fut` so that every task it spawns (DataFusion spawns one per input partition when a
    /// plan starts) lands on the query threads, while `fut` itself is polled where it is awaited.
    pub fn enter<F: Future>(&self, fut: F) -> InQueryThreads<F> {
        InQueryThreads {
            handle: self.handle(),
            fut: Box::pin(fut),
        }
    }
}

impl Drop for QueryThreads {
    fn drop(&mut self) {
        // A runtime may not be dropped where blocking is not allowed (inside another runtime).
        if let Some(Some(rt)) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A future whose spawns go to the query threads (see [`QueryThreads::enter`]).
pub struct InQueryThreads<F> {
    handle: Option<tokio::runtime::Handle>,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for InQueryThreads<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _entered = self.handle.as_ref().map(|h| h.enter());
        self.fut.as_mut().poll(cx)
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A query's result, with the memory it holds reserved from the query memory pool.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    memory: MemoryReservation,
    limit: usize,
}

impl Answer {
    /// Collects `stream`, reserving each batch's memory; refuses a result over the limit.
    pub async fn collect(
        schema: SchemaRef,
        mut stream: SendableRecordBatchStream,
        memory: MemoryReservation,
        limits: &Limits,
    ) -> Result<Answer, SqlError> {
        let mut answer = Answer {
            schema,
            batches: Vec::new(),
            memory,
            limit: limits.memory,
        };
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| crate::classify(e, limits))?;
            answer.reserve(batch.get_array_memory_size())?;
            answer.batches.push(batch);
        }
        Ok(answer)
    }

    fn reserve(&mut self, bytes: usize) -> Result<(), SqlError> {
        self.memory
            .try_grow(bytes)
            .map_err(|e| SqlError::MemoryLimit {
                limit: self.limit,
                detail: format!("the result alone needs more: {}", e.find_root()),
            })
    }

    /// The result in `format`, within the memory the pool still has.
    pub fn render(&mut self, format: Format) -> Result<Vec<u8>, SqlError> {
        self.render_with(|out, schema, batches| output::write(out, schema, batches, format))
    }

    /// The result as an Arrow IPC stream, within the memory the pool still has.
    pub fn render_arrow(&mut self) -> Result<Vec<u8>, SqlError> {
        self.render_with(|out, schema, batches| {
            let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(out, schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            Ok(())
        })
    }

    fn render_with(
        &mut self,
        write: impl FnOnce(&mut dyn Write, &SchemaRef, &[RecordBatch]) -> anyhow::Result<()>,
    ) -> Result<Vec<u8>, SqlError> {
        let mut out = Budgeted {
            buf: Vec::new(),
            answer_memory: &mut self.memory,
            refused: None,
        };
        let written = write(&mut out, &self.schema, &self.batches);
        if let Some(e) = out.refused {
            return Err(SqlError::MemoryLimit {
                limit: self.limit,
                detail: format!("the rendered result needs more: {e}"),
            });
        }
        written.map_err(|e| SqlError::Query(format!("cannot write the result: {e}")))?;
        Ok(out.buf)
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Releases the reservation and gives the parts.
    pub fn into_parts(self) -> (SchemaRef, Vec<RecordBatch>) {
        (self.schema, self.batches)
    }
}

/// A reservation for a query's result, from `pool`.
pub fn result_memory(ctx: &crate::SessionContext) -> MemoryReservation {
    MemoryConsumer::new("query result").register(&ctx.runtime_env().memory_pool)
}

/// A growing buffer whose every MiB is reserved first.
struct Budgeted<'a> {
    buf: Vec<u8>,
    answer_memory: &'a mut MemoryReservation,
    refused: Option<String>,
}

impl Write for Budgeted<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        const STEP: usize = 1 << 20;
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            let grow = need.max(self.buf.capacity() * 2).max(STEP) - self.buf.capacity();
            if let Err(e) = self.answer_memory.try_grow(grow) {
                self.refused = Some(e.find_root().to_string());
                return Err(std::io::Error::other("over the memory limit"));
            }
            self.buf
                .reserve_exact(need.max(self.buf.capacity() * 2).max(STEP) - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
