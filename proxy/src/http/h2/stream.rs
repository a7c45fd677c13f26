//! What one HTTP/2 stream shares between the connection and the stream's
//! task: the request body the client sends ([`RequestBody`], read by
//! whatever forwards it) and the response the task produces ([`respond`]),
//! which the connection frames as flow control allows.
//!
//! Both directions are queues behind one lock per stream, taken briefly by
//! the connection and by the stream's task, which on a current-thread
//! runtime run on the same thread and never wait for each other.

use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};

use crate::http::BodyError;

/// Response bytes a stream may have queued before its task stops reading
/// the upstream's body and waits for the connection to send them.
const QUEUED_LIMIT: usize = 64 * 1024;

/// Streams with something for the connection to do, and the connection's
/// task to wake when a stream is added from another task.
#[derive(Default)]
pub(super) struct Ready {
    ids: Mutex<Vec<u32>>,
    waker: Mutex<Option<Waker>>,
}

impl Ready {
    pub(super) fn push(&self, id: u32, wake: bool) {
        let mut ids = self.ids.lock();
        ids.push(id);
        if wake && ids.len() == 1 {
            drop(ids);
            if let Some(waker) = self.waker.lock().as_ref() {
                waker.wake_by_ref();
            }
        }
    }

    /// Moves the ready streams into `into` (emptied first).
    pub(super) fn take(&self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut *self.ids.lock(), into);
    }

    pub(super) fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// A stream's state that both sides touch.
pub(crate) struct Shared {
    pub(super) id: u32,
    state: Mutex<State>,
    ready: Arc<Ready>,
}

#[derive(Default)]
struct State {
    // Client to skiff.
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client's END_STREAM arrived.
    ended: bool,
    /// Why the request body failed (the stream was reset).
    failed: Option<&'static str>,
    /// Bytes the body handed on since the connection last credited them.
    consumed: usize,
    /// Nobody reads the body any more: what arrives is dropped.
    body_gone: bool,
    body_waker: Option<Waker>,
    // skiff to client.
    out: OutQueue,
    queued: usize,
    producer: Option<Waker>,
    /// The connection reset the stream: the response is not wanted.
    cancelled: bool,
    /// The stream's task, waiting on something else (the upstream): woken
    /// to end when the stream is reset.
    task: Option<Waker>,
}

/// A FIFO of [`Out`] that holds its first item inline: most responses
/// are one item (a head with the whole body), and a stream's queue then
/// costs no allocation.
#[derive(Default)]
pub(super) struct OutQueue {
    first: Option<Out>,
    rest: VecDeque<Out>,
}

impl OutQueue {
    fn push(&mut self, out: Out) {
        if self.first.is_none() {
            self.first = Some(out);
        } else {
            self.rest.push_back(out);
        }
    }

    pub(super) fn front_mut(&mut self) -> Option<&mut Out> {
        self.first.as_mut()
    }

    pub(super) fn pop(&mut self) -> Option<Out> {
        let out = self.first.take();
        self.first = self.rest.pop_front();
        out
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }
}

/// What a stream's task hands the connection to send.
pub(super) enum Out {
    /// The head, with the whole body when it was there at once, and
    /// whether that ends the stream.
    Head(Response<()>, Option<Bytes>, bool),
    Data(Bytes, bool),
    Trailers(HeaderMap),
    /// The response failed after its head: reset the stream.
    Reset,
}

impl Shared {
    pub(super) fn new(id: u32, ready: Arc<Ready>) -> Arc<Shared> {
        Arc::new(Shared {
            id,
            state: Mutex::new(State::default()),
            ready,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    // The connection's side.

    /// Request body bytes from a DATA frame; false if nobody will read
    /// them (the caller credits them back at once).
    pub(super) fn recv_data(&self, data: Bytes, end: bool) -> bool {
        let mut s = self.state();
        s.ended |= end;
        let kept = !s.body_gone;
        if kept && !data.is_empty() {
            s.data.push_back(data);
        }
        if let Some(w) = s.body_waker.take() {
            w.wake();
        }
        kept
    }

    pub(super) fn recv_trailers(&self, trailers: HeaderMap) {
        let mut s = self.state();
        s.trailers = Some(trailers);
        s.ended = true;
        if let Some(w) = s.body_waker.take() {
            w.wake();
        }
    }

    /// The stream left the connection (ended, or reset): the response is
    /// no longer wanted, and a request body not read whole fails rather
    /// than ending early. Returns the request bytes to give back to the
    /// connection's window: those read but not yet credited, and those
    /// queued and now dropped.
    pub(super) fn reset(&self, why: &'static str) -> usize {
        let mut s = self.state();
        let unread: usize = s.data.iter().map(Bytes::len).sum();
        let whole = s.ended && unread == 0 && s.trailers.is_none();
        if !whole && s.failed.is_none() {
            s.failed = Some(why);
        }
        s.data.clear();
        s.trailers = None;
        s.body_gone = true;
        s.cancelled = true;
        s.out.clear();
        for w in [s.body_waker.take(), s.producer.take(), s.task.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
        std::mem::take(&mut s.consumed) + unread
    }

    /// Request bytes read since the last call, and whether the body was
    /// dropped unread.
    pub(super) fn take_consumed(&self) -> (usize, bool) {
        let mut s = self.state();
        (std::mem::take(&mut s.consumed), s.body_gone)
    }

    /// Runs `f` on the queued response frames; bytes it takes from the
    /// queue (returned) let the task go on producing.
    pub(super) fn with_out<R>(&self, f: impl FnOnce(&mut OutQueue) -> (R, usize)) -> R {
        let mut s = self.state();
        let (r, sent) = f(&mut s.out);
        if sent > 0 {
            s.queued = s.queued.saturating_sub(sent);
            if s.queued < QUEUED_LIMIT {
                if let Some(w) = s.producer.take() {
                    w.wake();
                }
            }
        }
        r
    }

    /// Whether the stream's task may run: false once the stream was
    /// reset. Keeps the task's waker for [`Shared::reset`].
    fn enter_task(&self, waker: &Waker) -> bool {
        let mut s = self.state();
        if !s.task.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.task = Some(waker.clone());
        }
        !s.cancelled
    }

    // The task's side.

    /// The task failed (panicked): the stream is reset.
    pub(super) fn fail(&self) {
        self.state().out.push(Out::Reset);
        self.ready.push(self.id, false);
    }

    /// Queues `out`; Pending (with the task's waker kept) while the
    /// queue is full.
    fn poll_push(&self, cx: &mut Context<'_>, out: &mut Option<Out>) -> Poll<Result<(), ()>> {
        let mut s = self.state();
        if s.cancelled {
            return Poll::Ready(Err(()));
        }
        if s.queued >= QUEUED_LIMIT {
            s.producer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(out) = out.take() {
            match &out {
                Out::Data(d, _) | Out::Head(_, Some(d), _) => s.queued += d.len(),
                _ => {}
            }
            let first = s.out.is_empty();
            s.out.push(out);
            drop(s);
            if first {
                // Pushed from the stream's task, which the connection's
                // task polls: it looks at the ready list right after.
                self.ready.push(self.id, false);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Sends `response` on the stream: the head, then the body as it comes.
pub(crate) async fn respond<B>(shared: &Shared, response: Response<B>)
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let (mut parts, mut body) = response.into_parts();
    let end = body.is_end_stream();
    let status = parts.status;
    if let Some(length) = body.size_hint().exact() {
        let bodiless = status.is_informational()
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED;
        if !bodiless && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, length.into());
        }
    }
    let head = Response::from_parts(parts, ());
    if end {
        let _ = push(shared, &mut Some(Out::Head(head, None, true))).await;
        return;
    }
    // A body that is there already (a small response read with its head)
    // goes out with the head, in one item.
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
    let (data, end, pending) = match first {
        Poll::Ready(None) => (None, true, None),
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => (Some(data), body.is_end_stream(), None),
            Err(frame) => (None, false, Some(frame)),
        },
        Poll::Ready(Some(Err(e))) => {
            tracing::debug!("HTTP/2 response body failed: {e}");
            let _ = push(shared, &mut Some(Out::Head(head, None, false))).await;
            let _ = push(shared, &mut Some(Out::Reset)).await;
            return;
        }
        Poll::Pending => (None, false, None),
    };
    if push(shared, &mut Some(Out::Head(head, data, end)))
        .await
        .is_err()
        || end
    {
        return;
    }
    if let Some(trailers) = pending.and_then(|f| f.into_trailers().ok()) {
        let _ = push(shared, &mut Some(Out::Trailers(trailers))).await;
        return;
    }
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let out = match frame {
            None => Out::Data(Bytes::new(), true),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() && !body.is_end_stream() {
                        continue;
                    }
                    Out::Data(data, body.is_end_stream())
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Out::Trailers(trailers),
                    Err(_) => continue,
                },
            },
            Some(Err(e)) => {
                tracing::debug!("HTTP/2 response body failed: {e}");
                Out::Reset
            }
        };
        let last = matches!(out, Out::Data(_, true) | Out::Trailers(_) | Out::Reset);
        let mut next = Some(out);
        if push(shared, &mut next).await.is_err() || last {
            return;
        }
    }
}

/// A stream's future as the connection runs it: it ends early when the
/// stream is reset (dropping the request to the upstream), and a panic in
/// it resets the stream rather than the connection.
/// A stream's future in a box the connection keeps and reuses: the
/// forward future is kilobytes, and a fresh box per stream cost about
/// 1,100 instructions of glibc's slow path (BENCHMARKS.md).
pub(super) type Slot<F> = Pin<Box<Option<F>>>;

/// A stream's future as the connection runs it: ends early when the
/// stream was reset, and a panic fails the stream instead of the
/// connection. Yields its emptied [`Slot`] for the next stream.
pub(super) struct StreamTask<F> {
    slot: Option<Slot<F>>,
    shared: Arc<Shared>,
}

impl<F> StreamTask<F> {
    pub(super) fn new(slot: Slot<F>, shared: Arc<Shared>) -> StreamTask<F> {
        StreamTask {
            slot: Some(slot),
            shared,
        }
    }
}

impl<F: Future<Output = ()>> Future for StreamTask<F> {
    type Output = Option<Slot<F>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Slot<F>>> {
        let this = self.get_mut();
        let Some(slot) = this.slot.as_mut() else {
            return Poll::Ready(None);
        };
        if this.shared.enter_task(cx.waker()) {
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match slot.as_mut().as_pin_mut() {
                    Some(future) => future.poll(cx),
                    None => Poll::Ready(()),
                }
            }));
            match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => {}
                Err(_) => {
                    tracing::error!("HTTP/2 stream task panicked");
                    this.shared.fail();
                }
            }
        }
        // Done, reset or panicked: the future is dropped in its box.
        slot.set(None);
        Poll::Ready(this.slot.take())
    }
}

async fn push(shared: &Shared, out: &mut Option<Out>) -> Result<(), ()> {
    std::future::poll_fn(|cx| shared.poll_push(cx, out)).await
}

/// The body of a request from an HTTP/2 client.
pub(crate) struct RequestBody {
    shared: Arc<Shared>,
    /// What `content-length` declared and is not yet read.
    remaining: Option<u64>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("stream", &self.shared.id)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl RequestBody {
    pub(super) fn new(shared: Arc<Shared>, content_length: Option<u64>) -> RequestBody {
        RequestBody {
            shared,
            remaining: content_length,
        }
    }
}

impl RequestBody {
    /// The whole body, if it has all arrived as one piece without
    /// trailers, taken so that it can be sent (and sent again) as is.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        let mut s = self.shared.state();
        if !s.ended || s.failed.is_some() || s.trailers.is_some() || s.data.len() > 1 {
            return None;
        }
        let data = s.data.pop_front().unwrap_or_default();
        let first = s.consumed == 0;
        s.consumed += data.len();
        drop(s);
        if first && !data.is_empty() {
            self.shared.ready.push(self.shared.id, true);
        }
        self.remaining = Some(0);
        Some(data)
    }
}

/// A request body that ended as it should not have.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 request body: {0}")]
pub(crate) struct RecvError(&'static str);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let mut s = self.shared.state();
        if let Some(data) = s.data.pop_front() {
            let first = s.consumed == 0;
            s.consumed += data.len();
            drop(s);
            if first {
                // Possibly from another task (an HTTP/2 upstream's
                // connection reads it there): wake the client's.
                self.shared.ready.push(self.shared.id, true);
            }
            if let Some(left) = &mut self.remaining {
                *left = left.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(why) = s.failed {
            return Poll::Ready(Some(Err(RecvError(why))));
        }
        if let Some(trailers) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        s.body_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.state();
        s.ended && s.data.is_empty() && s.trailers.is_none() && s.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut s = self.shared.state();
        if s.ended && s.data.is_empty() {
            return;
        }
        s.body_gone = true;
        s.consumed += s.data.iter().map(Bytes::len).sum::<usize>();
        s.data.clear();
        drop(s);
        self.shared.ready.push(self.shared.id, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }

    fn poll<F: Future<Output = ()>>(task: &mut StreamTask<F>) -> Poll<Option<Slot<F>>> {
        let waker = futures_util::task::noop_waker();
        Pin::new(task).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_reset_stream_drops_its_future_and_gives_back_the_box() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let shared = Shared::new(1, Arc::new(Ready::default()));
        let future = async move {
            let _flag = flag;
            std::future::pending::<()>().await
        };
        let mut task = StreamTask::new(Box::pin(Some(future)), shared.clone());
        assert!(poll(&mut task).is_pending());
        assert!(!dropped.load(SeqCst));
        shared.reset("cancelled by the client");
        let Poll::Ready(Some(slot)) = poll(&mut task) else {
            panic!("the reset task did not end with its box");
        };
        assert!(dropped.load(SeqCst), "the future outlived its stream");
        assert!(slot.is_none());
        // Polled again (FuturesUnordered never does): no box twice.
        assert!(matches!(poll(&mut task), Poll::Ready(None)));
    }

    /// One future type for both cases, as a connection's streams have.
    async fn job(panics: bool) {
        if panics {
            panic!("a bug in a stream's future");
        }
    }

    #[test]
    fn a_finished_or_panicking_future_gives_back_an_empty_box_for_the_next() {
        let shared = Shared::new(1, Arc::new(Ready::default()));
        let mut task = StreamTask::new(Box::pin(Some(job(false))), shared);
        let Poll::Ready(Some(mut slot)) = poll(&mut task) else {
            panic!("a finished task gave back no box");
        };
        assert!(slot.is_none());
        // The same box for the next stream, whose future panics: that
        // stream is reset, the box comes back empty again.
        let shared = Shared::new(3, Arc::new(Ready::default()));
        slot.set(Some(job(true)));
        let mut task = StreamTask::new(slot, shared.clone());
        assert!(matches!(poll(&mut task), Poll::Ready(Some(ref s)) if s.is_none()));
        assert!(
            matches!(shared.state().out.pop(), Some(Out::Reset)),
            "the stream was not reset"
        );
    }
}
