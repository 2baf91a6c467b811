//! A ttrpc server whose threads do not grow with its connections.
//!
//! containerd opens one connection per task, also to a group's shared shim. ttrpc's own
//! synchronous server spends six threads on each (reader, writer, control and three idle
//! workers, five at the least it accepts): 6000 threads for 1000 grouped tenants, each with a
//! kernel stack and a touched user stack, all walked by every `pivot_root` on the host
//! (`chroot_fs_refs`) and all parked in the process's futex hash. Here one thread polls the
//! listener and every connection and reads whole messages; requests go to a pool of workers
//! that grows while all are busy (a Wait holds one until its exit) and shrinks when they idle;
//! a worker writes its response itself, under the connection's write lock.
//!
//! The wire format is ttrpc's: a 10-byte header (length and stream id, big-endian u32s; type;
//! flags), then a protobuf `Request` or `Response`. Streams other than one request and one
//! response (data messages) are not part of the task service and are dropped.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::ttrpc::proto::{
    MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};
use containerd_shim::protos::ttrpc::{self, Code, MessageHeader, MethodHandler, Request, Response, TtrpcContext};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{recv, MsgFlags};

/// The services' methods by path (`/containerd.task.v2.Task/Create`), as ttrpc's code
/// generator builds them.
pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// Workers kept while idle; more are started while all are busy and leave after [`IDLE_EXIT`].
const IDLE_WORKERS: usize = 4;
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// What one readiness of a connection reads at most before the others get their turn.
const READ_PER_TURN: usize = 64 * 1024;
/// The poll thread's token for the listener; connections are known by their descriptor.
const LISTENER: u64 = u64::MAX;

/// Starts the poll thread on `listener`. It serves until the process exits.
pub fn start(listener: UnixListener, methods: Methods) -> std::io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(listener.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let pool = Arc::new(Pool::new(methods));
    std::thread::Builder::new()
        .name("ttrpc-poll".into())
        .stack_size(crate::SMALL_STACK)
        .spawn(move || Poller { epoll, listener, pool, connections: HashMap::new() }.run())?;
    Ok(())
}

/// One client's connection as its requests' handlers share it.
struct Connection {
    stream: UnixStream,
    /// Held while a response is written, so that responses of concurrent requests do not
    /// interleave.
    write: Mutex<()>,
    /// Reports the connection closed (its sender, in [`Reading`], dropped) to `ctx.cancel_rx`.
    cancel_rx: crossbeam::channel::Receiver<()>,
}

struct Poller {
    epoll: Epoll,
    listener: UnixListener,
    pool: Arc<Pool>,
    /// Open connections by descriptor.
    connections: HashMap<RawFd, Reading>,
}

/// A connection as the poll thread reads it.
struct Reading {
    connection: Arc<Connection>,
    /// Bytes of a message not yet whole.
    input: Vec<u8>,
    /// Bytes still to drop of a message longer than ttrpc allows.
    skip: usize,
    /// Dropped with this when the connection closes.
    _cancel: crossbeam::channel::Sender<()>,
}

/// What the input of a connection holds.
enum Frame {
    Whole(MessageHeader, Vec<u8>),
    /// A header announcing more than ttrpc allows: its body is dropped, the request refused.
    TooLong(MessageHeader),
}

impl Poller {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Every task is served by this thread: it must not end.
                    log::error!("ttrpc poll: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    LISTENER => self.accept(),
                    fd => self.read(fd as RawFd),
                }
            }
        }
    }

    fn accept(&mut self) {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("ttrpc accept: {e}");
                // Out of descriptors: let a moment pass rather than spin on the ready listener.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        };
        let fd = stream.as_raw_fd();
        if let Err(e) = self.epoll.add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, fd as u64)) {
            log::warn!("ttrpc poll of a new connection: {e}");
            return;
        }
        let (cancel, cancel_rx) = crossbeam::channel::bounded(0);
        let connection = Arc::new(Connection { stream, write: Mutex::new(()), cancel_rx });
        self.connections.insert(fd, Reading { connection, input: Vec::new(), skip: 0, _cancel: cancel });
    }

    /// Reads what the connection has (up to [`READ_PER_TURN`]) without blocking, and hands
    /// every whole request to the pool. End of stream or an error closes it.
    fn read(&mut self, fd: RawFd) {
        let Some(reading) = self.connections.get_mut(&fd) else { return };
        let mut chunk = [0u8; 16 * 1024];
        let mut read = 0;
        let open = loop {
            if read >= READ_PER_TURN {
                // Level-triggered: the rest is read at its next turn.
                break true;
            }
            match recv(fd, &mut chunk, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break false,
                Ok(n) => {
                    reading.input.extend_from_slice(&chunk[..n]);
                    read += n;
                }
                Err(nix::errno::Errno::EAGAIN) => break true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break false,
            }
        };
        for frame in take_frames(&mut reading.input, &mut reading.skip) {
            let (header, payload) = match frame {
                Frame::Whole(header, payload) => (header, Ok(payload)),
                Frame::TooLong(header) => {
                    let refused = format!("message length {} exceeds maximum {MESSAGE_LENGTH_MAX}", header.length);
                    (header, Err(refused))
                }
            };
            if header.type_ == MESSAGE_TYPE_REQUEST {
                self.pool.submit(Job { connection: reading.connection.clone(), header, payload });
            }
        }
        if !open {
            self.close(fd);
        }
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(reading) = self.connections.remove(&fd) {
            let _ = self.epoll.delete(reading.connection.stream.as_fd());
            // Handlers still running keep the socket open until their responses fail.
        }
    }
}

/// Splits the whole messages off the front of `input`. A message longer than ttrpc allows
/// comes out as its header alone, and its body is dropped as it arrives (`skip` counts what
/// is left of it), as ttrpc's server does: the connection goes on.
fn take_frames(input: &mut Vec<u8>, skip: &mut usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let dropped = (*skip).min(input.len() - at);
        at += dropped;
        *skip -= dropped;
        if *skip > 0 || input.len() - at < MESSAGE_HEADER_LENGTH {
            break;
        }
        let header = MessageHeader::from(&input[at..at + MESSAGE_HEADER_LENGTH]);
        let length = header.length as usize;
        if length > MESSAGE_LENGTH_MAX {
            at += MESSAGE_HEADER_LENGTH;
            *skip = length;
            frames.push(Frame::TooLong(header));
            continue;
        }
        let end = at + MESSAGE_HEADER_LENGTH + length;
        if input.len() < end {
            break;
        }
        frames.push(Frame::Whole(header, input[at + MESSAGE_HEADER_LENGTH..end].to_vec()));
        at = end;
    }
    input.drain(..at);
    frames
}

struct Job {
    connection: Arc<Connection>,
    header: MessageHeader,
    /// The request's bytes, or why it is refused unread.
    payload: Result<Vec<u8>, String>,
}

struct Pool {
    methods: Methods,
    state: Mutex<PoolState>,
    ready: Condvar,
}

struct PoolState {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job and not yet woken for one.
    idle: usize,
    /// Wake-ups sent and not yet taken by a worker.
    woken: usize,
}

impl Pool {
    fn new(methods: Methods) -> Pool {
        Pool {
            methods,
            state: Mutex::new(PoolState { jobs: VecDeque::new(), idle: 0, woken: 0 }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the job and wakes an idle worker for it, or starts one when none is idle.
    fn submit(self: &Arc<Self>, job: Job) {
        let mut state = self.lock();
        state.jobs.push_back(job);
        if state.idle > 0 {
            state.idle -= 1;
            state.woken += 1;
            drop(state);
            self.ready.notify_one();
            return;
        }
        drop(state);
        let pool = self.clone();
        // std's default stack: the handlers run the runtime library in-process.
        let started = std::thread::Builder::new().name("ttrpc-worker".into()).spawn(move || pool.work());
        if let Err(e) = started {
            // The job waits for a worker that is busy now.
            log::warn!("no thread for a ttrpc worker: {e}");
        }
    }

    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                self.handle(job);
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let deadline = std::time::Instant::now() + IDLE_EXIT;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                state = self.ready.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
                if state.woken > 0 {
                    // Woken for a job (which a worker coming back from its last may have
                    // taken already: then this one is idle again above).
                    state.woken -= 1;
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    state.idle -= 1;
                    // Busy workers (a Wait each) do not count: a few stay idle for the next
                    // requests whatever else runs.
                    if state.idle >= IDLE_WORKERS {
                        return;
                    }
                    break;
                }
            }
        }
    }

    /// Runs one request's handler and writes its response. An undecodable or too long request
    /// is answered INVALID_ARGUMENT; a handler that fails to respond closes the connection, as
    /// ttrpc's server does.
    fn handle(&self, job: Job) {
        let Job { connection, header, payload } = job;
        let stream_id = header.stream_id;
        let body = match payload.map(|p| Request::parse_from_bytes(&p).map_err(|e| e.to_string())) {
            Ok(Ok(request)) => self.call(&connection, header, request),
            Ok(Err(refused)) | Err(refused) => status_response(Code::INVALID_ARGUMENT, refused),
        };
        let written = match body {
            Some(body) => write_response(&connection, stream_id, &body),
            None => Err(std::io::ErrorKind::InvalidData.into()),
        };
        if written.is_err() {
            let _ = connection.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The encoded response of the method the request names.
    fn call(&self, connection: &Connection, header: MessageHeader, request: Request) -> Option<Vec<u8>> {
        let path = format!("/{}/{}", request.service, request.method);
        let Some(method) = self.methods.get(&path) else {
            return status_response(Code::UNIMPLEMENTED, format!("{path} does not exist"));
        };
        let (res_tx, res_rx) = std::sync::mpsc::channel();
        let ctx = TtrpcContext {
            fd: connection.stream.as_raw_fd(),
            cancel_rx: connection.cancel_rx.clone(),
            mh: header,
            res_tx,
            metadata: ttrpc::context::from_pb(&request.metadata),
            timeout_nano: request.timeout_nano,
        };
        if let Err(e) = method.handler(ctx, request) {
            log::debug!("{path}: {e:?}");
            return None;
        }
        // The generated handler has sent its encoded response by the time it returns.
        res_rx.try_recv().ok().map(|(_, body)| body)
    }
}

fn status_response(code: Code, message: String) -> Option<Vec<u8>> {
    let mut response = Response::new();
    response.set_status(ttrpc::get_status(code, message));
    response.write_to_bytes().ok()
}

fn write_response(connection: &Connection, stream_id: u32, body: &[u8]) -> std::io::Result<()> {
    let header = MessageHeader { length: body.len() as u32, stream_id, type_: MESSAGE_TYPE_RESPONSE, flags: 0 };
    let mut message: Vec<u8> = header.into();
    message.extend_from_slice(body);
    let _writing = connection.write.lock().unwrap_or_else(|e| e.into_inner());
    (&connection.stream).write_all(&message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::mpsc;

    /// `/test.T/Echo` answers the payload; `/test.T/Hold` answers once the test lets it go.
    struct Echo;
    struct Hold(Mutex<mpsc::Receiver<()>>);

    fn respond(ctx: TtrpcContext, payload: Vec<u8>) -> ttrpc::Result<()> {
        let mut response = Response::new();
        response.payload = payload;
        ttrpc::response_to_channel(ctx.mh.stream_id, response, ctx.res_tx)
    }

    impl MethodHandler for Echo {
        fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<()> {
            respond(ctx, req.payload)
        }
    }

    impl MethodHandler for Hold {
        fn handler(&self, ctx: TtrpcContext, _: Request) -> ttrpc::Result<()> {
            let _ = self.0.lock().unwrap().recv();
            respond(ctx, b"released".to_vec())
        }
    }

    fn server(dir: &std::path::Path) -> (String, mpsc::Sender<()>) {
        let path = dir.join("s.sock");
        let (release, held) = mpsc::channel();
        let mut methods: Methods = HashMap::new();
        methods.insert("/test.T/Echo".into(), Box::new(Echo));
        methods.insert("/test.T/Hold".into(), Box::new(Hold(Mutex::new(held))));
        start(UnixListener::bind(&path).unwrap(), methods).unwrap();
        (format!("unix://{}", path.display()), release)
    }

    fn request(method: &str, payload: &[u8]) -> Request {
        let mut req = Request::new();
        req.service = "test.T".into();
        req.method = method.into();
        req.payload = payload.to_vec();
        req
    }

    /// A request frame as ttrpc puts it on the wire.
    fn frame(stream_id: u32, req: &Request) -> Vec<u8> {
        let body = req.write_to_bytes().unwrap();
        let header = MessageHeader { length: body.len() as u32, stream_id, type_: MESSAGE_TYPE_REQUEST, flags: 0 };
        let mut bytes: Vec<u8> = header.into();
        bytes.extend(body);
        bytes
    }

    fn read_response(stream: &mut UnixStream) -> (MessageHeader, Response) {
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        stream.read_exact(&mut header).unwrap();
        let header = MessageHeader::from(header);
        let mut body = vec![0u8; header.length as usize];
        stream.read_exact(&mut body).unwrap();
        (header, Response::parse_from_bytes(&body).unwrap())
    }

    fn threads_named(prefix: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with(prefix))
            .count()
    }

    fn whole(frames: Vec<Frame>) -> Vec<(u32, Vec<u8>)> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Whole(header, payload) => (header.stream_id, payload),
                Frame::TooLong(header) => (header.stream_id, b"too long".to_vec()),
            })
            .collect()
    }

    #[test]
    fn splits_whole_messages_and_keeps_the_rest() {
        let a = frame(1, &request("Echo", b"one"));
        let b = frame(3, &request("Echo", b"two"));
        let (mut input, mut skip) = ([a.clone(), b[..7].to_vec()].concat(), 0);
        assert_eq!(whole(take_frames(&mut input, &mut skip)), [(1, a[MESSAGE_HEADER_LENGTH..].to_vec())]);
        assert_eq!(input, b[..7]);
        input.extend_from_slice(&b[7..]);
        assert_eq!(whole(take_frames(&mut input, &mut skip))[0].0, 3);
        assert!(input.is_empty());
    }

    #[test]
    fn a_message_too_long_is_skipped_as_it_arrives() {
        let too_long = MessageHeader { length: MESSAGE_LENGTH_MAX as u32 + 1, stream_id: 5, type_: 1, flags: 0 };
        let (mut input, mut skip) = (Vec::<u8>::from(too_long), 0);
        input.extend(vec![0u8; 1000]);
        assert_eq!(whole(take_frames(&mut input, &mut skip)), [(5, b"too long".to_vec())]);
        assert_eq!((input.len(), skip), (0, MESSAGE_LENGTH_MAX + 1 - 1000));
        let next = frame(7, &request("Echo", b"next"));
        input.extend(vec![0u8; MESSAGE_LENGTH_MAX + 1 - 1000]);
        input.extend_from_slice(&next);
        assert_eq!(whole(take_frames(&mut input, &mut skip)), [(7, next[MESSAGE_HEADER_LENGTH..].to_vec())]);
        assert_eq!((input.len(), skip), (0, 0));
    }

    #[test]
    fn a_held_request_does_not_hold_up_the_next_on_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (address, release) = server(dir.path());
        let client = ttrpc::Client::connect(&address).unwrap();
        let holder = client.clone();
        let held = std::thread::spawn(move || holder.request(request("Hold", b"")).unwrap().payload);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(client.request(request("Echo", b"meanwhile")).unwrap().payload, b"meanwhile");
        match client.request(request("Nope", b"")) {
            Err(ttrpc::Error::RpcStatus(status)) => assert_eq!(status.code(), Code::UNIMPLEMENTED),
            other => panic!("an unknown method answered {other:?}"),
        }
        release.send(()).unwrap();
        assert_eq!(held.join().unwrap(), b"released");
    }

    #[test]
    fn hundreds_of_connections_share_a_few_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (address, _release) = server(dir.path());
        let path = address.strip_prefix("unix://").unwrap();
        let mut streams: Vec<UnixStream> = (0..300).map(|_| UnixStream::connect(path).unwrap()).collect();
        let ask = |stream: &mut UnixStream, i: usize| {
            // Split across two writes: the server must wait for the whole message.
            let bytes = frame(2 * i as u32 + 1, &request("Echo", format!("c{i}").as_bytes()));
            stream.write_all(&bytes[..4]).unwrap();
            stream.write_all(&bytes[4..]).unwrap();
        };
        let answered = |stream: &mut UnixStream, i: usize| {
            let (header, response) = read_response(stream);
            assert_eq!((header.stream_id, header.type_), (2 * i as u32 + 1, MESSAGE_TYPE_RESPONSE));
            assert_eq!(response.payload, format!("c{i}").as_bytes());
        };
        // One request at a time over 300 open connections: ttrpc's own server would run
        // 1800 threads for them; other tests' servers in this process add theirs.
        for (i, stream) in streams.iter_mut().enumerate() {
            ask(stream, i);
            answered(stream, i);
        }
        let threads = threads_named("ttrpc-");
        assert!(threads < 30, "{threads} ttrpc threads for 300 connections");
        // All at once: every one is answered on its own connection.
        streams.iter_mut().enumerate().for_each(|(i, s)| ask(s, i));
        streams.iter_mut().enumerate().for_each(|(i, s)| answered(s, i));
    }

    #[test]
    fn a_request_too_long_is_refused_and_its_connection_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let (address, release) = server(dir.path());
        let path = address.strip_prefix("unix://").unwrap();
        // A held request keeps the connection busy meanwhile, as a pending Wait would.
        let mut conn = UnixStream::connect(path).unwrap();
        conn.write_all(&frame(1, &request("Hold", b""))).unwrap();
        let length = MESSAGE_LENGTH_MAX + 1;
        let too_long = MessageHeader { length: length as u32, stream_id: 3, type_: MESSAGE_TYPE_REQUEST, flags: 0 };
        let mut writer = conn.try_clone().unwrap();
        let sent = std::thread::spawn(move || {
            writer.write_all(&Vec::<u8>::from(too_long)).unwrap();
            writer.write_all(&vec![0u8; length]).unwrap();
            writer.write_all(&frame(5, &request("Echo", b"still here"))).unwrap();
        });
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (header, refused) = read_response(&mut conn);
        assert_eq!(header.stream_id, 3);
        assert_eq!(refused.status.code(), Code::INVALID_ARGUMENT);
        let (header, echoed) = read_response(&mut conn);
        assert_eq!((header.stream_id, echoed.payload), (5, b"still here".to_vec()));
        sent.join().unwrap();
        release.send(()).unwrap();
        assert_eq!(read_response(&mut conn).0.stream_id, 1);
    }
}
