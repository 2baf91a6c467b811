//! Task events to containerd, in the order the shim queued them. Events are queued under the
//! task table's lock (so their order is the order of the state changes) and sent by one thread,
//! so that a slow containerd never holds up an RPC or the reaper.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::time::{Duration, SystemTime};

use containerd_shim::protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::events::{Envelope, ForwardRequest};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::{Client, EventsClient};

/// One event, as containerd's task event types.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Oom(TaskOOM),
    Checkpointed(TaskCheckpointed),
}

impl Event {
    /// Topic, type name and encoded message. The names are written out rather than looked up
    /// through protobuf reflection, whose descriptor tables would stay resident in every shim.
    fn encode(&self) -> (&'static str, &'static str, Vec<u8>) {
        let (topic, name, bytes) = match self {
            Event::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, "TaskCreate", e.write_to_bytes()),
            Event::Start(e) => (topics::TASK_START_EVENT_TOPIC, "TaskStart", e.write_to_bytes()),
            Event::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, "TaskExit", e.write_to_bytes()),
            Event::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, "TaskDelete", e.write_to_bytes()),
            Event::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, "TaskExecAdded", e.write_to_bytes()),
            Event::ExecStarted(e) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, "TaskExecStarted", e.write_to_bytes()),
            Event::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, "TaskPaused", e.write_to_bytes()),
            Event::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, "TaskResumed", e.write_to_bytes()),
            Event::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, "TaskOOM", e.write_to_bytes()),
            Event::Checkpointed(e) => (topics::TASK_CHECKPOINTED_EVENT_TOPIC, "TaskCheckpointed", e.write_to_bytes()),
        };
        (topic, name, bytes.unwrap_or_default())
    }
}

enum Queued {
    Event(Event),
    /// Answered once everything queued before it has been sent.
    Flush(SyncSender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Queued>,
}

impl Events {
    /// Connects to containerd's ttrpc `address` and starts the sender thread.
    pub fn start(address: &str, namespace: String) -> std::io::Result<Events> {
        let client = connect(address)?;
        let (tx, rx) = channel();
        let address = address.to_string();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || send_all(rx, Connection { address, client: Some(client) }, &namespace))?;
        Ok(Events { tx })
    }

    pub fn send(&self, event: Event) {
        // The receiver lives as long as the process.
        let _ = self.tx.send(Queued::Event(event));
    }

    /// Waits (at most `timeout`) until every event queued so far has gone out.
    pub fn flush(&self, timeout: Duration) {
        let (done_tx, done_rx) = sync_channel(1);
        if self.tx.send(Queued::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

fn connect(address: &str) -> std::io::Result<EventsClient> {
    let fd = containerd_shim::util::connect(address).map_err(std::io::Error::other)?;
    Ok(EventsClient::new(Client::new(fd).map_err(std::io::Error::other)?))
}

/// How long the connection to containerd stays open after the last event. An open ttrpc
/// client polls its socket every 10 ms, which across hundreds of idle shims is real CPU;
/// events come in bursts (create, start, exit, delete), so it is opened again when needed.
const IDLE_CLOSE: Duration = Duration::from_secs(2);

/// containerd's events service, connected while events flow.
struct Connection {
    address: String,
    client: Option<EventsClient>,
}

impl Connection {
    /// Sends `req`, once more on a new connection if the one kept open has broken meanwhile.
    fn forward(&mut self, req: &ForwardRequest) -> Result<(), String> {
        let reused = self.client.is_some();
        let sent = self.forward_once(req);
        if sent.is_err() && reused {
            return self.forward_once(req);
        }
        sent
    }

    fn forward_once(&mut self, req: &ForwardRequest) -> Result<(), String> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(connect(&self.address).map_err(|e| e.to_string())?),
        };
        let sent = client.forward(Context::default(), req).map(drop).map_err(|e| e.to_string());
        if sent.is_err() {
            self.client = None;
        }
        sent
    }
}

fn send_all(rx: Receiver<Queued>, mut conn: Connection, namespace: &str) {
    loop {
        let queued = match conn.client {
            Some(_) => match rx.recv_timeout(IDLE_CLOSE) {
                Ok(q) => q,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    conn.client = None;
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(q) => q,
                Err(_) => return,
            },
        };
        match queued {
            Queued::Event(event) => {
                let (topic, name, value) = event.encode();
                let envelope = Envelope {
                    timestamp: crate::tasks::timestamp(SystemTime::now()),
                    namespace: namespace.into(),
                    topic: topic.into(),
                    event: MessageField::some(Any {
                        type_url: format!("containerd.events.{name}"),
                        value,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let req = ForwardRequest { envelope: MessageField::some(envelope), ..Default::default() };
                if let Err(e) = conn.forward(&req) {
                    log::warn!("publish {topic}: {e}");
                }
            }
            Queued::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// What a test queued, by topic.
#[cfg(test)]
pub(crate) struct Recorder(Receiver<Queued>);

#[cfg(test)]
impl Recorder {
    pub(crate) fn topics(&self) -> Vec<&'static str> {
        self.0
            .try_iter()
            .filter_map(|q| match q {
                Queued::Event(e) => Some(e.encode().0),
                Queued::Flush(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
impl Events {
    /// Events that are kept for the test instead of sent.
    pub(crate) fn recorder() -> (Events, Recorder) {
        let (tx, rx) = channel();
        (Events { tx }, Recorder(rx))
    }
}
