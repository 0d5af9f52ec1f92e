//! Compiling off the vCPU thread: a vCPU hands its hot blocks to a thread
//! of its own that owns the code memory, and keeps interpreting them until
//! the code comes back (the run loop installs it between blocks).
//!
//! Code memory is freed only when the vCPU, between blocks and with every
//! block and translation dropped, asks for it; results of requests made
//! before that are discarded by their epoch.

use super::{EnterFn, Jit};
use crate::cpu::exec::Block;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

enum Request {
    Compile {
        block: Arc<Block>,
        smp: bool,
        bits: u32,
        epoch: u64,
    },
    /// Free all code and start afresh (no code of an older epoch runs
    /// any more).
    Reset { epoch: u64 },
}

/// What the worker sends back.
pub(crate) enum Done {
    /// The trampoline into the code memory of `epoch`.
    Enter(EnterFn, u64),
    /// The code for a block (or why there is none).
    Code {
        block: Arc<Block>,
        result: Result<(usize, [Option<u64>; 2]), String>,
        epoch: u64,
    },
    /// The code memory of `epoch` is full: the vCPU must drop every block
    /// and ask for a reset.
    Full(u64),
}

/// The vCPU's side of its compiling thread.
pub(crate) struct Worker {
    tx: Sender<Request>,
    rx: Receiver<Done>,
    /// Results waiting in `rx` (checked between blocks without locking).
    ready: Arc<AtomicUsize>,
    /// The trampoline into the current code memory, once the worker sent it.
    pub(crate) enter: Option<EnterFn>,
    /// Current epoch of the code memory.
    pub(crate) epoch: u64,
    /// Blocks translated (for statistics).
    pub(crate) blocks: Arc<AtomicU64>,
}

impl Worker {
    /// Starts the thread, which keeps up to `max_code` bytes of host code
    /// before asking for a reset; `None` if it cannot be made (the vCPU
    /// compiles on its own thread instead).
    pub(crate) fn start(max_code: usize) -> Option<Self> {
        let (tx, req_rx) = channel::<Request>();
        let (done_tx, rx) = channel::<Done>();
        let ready = Arc::new(AtomicUsize::new(0));
        let blocks = Arc::new(AtomicU64::new(0));
        let (r, b) = (ready.clone(), blocks.clone());
        std::thread::Builder::new()
            .name("vireo-jit".into())
            .spawn(move || serve(req_rx, done_tx, r, b, max_code))
            .ok()?;
        Some(Worker {
            tx,
            rx,
            ready,
            enter: None,
            epoch: 0,
            blocks,
        })
    }

    /// Asks for `block` to be compiled.
    pub(crate) fn request(&self, block: Arc<Block>, smp: bool, bits: u32) {
        let _ = self.tx.send(Request::Compile {
            block,
            smp,
            bits,
            epoch: self.epoch,
        });
    }

    /// Starts a new epoch: no older code may run from now on.
    pub(crate) fn reset(&mut self) {
        self.epoch += 1;
        self.enter = None;
        let _ = self.tx.send(Request::Reset { epoch: self.epoch });
    }

    /// True if results wait.
    #[inline(always)]
    pub(crate) fn has_results(&self) -> bool {
        self.ready.load(Ordering::Relaxed) != 0
    }

    /// The results waiting.
    pub(crate) fn results(&mut self) -> Vec<Done> {
        let mut v = Vec::new();
        while let Ok(d) = self.rx.try_recv() {
            self.ready.fetch_sub(1, Ordering::Relaxed);
            v.push(d);
        }
        v
    }
}

fn serve(
    rx: Receiver<Request>,
    tx: Sender<Done>,
    ready: Arc<AtomicUsize>,
    blocks: Arc<AtomicU64>,
    max_code: usize,
) {
    let send = |d: Done| {
        ready.fetch_add(1, Ordering::Relaxed);
        tx.send(d).is_ok()
    };
    let mut jit = match Jit::new() {
        Ok(mut j) => {
            j.max_code = max_code;
            j
        }
        Err(e) => {
            tracing::warn!("JIT unavailable ({e}): interpreting");
            return;
        }
    };
    let mut epoch = 0;
    let mut full_sent = false;
    if !send(Done::Enter(jit.enter, epoch)) {
        return;
    }
    for req in rx {
        match req {
            Request::Compile {
                block,
                smp,
                bits,
                epoch: e,
            } => {
                if e != epoch {
                    continue;
                }
                if jit.full() {
                    if !full_sent {
                        full_sent = true;
                        if !send(Done::Full(epoch)) {
                            return;
                        }
                    }
                    continue;
                }
                // A panic in the code generator must not take the VM down:
                // the block just stays interpreted.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    jit.compile(block.insns(), smp, bits)
                }))
                .unwrap_or_else(|_| Err("code generator panicked".into()));
                blocks.store(jit.blocks, Ordering::Relaxed);
                if !send(Done::Code {
                    block,
                    result,
                    epoch,
                }) {
                    return;
                }
            }
            Request::Reset { epoch: e } => {
                // SAFETY: the vCPU dropped every block and translation of
                // older epochs and runs no translated code until it has the
                // new trampoline.
                if let Err(err) = unsafe { jit.reset() } {
                    tracing::warn!("JIT: {err}; interpreting from now on");
                    return;
                }
                epoch = e;
                full_sent = false;
                if !send(Done::Enter(jit.enter, epoch)) {
                    return;
                }
            }
        }
    }
}
