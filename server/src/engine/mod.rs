//! The engine thread and the cheap handle callers use to reach it. The thread owns all
//! inference state; callers only send commands and read per-request event streams.

pub mod beam;
pub mod block_manager;
pub mod constraint;
pub mod core;
pub mod params;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stats;

pub use self::core::{EngineConfig, EngineCore, Limits};
pub use params::*;
pub use stats::{EngineStats, StatsSnapshot};

use crate::tokenizer::TokenizerInfo;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

enum Command {
    Submit(GenerateRequest, UnboundedSender<RequestEvent>),
    Abort(String),
}

/// The events of one request, ending with `Finished` or `Error`.
pub type RequestStream = UnboundedReceiver<RequestEvent>;

#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    limits: Limits,
    stats: Arc<EngineStats>,
    tokenizer: Arc<TokenizerInfo>,
}

impl EngineHandle {
    /// Starts the engine thread. It runs until every handle is dropped and work is done.
    pub fn spawn(core: EngineCore) -> Self {
        // Bounded: a flood of submissions applies back-pressure instead of growing memory.
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let handle = Self { tx, limits: core.limits(), stats: core.stats.clone(), tokenizer: core.tokenizer().clone() };
        std::thread::Builder::new()
            .name("kandle-engine".into())
            .spawn(move || run(core, rx))
            .expect("spawning the engine thread");
        handle
    }

    /// Queues a request. Invalid requests are rejected here, before reaching the engine.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestStream, EngineError> {
        self.limits.check(&req)?;
        let (sink, stream) = unbounded_channel();
        self.tx.send(Command::Submit(req, sink)).map_err(|_| EngineError::EngineStopped)?;
        Ok(stream)
    }

    pub fn abort(&self, request_id: &str) {
        let _ = self.tx.send(Command::Abort(request_id.to_string()));
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
    pub fn limits(&self) -> Limits {
        self.limits
    }
    pub fn tokenizer(&self) -> &Arc<TokenizerInfo> {
        &self.tokenizer
    }
}

fn apply(core: &mut EngineCore, cmd: Command) {
    match cmd {
        Command::Submit(req, sink) => {
            if let Err(e) = core.add_request(req, sink.clone()) {
                let _ = sink.send(RequestEvent::Error(e));
            }
        }
        Command::Abort(id) => {
            core.abort(&id);
        }
    }
}

fn run(mut core: EngineCore, rx: Receiver<Command>) {
    loop {
        // Idle: block until something arrives. Busy: take what is queued, then step.
        if !core.has_work() {
            match rx.recv() {
                Ok(cmd) => apply(&mut core, cmd),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => apply(&mut core, cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if core.has_work() => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        core.step();
    }
}
