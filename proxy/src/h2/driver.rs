//! What an HTTP/2 client connection's task does each time it wakes: poll
//! hyper's connection, run the streams that can move, and send what they
//! all wrote in one go.
//!
//! Two costs of hyper's HTTP/2 server are paid here once per wake-up
//! instead of once per response. The h2 crate flushes after every DATA
//! frame it does not copy (all but the smallest), which on a plain socket
//! is a `writev` per response: [`Batched`] collects the writes and
//! [`Driver`] sends them when the connection has done what it can, so the
//! responses that finished together leave in one `write`, as HAProxy
//! batches them. And hyper runs each stream as a task of its own: on a
//! current-thread runtime, where that task could only ever run on the
//! connection's thread, the streams run on the connection's task instead
//! ([`Streams`]), which saves a task per request and lets a response's
//! frames go out in the same wake-up that made them.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Activity, Prefixed};

/// Bytes written but not yet sent, past which a write waits for the
/// socket (and h2 stops queueing frames) instead of collecting more.
const BATCH_LIMIT: usize = 64 * 1024;
/// Capacity of a batch buffer: [`BATCH_LIMIT`] and a frame of the
/// default largest size (16 KiB and its 9-byte head) past it, so a batch
/// never grows by copying. (A client that allows larger frames may grow
/// one; that buffer is not kept.)
const BATCH_CAPACITY: usize = BATCH_LIMIT + 16 * 1024 + 9;
/// Batch buffers kept per thread for the next batch of any connection.
const SPARE_BATCHES: usize = 8;
/// Rounds of streams, then the connection, in one wake-up before the
/// task lets others run (what is left wakes it again).
const ROUNDS: usize = 4;

/// A stream's future, as hyper hands it to its executor.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection's streams: on a current-thread
/// runtime it queues them for the connection's [`Driver`], elsewhere it
/// spawns them as tasks (so other threads can take them).
#[derive(Clone)]
pub(super) struct Streams(Option<Arc<Mutex<Vec<StreamFuture>>>>);

impl Streams {
    pub(super) fn new() -> Streams {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let local = Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
        Streams(local.then(Default::default))
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match &self.0 {
            // A stream that panics ends alone, as its own task would have.
            Some(queue) => lock(queue).push(Box::pin(
                std::panic::AssertUnwindSafe(fut).catch_unwind().map(|_| ()),
            )),
            None => {
                tokio::spawn(fut);
            }
        }
    }
}

/// The client socket as hyper's HTTP/2 server sees it: reads pass
/// through (after the bytes [`crate::h1`] read first); writes collect,
/// and a flush leaves them collected for the [`Driver`] to send. A
/// connection holds a batch buffer only while it has streams open: it
/// takes one from its thread's spares and gives it back.
///
/// hyper owns this end and the driver the other; the lock between them
/// is only taken on the connection's own task, so never waited for.
pub(super) struct Batched<S>(Arc<Mutex<Socket<S>>>);

pub(super) struct Socket<S> {
    stream: Prefixed<S>,
    out: Vec<u8>,
    /// How much of `out` the stream has taken.
    sent: usize,
    /// Why a send failed: every later read and write fails so too.
    failed: Option<io::ErrorKind>,
}

/// Runs an HTTP/2 connection on its task: see the module's doc.
pub(super) struct Driver<S> {
    socket: Arc<Mutex<Socket<S>>>,
    activity: Arc<Activity>,
    /// Streams hyper handed over since the last wake-up (current-thread
    /// runtimes only).
    spawned: Option<Arc<Mutex<Vec<StreamFuture>>>>,
    running: FuturesUnordered<StreamFuture>,
}

/// The socket for hyper and the driver of its connection, for a stream
/// whose first bytes, `read`, were already taken.
pub(super) fn driver<S>(
    read: Bytes,
    stream: S,
    streams: &Streams,
    activity: Arc<Activity>,
) -> (Batched<S>, Driver<S>) {
    let socket = Arc::new(Mutex::new(Socket {
        stream: Prefixed::new(read, stream),
        out: Vec::new(),
        sent: 0,
        failed: None,
    }));
    let driver = Driver {
        socket: socket.clone(),
        activity,
        spawned: streams.0.clone(),
        running: FuturesUnordered::new(),
    };
    (Batched(socket), driver)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoned only by a panic while held; what it guards is still whole
    // (bytes, or a list of futures).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: AsyncWrite + Unpin> Driver<S> {
    /// Drives `conn` (hyper's connection) and its streams; resolves when
    /// the connection has ended. Streams still running then go with the
    /// driver, as hyper's stream tasks end once their connection has.
    pub(super) fn run<'a, F: Future + Unpin + 'a>(
        &'a mut self,
        mut conn: F,
    ) -> impl Future<Output = F::Output> + 'a {
        std::future::poll_fn(move |cx| {
            let mut ended = Pin::new(&mut conn).poll(cx);
            if let (Poll::Pending, Some(spawned)) = (&ended, &self.spawned) {
                for _ in 0..ROUNDS {
                    self.running.extend(lock(spawned).drain(..));
                    let mut finished = false;
                    while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {
                        finished = true;
                    }
                    // A stream that finished left its last frames with the
                    // connection: it takes them now, not at its next wake-up,
                    // and may hand over new streams.
                    if !finished {
                        break;
                    }
                    ended = Pin::new(&mut conn).poll(cx);
                    if ended.is_ready() {
                        break;
                    }
                }
                if !lock(spawned).is_empty() {
                    // Handed over after the last round: run at the next.
                    cx.waker().wake_by_ref();
                }
            }
            self.send(cx, ended.is_pending());
            ended
        })
    }

    /// Sends what hyper wrote. A failure is hyper's to learn of, at its
    /// next read or write.
    fn send(&self, cx: &mut Context<'_>, open: bool) {
        let mut socket = lock(&self.socket);
        match socket.poll_send(cx) {
            Poll::Ready(Ok(())) if self.activity.open.load(SeqCst) == 0 => {
                give_batch(std::mem::take(&mut socket.out));
            }
            Poll::Ready(Err(_)) if open => cx.waker().wake_by_ref(),
            _ => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
    /// Writes what was collected, and flushes the stream.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if self.out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.sent < self.out.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.out[self.sent..]) {
                Poll::Ready(Ok(0)) => return self.fail(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.sent = 0;
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.fail(e),
            // A stream that buffers (TLS) and cannot flush yet has woken
            // this task for when it can: the next send flushes it.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        self.failed = Some(e.kind());
        Poll::Ready(Err(e))
    }

    /// Room to collect more: the collected bytes are sent first when they
    /// are past [`BATCH_LIMIT`].
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if self.out.len() - self.sent >= BATCH_LIMIT {
            std::task::ready!(self.poll_send(cx))?;
        }
        if self.out.capacity() == 0 {
            self.out = take_batch();
        }
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty batch buffer: a spare of this thread's, or a new one.
fn take_batch() -> Vec<u8> {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BATCH_CAPACITY))
}

/// Keeps a sent batch buffer for the next batch: one of the batch size
/// (not one never taken, nor one that grew), while the thread has room.
fn give_batch(mut buf: Vec<u8>) {
    if buf.capacity() != BATCH_CAPACITY {
        return;
    }
    buf.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BATCHES {
            spare.push(buf);
        }
    });
}

impl<S: AsyncRead + Unpin> AsyncRead for Batched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut socket = lock(&self.0);
        if let Some(kind) = socket.failed {
            return Poll::Ready(Err(kind.into()));
        }
        Pin::new(&mut socket.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut socket = lock(&self.0);
        std::task::ready!(socket.poll_room(cx))?;
        socket.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut socket = lock(&self.0);
        std::task::ready!(socket.poll_room(cx))?;
        let mut n = 0;
        for buf in bufs {
            socket.out.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    /// Vectored, so h2 hands over large DATA payloads beside their frame
    /// head instead of copying them first: they are copied once, here.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Sent by the [`Driver`] when this wake-up of the connection ends.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket = lock(&self.0);
        std::task::ready!(socket.poll_send(cx))?;
        Pin::new(&mut socket.stream).poll_shutdown(cx)
    }
}
