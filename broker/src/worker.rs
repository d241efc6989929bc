//! The policy thread. Lua runs on one thread that owns the policy; connections hand it
//! events and wait for the outcome with a deadline. The instruction hook stops Lua code
//! that runs too long, but a handler blocked inside a C function (`os.execute`,
//! `io.read`) cannot be interrupted: the waiting connection gives up at the deadline
//! and fails the call closed, and the policy thread skips work whose caller has gone.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::policy::{Outcome, Policy, Verdict};

struct Job {
    event: Event,
    deadline: Instant,
    reply: mpsc::SyncSender<Outcome>,
}

pub struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    mask: u64,
    hash: Arc<str>,
    name: String,
    /// How long a caller waits for an outcome, queueing included.
    patience: Duration,
}

impl Worker {
    pub fn start(policy: Policy) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mask = policy.mask();
        let hash = Arc::from(policy.hash());
        let name = policy.name().to_owned();
        let timeout = policy.timeout();
        std::thread::Builder::new().name("hermes-policy".into()).spawn(move || {
            for job in rx {
                if Instant::now() >= job.deadline {
                    continue; // its caller already failed it closed
                }
                let _ = job.reply.send(policy.decide(&job.event));
            }
        })?;
        let patience = timeout + (timeout / 2).max(Duration::from_millis(50));
        Ok(Worker { jobs: Mutex::new(tx), mask, hash, name, patience })
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
        let deadline = Instant::now() + self.patience;
        let job = Job { event: event.clone(), deadline, reply };
        let sent = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        let failure = match sent.map(|()| outcome.recv_timeout(self.patience)) {
            Ok(Ok(outcome)) => return outcome,
            Ok(Err(RecvTimeoutError::Timeout)) => format!(
                "{}: policy time limit exceeded: no decision within {} ms (a handler blocked outside Lua?)",
                self.name,
                self.patience.as_millis()
            ),
            Ok(Err(RecvTimeoutError::Disconnected)) | Err(_) => format!("{}: the policy thread is gone", self.name),
        };
        Outcome { verdict: Verdict::Deny(libc::EPERM), handler: "error", logs: Vec::new(), error: Some(failure) }
    }
}
