//! Task events to containerd, in the order the shim queued them. Events are queued under the
//! task table's lock (so their order is the order of the state changes) and sent by one thread,
//! so that a slow containerd never holds up an RPC or the reaper.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::time::Duration;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

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
}

impl Event {
    fn into_topic_and_message(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Event::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e)),
            Event::Start(e) => (topics::TASK_START_EVENT_TOPIC, Box::new(e)),
            Event::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e)),
            Event::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e)),
            Event::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e)),
            Event::ExecStarted(e) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e)),
            Event::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e)),
            Event::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e)),
            Event::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, Box::new(e)),
        }
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
    /// Starts the sender thread.
    pub fn start(publisher: RemotePublisher, namespace: String) -> std::io::Result<Events> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || send_all(rx, publisher, &namespace))?;
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

fn send_all(rx: Receiver<Queued>, publisher: RemotePublisher, namespace: &str) {
    for queued in rx {
        match queued {
            Queued::Event(event) => {
                let (topic, message) = event.into_topic_and_message();
                if let Err(e) = publisher.publish(Context::default(), topic, namespace, message) {
                    log::warn!("publish {topic}: {e}");
                }
            }
            Queued::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
