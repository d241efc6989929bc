//! Running the policy. A decision runs on the thread of the connection that asked
//! (no hand-off to another thread: that would cost two context switches per call);
//! one Lua state serves one call at a time, and callers queue at its gate.
//!
//! The instruction hook stops Lua code that runs too long, but a handler blocked inside
//! a C function (`os.execute`, `io.read`) cannot be interrupted: a watchdog thread
//! answers its caller with a fail-closed deny once the handler has run past the limit.
//! Time spent queued behind other calls does not count against a call's limit; only a
//! policy that stays busy for longer than the preload waits (`QUEUE_LIMIT`) fails
//! queued calls.
//!
//! Hot reload swaps in a new policy atomically: calls that started keep the policy
//! they started with, later calls get the new one (a handler stuck in the old one
//! does not hold up the new). A shadow policy is asked about the same calls on a
//! thread of its own, after the caller has its answer; where it disagrees, the
//! difference is recorded.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use hermes_wire::board::{self, Notice};

use crate::board::Board;
use crate::event::Event;
use crate::policy::{Outcome, Policy, Verdict, Wants};
use crate::state::State;
use crate::trace::Sink;

/// How long a call may wait for the policy to be free.
const QUEUE_LIMIT: Duration = Duration::from_secs(4);
/// Shadow evaluations queued before new ones are dropped (and counted).
const SHADOW_QUEUE: usize = 4096;

/// Told when its call's handler ran past the limit: answer the caller now.
pub trait Late: Send + Sync {
    fn fail_closed(&self, outcome: &Outcome);
}

/// One loaded policy and the gate that gives it to one caller at a time.
struct Slot {
    policy: Mutex<Policy>,
    gate: Mutex<Gate>,
    freed: Condvar,
    mask: u64,
    observe: u64,
    /// Per operation, the handler that observes it (for the trace).
    observers: [&'static str; hermes_wire::Op::ALL.len()],
    wants: Wants,
    hash: Arc<str>,
    name: Arc<str>,
    /// How long a running handler may take before its caller is failed closed.
    patience: Duration,
}

#[derive(Default)]
struct Gate {
    busy: bool,
    waiters: u32,
}

impl Slot {
    fn new(policy: Policy, state: &Arc<State>) -> Arc<Self> {
        policy.attach_state(Arc::clone(state));
        let timeout = policy.timeout();
        Arc::new(Slot {
            mask: policy.mask(),
            observe: policy.observe(),
            observers: hermes_wire::Op::ALL.map(|op| policy.observer(op)),
            wants: policy.wants(),
            hash: Arc::from(policy.hash()),
            name: Arc::from(policy.name()),
            // The instruction hook fires at the limit; the margin covers its granularity.
            patience: timeout + (timeout / 2).max(Duration::from_millis(50)),
            policy: Mutex::new(policy),
            gate: Mutex::new(Gate::default()),
            freed: Condvar::new(),
        })
    }

    fn decided(&self) -> u64 {
        self.mask & !self.observe
    }

    /// Wait for the policy to be free; `false` after [`QUEUE_LIMIT`].
    fn enter(&self) -> bool {
        let mut gate = lock(&self.gate);
        if !gate.busy {
            gate.busy = true;
            return true;
        }
        gate.waiters += 1;
        let (mut gate, _) =
            self.freed.wait_timeout_while(gate, QUEUE_LIMIT, |g| g.busy).unwrap_or_else(|e| e.into_inner());
        gate.waiters -= 1;
        if gate.busy {
            return false;
        }
        gate.busy = true;
        true
    }

    fn leave(&self) {
        let mut gate = lock(&self.gate);
        gate.busy = false;
        if gate.waiters > 0 {
            self.freed.notify_one();
        }
    }

    fn fail(&self, why: String) -> Outcome {
        Outcome::fixed(Verdict::Deny(libc::EPERM), "error", Some(format!("{}: {why}", self.name)))
    }

    /// Decide on this thread. `late` is answered by the watchdog if the handler
    /// overruns; the outcome returned is then the handler's, for the record.
    fn decide(&self, event: &Event, watch: Option<(&Watchdog, Arc<dyn Late>)>) -> Outcome {
        if !self.enter() {
            return self.fail(format!(
                "policy busy: the call waited {} ms for the policy (a handler blocked outside Lua?)",
                QUEUE_LIMIT.as_millis()
            ));
        }
        let ticket = watch.map(|(dog, late)| (dog, dog.start(self.patience, late, &self.name)));
        let outcome = lock(&self.policy).decide(event);
        self.leave();
        match ticket {
            // The caller was answered with a deny while the handler ran: so says the record.
            Some((dog, ticket)) if dog.finish(ticket) => Outcome {
                logs: outcome.logs,
                ..self.fail(format!(
                    "policy time limit exceeded: no decision within {} ms (a handler blocked outside Lua?)",
                    self.patience.as_millis()
                ))
            },
            _ => outcome,
        }
    }
}

/// Watches handlers that run on connection threads. It looks every [`PATROL`] while
/// handlers start, and sleeps once a whole round has passed with none running and none
/// started, until the next one starts: a thread woken 100 times a second takes the CPU
/// from the target's own threads on a small machine (tar under a policy that decides
/// nothing ran ~4 % slower for the two periodic threads the broker had).
struct Watchdog {
    running: Mutex<Patrol>,
    /// Rings for a watchdog asleep (`Patrol::asleep`).
    wake: Condvar,
    next: AtomicU64,
}

#[derive(Default)]
struct Patrol {
    running: Vec<Running>,
    asleep: bool,
}

/// How often the watchdog looks for handlers past their time limit.
const PATROL: Duration = Duration::from_millis(10);

struct Running {
    ticket: u64,
    deadline: Instant,
    late: Arc<dyn Late>,
    name: Arc<str>,
    patience: Duration,
    fired: bool,
}

impl Watchdog {
    fn new() -> Self {
        Watchdog { running: Mutex::default(), wake: Condvar::new(), next: AtomicU64::new(1) }
    }

    fn start(&self, patience: Duration, late: Arc<dyn Late>, name: &Arc<str>) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + patience;
        let mut patrol = lock(&self.running);
        patrol.running.push(Running { ticket, deadline, late, name: Arc::clone(name), patience, fired: false });
        if patrol.asleep {
            patrol.asleep = false;
            self.wake.notify_one();
        }
        ticket
    }

    /// The handler returned; whether the watchdog had already answered for it.
    fn finish(&self, ticket: u64) -> bool {
        let running = &mut lock(&self.running).running;
        match running.iter().position(|r| r.ticket == ticket) {
            Some(at) => running.swap_remove(at).fired,
            None => false,
        }
    }

    /// The watchdog's thread.
    fn run(&self) {
        let mut started = self.next.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(PATROL);
            self.patrol();
            let mut patrol = lock(&self.running);
            if patrol.running.is_empty() && self.next.load(Ordering::Relaxed) == started {
                // `start` pushes under this lock after taking its ticket: a handler
                // that started since is either counted above or finds us asleep.
                patrol.asleep = true;
                while patrol.asleep {
                    patrol = self.wake.wait(patrol).unwrap_or_else(|e| e.into_inner());
                }
            }
            started = self.next.load(Ordering::Relaxed);
        }
    }

    fn patrol(&self) {
        let now = Instant::now();
        let running = &mut lock(&self.running).running;
        for r in running.iter_mut().filter(|r| !r.fired && now >= r.deadline) {
            r.fired = true;
            let outcome = Outcome::fixed(
                Verdict::Deny(libc::EPERM),
                "error",
                Some(format!(
                    "{}: policy time limit exceeded: no decision within {} ms (a handler blocked outside Lua?)",
                    r.name,
                    r.patience.as_millis()
                )),
            );
            r.late.fail_closed(&outcome);
        }
    }
}

/// The policy in force, the shadow beside it, and the board that tells clients.
pub struct Engine {
    current: RwLock<Arc<Slot>>,
    shadow: Arc<RwLock<Option<Arc<Slot>>>>,
    /// Unbounded, counted by `shadow_queued` instead: a bounded channel allocates all
    /// its slots at once (a few MiB of events), at every start, shadow or not.
    shadow_jobs: Mutex<Option<Sender<(Event, Outcome)>>>,
    shadow_queued: Arc<AtomicUsize>,
    /// Disconnected once the shadow thread has evaluated every job queued.
    shadow_done: Mutex<Option<mpsc::Receiver<()>>>,
    shadow_dropped: AtomicU64,
    shadow_differed: Arc<AtomicU64>,
    watchdog: Arc<Watchdog>,
    board: Board,
    generation: AtomicU64,
    state: Arc<State>,
    /// Results are wanted whatever the policy says (a trace, `-v`).
    report: bool,
}

impl Engine {
    pub fn new(policy: Policy, report: bool) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        let slot = Slot::new(policy, &state);
        let board = Board::new(notice(&slot, 1, report))?;
        Ok(Engine {
            current: RwLock::new(slot),
            shadow: Arc::new(RwLock::new(None)),
            shadow_jobs: Mutex::new(None),
            shadow_queued: Arc::new(AtomicUsize::new(0)),
            shadow_done: Mutex::new(None),
            shadow_dropped: AtomicU64::new(0),
            shadow_differed: Arc::new(AtomicU64::new(0)),
            watchdog: Arc::new(Watchdog::new()),
            board,
            generation: AtomicU64::new(1),
            state,
            report,
        })
    }

    /// Start the engine's threads (the watchdog; the shadow's when there is one).
    /// Separate from `new` so that the broker can fork before any thread exists.
    pub fn start(&self, sink: &Arc<Sink>) -> std::io::Result<()> {
        let dog = Arc::clone(&self.watchdog);
        std::thread::Builder::new().name("hermes-watchdog".into()).spawn(move || dog.run())?;
        let (tx, rx) = mpsc::channel::<(Event, Outcome)>();
        let queued = Arc::clone(&self.shadow_queued);
        *lock(&self.shadow_jobs) = Some(tx);
        let sink = Arc::clone(sink);
        let differed = Arc::clone(&self.shadow_differed);
        let shadow = Arc::clone(&self.shadow);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        *lock(&self.shadow_done) = Some(done_rx);
        std::thread::Builder::new().name("hermes-shadow".into()).spawn(move || {
            let _done = done_tx; // dropped when the queue is closed and empty
            for (event, enforced) in rx {
                queued.fetch_sub(1, Ordering::Relaxed);
                let Some(slot) = shadow.read().unwrap_or_else(|e| e.into_inner()).clone() else { continue };
                let candidate = slot.decide(&event, None);
                if candidate.verdict != enforced.verdict {
                    differed.fetch_add(1, Ordering::Relaxed);
                    sink.shadow(&event, &enforced, &candidate, &slot.hash);
                }
            }
        })?;
        Ok(())
    }

    fn current(&self) -> Arc<Slot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Decide on `event` with the policy in force; `late` answers the caller if the
    /// handler overruns. A shadow policy, if any, is asked afterwards.
    pub fn decide(&self, event: &Event, late: Arc<dyn Late>) -> (Outcome, Arc<str>) {
        let slot = self.current();
        let outcome = slot.decide(event, Some((&self.watchdog, late)));
        self.ask_shadow(event, &outcome);
        (outcome, Arc::clone(&slot.hash))
    }

    /// A call the policy only observes (its handler is `hermes.allow()`): the shadow
    /// still gets a say.
    pub fn observed(&self, event: &Event, outcome: &Outcome) {
        self.ask_shadow(event, outcome);
    }

    fn ask_shadow(&self, event: &Event, outcome: &Outcome) {
        if self.shadow.read().unwrap_or_else(|e| e.into_inner()).is_none() {
            return;
        }
        if let Some(tx) = lock(&self.shadow_jobs).as_ref() {
            if self.shadow_queued.fetch_add(1, Ordering::Relaxed) >= SHADOW_QUEUE {
                self.shadow_queued.fetch_sub(1, Ordering::Relaxed);
                self.shadow_dropped.fetch_add(1, Ordering::Relaxed);
            } else if tx.send((event.clone(), outcome.clone())).is_err() {
                self.shadow_queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Swap in a new policy; returns its generation.
    pub fn reload(&self, policy: Policy) -> u64 {
        let slot = Slot::new(policy, &self.state);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let notice = notice(&slot, generation, self.report);
        // Swap first, post second: a client that sees the new generation must get the
        // new policy's decisions, or it would cache an old one as new.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = slot;
        self.board.post(notice);
        generation
    }

    /// Set (or replace) the shadow policy.
    pub fn set_shadow(&self, policy: Policy) {
        *self.shadow.write().unwrap_or_else(|e| e.into_inner()) = Some(Slot::new(policy, &self.state));
    }

    /// Take no more shadow jobs and wait (up to `wait`) until the shadow has evaluated
    /// those queued, so that the counts and the trace are complete at exit: the shadow
    /// runs after its caller got an answer, and may still be busy with the last calls
    /// when the target exits. Returns whether it finished.
    pub fn finish_shadow(&self, wait: Duration) -> bool {
        drop(lock(&self.shadow_jobs).take());
        match lock(&self.shadow_done).take() {
            Some(done) => !matches!(done.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout)),
            None => true,
        }
    }

    /// Calls on which the shadow disagreed, and shadow evaluations dropped because
    /// the shadow fell behind.
    pub fn shadow_counts(&self) -> (u64, u64) {
        (self.shadow_differed.load(Ordering::Relaxed), self.shadow_dropped.load(Ordering::Relaxed))
    }

    pub fn has_shadow(&self) -> bool {
        self.shadow.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Operations decided with a round trip (subscribed, not only observed).
    pub fn decided(&self) -> u64 {
        self.current().decided()
    }

    pub fn observe(&self) -> u64 {
        self.current().observe
    }

    /// The handler whose constant decides an observed operation.
    pub fn observer(&self, op: hermes_wire::Op) -> &'static str {
        self.current().observers[op as usize]
    }

    pub fn wants(&self) -> Wants {
        self.current().wants
    }

    pub fn hash(&self) -> Arc<str> {
        Arc::clone(&self.current().hash)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Whether clients report results of allowed calls.
    pub fn reports(&self) -> bool {
        self.board.word(board::FLAGS) & board::REPORT != 0
    }

    /// See [`Board::watch_over`].
    pub fn watch_over_board(&self) -> std::io::Result<()> {
        self.board.watch_over()
    }

    pub fn board_path(&self) -> String {
        self.board.path()
    }

    /// See [`crate::Broker::set_spin`].
    pub fn set_spin(&self, spin: std::time::Duration) {
        self.board.set_spin(spin);
    }

    /// The spin the board tells clients, which the broker's connections keep to too.
    pub fn spin(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.board.word(hermes_wire::board::SPIN))
    }
}

fn notice(slot: &Slot, generation: u64, report: bool) -> Notice {
    let w = slot.wants;
    let mut flags = 0;
    if report || w.state {
        flags |= board::REPORT;
    }
    if w.backtrace {
        flags |= board::BACKTRACE;
    }
    if w.registers {
        flags |= board::REGISTERS;
    }
    Notice { generation, mask: slot.decided(), observe: slot.observe, flags, payload: w.payload }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
