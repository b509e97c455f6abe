//! Wall time per op of the forward pass, summed over steps: where a step goes at a given batch
//! size (`cargo bench -p kandle-server --bench engine -- profile 16`). Off unless enabled;
//! when off, an op costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The timed ops, in forward order.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// q/k/v projection (fused or not), rotary embedding and q/k norms included.
    Qkv,
    /// Paged attention, the KV-cache write included.
    Attention,
    OProj,
    /// The residual add and RMS norm after attention and after the MLP.
    AddNorm,
    /// gate/up projection (fused or not).
    GateUp,
    /// `silu(gate) * up`.
    SiluMul,
    DownProj,
    /// Final norm and the output projection.
    LmHead,
}

impl Op {
    pub const ALL: [Op; 8] = [Op::Qkv, Op::Attention, Op::OProj, Op::AddNorm, Op::GateUp, Op::SiluMul, Op::DownProj, Op::LmHead];

    pub fn name(self) -> &'static str {
        match self {
            Op::Qkv => "qkv_proj+rope",
            Op::Attention => "attention",
            Op::OProj => "o_proj",
            Op::AddNorm => "add+rms_norm",
            Op::GateUp => "gate_up_proj",
            Op::SiluMul => "silu_mul",
            Op::DownProj => "down_proj",
            Op::LmHead => "norm+lm_head",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];

/// Starts (or stops) timing ops, from zero.
pub fn enable(on: bool) {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Time spent in each op since [`enable`].
pub fn totals() -> Vec<(Op, Duration)> {
    Op::ALL.iter().map(|&op| (op, Duration::from_nanos(NANOS[op as usize].load(Ordering::Relaxed)))).collect()
}

/// Runs `f`, adding its wall time to `op` when profiling is on.
#[inline]
pub fn timed<T>(op: Op, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    NANOS[op as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}
