//! The crank loop: one delivery per crank, one swingstore crank per crank,
//! commits grouped by a [`CommitPolicy`], and nothing reported outside before
//! its commit.

use crate::keys;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use serde::{Deserialize, Serialize};

use swingstore::{Cid, StoreError, SwingStore};
use vat_supervisor::{
    FaultClass, Limits, ModuleSource, ProcessWorker, SupervisorError, SyscallHandler,
    SyscallRefusal, ThreadWorker, VatFault, VatModule, WasmHost,
};

use crate::resident::{Residency, ResidencyCounts, VatWorker};
use vom::abi::{Delivery, Resolution, Syscall, SyscallResult};
use vom::{CapData, Value};

use crate::endpoint::{Endpoint, EngineMemory, Engines, Tables, TablesRef};
use crate::ids::{Allocator, EndpointId, EndpointKind, Kref, Vref, is_kref};
use crate::state::{GcAction, KernelState, Message, PromiseState, RunQueueItem, VatState};
use crate::state::{error_capdata, settle_promise};

/// The longest chain of promises forwarded to promises that routing follows.
pub const FORWARDING_DEPTH_MAX: usize = 100;
/// The most vatstore bytes (key plus value) one entry may hold.
pub const VATSTORE_ENTRY_BYTES_MAX: usize = 1 << 20;
/// Default for [`VatOptions::faults_in_a_row_max`].
pub const FAULTS_IN_A_ROW_MAX_DEFAULT: u32 = 5;

/// Errors at the kernel boundary: bad requests and I/O. Broken invariants panic.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Module(#[from] SupervisorError),
    #[error("vat name {0:?} is taken")]
    VatNameTaken(String),
    #[error("pet name {name:?} is already bound (to {kref})")]
    PetNameTaken { name: String, kref: String },
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.', starting with a letter")]
    BadName(String),
    #[error("unknown reference {0:?}: not a pet name or a kref this kernel knows")]
    UnknownTarget(String),
    #[error("no pet name {0:?} (`vat list` shows them)")]
    UnknownPetName(String),
    #[error("vat failed to start: {0}")]
    StartFailed(VatFault),
    #[error("no vat named {0:?}")]
    UnknownVat(String),
    #[error("vat {name:?} is not running: {reason}")]
    VatNotRunning { name: String, reason: String },
    #[error("vat {name:?} is {state}, not suspended: only a suspended vat resumes")]
    NotSuspended { name: String, state: VatState },
    #[error("vat {name:?} is running: `vat terminate {name}` first, then `vat rm {name}`")]
    StillRunning { name: String },
    #[error("vat {name:?} was removed (`vat rm`): its data is gone")]
    Removed { name: String },
    #[error("bad idempotency key {key:?}: use 1 to {max} printable ASCII characters, no spaces")]
    BadIdempotencyKey { key: String, max: usize },
    #[error("idempotency key {0:?} was used for a different request; nothing was sent")]
    IdempotencyKeyReused(String),
    #[error("resume of {name:?} failed, it stays suspended: {fault}")]
    ResumeFailed { name: String, fault: VatFault },
    #[error("upgrade of {name:?} failed, the old version keeps running: {fault}")]
    UpgradeFailed { name: String, fault: VatFault },
    #[error("the run queue emptied before {0} settled")]
    Unsettled(String),
    #[error(
        "{kpid} waits on peer {peer}, which only the daemon reaches (`vat start`): the message is kept and goes out then"
    )]
    WaitsOnPeer { kpid: String, peer: String },
    #[error("no randomness from the operating system: {0}")]
    Randomness(String),
    #[error(
        "worker binary {0} not found (build it with `cargo build -p vat-supervisor`, set VAT_SUPERVISOR, or spawn with --worker thread)"
    )]
    NoSupervisor(PathBuf),
    #[error("vat {name:?} cannot sleep: its heap holds what its store does not ({holds})")]
    CannotSleep { name: String, holds: String },
    #[error("vats_resident_max must be at least 1")]
    BadResidentMax,
}

/// When ended cranks become durable. Output waits for the commit either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPolicy {
    /// `cranks_per_commit_max`: commit after this many cranks (1: every crank).
    pub cranks_per_commit_max: u32,
    /// `commit_interval_ms`: commit when this long has passed since the last commit.
    pub commit_interval_ms: u64,
}

impl CommitPolicy {
    /// Every crank in its own SQLite transaction.
    pub const EVERY_CRANK: CommitPolicy = CommitPolicy {
        cranks_per_commit_max: 1,
        commit_interval_ms: 0,
    };
    /// Cranks grouped, at most 1000 or 50 ms per commit.
    pub const GROUPED: CommitPolicy = CommitPolicy {
        cranks_per_commit_max: 1000,
        commit_interval_ms: 50,
    };
}

/// Where a vat's guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// A `vat-supervisor` child process per vat: its crash is the vat's fault only.
    Process,
    /// In the kernel's own process: faster, for tests and trusted guests.
    Thread,
}

/// How a vat is run: its worker and its limits. Kept with the vat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VatOptions {
    pub worker: WorkerKind,
    pub fuel_per_delivery: u64,
    pub deadline_ms: u64,
    pub memory_bytes_max: usize,
    pub message_bytes_max: usize,
    pub syscalls_per_delivery_max: u32,
    /// Messages to promises this vat decides are delivered to it at once
    /// (it queues them and sends them on when the promise settles) rather
    /// than queued in the kernel. vom vats accept them.
    #[serde(default)]
    pub pipelining: bool,
    /// `faults_in_a_row_max`: after this many faulted deliveries in a row
    /// (each rolled back) the vat is suspended, its data kept.
    #[serde(default = "faults_in_a_row_max_default")]
    pub faults_in_a_row_max: u32,
}

fn faults_in_a_row_max_default() -> u32 {
    FAULTS_IN_A_ROW_MAX_DEFAULT
}

impl Default for VatOptions {
    fn default() -> Self {
        let limits = Limits::default();
        VatOptions {
            worker: WorkerKind::Process,
            fuel_per_delivery: limits.fuel_per_delivery,
            deadline_ms: limits.deadline_ms,
            memory_bytes_max: limits.memory_bytes_max,
            message_bytes_max: limits.message_bytes_max,
            syscalls_per_delivery_max: limits.syscalls_per_delivery_max,
            pipelining: true,
            faults_in_a_row_max: FAULTS_IN_A_ROW_MAX_DEFAULT,
        }
    }
}

impl VatOptions {
    fn limits(&self) -> Limits {
        Limits {
            fuel_per_delivery: self.fuel_per_delivery,
            deadline_ms: self.deadline_ms,
            memory_bytes_max: self.memory_bytes_max,
            message_bytes_max: self.message_bytes_max,
            syscalls_per_delivery_max: self.syscalls_per_delivery_max,
        }
    }
}

/// A vat as `vat list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VatInfo {
    pub id: EndpointId,
    pub name: String,
    pub bundle: String,
    /// Its root object (for a removed vat, what its pet name still names).
    pub root: Option<Kref>,
    pub state: VatState,
    pub reason: Option<String>,
    /// For a vat that is not running: how many vatstore entries it keeps,
    /// and their bytes (keys and values).
    pub kept: Option<(u64, u64)>,
    pub worker: WorkerKind,
    /// The worker process's id, while this kernel runs one for the vat.
    pub worker_pid: Option<u32>,
    /// Whether the vat has a worker now (is awake).
    pub resident: bool,
    /// What its heap holds that its store does not, by its last report:
    /// what keeps it awake (`None`: nothing, so it may sleep).
    pub heap_holds: Option<String>,
    /// When it was last delivered to (Unix seconds, to a minute), if ever.
    pub active_s: Option<u64>,
}

/// Which vats `vat list` shows: a page of them in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VatQuery {
    /// Only vats whose name starts with this.
    pub name_prefix: String,
    /// Only vats in this state.
    pub state: Option<VatState>,
    /// Only vats that are awake.
    pub resident_only: bool,
    /// Only vats named after this (the last name of the previous page).
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// The kernel: its tables in swingstore, its Wasm host and its live workers.
pub struct Kernel {
    pub(crate) state: KernelState,
    host: WasmHost,
    modules: HashMap<String, VatModule>,
    workers: FxHashMap<EndpointId, VatWorker>,
    /// Who is awake, in what order they were used, and spare processes.
    residency: Residency,
    /// `vats_resident_max`: how many vats keep a worker between cranks.
    vats_resident_max: usize,
    /// How many spare worker processes are kept started ahead of need.
    warm_spares: usize,
    /// Whether a process worker started since spares were last topped up.
    spares_due: bool,
    /// Vats due a `bringOutYourDead` after the crank that made them so.
    collection_due: Vec<EndpointId>,
    /// Where compiled modules are kept between processes, if anywhere.
    module_cache: Option<PathBuf>,
    /// The `vat-supervisor` binary that process workers run.
    supervisor: Option<PathBuf>,
    policy: CommitPolicy,
    cranks_since_commit: u32,
    last_commit: Instant,
    cranks_total: u64,
    /// Deliveries to each vat since its last `bringOutYourDead`. Kept in
    /// memory only: when a vat collects its garbage does not change what it does.
    deliveries_since_collection: FxHashMap<EndpointId, u32>,
    /// GC actions accumulate instead of being delivered (benchmarks only).
    gc_deferred: bool,
    /// What endpoints emitted in committed cranks, waiting to be sent.
    outbound_ready: Vec<(EndpointId, Vec<u8>)>,
    /// The engine for remote peers' endpoints (`r<N>`), once attached.
    /// The engines attached for the endpoints beside the vats.
    engines: Engines,
    /// What engines keep in memory beside the kernel.
    engine_memory: EngineMemory,
    /// Each running worker's `message_bytes_max`, so an oversized delivery
    /// is refused before it reaches the worker.
    message_bytes_max: FxHashMap<EndpointId, usize>,
    /// Vats whose last deliveries faulted, and how many in a row (mirrors
    /// `v<N>.faults`, so a delivery that succeeds writes nothing unless
    /// there is a count to clear).
    faults_in_a_row: FxHashMap<EndpointId, u32>,
    /// Vats whose last GC or `bringOutYourDead` delivery faulted once: the
    /// next fault of such a delivery suspends them.
    side_faulted: FxHashSet<EndpointId>,
}

/// A vat gets a `bringOutYourDead` delivery after this many other deliveries.
pub const DELIVERIES_PER_COLLECTION_MAX: u32 = 1000;
/// How many keys of a terminated vat (c-list entries, then vatstore) one
/// cleanup crank deletes: the budget that keeps termination from stalling others.
pub const CLEANUP_ENTRIES_PER_CRANK_MAX: u32 = 500;

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("store", &self.state.store.path())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Names (vats, pet names) are short identifiers, so they never clash with krefs' syntax in use.
pub fn check_name(name: &str) -> Result<(), KernelError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.len() <= 64
        && !is_kref(name);
    if ok {
        Ok(())
    } else {
        Err(KernelError::BadName(name.to_owned()))
    }
}

/// The engine for endpoint `id`, of a kind beside the vats. The one place
/// routing decides by endpoint kind.
///
/// # Panics
///
/// If `id` is a vat, or its kind's engine is not attached: a store with
/// peers is opened with its engine attached.
fn engine_for<'a>(engines: &'a Engines, id: &EndpointId) -> &'a dyn Endpoint {
    if id.kind() == EndpointKind::Vat {
        panic!("kernel invariant: vats ({id}) are not routed to an engine")
    }
    engines.get(id.kind()).unwrap_or_else(|| {
        panic!("kernel invariant: a kernel with endpoint {id} has its kind's engine attached")
    })
}

impl Kernel {
    /// A kernel over `store`, which it takes over for good.
    pub fn new(store: SwingStore, policy: CommitPolicy) -> Result<Kernel, KernelError> {
        Ok(Kernel {
            state: KernelState::new(store),
            host: WasmHost::new()?,
            modules: HashMap::new(),
            workers: FxHashMap::default(),
            residency: Residency::default(),
            vats_resident_max: crate::resident::VATS_RESIDENT_MAX_DEFAULT,
            warm_spares: 0,
            spares_due: false,
            collection_due: Vec::new(),
            module_cache: None,
            supervisor: None,
            policy,
            cranks_since_commit: 0,
            last_commit: Instant::now(),
            cranks_total: 0,
            deliveries_since_collection: FxHashMap::default(),
            gc_deferred: false,
            outbound_ready: Vec::new(),
            engines: Engines::default(),
            engine_memory: EngineMemory::default(),
            message_bytes_max: FxHashMap::default(),
            faults_in_a_row: FxHashMap::default(),
            side_faulted: Default::default(),
        })
    }

    /// The store, to read (tools, tests). Writes go through the kernel only.
    pub fn store(&self) -> &SwingStore {
        &self.state.store
    }

    /// How many cranks this kernel object has run.
    pub fn cranks_total(&self) -> u64 {
        self.cranks_total
    }

    /// Keeps compiled modules in `dir`, so each is compiled once per machine.
    pub fn set_module_cache(&mut self, dir: PathBuf) {
        self.module_cache = Some(dir);
    }

    /// The `vat-supervisor` binary for process workers. By default:
    /// `$VAT_SUPERVISOR`, else `vat-supervisor` beside the running executable.
    pub fn set_supervisor_program(&mut self, path: PathBuf) {
        self.supervisor = Some(path);
    }

    fn supervisor_program(&self) -> Result<PathBuf, KernelError> {
        let path = self
            .supervisor
            .clone()
            .or_else(|| std::env::var_os("VAT_SUPERVISOR").map(PathBuf::from))
            .or_else(|| {
                let exe = std::env::current_exe().ok()?;
                Some(exe.parent()?.join("vat-supervisor"))
            })
            .unwrap_or_else(|| PathBuf::from("vat-supervisor"));
        if path.is_file() {
            Ok(path)
        } else {
            Err(KernelError::NoSupervisor(path))
        }
    }

    /// Runs `body` in a crank of its own: ended when it returns Ok (aborted
    /// if the ending fails), aborted when it returns Err. Every crank the
    /// kernel begins goes through here or through [`Self::run_queue_step`],
    /// so no path leaves one open.
    pub fn in_crank<T, E: From<StoreError>>(
        &mut self,
        body: impl FnOnce(&mut Kernel) -> Result<T, E>,
    ) -> Result<T, E> {
        self.state.store.begin_crank()?;
        match body(self) {
            Ok(value) => {
                self.end_crank_or_abort()?;
                Ok(value)
            }
            Err(e) => {
                self.state.abort_crank()?;
                Err(e)
            }
        }
    }

    /// Attaches the engine that translates for the endpoints of `kind`
    /// (remote peers `r<N>`, devices `d<N>`). A kernel whose store holds
    /// such endpoints needs it before it runs a crank.
    ///
    /// # Panics
    ///
    /// For [`EndpointKind::Vat`]: vats translate in the kernel.
    pub fn attach(&mut self, kind: EndpointKind, engine: Box<dyn Endpoint>) {
        self.engines.attach(kind, engine);
    }

    /// The tables, for an endpoint engine's crank (inside [`Self::in_crank`]).
    ///
    /// # Panics
    ///
    /// Outside a crank: an engine's changes are made, and rolled back,
    /// with the crank they belong to.
    pub fn tables(&mut self) -> Tables<'_> {
        assert!(
            self.state.store.in_crank(),
            "kernel invariant: an engine changes the tables inside a crank (Kernel::in_crank)"
        );
        Tables::new(&mut self.state)
    }

    /// The tables, to read.
    pub fn tables_ref(&self) -> TablesRef<'_> {
        TablesRef::new(&self.state)
    }

    /// What an engine keeps in memory beside this kernel, of type `T`.
    pub fn engine_memory<T: std::any::Any>(&self) -> Option<&T> {
        self.engine_memory.get()
    }

    /// The same, to change (made on first use).
    pub fn engine_memory_mut<T: std::any::Any + Default>(&mut self) -> &mut T {
        self.engine_memory.get_mut()
    }

    /// The vats' log lines written since the last call, in order (lines of
    /// failed deliveries too: they are for the vats' authors).
    pub fn take_log_lines(&mut self) -> Vec<(EndpointId, String)> {
        self.state.log_lines.drain(..).collect()
    }

    /// What endpoints emitted in committed cranks, in order, and forgets it.
    pub fn take_outbound(&mut self) -> Vec<(EndpointId, Vec<u8>)> {
        std::mem::take(&mut self.outbound_ready)
    }

    /// Makes everything done so far durable. Report results only after this.
    pub fn commit(&mut self) -> Result<(), KernelError> {
        self.state.commit()?;
        // Output gating: frames to peers leave only once their cranks are durable.
        self.outbound_ready.append(&mut self.state.outbox_ended);
        self.cranks_since_commit = 0;
        self.last_commit = Instant::now();
        self.keep_resident_max(None)
    }

    /// The commit the policy asks for between cranks: written before the
    /// next crank runs, made durable while it runs (and before the next
    /// commit is written). It releases no output; [`Self::commit`] does,
    /// once everything is durable.
    fn commit_pipelined(&mut self) -> Result<(), KernelError> {
        self.state.commit_pipelined()?;
        self.cranks_since_commit = 0;
        self.last_commit = Instant::now();
        self.keep_resident_max(None)
    }

    fn module(&mut self, cid: &str) -> Result<VatModule, KernelError> {
        if let Some(module) = self.modules.get(cid) {
            return Ok(module.clone());
        }
        let bytes = self.vat_bundle(cid)?;
        let module = self.compile(&bytes, cid)?;
        self.modules.insert(cid.to_owned(), module.clone());
        Ok(module)
    }

    /// The stored bundle `cid` of a vat.
    fn vat_bundle(&self, cid: &str) -> Result<Vec<u8>, KernelError> {
        let parsed = SwingStore::parse_cid(cid)?;
        let bytes = self.state.store.get_bundle(&parsed)?;
        Ok(bytes.unwrap_or_else(|| panic!("kernel invariant: bundle {cid} of a vat is stored")))
    }

    fn compile(&self, wasm: &[u8], cid: &str) -> Result<VatModule, KernelError> {
        Ok(match &self.module_cache {
            Some(dir) => self.host.load_cached(wasm, cid, dir)?,
            None => self.host.compile(wasm)?,
        })
    }

    fn vat_options(&self, vat: &str) -> Result<VatOptions, KernelError> {
        Ok(match self.state.get(&keys::vat_options(&vat))? {
            Some(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("kernel invariant: {vat}.options are vat options: {e}")),
            None => VatOptions::default(),
        })
    }

    /// Creates vat `name` from `wasm`, binds the pet name `name` to its root
    /// object, and returns the root's kref. Nothing is written if any step
    /// fails, except the bundle once the module compiled (content-addressed,
    /// named by no vat then).
    pub fn spawn_vat(
        &mut self,
        name: &str,
        wasm: &[u8],
        options: VatOptions,
    ) -> Result<Kref, KernelError> {
        check_name(name)?;
        if self.state.get(&keys::vat_by_name(&name))?.is_some() {
            return Err(KernelError::VatNameTaken(name.to_owned()));
        }
        if let Some(kref) = self.state.get(&keys::pet_name(&name))? {
            return Err(KernelError::PetNameTaken {
                name: name.to_owned(),
                kref,
            });
        }
        let mut early = self.early_process(options.worker)?;
        let bundle = swingstore::cid_of(wasm);
        self.start_ahead(early.as_mut(), &bundle, &options);
        let module = self.spawn_module(bundle, wasm, options.worker)?;
        let cid = module.cid.to_string();
        if let Some(process) = early {
            let room = self.vats_resident_max.saturating_sub(self.workers.len());
            self.residency.keep_spare(process, room.max(1));
        }
        let root = self.in_crank(|k| k.spawn_in_crank(name, &cid, module.loaded, options))?;
        self.commit()?;
        Ok(root)
    }

    /// A process spawn's process, started ahead when no spare is ready: it
    /// makes its engine while this thread stores the bundle, and the
    /// vat's start takes it as a spare (dropped, stopped, if the spawn
    /// fails first).
    fn early_process(&mut self, worker: WorkerKind) -> Result<Option<ProcessWorker>, KernelError> {
        if worker != WorkerKind::Process {
            return Ok(None);
        }
        let program = self.supervisor_program()?;
        if self.residency.spares() > 0 {
            return Ok(None);
        }
        Ok(ProcessWorker::spare(&program).ok())
    }

    /// Sends a process spawn's start ahead to the process that will host
    /// the vat (`early`, else the next spare) when its module is in the
    /// module cache: the process loads it while this thread stores the
    /// bundle.
    fn start_ahead(
        &mut self,
        early: Option<&mut ProcessWorker>,
        bundle: &Cid,
        options: &VatOptions,
    ) {
        if options.worker != WorkerKind::Process {
            return;
        }
        let Some(artifact) = self.cached_artifact(&bundle.to_string()) else {
            return;
        };
        if let Some(process) = early.or_else(|| self.residency.next_spare()) {
            // A process that fails this fails the start it is taken for,
            // and is replaced then.
            let _ = process.host_ahead(ModuleSource::Artifact(artifact), options.limits());
        }
    }

    /// A spawn's module, checked against the ABI, with its bundle written
    /// (after the check: nothing is written for a module that fails it). A
    /// module compiled already in this kernel is reused. One in the module
    /// cache passed the check when it was compiled: a thread worker's is
    /// loaded while the bundle is written, a process worker's is loaded by
    /// the process only.
    fn spawn_module(
        &mut self,
        bundle: Cid,
        wasm: &[u8],
        worker: WorkerKind,
    ) -> Result<SpawnModule, KernelError> {
        let cid = bundle.to_string();
        if let Some(module) = self.modules.get(&cid).cloned() {
            self.write_bundle(&bundle, wasm)?;
            return Ok(SpawnModule {
                cid: bundle,
                loaded: Some(module),
            });
        }
        // Only a module not in memory is looked for in the module cache.
        let loaded = match (self.cached_artifact(&cid), worker) {
            (Some(_), WorkerKind::Process) => {
                self.write_bundle(&bundle, wasm)?;
                None
            }
            (Some(artifact), WorkerKind::Thread) => {
                Some(self.load_while_writing(&artifact, &bundle, wasm)?)
            }
            (None, _) => {
                let module = self.compile(wasm, &cid)?;
                self.write_bundle(&bundle, wasm)?;
                Some(module)
            }
        };
        Ok(SpawnModule {
            cid: bundle,
            loaded,
        })
    }

    /// Writes a spawn's bundle in a commit of its own, before the vat's
    /// crank: its fsync, most of a cached spawn's time, runs while the
    /// worker starts. A spawn that fails after it leaves the bundle stored,
    /// a content-addressed blob no vat names (as an ended vat's is).
    fn write_bundle(&mut self, bundle: &Cid, wasm: &[u8]) -> Result<(), KernelError> {
        self.state.store.add_bundle_as(bundle, wasm)?;
        self.state.commit_pipelined()?;
        Ok(())
    }

    /// The module cache's artifact for `cid`, when there is one: the
    /// module it was compiled from passed the ABI check.
    fn cached_artifact(&self, cid: &str) -> Option<PathBuf> {
        let dir = self.module_cache.as_ref()?;
        let path = self.host.artifact_path(cid, dir);
        path.is_file().then_some(path)
    }

    /// Loads `artifact` on a thread of its own while this one writes the
    /// bundle (each takes about a millisecond for a 650 KB module). An
    /// artifact that does not load (damaged) is compiled again.
    fn load_while_writing(
        &mut self,
        artifact: &Path,
        bundle: &Cid,
        wasm: &[u8],
    ) -> Result<VatModule, KernelError> {
        let host = &self.host;
        let state = &mut self.state;
        let (loaded, written) = std::thread::scope(|scope| {
            let loading = scope.spawn(|| host.load_artifact(artifact));
            let written = state
                .store
                .add_bundle_as(bundle, wasm)
                .and_then(|()| state.commit_pipelined());
            let loaded = loading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (loaded, written)
        });
        written?;
        match loaded {
            Ok(module) => Ok(module),
            Err(_) => {
                let cid = bundle.to_string();
                self.compile(wasm, &cid)
            }
        }
    }

    fn spawn_in_crank(
        &mut self,
        name: &str,
        cid: &str,
        module: Option<VatModule>,
        options: VatOptions,
    ) -> Result<Kref, KernelError> {
        if let Some(module) = module {
            self.modules.insert(cid.to_owned(), module);
        }
        let vat = self.state.allocate_vat_id()?;
        self.state.set(&keys::vat_name(&vat), name)?;
        self.state.set(&keys::vat_bundle(&vat), cid)?;
        self.state.set_vat_state(&vat, VatState::Running, None)?;
        let options_text =
            serde_json::to_string(&options).expect("kernel invariant: options serialize");
        self.state.set(&keys::vat_options(&vat), &options_text)?;
        self.state.set(&keys::vat_by_name(&name), &vat)?;
        // Until its first heap report (vom makes one as it starts) a vat
        // is taken to hold something only its heap knows.
        self.state
            .set(&keys::heap_dirty(&vat), crate::state::HEAP_UNREPORTED)?;
        let root = self.state.allocate_object(&vat)?;
        self.state.clist_add(&vat, &root, vom::runtime::ROOT_VREF)?;
        self.state.set(&keys::pet_name(&name), &root)?;
        self.state.incref(&root)?;
        if let Err(fault) = self.ensure_worker(&vat) {
            self.discard_worker(&vat);
            return Err(match fault {
                WorkerStartError::Fault(fault) => KernelError::StartFailed(fault),
                WorkerStartError::Kernel(e) => e,
            });
        }
        Ok(root)
    }

    /// Starts `vat`'s worker if it is not running (it wakes), delivering
    /// `startVat` within the current crank. Room is made first: the least
    /// recently used vat that may sleep does, and its process hosts `vat`.
    fn ensure_worker(&mut self, vat: &EndpointId) -> Result<(), WorkerStartError> {
        if self.workers.contains_key(vat) {
            return Ok(());
        }
        let started_at = Instant::now();
        self.keep_resident_max(Some(vat))?;
        let cid = self
            .state
            .get(&keys::vat_bundle(&vat))?
            .unwrap_or_else(|| panic!("kernel invariant: vat {vat} has a bundle"));
        let options = self.vat_options(vat)?;
        let (mut worker, reused) = self.start_worker(vat, &cid, &options)?;
        // A vat that slept with a clean heap held no import only its heap
        // knew: there is nothing for its start to drop, so nothing to list.
        let imports = match self.state.heap_report(vat)? {
            None => Vec::new(),
            Some(_) => self
                .state
                .scan_prefix(&keys::clist(&vat, &"ko"))?
                .into_iter()
                .filter_map(|(_, entry)| entry.strip_prefix("R o-").map(|id| format!("o-{id}")))
                .collect(),
        };
        let mut syscalls = VatSyscalls::new(&mut self.state, vat);
        let outcome = worker.deliver(&Delivery::StartVat { imports }, &mut syscalls);
        syscalls.finish()?;
        outcome.map_err(WorkerStartError::Fault)?;
        self.workers.insert(vat.to_owned(), worker);
        self.residency.woke(started_at, reused);
        if options.worker == WorkerKind::Process {
            // Started after the answer, not in this crank (see `top_up_spares`).
            self.spares_due = true;
        }
        if let Some(now_s) = self.residency.touch(vat) {
            self.state
                .set(&keys::vat_active(&vat), &now_s.to_string())?;
        }
        self.message_bytes_max
            .insert(vat.to_owned(), options.message_bytes_max);
        let faults = self.state.count(&faults_key(vat))?;
        if faults > 0 {
            let faults = u32::try_from(faults)
                .unwrap_or_else(|_| panic!("kernel invariant: {vat}.faults fits a u32"));
            self.faults_in_a_row.insert(vat.to_owned(), faults);
        }
        // A vat's heap is a cache: what it awaited in memory died with its
        // previous worker, so the promises it decided can no longer be kept.
        let key = keys::vat_incarnation(&vat);
        let incarnation = self.state.count(&key)?;
        self.state.set(&key, &(incarnation + 1).to_string())?;
        if incarnation > 0 {
            self.reject_heap_decided(vat, incarnation, "restarted")?;
        }
        Ok(())
    }

    /// A worker hosting bundle `cid` for `vat`, and whether it is a
    /// sleeping vat's process taken over (no process start).
    fn start_worker(
        &mut self,
        vat: &EndpointId,
        cid: &str,
        options: &VatOptions,
    ) -> Result<(VatWorker, bool), WorkerStartError> {
        if options.worker == WorkerKind::Thread {
            let module = self.module(cid)?;
            let worker = ThreadWorker::start(&self.host, &module, options.limits())
                .map_err(worker_start_error)?;
            return Ok((VatWorker::Thread(worker), false));
        }
        let program = self.supervisor_program()?;
        let Some(dir) = self.module_cache.clone() else {
            let source = ModuleSource::Wasm(self.vat_bundle(cid)?);
            return self.start_process(&program, vat, source, options);
        };
        // The process loads the compiled artifact itself: this one
        // compiles the module (writing the artifact) only when it is missing.
        if self.cached_artifact(cid).is_none() {
            self.module(cid)?;
        }
        let source = ModuleSource::Artifact(self.host.artifact_path(cid, &dir));
        match self.start_process(&program, vat, source.clone(), options) {
            // A damaged artifact fails the start: loaded here from the
            // cache, it is found so and compiled again from the bundle
            // (writing it anew), and the start is tried once more. A module
            // that fails on its own fails the same way again.
            Err(WorkerStartError::Fault(_)) => {
                self.compile(&self.vat_bundle(cid)?, cid)?;
                self.start_process(&program, vat, source, options)
            }
            started => started,
        }
    }

    /// A process hosting `source` for `vat`: a spare if one is up, else a
    /// new one.
    fn start_process(
        &mut self,
        program: &Path,
        vat: &EndpointId,
        source: ModuleSource,
        options: &VatOptions,
    ) -> Result<(VatWorker, bool), WorkerStartError> {
        while let Some(mut spare) = self.residency.take_spare() {
            match spare.host(source.clone(), options.limits()) {
                Ok(()) => return Ok((VatWorker::Process(spare), true)),
                // The module's own failure is the vat's; a spare that died
                // is replaced by a fresh process.
                Err(SupervisorError::Fault(VatFault::Trap(reason))) => {
                    return Err(WorkerStartError::Fault(VatFault::Trap(reason)));
                }
                Err(_) => continue,
            }
        }
        let worker = ProcessWorker::start(program, vat, source, options.limits())
            .map_err(worker_start_error)?;
        Ok((VatWorker::Process(worker), false))
    }

    /// Starts the spare processes ([`Self::set_warm_spares`]) that vats'
    /// starts took or that were never started, if a process worker started
    /// since the last call. A host calls it once it has answered what it
    /// was asked (the daemon, at the end of each turn), so that no answer
    /// waits for a process start.
    pub fn top_up_spares(&mut self) {
        if std::mem::take(&mut self.spares_due) {
            self.warm_spares();
        }
    }

    /// Starts spare processes until [`Self::set_warm_spares`] are waiting,
    /// room allowing: the next vat that starts takes one with its process
    /// start paid, while this one runs. A spare that cannot start is left
    /// out: the next vat starts a process of its own, and says why.
    fn warm_spares(&mut self) {
        let Ok(program) = self.supervisor_program() else {
            return;
        };
        let room = self.vats_resident_max.saturating_sub(self.workers.len());
        while self.residency.spares() < self.warm_spares.min(room) {
            match ProcessWorker::spare(&program) {
                Ok(spare) => self.residency.keep_spare(spare, room),
                Err(_) => return,
            }
        }
    }

    /// How many spare worker processes to keep started ahead of need (0,
    /// the default: only sleeping vats' processes are kept). A daemon keeps
    /// one, so that a spawn or a wake pays no process start. At most
    /// [`SPARE_WORKERS_MAX`].
    pub fn set_warm_spares(&mut self, spares: usize) {
        self.warm_spares = spares.min(crate::resident::SPARE_WORKERS_MAX);
    }

    /// Puts vats to sleep, least recently used first, until the resident
    /// set is within `vats_resident_max` (leaving room for `waking` when
    /// given). Only vats whose heaps hold nothing beyond their store sleep;
    /// sleeping writes nothing.
    fn keep_resident_max(&mut self, waking: Option<&EndpointId>) -> Result<(), KernelError> {
        let max = self.vats_resident_max - usize::from(waking.is_some());
        if self.workers.len() <= max {
            let room = self.vats_resident_max - self.workers.len();
            self.residency.trim_spares(room);
            return Ok(());
        }
        for vat in self.residency.oldest_first() {
            if self.workers.len() <= max {
                break;
            }
            if Some(&vat) != waking && self.heap_holds(&vat)?.is_none() {
                self.put_to_sleep(&vat);
            }
        }
        Ok(())
    }

    /// What keeps `vat` awake: its heap's last report, or the promises it
    /// decides that only its heap keeps (`None`: it may sleep).
    fn heap_holds(&self, vat: &EndpointId) -> Result<Option<String>, StoreError> {
        if let Some(holds) = self.state.heap_report(vat)? {
            return Ok(Some(holds));
        }
        let in_memory = self
            .state
            .decided_by(vat)?
            .into_iter()
            .filter(|(_, kept)| !kept)
            .count();
        Ok((in_memory > 0).then(|| format!("decides {in_memory} promise(s) in memory")))
    }

    /// Stops `vat`'s worker, writing nothing; its process is kept for a
    /// vat that wakes, if there is room for it.
    fn put_to_sleep(&mut self, vat: &EndpointId) {
        let Some(worker) = self.workers.remove(vat) else {
            return;
        };
        self.message_bytes_max.remove(vat);
        self.deliveries_since_collection.remove(vat);
        self.faults_in_a_row.remove(vat);
        self.residency.forget(vat);
        self.residency.counts.evictions += 1;
        if let VatWorker::Process(process) = worker {
            let room = self.vats_resident_max.saturating_sub(self.workers.len());
            self.residency.keep_spare(process, room);
        }
    }

    /// Sets `vats_resident_max`: at most this many vats keep a worker
    /// between cranks (vats whose heaps hold what their store does not
    /// stay awake beyond it).
    pub fn set_vats_resident_max(&mut self, max: usize) -> Result<(), KernelError> {
        if max == 0 {
            return Err(KernelError::BadResidentMax);
        }
        self.vats_resident_max = max;
        self.keep_resident_max(None)
    }

    /// How many vats are awake, and spare worker processes kept.
    pub fn resident(&self) -> (usize, usize) {
        (self.workers.len(), self.residency.spares())
    }

    /// Wakes and sleeps since this kernel started.
    pub fn residency_counts(&self) -> ResidencyCounts {
        self.residency.counts
    }

    /// Puts vat `name` to sleep now (`vat sleep`): its worker stops, and
    /// its next delivery wakes it. Refused, saying why, while its heap
    /// holds what its store does not. Returns whether it was awake.
    pub fn sleep_vat(&mut self, name: &str) -> Result<bool, KernelError> {
        let vat = self.running_vat_id(name)?;
        self.commit()?;
        if !self.workers.contains_key(&vat) {
            return Ok(false);
        }
        if let Some(holds) = self.heap_holds(&vat)? {
            return Err(KernelError::CannotSleep {
                name: name.to_owned(),
                holds,
            });
        }
        self.put_to_sleep(&vat);
        Ok(true)
    }

    /// The id (`vN`) of the vat named `name`.
    pub fn vat_id(&self, name: &str) -> Result<EndpointId, KernelError> {
        self.state
            .get(&keys::vat_by_name(&name))?
            .map(|vat| EndpointId::from_table(&vat))
            .ok_or_else(|| KernelError::UnknownVat(name.to_owned()))
    }

    fn running_vat_id(&self, name: &str) -> Result<EndpointId, KernelError> {
        let vat = self.vat_id(name)?;
        if self.state.vat_state(&vat)? != VatState::Running {
            return Err(KernelError::VatNotRunning {
                name: name.to_owned(),
                reason: self.vat_reason(&vat)?,
            });
        }
        Ok(vat)
    }

    fn vat_reason(&self, vat: &str) -> Result<String, StoreError> {
        Ok(self.state.get(&keys::reason(&vat))?.unwrap_or_default())
    }

    /// The id of vat `name`, which still has its data (any state but removed).
    fn kept_vat_id(&self, name: &str) -> Result<EndpointId, KernelError> {
        let vat = self.vat_id(name)?;
        if self.state.vat_state(&vat)? == VatState::Removed {
            return Err(KernelError::Removed {
                name: name.to_owned(),
            });
        }
        Ok(vat)
    }

    /// Restarts suspended vat `name` on its bundle and its kept state, in one
    /// crank: if its start faults again, nothing changes. Promises settled
    /// while it slept are told to it afresh.
    pub fn resume_vat(&mut self, name: &str) -> Result<(), KernelError> {
        let vat = self.kept_vat_id(name)?;
        let state = self.state.vat_state(&vat)?;
        if state != VatState::Suspended {
            return Err(KernelError::NotSuspended {
                name: name.to_owned(),
                state,
            });
        }
        self.commit()?;
        self.discard_worker(&vat);
        let started = self.in_crank(|k| k.revive_in_crank(&vat));
        match started {
            Ok(()) => self.commit(),
            Err(e) => {
                self.discard_worker(&vat);
                Err(match e {
                    WorkerStartError::Fault(fault) => KernelError::ResumeFailed {
                        name: name.to_owned(),
                        fault,
                    },
                    WorkerStartError::Kernel(e) => e,
                })
            }
        }
    }

    /// Marks `vat` running with no faults counted, starts its worker, and
    /// queues a notify for each settled promise its c-list still names (it
    /// was not told while it was not running).
    fn revive_in_crank(&mut self, vat: &EndpointId) -> Result<(), WorkerStartError> {
        self.state.set_vat_state(vat, VatState::Running, None)?;
        self.clear_faults(vat)?;
        self.side_faulted.remove(vat);
        self.ensure_worker(vat)?;
        let prefix = keys::clist(&vat, &"kp");
        for (key, _) in self.state.scan_prefix(&prefix)? {
            let kpid = &key[prefix.len() - 2..];
            if !matches!(
                self.state.promise_state(kpid)?,
                Some(PromiseState::Unresolved) | None
            ) {
                self.state.push_run_queue(RunQueueItem::Notify {
                    vat: vat.clone(),
                    promise: Kref::from_table(kpid),
                })?;
            }
        }
        Ok(())
    }

    /// Ends vat `name` (running or suspended) at its owner's request: its
    /// worker stops, the promises it decided are rejected, messages to it
    /// are refused. Its data stays until [`Self::remove_vat`].
    pub fn terminate_vat_by_owner(&mut self, name: &str) -> Result<(), KernelError> {
        let vat = self.kept_vat_id(name)?;
        if self.state.vat_state(&vat)? == VatState::Terminated {
            return Ok(());
        }
        self.commit()?;
        let reason = format!(
            "vat {vat} ({name}) was terminated by its owner (`vat terminate`); its data is kept until `vat rm {name}`"
        );
        self.in_crank(|k| k.terminate_vat(&vat, &reason))?;
        self.commit()
    }

    /// Deletes the data of vat `name`, which is not running: its c-list
    /// (releasing what it imported) and its vatstore, a slice per crank.
    /// Its record stays, so its name and id are not reused.
    pub fn remove_vat(&mut self, name: &str) -> Result<(), KernelError> {
        let vat = self.kept_vat_id(name)?;
        if self.state.vat_state(&vat)? == VatState::Running {
            return Err(KernelError::StillRunning {
                name: name.to_owned(),
            });
        }
        self.commit()?;
        self.in_crank(|k| k.remove_in_crank(&vat, name))?;
        self.commit()
    }

    /// Runs every pending slice of removed vats' deletion, a commit after
    /// each (a daemon instead runs them between other cranks).
    pub fn finish_cleanup(&mut self) -> Result<(), KernelError> {
        while self.cleanup_step()? {
            self.commit()?;
        }
        Ok(())
    }

    fn remove_in_crank(&mut self, vat: &str, name: &str) -> Result<(), StoreError> {
        self.discard_worker(vat);
        let reason = format!("vat {vat} ({name}) was removed (`vat rm`): its data is deleted");
        self.reject_decided_promises(vat, &reason)?;
        self.state
            .set_vat_state(vat, VatState::Removed, Some(&reason))?;
        self.clear_faults(vat)?;
        self.state.delete(&keys::heap_dirty(&vat))?;
        self.state.cleanup_maybe = true;
        self.state.set(&keys::cleanup(&vat), "")
    }

    /// Upgrades vat `name` to `wasm`: stops it, swaps its bundle and starts the
    /// new version against the same vatstore, all in one crank. If the new
    /// version fails to start (a trap, or a durable kind it does not define
    /// again), nothing changes and the old version keeps running. The
    /// promises the vat decided are rejected: their awaits died with its heap.
    /// Returns the new bundle's CID.
    pub fn upgrade_vat(&mut self, name: &str, wasm: &[u8]) -> Result<String, KernelError> {
        // A suspended or terminated vat is revived by new code on its kept state.
        let vat = self.kept_vat_id(name)?;
        let cid = swingstore::cid_of(wasm).to_string();
        let module = match self.modules.get(&cid) {
            Some(module) => module.clone(),
            None => self.compile(wasm, &cid)?,
        };
        if self.vat_options(&vat)?.worker == WorkerKind::Process {
            self.supervisor_program()?;
        }
        self.commit()?;
        // The old worker goes now: the new version must not share its heap.
        self.discard_worker(&vat);
        self.deliveries_since_collection.remove(&vat);
        let started = self.in_crank(|k| k.upgrade_in_crank(&vat, wasm, &cid, module));
        match started {
            Ok(()) => {
                self.commit()?;
                Ok(cid)
            }
            Err(e) => {
                self.discard_worker(&vat);
                Err(match e {
                    WorkerStartError::Fault(fault) => KernelError::UpgradeFailed {
                        name: name.to_owned(),
                        fault,
                    },
                    WorkerStartError::Kernel(e) => e,
                })
            }
        }
    }

    fn upgrade_in_crank(
        &mut self,
        vat: &EndpointId,
        wasm: &[u8],
        cid: &str,
        module: VatModule,
    ) -> Result<(), WorkerStartError> {
        self.state.store.add_bundle(wasm)?;
        self.modules.insert(cid.to_owned(), module);
        self.state.set(&keys::vat_bundle(&vat), cid)?;
        let incarnation = self.state.count(&keys::vat_incarnation(&vat))?;
        self.reject_heap_decided(vat, incarnation, "upgraded")?;
        self.revive_in_crank(vat)
    }

    /// Delivers pending GC actions, then `bringOutYourDead` to vat `name` in a
    /// crank of its own (the vat deletes the durable objects nothing refers
    /// to any more), then the GC actions that caused.
    pub fn collect_vat_garbage(&mut self, name: &str) -> Result<(), KernelError> {
        let vat = self.running_vat_id(name)?;
        self.run_gc_actions()?;
        self.bring_out_your_dead(&vat)?;
        self.run_gc_actions()?;
        self.commit()?;
        // A collection that faulted twice suspended the vat: say so.
        self.running_vat_id(name).map(|_| ())
    }

    /// Delivers every pending GC action (and those they cause).
    fn run_gc_actions(&mut self) -> Result<(), KernelError> {
        while self.gc_step()? {}
        Ok(())
    }

    fn bring_out_your_dead(&mut self, vat: &EndpointId) -> Result<(), KernelError> {
        self.deliveries_since_collection.remove(vat);
        // A fault is retried once in a fresh worker; a second one suspends the vat.
        loop {
            self.state.store.begin_crank()?;
            let delivered = match self.ensure_worker(vat) {
                Ok(()) => self.deliver(vat, &Delivery::BringOutYourDead),
                Err(e) => Err(e.into_crank_error(vat)),
            };
            if self.finish_side_crank(vat, delivered)? {
                return Ok(());
            }
        }
    }

    /// Lets go of a result promise from [`Self::queue_message`], once read;
    /// it is freed when nothing else refers to it.
    pub fn release(&mut self, kpid: &Kref) -> Result<(), KernelError> {
        // The crank's end collects what the promise alone kept.
        Ok(self.in_crank(|k| k.state.unpin(kpid))?)
    }

    /// Queues `method(args)` to `target` (a kref) and returns the result
    /// promise, which stays until [`Self::release`].
    pub fn queue_message(
        &mut self,
        target: &Kref,
        method: &str,
        args: CapData,
    ) -> Result<Kref, KernelError> {
        self.check_message_refs(target, &args)?;
        self.in_crank(|k| k.queue_in_crank(target, method, args))
    }

    /// Fails unless `target` and every slot of `args` are krefs this kernel knows.
    pub(crate) fn check_message_refs(
        &self,
        target: &str,
        args: &CapData,
    ) -> Result<(), KernelError> {
        for kref in std::iter::once(target).chain(args.slots.iter().map(String::as_str)) {
            if !self.state.kref_exists(kref)? {
                return Err(KernelError::UnknownTarget(kref.to_owned()));
            }
        }
        Ok(())
    }

    /// Queues a message whose references are known to exist (in a crank);
    /// returns its pinned result promise.
    pub(crate) fn queue_in_crank(
        &mut self,
        target: &Kref,
        method: &str,
        args: CapData,
    ) -> Result<Kref, KernelError> {
        let result = self.state.allocate_promise(None)?;
        // The caller holds the result until it calls `release`.
        self.state.pin(&result)?;
        self.state.push_run_queue(RunQueueItem::Send {
            target: target.clone(),
            message: Message {
                method: method.to_owned(),
                args,
                result: Some(result.clone()),
            },
        })?;
        Ok(result)
    }

    /// Runs cranks until `kpid` settles, then commits and returns its settlement.
    pub fn run_until_settled(&mut self, kpid: &Kref) -> Result<PromiseState, KernelError> {
        loop {
            match self.state.promise_state(kpid)? {
                None => return Err(KernelError::UnknownTarget(kpid.to_string())),
                Some(PromiseState::Unresolved) => {}
                Some(settled) => {
                    self.commit()?;
                    return Ok(settled);
                }
            }
            if !self.step()? {
                self.commit()?;
                if let Some(peer) = self.state.promise_decider(kpid)?
                    && peer.kind() == EndpointKind::Peer
                {
                    return Err(KernelError::WaitsOnPeer {
                        kpid: kpid.to_string(),
                        peer: peer.into(),
                    });
                }
                return Err(KernelError::Unsettled(kpid.to_string()));
            }
        }
    }

    /// Runs one crank, if there is work. Commits as the policy says. GC
    /// actions go before ordinary work; a terminated vat's cleanup takes one
    /// bounded slice after each ordinary crank, so it never stalls the others.
    pub fn step(&mut self) -> Result<bool, KernelError> {
        if self.gc_step()? {
            self.after_crank()?;
            return Ok(true);
        }
        let worked = self.run_queue_step()?;
        let cleaned = self.cleanup_step()?;
        if worked || cleaned {
            self.after_crank()?;
        }
        Ok(worked || cleaned)
    }

    /// How many items wait in the run queue (the network stops taking in
    /// frames while it is long; the inspector shows it).
    pub fn run_queue_length(&self) -> Result<u64, KernelError> {
        let (head, tail) = self.state.run_queue_bounds()?;
        Ok(tail - head)
    }

    /// Whether [`Self::step`] may find work (it may still find none).
    pub fn has_work(&self) -> Result<bool, KernelError> {
        if self.state.gc_actions_maybe || self.state.cleanup_maybe {
            return Ok(true);
        }
        let (head, tail) = self.state.run_queue_bounds()?;
        Ok(head != tail)
    }

    /// Commits as the policy says; a vat due for `bringOutYourDead` gets it.
    fn after_crank(&mut self) -> Result<(), KernelError> {
        for vat in std::mem::take(&mut self.collection_due) {
            if self.workers.contains_key(&vat) {
                self.bring_out_your_dead(&vat)?;
            }
        }
        self.cranks_total += 1;
        self.cranks_since_commit += 1;
        if self.cranks_since_commit >= self.policy.cranks_per_commit_max
            || self.last_commit.elapsed() >= Duration::from_millis(self.policy.commit_interval_ms)
        {
            self.commit_pipelined()?;
        }
        Ok(())
    }

    /// Delivers the first pending batch of GC actions (one kind, one vat),
    /// leaving out those that no longer apply. Returns whether it ran a crank.
    fn gc_step(&mut self) -> Result<bool, KernelError> {
        if self.gc_deferred || !self.state.gc_actions_maybe {
            return Ok(false);
        }
        let next = self.state.store.get_next_key("gc.")?;
        let Some(rest) = next.as_deref().and_then(|key| key.strip_prefix("gc.")) else {
            self.state.gc_actions_maybe = false;
            return Ok(false);
        };
        let first = next.clone().expect("just matched");
        let mut parts = rest.splitn(3, '.');
        let (Some(action), Some(vat)) = (parts.next().and_then(GcAction::parse), parts.next())
        else {
            panic!("kernel invariant: GC action keys are gc.<action>.<vat>.<kref> ({first})")
        };
        let vat = EndpointId::from_table(vat);
        let prefix = keys::gc_prefix(action.name(), &vat);
        self.state.store.begin_crank()?;
        let delivered = match vat.kind() {
            EndpointKind::Vat => self.gc_vat_in_crank(action, &vat, &prefix),
            EndpointKind::Peer | EndpointKind::Device => self
                .gc_engine_in_crank(action, &vat, &prefix)
                .map_err(CrankError::from),
        };
        self.finish_side_crank(&vat, delivered)?;
        Ok(true)
    }

    /// Applies a batch of GC actions for objects an engine's endpoint
    /// `endpoint` exports.
    fn gc_engine_in_crank(
        &mut self,
        action: GcAction,
        endpoint: &EndpointId,
        prefix: &str,
    ) -> Result<(), KernelError> {
        let engine = engine_for(&self.engines, endpoint);
        for (key, _) in self.state.scan_prefix(prefix)? {
            self.state.delete(&key)?;
            let ko = &Kref::from_table(&key[prefix.len()..]);
            if self.state.object_owner(ko)?.as_deref() != Some(endpoint.as_str()) {
                continue;
            }
            let (reachable, recognizable) = self.state.object_refs(ko)?;
            match action {
                GcAction::Drop if reachable == 0 => {
                    engine.drop_export(&mut Tables::new(&mut self.state), endpoint, ko)?;
                }
                GcAction::Retire if recognizable == 0 => {
                    engine.drop_export(&mut Tables::new(&mut self.state), endpoint, ko)?;
                    self.state.delete_object(ko)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies a batch of GC actions to the tables and tells vat `vat` the
    /// ones that still apply, if it runs.
    fn gc_vat_in_crank(
        &mut self,
        action: GcAction,
        vat: &EndpointId,
        prefix: &str,
    ) -> Result<(), CrankError> {
        let mut vrefs = Vec::new();
        for (key, value) in self.state.scan_prefix(prefix)? {
            self.state.delete(&key)?;
            let ko = &key[prefix.len()..];
            if let Some(vref) = self.gc_action_target(action, vat, ko, &value)? {
                vrefs.push(vref);
            }
        }
        if vrefs.is_empty() || self.state.vat_state(vat)? != VatState::Running {
            return Ok(());
        }
        let delivery = match action {
            GcAction::Drop => Delivery::DropExports { vrefs },
            GcAction::Retire => Delivery::RetireExports { vrefs },
            GcAction::RetireImport => Delivery::RetireImports { vrefs },
        };
        self.ensure_worker(vat)
            .map_err(|e| e.into_crank_error(vat))?;
        self.deliver(vat, &delivery)
    }

    /// Applies one GC action to the kernel's tables; returns the vref to
    /// tell the vat, or `None` if the action no longer applies (stale).
    fn gc_action_target(
        &mut self,
        action: GcAction,
        vat: &str,
        ko: &str,
        value: &str,
    ) -> Result<Option<String>, KernelError> {
        if action == GcAction::RetireImport {
            return Ok(Some(value.to_owned()));
        }
        if self.state.object_owner(ko)?.as_deref() != Some(vat) {
            return Ok(None);
        }
        let (reachable, recognizable) = self.state.object_refs(ko)?;
        let Some(vref) = self.state.clist_vref(vat, ko)? else {
            return Ok(None);
        };
        Ok(match action {
            GcAction::Drop if reachable == 0 && self.state.clist_reachable(vat, ko)? => {
                self.state.clist_set_reachable(vat, ko, false)?;
                Some(vref)
            }
            GcAction::Retire if recognizable == 0 => {
                self.state.delete_object(ko)?;
                Some(vref)
            }
            _ => None,
        })
    }

    /// Ends a crank that is not a run-queue item's (GC, `bringOutYourDead`).
    /// A fault rolls it back; the first is retried (returns false: the
    /// caller delivers again, in a fresh worker), the second suspends the vat
    /// in a crank of its own (an ABI violation terminates it). Returns
    /// whether the delivery is done with.
    fn finish_side_crank(
        &mut self,
        vat: &EndpointId,
        delivered: Result<(), CrankError>,
    ) -> Result<bool, KernelError> {
        let failed = match delivered {
            Ok(()) => {
                self.end_crank_or_abort()?;
                // Only faults in a row count: this one delivered.
                self.side_faulted.remove(vat);
                return Ok(true);
            }
            Err(failed) => failed,
        };
        self.state.abort_crank()?;
        let (vat, fault, at_start) = match failed {
            CrankError::Kernel(e) => {
                self.discard_all_workers();
                return Err(e);
            }
            CrankError::Fault {
                vat,
                fault,
                at_start,
            } => (vat, fault, at_start),
            CrankError::Refused { vat, reason } => (vat, VatFault::LimitExceeded(reason), false),
        };
        self.discard_worker(&vat);
        if self.side_faulted.insert(vat.clone()) {
            return Ok(false);
        }
        self.side_faulted.remove(&vat);
        self.in_crank(|k| k.fault_in_crank(&vat, FaultedWork::Housekeeping, &fault, at_start))?;
        Ok(true)
    }

    /// Ends the crank in progress; if ending it fails, aborts it.
    pub(crate) fn end_crank_or_abort(&mut self) -> Result<(), StoreError> {
        let ended = self.state.end_crank();
        if ended.is_err() && self.state.store.in_crank() {
            self.state.abort_crank()?;
        }
        ended
    }

    /// Drops every worker: the kernel failed mid-delivery (its store), so a
    /// heap may hold what its aborted crank did not keep.
    fn discard_all_workers(&mut self) {
        for vat in self.workers.keys() {
            self.residency.forget(vat);
        }
        self.workers.clear();
        self.message_bytes_max.clear();
    }

    /// Drops `vat`'s worker: after a fault its heap may be half-updated.
    fn discard_worker(&mut self, vat: &str) {
        self.workers.remove(vat);
        self.message_bytes_max.remove(vat);
        self.residency.forget(vat);
    }

    /// Deletes up to [`CLEANUP_ENTRIES_PER_CRANK_MAX`] keys of a terminated
    /// vat (its c-list first, releasing what it held, then its vatstore).
    /// Returns whether there was anything to do.
    fn cleanup_step(&mut self) -> Result<bool, KernelError> {
        if !self.state.cleanup_maybe {
            return Ok(false);
        }
        let next = self.state.store.get_next_key("cleanup.")?;
        let Some(vat) = next
            .as_deref()
            .and_then(|key| key.strip_prefix("cleanup."))
            .map(str::to_owned)
        else {
            self.state.cleanup_maybe = false;
            return Ok(false);
        };
        self.in_crank(|k| k.cleanup_slice(&vat))?;
        Ok(true)
    }

    /// Deletes one slice of removed vat `vat`'s keys (in the current crank).
    fn cleanup_slice(&mut self, vat: &str) -> Result<(), KernelError> {
        let marker = keys::cleanup(&vat);
        let mut budget = CLEANUP_ENTRIES_PER_CRANK_MAX;
        let clist = keys::clist(&vat, &"k");
        let mut at = clist.clone();
        while budget > 0 {
            let Some(key) = self.state.store.get_next_key(&at)? else {
                break;
            };
            let Some(kref) = key.strip_prefix(&keys::clist_prefix(&vat)) else {
                break;
            };
            if !key.starts_with(&clist) {
                break;
            }
            let kref = kref.to_owned();
            self.state.clist_remove(vat, &kref)?;
            at = key;
            budget -= 1;
        }
        let vatstore = keys::vatstore_prefix(&vat);
        let mut at = vatstore.clone();
        while budget > 0 {
            let Some(key) = self.state.store.get_next_key(&at)? else {
                break;
            };
            if !key.starts_with(&vatstore) {
                break;
            }
            self.state.delete(&key)?;
            at = key;
            budget -= 1;
        }
        if budget > 0 {
            self.state.delete(&marker)?;
        }
        Ok(())
    }

    /// Takes the next run-queue item and delivers it. Returns whether there was one.
    fn run_queue_step(&mut self) -> Result<bool, KernelError> {
        let mut retried = false;
        loop {
            self.state.store.begin_crank()?;
            let item = match self.state.pop_run_queue() {
                Ok(Some(item)) => item,
                Ok(None) => {
                    self.state.abort_crank()?;
                    return Ok(false);
                }
                Err(e) => {
                    self.state.abort_crank()?;
                    self.discard_all_workers();
                    return Err(e.into());
                }
            };
            let failed = match self.crank(item.clone()) {
                Ok(()) => {
                    self.end_crank_or_abort()?;
                    return Ok(true);
                }
                Err(failed) => failed,
            };
            // The crank is undone entirely.
            self.state.abort_crank()?;
            if let CrankError::Kernel(e) = failed {
                self.discard_all_workers();
                return Err(e);
            }
            if let CrankError::Fault { vat, fault, .. } = &failed {
                self.discard_worker(vat);
                // A worker that died (not the guest's doing, perhaps) and a
                // notify (the vat cannot be told again later) get one retry
                // in a fresh worker, from committed state.
                let retry = fault.class() == FaultClass::Worker
                    || matches!(item, RunQueueItem::Notify { .. });
                if retry && !retried {
                    retried = true;
                    continue;
                }
            }
            // The item is taken again, in a crank of its own that records
            // what became of it.
            self.in_crank(|k| k.record_failed_item(&item, failed))?;
            return Ok(true);
        }
    }

    /// Takes `item` off the run queue's head (where its faulted crank left
    /// it) and records its failure: its result is rejected, and the fault
    /// counted against its vat.
    fn record_failed_item(
        &mut self,
        item: &RunQueueItem,
        failed: CrankError,
    ) -> Result<(), KernelError> {
        let popped = self.state.pop_run_queue()?;
        assert_eq!(
            popped.as_ref(),
            Some(item),
            "kernel invariant: a faulted crank's item is still at the head"
        );
        let reason = match failed {
            // The guest never saw it: its worker is as good as before.
            CrankError::Refused { reason, .. } => reason,
            CrankError::Fault {
                vat,
                fault,
                at_start,
            } => {
                let work = match item {
                    RunQueueItem::Send { message, .. } => FaultedWork::Message(message),
                    _ => FaultedWork::Notify,
                };
                self.fault_in_crank(&vat, work, &fault, at_start)?
            }
            CrankError::Kernel(e) => return Err(e),
        };
        if let RunQueueItem::Send { message, .. } = item {
            self.reject_if_unresolved(message.result.as_deref(), &reason)?;
        }
        Ok(())
    }

    /// Records, in the current crank, that `work` faulted in `vat` (its own
    /// crank was rolled back): the vat is terminated for an ABI violation,
    /// suspended for a start that faulted, a notify or housekeeping that
    /// faulted twice, or `faults_in_a_row_max` faulted deliveries, and
    /// otherwise keeps running. Returns the reason to reject a message with.
    fn fault_in_crank(
        &mut self,
        vat: &EndpointId,
        work: FaultedWork<'_>,
        fault: &VatFault,
        at_start: bool,
    ) -> Result<String, KernelError> {
        let name = self.vat_name(vat)?;
        if fault.class() == FaultClass::Abi {
            let reason = format!(
                "vat {vat} ({name}) terminated: {fault}; its data is kept until `vat rm {name}`"
            );
            self.terminate_vat(vat, &reason)?;
            return Ok(reason);
        }
        let revive = format!(
            "its data is kept: `vat resume {name}` restarts it, `vat upgrade {name} FIXED.wasm` revives it with new code"
        );
        let count = self.faults_in_a_row.get(vat).copied().unwrap_or(0) + 1;
        let max = self.vat_options(vat)?.faults_in_a_row_max;
        let why = match (&work, at_start) {
            (_, true) => Some(format!("its start faulted: {fault}")),
            (FaultedWork::Notify, _) => Some(format!("a notify faulted twice: {fault}")),
            (FaultedWork::Housekeeping, _) => Some(format!("a GC delivery faulted twice: {fault}")),
            (FaultedWork::Message(_), _) if count >= max => Some(format!(
                "{count} deliveries in a row faulted (faults_in_a_row_max {max}), the last: {fault}"
            )),
            (FaultedWork::Message(_), _) => None,
        };
        let failed = match &work {
            FaultedWork::Message(message) => format!(
                "{name}.{} failed in vat {vat} and was rolled back: {fault}",
                message.method
            ),
            _ => String::new(),
        };
        let Some(why) = why else {
            self.state.set(&faults_key(vat), &count.to_string())?;
            self.faults_in_a_row.insert(vat.clone(), count);
            return Ok(failed);
        };
        let reason = format!("vat {vat} ({name}) is suspended: {why}; {revive}");
        self.suspend_vat(vat, &reason)?;
        Ok(if failed.is_empty() {
            reason
        } else {
            format!("{failed}; {reason}")
        })
    }

    fn vat_name(&self, vat: &str) -> Result<String, StoreError> {
        Ok(self
            .state
            .get(&keys::vat_name(&vat))?
            .unwrap_or_else(|| panic!("kernel invariant: vat {vat} has a name")))
    }

    /// Marks `vat` suspended and rejects the promises it decided (they were
    /// awaited on the heap its worker took with it). Everything else stays.
    fn suspend_vat(&mut self, vat: &str, reason: &str) -> Result<(), StoreError> {
        self.discard_worker(vat);
        self.state
            .set_vat_state(vat, VatState::Suspended, Some(reason))?;
        self.clear_faults(vat)?;
        self.reject_decided_promises(vat, reason)
    }

    /// Forgets `vat`'s count of faults in a row.
    fn clear_faults(&mut self, vat: &str) -> Result<(), StoreError> {
        self.faults_in_a_row.remove(vat);
        self.state.delete(&faults_key(vat))
    }

    fn crank(&mut self, item: RunQueueItem) -> Result<(), CrankError> {
        match item {
            RunQueueItem::Send { target, message } => self.route_send(&target, message, 0),
            RunQueueItem::Notify { vat, promise } => self.deliver_notify(&vat, &promise),
            RunQueueItem::Input { endpoint, input } => {
                let engine = engine_for(&self.engines, &endpoint);
                let tables = &mut Tables::new(&mut self.state);
                Ok(engine.input(tables, &endpoint, &input)?)
            }
            RunQueueItem::Loopback {
                peer,
                export,
                embargo,
            } => {
                let engine = engine_for(&self.engines, &peer);
                let input = format!("disembargo {export} {embargo}");
                let tables = &mut Tables::new(&mut self.state);
                Ok(engine.input(tables, &peer, &input)?)
            }
        }
    }

    fn route_send(
        &mut self,
        target: &Kref,
        message: Message,
        depth: usize,
    ) -> Result<(), CrankError> {
        if target.is_promise() {
            if depth >= FORWARDING_DEPTH_MAX {
                let reason = format!(
                    "promise forwarding deeper than FORWARDING_DEPTH_MAX ({FORWARDING_DEPTH_MAX})"
                );
                return Ok(self.reject_if_unresolved(message.result.as_deref(), &reason)?);
            }
            return match self.state.promise_state(target)? {
                None => {
                    panic!("kernel invariant: queued messages target known promises ({target})")
                }
                Some(PromiseState::Unresolved) => {
                    // A promise its decider keeps durably waits for its
                    // messages here, in the store, not in the decider's heap.
                    if let Some(decider) = self.state.promise_decider(target)?
                        && self.accepts_pipelining(&decider)?
                        && !self.state.is_kept(target)?
                    {
                        return self.deliver_message(&decider, target, message);
                    }
                    if self.state.queue_on_promise(target, &message)? {
                        return Ok(());
                    }
                    let reason = format!(
                        "cannot queue {:?} on {target}: {} messages wait on it already (promise_queue_max)",
                        message.method,
                        crate::state::PROMISE_QUEUE_MAX
                    );
                    Ok(self.reject_if_unresolved(message.result.as_deref(), &reason)?)
                }
                Some(PromiseState::Rejected(data)) => {
                    Ok(self.settle(message.result.as_deref(), true, &data)?)
                }
                Some(PromiseState::Fulfilled(data)) => match vom::capdata::decode(&data) {
                    Ok(Value::Remotable(r)) | Ok(Value::Promise(r)) => {
                        self.route_send(&Kref::from_table(r.slot), message, depth + 1)
                    }
                    _ => {
                        let reason = format!(
                            "cannot deliver {:?}: {target} was fulfilled with data, not an object",
                            message.method
                        );
                        Ok(self.reject_if_unresolved(message.result.as_deref(), &reason)?)
                    }
                },
            };
        }
        let owner = self.state.object_owner(target)?.unwrap_or_else(|| {
            panic!("kernel invariant: queued messages target known objects ({target})")
        });
        if self.state.get(&keys::state(&owner))?.as_deref() != Some("running") {
            let why = self.vat_reason(&owner)?;
            return Ok(self.reject_if_unresolved(message.result.as_deref(), &why)?);
        }
        self.deliver_message(&owner, target, message)
    }

    /// Whether messages to promises `vat` decides go straight to it.
    fn accepts_pipelining(&self, vat: &EndpointId) -> Result<bool, KernelError> {
        if vat.kind() != EndpointKind::Vat {
            return Ok(self.state.get(&keys::state(&vat))?.as_deref() == Some("running"));
        }
        Ok(
            self.state.get(&keys::state(&vat))?.as_deref() == Some("running")
                && self.vat_options(vat)?.pipelining,
        )
    }

    fn deliver_message(
        &mut self,
        vat: &EndpointId,
        target: &Kref,
        message: Message,
    ) -> Result<(), CrankError> {
        if vat.kind() != EndpointKind::Vat {
            let engine = engine_for(&self.engines, vat);
            let tables = &mut Tables::new(&mut self.state);
            return Ok(engine.deliver(tables, vat, target, message)?);
        }
        self.ensure_worker(vat)
            .map_err(|e| e.into_crank_error(vat))?;
        let target_vref = self.state.clist_vref(vat, target)?.unwrap_or_else(|| {
            panic!("kernel invariant: {vat} exports {target}, so its c-list has it")
        });
        let args = self.export_capdata(vat, &message.args)?;
        let result = match &message.result {
            Some(kpid) => {
                self.state.set_promise_decider(kpid, Some(vat))?;
                Some(self.kref_to_vref(vat, kpid)?)
            }
            None => None,
        };
        let delivery = Delivery::Message {
            target: target_vref,
            method: message.method,
            args,
            result,
        };
        self.deliver(vat, &delivery)
    }

    fn deliver_notify(&mut self, vat: &EndpointId, kpid: &Kref) -> Result<(), CrankError> {
        if vat.kind() != EndpointKind::Vat {
            let engine = engine_for(&self.engines, vat);
            return Ok(engine.notify(&mut Tables::new(&mut self.state), vat, kpid)?);
        }
        if self.state.get(&keys::state(&vat))?.as_deref() != Some("running") {
            return Ok(());
        }
        let Some(vpid) = self.state.clist_vref(vat, kpid)? else {
            return Ok(());
        };
        let (rejected, data) = match self.state.promise_state(kpid)? {
            Some(PromiseState::Fulfilled(data)) => (false, data),
            Some(PromiseState::Rejected(data)) => (true, data),
            other => {
                panic!("kernel invariant: notify for settled promises only ({kpid}: {other:?})")
            }
        };
        self.ensure_worker(vat)
            .map_err(|e| e.into_crank_error(vat))?;
        let data = self.export_capdata(vat, &data)?;
        // The vat forgets a promise once told how it settled; so does its c-list.
        self.state.clist_remove(vat, kpid)?;
        let mut delivery = Delivery::Notify {
            resolutions: vec![Resolution {
                promise: vpid.clone(),
                rejected,
                data,
            }],
        };
        // A settlement too large for the vat is told as a rejection that
        // says so: it can never be delivered as it is.
        if let Some(reason) = self.oversized(vat, &delivery) {
            let reason = format!("the settlement of {kpid} cannot be delivered: {reason}");
            delivery = Delivery::Notify {
                resolutions: vec![Resolution {
                    promise: vpid,
                    rejected: true,
                    data: error_capdata(&reason),
                }],
            };
        }
        self.deliver(vat, &delivery)
    }

    fn deliver(&mut self, vat: &EndpointId, delivery: &Delivery) -> Result<(), CrankError> {
        if let Some(reason) = self.oversized(vat, delivery) {
            return Err(CrankError::Refused {
                vat: vat.to_owned(),
                reason,
            });
        }
        let worker = self
            .workers
            .get_mut(vat)
            .expect("kernel invariant: a vat's worker runs before delivery");
        let mut syscalls = VatSyscalls::new(&mut self.state, vat);
        let outcome = worker.deliver(delivery, &mut syscalls);
        syscalls.finish()?;
        if let Some(now_s) = self.residency.touch(vat) {
            self.state
                .set(&keys::vat_active(&vat), &now_s.to_string())?;
        }
        // Counted without allocating once the vat has an entry (the hot path).
        let count = match self.deliveries_since_collection.get_mut(vat) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                self.deliveries_since_collection.insert(vat.to_owned(), 1);
                1
            }
        };
        if count == DELIVERIES_PER_COLLECTION_MAX {
            self.collection_due.push(vat.to_owned());
        }
        match outcome {
            Ok(()) if self.faults_in_a_row.contains_key(vat) => Ok(self.clear_faults(vat)?),
            Ok(()) => Ok(()),
            Err(fault) => Err(CrankError::Fault {
                vat: vat.to_owned(),
                fault,
                at_start: false,
            }),
        }
    }

    /// Why `delivery` is too large for `vat`'s worker, if it is. Measured
    /// as ABI v1's JSON, the larger of the ABI's encodings, so that what
    /// passes fits whichever the guest speaks; and only when a cheap bound
    /// says it might not: JSON escaping at most sextuples a byte.
    fn oversized(&self, vat: &str, delivery: &Delivery) -> Option<String> {
        let max = *self
            .message_bytes_max
            .get(vat)
            .expect("kernel invariant: a vat's worker runs before delivery");
        let capdata_bytes = |data: &CapData| {
            data.body.len() * 6 + data.slots.iter().map(|s| s.len() + 3).sum::<usize>()
        };
        let bound = 256
            + match delivery {
                Delivery::Message { args, method, .. } => capdata_bytes(args) + method.len() * 6,
                Delivery::Notify { resolutions } => resolutions
                    .iter()
                    .map(|r| capdata_bytes(&r.data) + 64)
                    .sum(),
                _ => return None,
            };
        if bound <= max {
            return None;
        }
        let bytes = serde_json::to_vec(delivery)
            .expect("kernel invariant: deliveries serialize")
            .len();
        (bytes > max).then(|| {
            format!(
                "the delivery to vat {vat} is {bytes} bytes, over its message_bytes_max ({max})"
            )
        })
    }

    fn kref_to_vref(&mut self, vat: &str, kref: &str) -> Result<String, StoreError> {
        kref_to_vref(&mut self.state, vat, kref)
    }

    fn export_capdata(&mut self, vat: &str, data: &CapData) -> Result<CapData, StoreError> {
        let resolved = self.promises_as_objects(data)?;
        let data = resolved.as_ref().unwrap_or(data);
        let slots = data
            .slots
            .iter()
            .map(|kref| self.kref_to_vref(vat, kref))
            .collect::<Result<_, _>>()?;
        Ok(CapData {
            body: data.body.clone(),
            slots,
        })
    }

    /// `data` with each promise that has been fulfilled with an object
    /// replaced by that object (`None` when there is none): a vat is handed
    /// what a promise became, as a pipelined argument
    /// (`makePurse(...).object`) has by the time it is delivered.
    fn promises_as_objects(&self, data: &CapData) -> Result<Option<CapData>, StoreError> {
        let mut objects = HashMap::new();
        for kpid in data.slots.iter().filter(|slot| slot.starts_with("kp")) {
            if let Some(PromiseState::Fulfilled(settled)) = self.state.promise_state(kpid)?
                && let Ok(Value::Remotable(object)) = vom::capdata::decode(&settled)
            {
                objects.insert(kpid.clone(), object);
            }
        }
        if objects.is_empty() {
            return Ok(None);
        }
        let value = vom::capdata::decode(data)
            .unwrap_or_else(|e| panic!("kernel invariant: queued data decodes: {e}"));
        Ok(Some(vom::capdata::encode(&objects_for_promises(
            value, &objects,
        ))))
    }

    fn settle(
        &mut self,
        kpid: Option<&str>,
        rejected: bool,
        data: &CapData,
    ) -> Result<(), StoreError> {
        match kpid {
            Some(kpid) => settle_promise(&mut self.state, kpid, rejected, data),
            None => Ok(()),
        }
    }

    pub(crate) fn reject_if_unresolved(
        &mut self,
        kpid: Option<&str>,
        reason: &str,
    ) -> Result<(), StoreError> {
        Tables::new(&mut self.state).reject_if_unresolved(kpid, reason)
    }

    /// Marks `vat` terminated and rejects every promise it decides. Its
    /// c-list and vatstore are kept until `vat rm` ([`Self::remove_vat`]).
    fn terminate_vat(&mut self, vat: &str, reason: &str) -> Result<(), StoreError> {
        self.discard_worker(vat);
        self.state
            .set_vat_state(vat, VatState::Terminated, Some(reason))?;
        self.clear_faults(vat)?;
        self.reject_decided_promises(vat, reason)
    }

    /// Rejects every unresolved promise `vat` decides.
    fn reject_decided_promises(&mut self, vat: &str, reason: &str) -> Result<(), StoreError> {
        self.reject_decided(vat, &error_capdata(reason), false)
    }

    /// Rejects the unresolved promises `vat` decides with `data`; those it
    /// keeps in durable state too unless `keep_kept`.
    fn reject_decided(
        &mut self,
        vat: &str,
        data: &CapData,
        keep_kept: bool,
    ) -> Result<(), StoreError> {
        for (kpid, kept) in self.state.decided_by(vat)? {
            if (keep_kept && kept)
                || self.state.promise_state(&kpid)? != Some(PromiseState::Unresolved)
            {
                continue;
            }
            settle_promise(&mut self.state, &kpid, true, data)?;
        }
        Ok(())
    }

    /// A new worker or a new version of `vat` starts after its incarnation
    /// `incarnation`: the promises only that heap knew are rejected with an
    /// error named `vatRestarted`, which callers can recognise and retry on;
    /// those it keeps in durable state stand.
    fn reject_heap_decided(
        &mut self,
        vat: &str,
        incarnation: u64,
        why: &str,
    ) -> Result<(), StoreError> {
        let error = Value::Error(vom::ErrorValue {
            name: "vatRestarted".into(),
            message: format!(
                "vat {vat} {why}: the promises its incarnation {incarnation} decided were \
                 awaiting in memory and are lost"
            ),
        });
        self.reject_decided(vat, &vom::capdata::encode(&error), true)
    }

    /// The settlement of `kpid` as it is now.
    pub fn promise_state(&self, kpid: &Kref) -> Result<Option<PromiseState>, KernelError> {
        Ok(self.state.promise_state(kpid)?)
    }

    /// The kref a pet name is bound to.
    pub fn pet_name(&self, name: &str) -> Result<Option<Kref>, KernelError> {
        Ok(self
            .state
            .get(&keys::pet_name(&name))?
            .map(Kref::from_table))
    }

    /// Binds `name` to `kref`. Fails if the name is taken.
    pub fn bind_pet_name(&mut self, name: &str, kref: &Kref) -> Result<(), KernelError> {
        check_name(name)?;
        if let Some(existing) = self.pet_name(name)? {
            return Err(KernelError::PetNameTaken {
                name: name.to_owned(),
                kref: existing.into(),
            });
        }
        if !self.state.kref_exists(kref)? {
            return Err(KernelError::UnknownTarget(kref.to_string()));
        }
        Ok(self.in_crank(|k| {
            k.state.set(&keys::pet_name(&name), kref)?;
            k.state.incref(kref)
        })?)
    }

    /// Unbinds pet name `name`; what it named goes when nothing else holds it.
    pub fn unbind_pet_name(&mut self, name: &str) -> Result<Kref, KernelError> {
        let Some(kref) = self.pet_name(name)? else {
            return Err(KernelError::UnknownPetName(name.to_owned()));
        };
        self.in_crank(|k| {
            k.state.delete(&keys::pet_name(&name))?;
            k.state.decref(&kref)
        })?;
        Ok(kref)
    }

    /// Every pet name and its kref, by name.
    pub fn pet_names(&self) -> Result<Vec<(String, Kref)>, KernelError> {
        Ok(self
            .state
            .scan_prefix("pet.")?
            .into_iter()
            .map(|(k, v)| (k["pet.".len()..].to_owned(), Kref::from_table(v)))
            .collect())
    }

    /// Resolves a pet name or a known kref to a kref.
    pub fn resolve_reference(&self, text: &str) -> Result<Kref, KernelError> {
        if let Some(kref) = self.pet_name(text)? {
            return Ok(kref);
        }
        if let Some(kref) = Kref::parse(text)
            && self.state.kref_exists(&kref)?
        {
            return Ok(kref);
        }
        Err(KernelError::UnknownTarget(text.to_owned()))
    }

    /// Starts a worker for every running vat that has none, each in a crank
    /// of its own, then commits. A vat whose worker cannot start is left to
    /// fail at its next delivery, where faults are handled.
    pub fn start_workers(&mut self) -> Result<(), KernelError> {
        let unclean: Vec<EndpointId> = self
            .state
            .scan_prefix(keys::HEAP_DIRTY_PREFIX)?
            .into_iter()
            .map(|(key, _)| EndpointId::from_table(&key[keys::HEAP_DIRTY_PREFIX.len()..]))
            .collect();
        for vat in unclean {
            if self.state.vat_state(&vat)? != VatState::Running || self.workers.contains_key(&vat) {
                continue;
            }
            match self.in_crank(|k| k.ensure_worker(&vat)) {
                Ok(()) => {}
                Err(WorkerStartError::Fault(_)) => self.discard_worker(&vat),
                Err(WorkerStartError::Kernel(e)) => return Err(e),
            }
        }
        self.commit()
    }

    /// The compiled module of bundle `cid` (cached), and the host to run it.
    pub fn compiled(&mut self, cid: &str) -> Result<(&WasmHost, VatModule), KernelError> {
        let module = self.module(cid)?;
        Ok((&self.host, module))
    }

    /// Stores a Wasm module as a bundle and returns its CID (raw, sha2-256).
    pub fn add_bundle(&mut self, wasm: &[u8]) -> Result<String, KernelError> {
        let cid = self.state.store.add_bundle(wasm)?.to_string();
        self.commit()?;
        Ok(cid)
    }

    /// Whether bundle `cid` is stored here (a malformed CID names none).
    pub fn has_bundle(&self, cid: &str) -> bool {
        swingstore::SwingStore::parse_cid(cid)
            .ok()
            .and_then(|cid| self.state.store.get_bundle(&cid).ok().flatten())
            .is_some()
    }

    pub(crate) fn state_mut(&mut self) -> &mut KernelState {
        &mut self.state
    }

    pub(crate) fn state_ref(&self) -> &KernelState {
        &self.state
    }

    /// Leaves GC actions queued instead of delivering them, to measure what
    /// collection costs; `false` (the default) delivers them again.
    pub fn set_gc_deferred(&mut self, deferred: bool) {
        self.gc_deferred = deferred;
    }

    /// The kernel objects `vat` exports, by scanning every object: for
    /// tests and tools, not for the crank path.
    pub fn objects_owned_by(&self, vat: &EndpointId) -> Result<Vec<Kref>, KernelError> {
        Ok(self
            .state
            .scan_prefix("ko")?
            .into_iter()
            .filter(|(key, owner)| key.ends_with(".owner") && owner == vat.as_str())
            .map(|(key, _)| Kref::from_table(key.trim_end_matches(".owner")))
            .collect())
    }

    /// Re-derives the tables' invariants from the store: every discrepancy
    /// found (none when consistent), and how many keys were read.
    pub fn check(&self) -> Result<(Vec<String>, usize), KernelError> {
        Ok(crate::check::check(&self.state, &self.engines)?)
    }

    /// Every vat, in creation order.
    pub fn vats(&self) -> Result<Vec<VatInfo>, KernelError> {
        let mut vats = Vec::new();
        for (key, id) in self.state.scan_prefix("vat.name.")? {
            let name = &key["vat.name.".len()..];
            vats.push(self.vat_info(EndpointId::from_table(&id), name)?);
        }
        vats.sort_by_key(|v| v.id.number());
        Ok(vats)
    }

    /// A page of the vats `query` asks for, in name order; reads only as
    /// many vats as the page needs (and those its filters pass over).
    pub fn vats_page(&self, query: &VatQuery) -> Result<Vec<VatInfo>, KernelError> {
        let prefix = format!("vat.name.{}", query.name_prefix);
        let resident_keys: Option<Vec<String>> = if query.resident_only {
            let mut keys = Vec::new();
            for vat in self.workers.keys() {
                keys.push(keys::vat_by_name(&self.vat_name(vat)?));
            }
            keys.sort();
            Some(keys)
        } else {
            None
        };
        // The smallest vat key after `from`, among the resident ones if asked.
        let next = |from: &str| -> Result<Option<String>, StoreError> {
            match &resident_keys {
                Some(keys) => Ok(keys.iter().find(|key| key.as_str() > from).cloned()),
                None => self.state.store.get_next_key(from),
            }
        };
        let mut key = match &query.after {
            Some(after) if *after >= query.name_prefix => next(&keys::vat_by_name(after))?,
            _ if self.state.get(&prefix)?.is_some()
                && resident_keys
                    .as_ref()
                    .is_none_or(|keys| keys.contains(&prefix)) =>
            {
                Some(prefix.clone())
            }
            _ => next(&prefix)?,
        };
        let mut vats = Vec::new();
        while let Some(found) = key.filter(|key| key.starts_with(&prefix)) {
            if vats.len() >= query.limit {
                break;
            }
            let id = self
                .state
                .get(&found)?
                .unwrap_or_else(|| panic!("kernel invariant: {found} names a vat"));
            let info = self.vat_info(EndpointId::from_table(&id), &found["vat.name.".len()..])?;
            if query.state.is_none_or(|state| state == info.state) {
                vats.push(info);
            }
            key = next(&found)?;
        }
        Ok(vats)
    }

    fn vat_info(&self, id: EndpointId, name: &str) -> Result<VatInfo, KernelError> {
        let field = |f: &str| self.state.get(&format!("{id}.{f}"));
        let state = self.state.vat_state(&id)?;
        Ok(VatInfo {
            kept: match state {
                VatState::Running => None,
                _ => Some(self.vatstore_size(&id)?),
            },
            bundle: field("bundle")?.unwrap_or_default(),
            // A removed vat's c-list is deleted; its pet name remains.
            root: match self.state.clist_kref(&id, vom::runtime::ROOT_VREF)? {
                Some(kref) => Some(kref),
                None => self
                    .state
                    .get(&keys::pet_name(&name))?
                    .map(Kref::from_table),
            },
            state,
            reason: field("reason")?,
            worker: self.vat_options(&id)?.worker,
            worker_pid: self.workers.get(&id).and_then(|w| w.pid()),
            resident: self.workers.contains_key(&id),
            heap_holds: match state {
                VatState::Running => self.heap_holds(&id)?,
                _ => None,
            },
            active_s: self
                .state
                .get(&keys::vat_active(&id))?
                .and_then(|text| text.parse().ok()),
            id,
            name: name.to_owned(),
        })
    }

    /// How many entries `vat`'s vatstore holds, and their bytes.
    fn vatstore_size(&self, vat: &str) -> Result<(u64, u64), KernelError> {
        let prefix = keys::vatstore_prefix(&vat);
        let entries = self.state.scan_prefix(&prefix)?;
        let bytes = entries
            .iter()
            .map(|(k, v)| (k.len() - prefix.len() + v.len()) as u64)
            .sum();
        Ok((entries.len() as u64, bytes))
    }
}

/// A spawn's module: its bundle's CID, and the module itself when this
/// kernel loaded it (a process worker loads a cached artifact itself).
struct SpawnModule {
    cid: Cid,
    loaded: Option<VatModule>,
}

/// A worker's start failed: the vat's module (a fault), or the kernel.
fn worker_start_error(e: SupervisorError) -> WorkerStartError {
    match e {
        SupervisorError::Fault(fault) => WorkerStartError::Fault(fault),
        other => WorkerStartError::Kernel(other.into()),
    }
}

enum WorkerStartError {
    Fault(VatFault),
    Kernel(KernelError),
}

impl From<StoreError> for WorkerStartError {
    fn from(e: StoreError) -> Self {
        WorkerStartError::Kernel(e.into())
    }
}

impl From<KernelError> for WorkerStartError {
    fn from(e: KernelError) -> Self {
        WorkerStartError::Kernel(e)
    }
}

impl WorkerStartError {
    fn into_crank_error(self, vat: &EndpointId) -> CrankError {
        match self {
            WorkerStartError::Fault(fault) => CrankError::Fault {
                vat: vat.clone(),
                fault,
                at_start: true,
            },
            WorkerStartError::Kernel(e) => CrankError::Kernel(e),
        }
    }
}

/// Why a crank did not end: the caller aborts it, then decides.
enum CrankError {
    /// The vat's guest faulted (in its start, when `at_start`).
    Fault {
        vat: EndpointId,
        fault: VatFault,
        at_start: bool,
    },
    /// The delivery was refused before the guest saw it (it breaks a limit).
    Refused { vat: EndpointId, reason: String },
    /// The kernel failed (its store): not the vat's doing.
    Kernel(KernelError),
}

/// What a faulted delivery was, which decides what the fault costs the vat.
enum FaultedWork<'a> {
    Message(&'a Message),
    Notify,
    /// GC actions and `bringOutYourDead`.
    Housekeeping,
}

/// The key of `vat`'s count of faulted deliveries in a row.
fn faults_key(vat: &str) -> String {
    keys::vat_faults(&vat)
}

impl From<StoreError> for CrankError {
    fn from(e: StoreError) -> Self {
        CrankError::Kernel(e.into())
    }
}

impl From<KernelError> for CrankError {
    fn from(e: KernelError) -> Self {
        CrankError::Kernel(e)
    }
}

fn kref_to_vref(state: &mut KernelState, vat: &str, kref: &str) -> Result<String, StoreError> {
    if let Some(entry) = state.get(&keys::clist(&vat, &kref))? {
        // Given the reference again, the vat can reach it again.
        if !entry.starts_with('R') {
            state.clist_set_reachable(vat, kref, true)?;
        }
        return Ok(entry[2..].to_owned());
    }
    let kind = if kref.starts_with("ko") { 'o' } else { 'p' };
    let vref = state.allocate_import_vref(vat, kind)?;
    state.clist_add_absent(vat, kref, &vref)?;
    Ok(vref)
}

/// `value` with each promise named in `objects` replaced by its object
/// (whether the body calls it a promise or, as a Cap'n Proto peer passing
/// an answer's `object` does, a remotable).
fn objects_for_promises(value: Value, objects: &HashMap<String, vom::Ref>) -> Value {
    match value {
        Value::Promise(promise) => match objects.get(&promise.slot) {
            Some(object) => Value::Remotable(object.clone()),
            None => Value::Promise(promise),
        },
        Value::Remotable(reference) => match objects.get(&reference.slot) {
            Some(object) => Value::Remotable(object.clone()),
            None => Value::Remotable(reference),
        },
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| objects_for_promises(item, objects))
                .collect(),
        ),
        Value::Record(entries) => Value::Record(
            entries
                .into_iter()
                .map(|(key, item)| (key, objects_for_promises(item, objects)))
                .collect(),
        ),
        Value::Tagged { tag, payload } => Value::Tagged {
            tag,
            payload: Box::new(objects_for_promises(*payload, objects)),
        },
        other => other,
    }
}

/// Deletes an object its exporter retired: each importer that still
/// recognized it forgets it (its entry goes now; a `retireImports` tells it).
fn retire_object(state: &mut KernelState, ko: &str) -> Result<(), StoreError> {
    let owner = state.object_owner(ko)?;
    for (_, vat) in state.scan_prefix("vat.name.")? {
        if owner.as_deref() == Some(vat.as_str()) {
            continue;
        }
        if let Some(vref) = state.clist_vref(&vat, ko)? {
            state.clist_remove(&vat, ko)?;
            if state.get(&keys::state(&vat))?.as_deref() == Some("running") {
                state.add_gc_action(GcAction::RetireImport, &vat, ko, &vref)?;
            }
        }
    }
    state.delete_object(ko)
}

/// Answers one vat's syscalls during a delivery: translates its vrefs through
/// its c-list and refuses anything it may not name.
struct VatSyscalls<'a> {
    state: &'a mut KernelState,
    vat: &'a EndpointId,
    /// A store failure inside a syscall: the crank must abort, and it is the
    /// kernel's failure, not the vat's.
    store_error: Option<StoreError>,
}

impl<'a> VatSyscalls<'a> {
    fn new(state: &'a mut KernelState, vat: &'a EndpointId) -> Self {
        VatSyscalls {
            state,
            vat,
            store_error: None,
        }
    }

    /// Surfaces a store failure that happened during the delivery.
    fn finish(self) -> Result<(), StoreError> {
        self.store_error.map_or(Ok(()), Err)
    }

    /// The kref for `vref`, allocating one for a new export (`o+N`, `p+N`).
    fn vref_to_kref(&mut self, vref: &str) -> Result<Kref, Refusal> {
        let vref = parse_vref(vref)?;
        if let Some(kref) = self.state.clist_kref(self.vat, vref.as_str())? {
            // A vat that names a reference again can reach it again
            // (promises have no reachable flag to restore).
            if !kref.is_promise() {
                self.state.clist_set_reachable(self.vat, &kref, true)?;
            }
            return Ok(kref);
        }
        if vref.allocator() != Allocator::Vat {
            return Err(Refusal::Illegal(format!(
                "vref {vref} is not in the c-list of {} (a forged or stale reference)",
                self.vat
            )));
        }
        let kref = if vref.is_promise() {
            self.state.allocate_promise(Some(self.vat))?
        } else {
            self.state.allocate_object(self.vat)?
        };
        self.state.clist_add(self.vat, &kref, vref.as_str())?;
        Ok(kref)
    }

    fn import_capdata(&mut self, data: &CapData) -> Result<CapData, Refusal> {
        vom::capdata::decode(data).map_err(|e| Refusal::Illegal(e.to_string()))?;
        let slots = data
            .slots
            .iter()
            .map(|vref| self.vref_to_kref(vref).map(String::from))
            .collect::<Result<_, _>>()?;
        Ok(CapData {
            body: data.body.clone(),
            slots,
        })
    }

    fn vatstore_key(&self, key: &str) -> String {
        keys::vatstore(&self.vat, key)
    }

    /// The vat's vatstore key after (`next`) or before `key`, if any.
    fn vatstore_neighbour(&self, key: &str, next: bool) -> Result<SyscallResult, Refusal> {
        let prefix = self.vatstore_key("");
        let store = &self.state.store;
        let found = if next {
            store.get_next_key_under(&self.vatstore_key(key), &prefix)?
        } else {
            store.get_prev_key(&self.vatstore_key(key))?
        };
        Ok(found.and_then(|k| k.strip_prefix(&prefix).map(str::to_owned)))
    }

    /// One function per syscall.
    fn handle(&mut self, call: Syscall) -> Result<SyscallResult, Refusal> {
        match call {
            Syscall::VatstoreGet { key } => Ok(self.state.get(&self.vatstore_key(&key))?),
            Syscall::VatstoreSet { key, value } => self.vatstore_set(&key, &value),
            Syscall::VatstoreDelete { key } => {
                self.state.delete(&self.vatstore_key(&key))?;
                Ok(None)
            }
            Syscall::VatstoreGetNextKey { key } => self.vatstore_neighbour(&key, true),
            Syscall::VatstoreGetPrevKey { key } => self.vatstore_neighbour(&key, false),
            Syscall::Send {
                target,
                method,
                args,
                result,
            } => self.send(&target, method, &args, result.as_deref()),
            Syscall::Subscribe { promise } => self.subscribe(&promise),
            Syscall::Resolve { resolutions } => {
                for resolution in resolutions {
                    self.resolve(resolution)?;
                }
                Ok(None)
            }
            Syscall::DropImports { vrefs } => {
                for vref in vrefs {
                    let kref = self.known_import(&vref)?;
                    self.state.clist_set_reachable(self.vat, &kref, false)?;
                }
                Ok(None)
            }
            Syscall::RetireImports { vrefs } => {
                for vref in vrefs {
                    let kref = self.known_import(&vref)?;
                    self.state.clist_remove(self.vat, &kref)?;
                }
                Ok(None)
            }
            Syscall::RetireExports { vrefs } => {
                for vref in vrefs {
                    self.retire_export(&vref)?;
                }
                Ok(None)
            }
            Syscall::Log { line } => {
                self.log(line);
                Ok(None)
            }
            Syscall::KeepDecided { promises } => {
                for vpid in promises {
                    self.keep_decided(&vpid)?;
                }
                Ok(None)
            }
            Syscall::Heap { holds } => self.heap_report(&holds),
            Syscall::Exit { .. } => {
                panic!("vat-supervisor invariant: exit never reaches the kernel's handler")
            }
        }
    }

    /// What the vat's heap holds beyond its store: recorded, so the vat
    /// sleeps only when it holds nothing.
    fn heap_report(&mut self, holds: &str) -> Result<SyscallResult, Refusal> {
        self.state.set_heap_report(self.vat, holds)?;
        Ok(None)
    }

    fn vatstore_set(&mut self, key: &str, value: &str) -> Result<SyscallResult, Refusal> {
        if key.len() + value.len() > VATSTORE_ENTRY_BYTES_MAX {
            return Err(Refusal::Limit(format!(
                "vatstore entry of {} bytes exceeds VATSTORE_ENTRY_BYTES_MAX ({VATSTORE_ENTRY_BYTES_MAX})",
                key.len() + value.len()
            )));
        }
        self.state.set(&self.vatstore_key(key), value)?;
        Ok(None)
    }

    fn send(
        &mut self,
        target: &str,
        method: String,
        args: &CapData,
        result: Option<&str>,
    ) -> Result<SyscallResult, Refusal> {
        let target = self.vref_to_kref(target)?;
        let args = self.import_capdata(args)?;
        let result = match result {
            None => None,
            Some(vpid) => Some(self.result_promise(vpid)?),
        };
        let message = Message {
            method,
            args,
            result,
        };
        self.state
            .push_run_queue(RunQueueItem::Send { target, message })?;
        Ok(None)
    }

    fn subscribe(&mut self, promise: &str) -> Result<SyscallResult, Refusal> {
        let kpid = self.promise_kref(promise)?;
        match self.state.promise_state(&kpid)? {
            Some(PromiseState::Unresolved) => self.state.add_subscriber(&kpid, self.vat)?,
            _ => self.state.push_run_queue(RunQueueItem::Notify {
                vat: self.vat.clone(),
                promise: kpid,
            })?,
        }
        Ok(None)
    }

    /// Settles a promise the vat decides; a decider forgets a promise once
    /// it has resolved it.
    fn resolve(&mut self, resolution: vom::abi::Resolution) -> Result<(), Refusal> {
        let kpid = self.promise_kref(&resolution.promise)?;
        let decider = self.state.promise_decider(&kpid)?;
        let unresolved = self.state.promise_state(&kpid)? == Some(PromiseState::Unresolved);
        if decider.as_ref() != Some(self.vat) || !unresolved {
            return Err(Refusal::Illegal(format!(
                "{} may not resolve {} ({kpid}): it is not its unresolved decider",
                self.vat, resolution.promise
            )));
        }
        let data = self.import_capdata(&resolution.data)?;
        settle_promise(self.state, &kpid, resolution.rejected, &data)?;
        self.state.clist_remove(self.vat, &kpid)?;
        Ok(())
    }

    /// Keeps a log line for the host, cut to `log_line_bytes_max`.
    fn log(&mut self, mut line: String) {
        vom::abi::cut_log_line(&mut line);
        let lines = &mut self.state.log_lines;
        if lines.len() >= crate::state::LOG_LINES_PENDING_MAX {
            lines.pop_front();
        }
        lines.push_back((self.vat.clone(), line));
    }

    /// The vat keeps `vpid`, an unresolved promise it decides, in durable
    /// state: its restarts do not reject it.
    fn keep_decided(&mut self, vpid: &str) -> Result<(), Refusal> {
        let kpid = self.promise_kref(vpid)?;
        let decider = self.state.promise_decider(&kpid)?;
        let unresolved = self.state.promise_state(&kpid)? == Some(PromiseState::Unresolved);
        if decider.as_ref() != Some(self.vat) || !unresolved {
            return Err(Refusal::Illegal(format!(
                "{} may not keep {vpid} ({kpid}): it is not its unresolved decider",
                self.vat
            )));
        }
        self.state.keep(self.vat, &kpid)?;
        Ok(())
    }

    /// The vat retires an export nothing reaches. The kernel may have
    /// retired it first: then there is nothing to do.
    fn retire_export(&mut self, vref: &str) -> Result<(), Refusal> {
        if !parse_vref(vref)?.is_object_export() {
            return Err(Refusal::Illegal(format!(
                "retireExports of {vref}, which is not an export"
            )));
        }
        let Some(kref) = self.state.clist_kref(self.vat, vref)? else {
            return Ok(());
        };
        let (reachable, _) = self.state.object_refs(&kref)?;
        if reachable > 0 {
            return Err(Refusal::Illegal(format!(
                "retireExports of {vref} ({kref}), which is still reachable"
            )));
        }
        Ok(retire_object(self.state, &kref)?)
    }

    fn existing_kref(&mut self, vref: &str) -> Result<Kref, Refusal> {
        self.state.clist_kref(self.vat, vref)?.ok_or_else(|| {
            Refusal::Illegal(format!("vref {vref} is not in the c-list of {}", self.vat))
        })
    }

    fn known_import(&mut self, vref: &str) -> Result<Kref, Refusal> {
        if !parse_vref(vref)?.is_object_import() {
            return Err(Refusal::Illegal(format!("{vref} is not an object import")));
        }
        self.existing_kref(vref)
    }

    fn promise_kref(&mut self, vpid: &str) -> Result<Kref, Refusal> {
        if !parse_vref(vpid)?.is_promise() {
            return Err(Refusal::Illegal(format!("{vpid} is not a promise")));
        }
        self.vref_to_kref(vpid)
    }

    /// The kernel promise for a send's result: a new `p+N` the kernel now
    /// decides, to which the sending vat is subscribed (a vat hears how
    /// each of its sends settles without asking).
    fn result_promise(&mut self, vpid: &str) -> Result<Kref, Refusal> {
        let fresh = parse_vref(vpid)
            .is_ok_and(|vref| vref.is_promise() && vref.allocator() == Allocator::Vat);
        if !fresh || self.state.clist_kref(self.vat, vpid)?.is_some() {
            return Err(Refusal::Illegal(format!(
                "send result {vpid} must be a new promise (p+N) of {}",
                self.vat
            )));
        }
        let kpid = self.state.allocate_promise(None)?;
        self.state.clist_add_absent(self.vat, &kpid, vpid)?;
        self.state.add_subscriber(&kpid, self.vat)?;
        Ok(kpid)
    }
}

/// `text` as a vref, or the refusal of a syscall that names a malformed one.
fn parse_vref(text: &str) -> Result<Vref<'_>, Refusal> {
    Vref::parse(text).ok_or_else(|| Refusal::Illegal(format!("malformed vref {text:?}")))
}

enum Refusal {
    /// A named limit: the delivery fails as for any other limit.
    Limit(String),
    /// A reference or promise the vat may not name: an ABI violation.
    Illegal(String),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl SyscallHandler for VatSyscalls<'_> {
    fn syscall(&mut self, call: Syscall) -> Result<SyscallResult, SyscallRefusal> {
        match self.handle(call) {
            Ok(result) => Ok(result),
            Err(Refusal::Limit(reason)) => Err(SyscallRefusal::Limit(reason)),
            Err(Refusal::Illegal(reason)) => Err(SyscallRefusal::Illegal(reason)),
            Err(Refusal::Store(e)) => {
                // Not the vat's doing: `finish` hands the kernel this error first.
                let reason = format!("kernel store failed: {e}");
                self.store_error = Some(e);
                Err(SyscallRefusal::Illegal(reason))
            }
        }
    }
}
