//! The scaling decision as a pure function of what the pods report, the policy and the
//! stabilization windows carried between polls.
//!
//! Load is measured in absolute terms (requests in the system, KV-cache pod-equivalents),
//! and the recommendation is what would carry that load at the target. So pods that are
//! still starting already count as capacity: a burst that needs 4 replicas asks for 4, and
//! asks for 4 again on the next poll while they load the model, instead of compounding.

use std::time::{Duration, Instant};

/// Load within ±10% of the target does not move the replica count (as HPA's tolerance).
pub const TOLERANCE: f64 = 0.1;

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Waiting + running requests per replica.
    pub target_requests_per_replica: Option<f64>,
    /// Mean KV-cache usage (0–1).
    pub target_kv_cache_usage: Option<f64>,
    pub scale_up_stabilization: Duration,
    pub scale_down_delay: Duration,
}

/// What one pod of the deployment reported this poll.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PodSample {
    Metrics { waiting: f64, running: f64, kv_cache_usage: f64 },
    /// Ready, but its metrics could not be read: its load is unknown, not zero.
    Unknown,
    /// Not ready yet (loading the model).
    Starting,
}

/// Carried from one poll to the next, per LLMDeployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Windows {
    /// Since when the load has asked for more replicas without a break.
    pub above_since: Option<Instant>,
    /// Since when the load has allowed fewer replicas without a break (or the last step down).
    pub below_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Load within tolerance of the target.
    Stable,
    /// Raised to minReplicas / lowered to maxReplicas.
    BelowMinReplicas,
    AboveMaxReplicas,
    /// Scaled up for waiting + running requests, or for KV-cache usage.
    RequestLoad,
    KvCacheUsage,
    /// Above target, inside scaleUpStabilizationSeconds.
    ScaleUpStabilizing,
    /// Below target, inside scaleDownDelaySeconds.
    ScaleDownDelayed,
    /// One step down after scaleDownDelaySeconds below target.
    LowLoad,
    /// A ready pod could not be scraped: never scale down on missing data.
    MissingMetrics,
    /// No pod could be scraped at all.
    NoMetrics,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "Stable",
            Self::BelowMinReplicas => "BelowMinReplicas",
            Self::AboveMaxReplicas => "AboveMaxReplicas",
            Self::RequestLoad => "RequestLoad",
            Self::KvCacheUsage => "KvCacheUsage",
            Self::ScaleUpStabilizing => "ScaleUpStabilizing",
            Self::ScaleDownDelayed => "ScaleDownDelayed",
            Self::LowLoad => "LowLoad",
            Self::MissingMetrics => "MissingMetrics",
            Self::NoMetrics => "NoMetrics",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub desired: i32,
    pub reason: Reason,
}

/// Aggregates of one poll, also reported in the status.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub scraped: usize,
    pub unknown: usize,
    pub starting: usize,
    pub waiting: f64,
    pub running: f64,
    /// Sum over scraped pods.
    pub kv_cache_usage: f64,
}

impl Load {
    pub fn of(pods: &[PodSample]) -> Self {
        let mut l = Load::default();
        for p in pods {
            match *p {
                PodSample::Metrics { waiting, running, kv_cache_usage } => {
                    l.scraped += 1;
                    l.waiting += waiting.max(0.0);
                    l.running += running.max(0.0);
                    l.kv_cache_usage += kv_cache_usage.clamp(0.0, 1.0);
                }
                PodSample::Unknown => l.unknown += 1,
                PodSample::Starting => l.starting += 1,
            }
        }
        l
    }

    /// Requests in the system, counting each unscraped ready pod at the scraped pods' mean.
    fn requests(&self) -> f64 {
        let total = self.waiting + self.running;
        total + total / self.scraped as f64 * self.unknown as f64
    }

    fn kv(&self) -> f64 {
        self.kv_cache_usage + self.kv_cache_usage / self.scraped as f64 * self.unknown as f64
    }
}

/// Replicas that carry `amount` at `target` each.
fn needed(amount: f64, target: f64) -> i32 {
    (amount / target).ceil().clamp(0.0, i32::MAX as f64) as i32
}

/// `current` is the replica count last decided (what the Deployment is asked to run);
/// `load` aggregates what the pods reported (`Load::of`).
pub fn decide(policy: &Policy, current: i32, load: &Load, windows: &mut Windows, now: Instant) -> Decision {
    let (min, max) = (policy.min_replicas, policy.max_replicas.max(policy.min_replicas));
    if current < min {
        *windows = Windows::default();
        return Decision { desired: min, reason: Reason::BelowMinReplicas };
    }
    if current > max {
        *windows = Windows::default();
        return Decision { desired: max, reason: Reason::AboveMaxReplicas };
    }
    let hold = |reason| Decision { desired: current, reason };
    if load.scraped == 0 {
        // Nothing to go on (all pods starting or unreachable, or none): keep what there is.
        windows.below_since = None;
        windows.above_since = None;
        return hold(if load.starting > 0 && load.unknown == 0 { Reason::Stable } else { Reason::NoMetrics });
    }
    // Each metric recommends a count for going up (needs more than target + tolerance) and
    // one for going down (fits under target − tolerance); up wins if any metric asks.
    let mut up: Option<(i32, Reason)> = None;
    let mut down_ok = true;
    let mut down_to = 0;
    let targets = [
        (policy.target_requests_per_replica, load.requests(), Reason::RequestLoad),
        (policy.target_kv_cache_usage, load.kv(), Reason::KvCacheUsage),
    ];
    for (target, amount, reason) in targets {
        let Some(target) = target.filter(|t| *t > 0.0) else { continue };
        let up_rec = needed(amount, target * (1.0 + TOLERANCE));
        if up_rec > current && up.is_none_or(|(r, _)| up_rec > r) {
            up = Some((up_rec, reason));
        }
        let down_rec = needed(amount, target * (1.0 - TOLERANCE));
        down_ok &= down_rec < current;
        down_to = down_to.max(down_rec);
    }
    if let Some((rec, reason)) = up {
        windows.below_since = None;
        let since = *windows.above_since.get_or_insert(now);
        if now.duration_since(since) < policy.scale_up_stabilization {
            return hold(Reason::ScaleUpStabilizing);
        }
        windows.above_since = None;
        let desired = rec.min(max);
        return Decision { desired, reason: if desired == rec { reason } else { Reason::AboveMaxReplicas } };
    }
    windows.above_since = None;
    if !down_ok || down_to.max(min) >= current {
        windows.below_since = None;
        return hold(Reason::Stable);
    }
    if load.unknown > 0 {
        windows.below_since = None;
        return hold(Reason::MissingMetrics);
    }
    let since = *windows.below_since.get_or_insert(now);
    if now.duration_since(since) < policy.scale_down_delay {
        return hold(Reason::ScaleDownDelayed);
    }
    // One step, then a full delay again before the next.
    windows.below_since = Some(now);
    Decision { desired: (current - 1).max(min), reason: Reason::LowLoad }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PodSample::{Metrics, Starting, Unknown};

    fn policy() -> Policy {
        Policy {
            min_replicas: 1,
            max_replicas: 8,
            target_requests_per_replica: Some(10.0),
            target_kv_cache_usage: Some(0.8),
            scale_up_stabilization: Duration::ZERO,
            scale_down_delay: Duration::from_secs(300),
        }
    }

    fn busy(waiting: f64, running: f64) -> PodSample {
        Metrics { waiting, running, kv_cache_usage: 0.1 }
    }

    fn kv(usage: f64) -> PodSample {
        Metrics { waiting: 0.0, running: 1.0, kv_cache_usage: usage }
    }

    /// One poll of a scenario: seconds since start, replicas asked now, what pods report,
    /// and the expected decision.
    struct Step {
        at: u64,
        current: i32,
        pods: Vec<PodSample>,
        want: (i32, Reason),
    }

    fn run(policy: &Policy, steps: Vec<Step>) {
        let t0 = Instant::now();
        let mut w = Windows::default();
        for (i, s) in steps.into_iter().enumerate() {
            let d = decide(policy, s.current, &Load::of(&s.pods), &mut w, t0 + Duration::from_secs(s.at));
            assert_eq!((d.desired, d.reason), s.want, "step {i} (t={}s)", s.at);
        }
    }

    fn step(at: u64, current: i32, pods: Vec<PodSample>, want: (i32, Reason)) -> Step {
        Step { at, current, pods, want }
    }

    #[test]
    fn single_polls() {
        use Reason::*;
        let p = policy();
        // (current, pods, expected) with no window carried over.
        let table: Vec<(i32, Vec<PodSample>, (i32, Reason))> = vec![
            (1, vec![busy(0.0, 5.0)], (1, Stable)),
            (1, vec![busy(0.0, 11.0)], (1, Stable)),          // inside tolerance
            (1, vec![busy(20.0, 10.0)], (3, RequestLoad)),    // 30 requests / (10 × 1.1)
            (2, vec![busy(30.0, 10.0), busy(30.0, 10.0)], (8, RequestLoad)),
            (2, vec![busy(100.0, 10.0), busy(100.0, 10.0)], (8, AboveMaxReplicas)), // 20 wanted
            (1, vec![kv(0.95)], (2, KvCacheUsage)),
            (2, vec![kv(0.95), kv(0.95)], (3, KvCacheUsage)),
            (2, vec![kv(0.3), kv(0.2)], (2, ScaleDownDelayed)),
            (0, vec![], (1, BelowMinReplicas)),
            (9, vec![busy(0.0, 1.0)], (8, AboveMaxReplicas)),
            (2, vec![Starting, Starting], (2, Stable)),
            (2, vec![Unknown, Starting], (2, NoMetrics)),
            (1, vec![], (1, NoMetrics)),
            // An unscraped pod counts at the others' mean: 2 pods × 12 requests → 3.
            (2, vec![busy(2.0, 10.0), Unknown], (3, RequestLoad)),
            (2, vec![busy(0.0, 0.0), Unknown], (2, MissingMetrics)),
        ];
        for (i, (current, pods, want)) in table.into_iter().enumerate() {
            let d = decide(&p, current, &Load::of(&pods), &mut Windows::default(), Instant::now());
            assert_eq!((d.desired, d.reason), want, "row {i}");
        }
    }

    #[test]
    fn burst_while_new_pods_start_does_not_compound() {
        use Reason::*;
        run(&policy(), vec![
            step(0, 1, vec![busy(35.0, 10.0)], (5, RequestLoad)),
            // The queue is still on the first pod while four load the model: still 5.
            step(5, 5, vec![busy(35.0, 10.0), Starting, Starting, Starting, Starting], (5, Stable)),
            step(10, 5, vec![busy(30.0, 10.0), busy(0.0, 5.0), Starting, Starting, Starting], (5, Stable)),
            step(15, 5, vec![busy(0.0, 9.0); 5], (5, Stable)),
        ]);
    }

    #[test]
    fn scale_up_stabilization_needs_sustained_load() {
        use Reason::*;
        let p = Policy { scale_up_stabilization: Duration::from_secs(10), ..policy() };
        run(&p, vec![
            step(0, 1, vec![busy(30.0, 10.0)], (1, ScaleUpStabilizing)),
            step(5, 1, vec![busy(30.0, 10.0)], (1, ScaleUpStabilizing)),
            step(10, 1, vec![busy(30.0, 10.0)], (4, RequestLoad)),
            // A dip resets the window.
            step(15, 4, vec![busy(60.0, 10.0); 4], (4, ScaleUpStabilizing)),
            step(20, 4, vec![busy(0.0, 9.0); 4], (4, Stable)),
            step(25, 4, vec![busy(60.0, 10.0); 4], (4, ScaleUpStabilizing)),
            step(35, 4, vec![busy(60.0, 10.0); 4], (8, AboveMaxReplicas)),
        ]);
    }

    #[test]
    fn scale_down_one_step_per_delay() {
        use Reason::*;
        run(&policy(), vec![
            step(0, 4, vec![busy(0.0, 1.0); 4], (4, ScaleDownDelayed)),
            step(299, 4, vec![busy(0.0, 1.0); 4], (4, ScaleDownDelayed)),
            step(300, 4, vec![busy(0.0, 1.0); 4], (3, LowLoad)),
            step(305, 3, vec![busy(0.0, 1.0); 3], (3, ScaleDownDelayed)),
            step(600, 3, vec![busy(0.0, 1.0); 3], (2, LowLoad)),
            step(900, 2, vec![busy(0.0, 1.0); 2], (1, LowLoad)),
            step(1200, 1, vec![busy(0.0, 0.0)], (1, Stable)), // minReplicas
        ]);
    }

    #[test]
    fn flapping_load_never_scales_down() {
        use Reason::*;
        // Below target most of the time, but back near target every few polls: the delay
        // restarts each time, so the replicas stay.
        let mut steps = vec![];
        for i in 0..20u64 {
            let pods = if i % 4 == 3 { vec![busy(0.0, 9.5); 3] } else { vec![busy(0.0, 2.0); 3] };
            let want = if i % 4 == 3 { (3, Stable) } else { (3, ScaleDownDelayed) };
            steps.push(step(i * 100, 3, pods, want));
        }
        run(&policy(), steps);
    }

    #[test]
    fn missing_pods_block_scale_down_but_not_up() {
        use Reason::*;
        run(&policy(), vec![
            step(0, 3, vec![busy(0.0, 0.0), busy(0.0, 0.0), Unknown], (3, MissingMetrics)),
            step(400, 3, vec![busy(0.0, 0.0), busy(0.0, 0.0), Unknown], (3, MissingMetrics)),
            // Back: the delay starts only now.
            step(500, 3, vec![busy(0.0, 0.0); 3], (3, ScaleDownDelayed)),
            step(800, 3, vec![busy(0.0, 0.0); 3], (2, LowLoad)),
            step(805, 2, vec![busy(40.0, 10.0), Unknown], (8, AboveMaxReplicas)),
        ]);
    }

    #[test]
    fn min_max_and_zero() {
        use Reason::*;
        let p = Policy { min_replicas: 2, max_replicas: 3, scale_down_delay: Duration::ZERO, ..policy() };
        run(&p, vec![
            step(0, 1, vec![busy(0.0, 0.0)], (2, BelowMinReplicas)),
            step(1, 2, vec![busy(0.0, 0.0); 2], (2, Stable)),
            step(2, 3, vec![busy(0.0, 0.0); 3], (2, LowLoad)),
            step(3, 2, vec![busy(100.0, 10.0); 2], (3, AboveMaxReplicas)),
            step(4, 5, vec![busy(0.0, 0.0); 5], (3, AboveMaxReplicas)),
        ]);
        // minReplicas 0: an idle deployment goes to zero after the delay...
        let p = Policy { min_replicas: 0, scale_down_delay: Duration::ZERO, ..policy() };
        let idle = Metrics { waiting: 0.0, running: 0.0, kv_cache_usage: 0.0 };
        run(&p, vec![step(0, 1, vec![idle], (0, LowLoad)), step(1, 0, vec![], (0, NoMetrics))]);
    }
}
