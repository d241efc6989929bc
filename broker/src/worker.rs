//! The policy thread. Lua runs on one thread that owns the policy; connections hand it
//! events and wait for the outcome. The instruction hook stops Lua code that runs too
//! long, but a handler blocked inside a C function (`os.execute`, `io.read`) cannot be
//! interrupted: the waiting connection gives up once the handler has run past the
//! limit and fails the call closed. Time spent queued behind other calls does not
//! count against a call's limit; only a policy that stays busy for longer than the
//! preload waits (`QUEUE_LIMIT`) fails queued calls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::policy::{Outcome, Policy, Verdict};

/// How long a call may wait for the policy thread to start on it.
const QUEUE_LIMIT: Duration = Duration::from_secs(4);
/// How long a call may wait in all, queue and handler: under the 5 s a target waits
/// for an answer, so the broker always answers first (with a fail-closed deny).
const OVERALL_LIMIT: Duration = Duration::from_millis(4500);
/// How often a waiting connection looks at the clock.
const TICK: Duration = Duration::from_millis(10);

/// What a job's caller and the policy thread share.
#[derive(Default)]
struct JobState {
    /// When the policy thread started the handler (ns since the worker's epoch + 1);
    /// 0 while queued.
    started: AtomicU64,
    /// The caller gave up: skip the job.
    abandoned: AtomicBool,
}

struct Job {
    event: Event,
    state: Arc<JobState>,
    reply: mpsc::SyncSender<Outcome>,
}

pub struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    mask: u64,
    hash: Arc<str>,
    name: String,
    /// How long a running handler may take before its caller fails it closed.
    patience: Duration,
    epoch: Instant,
}

impl Worker {
    pub fn start(policy: Policy) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mask = policy.mask();
        let hash = Arc::from(policy.hash());
        let name = policy.name().to_owned();
        let timeout = policy.timeout();
        let epoch = Instant::now();
        std::thread::Builder::new().name("hermes-policy".into()).spawn(move || {
            for job in rx {
                if job.state.abandoned.load(Ordering::Relaxed) {
                    continue;
                }
                job.state.started.store(nanos_since(epoch) + 1, Ordering::Relaxed);
                let _ = job.reply.send(policy.decide(&job.event));
            }
        })?;
        // The instruction hook fires at the limit; the margin covers its granularity.
        let patience = timeout + (timeout / 2).max(Duration::from_millis(50));
        Ok(Worker { jobs: Mutex::new(tx), mask, hash, name, patience, epoch })
    }

    pub fn mask(&self) -> u64 {
        self.mask
    }

    pub fn hash(&self) -> &Arc<str> {
        &self.hash
    }

    /// The policy's outcome for `event`, or a fail-closed deny if none comes in time.
    pub fn decide(&self, event: &Event) -> Outcome {
        let (reply, outcome) = mpsc::sync_channel(1);
        let state = Arc::new(JobState::default());
        let job = Job { event: event.clone(), state: Arc::clone(&state), reply };
        let queued = Instant::now();
        if self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job).is_err() {
            return self.fail("the policy thread is gone".into());
        }
        loop {
            match outcome.recv_timeout(TICK) {
                Ok(outcome) => return outcome,
                Err(RecvTimeoutError::Disconnected) => return self.fail("the policy thread is gone".into()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let started = state.started.load(Ordering::Relaxed);
            let late = if queued.elapsed() > OVERALL_LIMIT {
                Some(format!("no decision within {} ms", OVERALL_LIMIT.as_millis()))
            } else if started == 0 {
                (queued.elapsed() > QUEUE_LIMIT).then(|| {
                    format!("policy busy: the call waited {} ms for the policy thread", QUEUE_LIMIT.as_millis())
                })
            } else {
                let running = Duration::from_nanos(nanos_since(self.epoch).saturating_sub(started - 1));
                (running > self.patience).then(|| {
                    format!(
                        "policy time limit exceeded: no decision within {} ms (a handler blocked outside Lua?)",
                        self.patience.as_millis()
                    )
                })
            };
            if let Some(why) = late {
                state.abandoned.store(true, Ordering::Relaxed);
                return self.fail(why);
            }
        }
    }

    fn fail(&self, why: String) -> Outcome {
        Outcome {
            verdict: Verdict::Deny(libc::EPERM),
            handler: "error",
            logs: Vec::new(),
            error: Some(format!("{}: {why}", self.name)),
        }
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
}
