//! Hosts one vat's Wasm module under wasmtime, behind the vat host ABI
//! (documented in [`vom::abi`]).
//!
//! The kernel talks to a vat only through the [`Worker`] trait: it hands a
//! [`Delivery`] and a [`SyscallHandler`], and the worker runs the guest until
//! the delivery is done, calling the handler for each syscall. [`ThreadWorker`]
//! runs the guest in this process; a process worker speaking the same trait
//! over pipes slots in beside it.
//!
//! Only this crate runs guest code. Every guest runs with limits (fuel per
//! delivery, maximum linear memory, syscall payload size), and any breach, trap
//! or ABI violation ends the delivery with a [`VatFault`]; the worker must then
//! be discarded, because the guest's heap may be half-updated.

use std::fmt;

mod process;
#[allow(clippy::all, clippy::pedantic, missing_debug_implementations, unused)]
mod worker_capnp;

pub use process::{
    ModuleSource, PROTOCOL_VERSION, ProcessWorker, SPIN_US_DEFAULT, SPIN_US_MAX, SPIN_US_VAR,
    serve, spin_us,
};

use vom::abi::{ABI_VERSION, Delivery, Encoding, IMPORT_MODULE, Syscall, SyscallResult};
use wasmtime::{
    Caller, Config, Engine, Extern, Instance, InstancePre, Linker, Memory, Module, Store, Trap,
    TypedFunc,
};

/// Default fuel a guest may burn in one delivery (roughly, Wasm instructions).
pub const FUEL_PER_DELIVERY_DEFAULT: u64 = 1_000_000_000;
/// Default maximum linear memory of a guest.
pub const MEMORY_BYTES_MAX_DEFAULT: usize = 256 << 20;
/// Default maximum size of one syscall payload or delivery.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default wall-clock time one delivery may take.
pub const DEADLINE_MS_DEFAULT: u64 = 10_000;
/// Default number of syscalls one delivery may make.
pub const SYSCALLS_PER_DELIVERY_MAX_DEFAULT: u32 = 100_000;
/// How often the epoch ticker advances: the resolution of `deadline_ms`.
const EPOCH_TICK_MS: u64 = 5;

/// The exports the vat ABI (v1 and v2 alike) requires of a guest.
const REQUIRED_EXPORTS: [&str; 4] = ["memory", "vat_abi_version", "vat_alloc", "vat_deliver"];

/// The imports the vat ABI (v1 and v2 alike) offers, all in module [`IMPORT_MODULE`].
const OFFERED_IMPORTS: [&str; 16] = [
    "send",
    "resolve",
    "subscribe",
    "vatstore_get",
    "vatstore_set",
    "vatstore_delete",
    "vatstore_get_next_key",
    "vatstore_get_prev_key",
    "drop_imports",
    "retire_imports",
    "retire_exports",
    "exit",
    "keep_decided",
    "log",
    "heap",
    "read_result",
];

/// Per-vat resource limits. Each has a name that errors repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `fuel_per_delivery`: Wasm fuel one delivery may consume.
    pub fuel_per_delivery: u64,
    /// `memory_bytes_max`: the most linear memory the guest may grow to.
    pub memory_bytes_max: usize,
    /// `message_bytes_max`: the largest delivery or syscall payload.
    pub message_bytes_max: usize,
    /// `deadline_ms`: the wall-clock time one delivery may take.
    pub deadline_ms: u64,
    /// `syscalls_per_delivery_max`: how many syscalls one delivery may make.
    pub syscalls_per_delivery_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_delivery: FUEL_PER_DELIVERY_DEFAULT,
            memory_bytes_max: MEMORY_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            deadline_ms: DEADLINE_MS_DEFAULT,
            syscalls_per_delivery_max: SYSCALLS_PER_DELIVERY_MAX_DEFAULT,
        }
    }
}

/// Why a delivery failed. The guest is no longer trustworthy after any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VatFault {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap(String),
    /// The delivery used up `fuel_per_delivery`.
    OutOfFuel { fuel_per_delivery: u64 },
    /// The guest tried to grow past `memory_bytes_max`.
    MemoryLimit { memory_bytes_max: usize },
    /// The delivery ran past `deadline_ms` of wall-clock time.
    Deadline { deadline_ms: u64 },
    /// The guest's worker process died or broke its protocol (not the guest's doing).
    WorkerDied(String),
    /// The kernel refused a syscall (a forged reference, a malformed payload...).
    IllegalSyscall(String),
    /// The guest broke the ABI (bad buffers, a non-zero `vat_deliver` status...).
    AbiViolation(String),
    /// The guest asked to exit (vom does so on a panic, with its message and location).
    Exit { failure: bool, reason: String },
    /// The delivery broke a named limit the guest controls (a syscall payload
    /// over `message_bytes_max`, `syscalls_per_delivery_max`, or a kernel
    /// limit such as `VATSTORE_ENTRY_BYTES_MAX`); the reason names it.
    LimitExceeded(String),
}

/// Who is to blame for a fault, which decides what the kernel does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// The guest's own bug or a limit it ran into (a panic, a trap, fuel,
    /// memory, a deadline, an oversized payload): its delivery is rolled back.
    Guest,
    /// The worker process died: perhaps not the guest's doing, so worth one retry.
    Worker,
    /// The guest broke the ABI (forged or malformed references, bad buffers):
    /// only a hostile or broken program does that.
    Abi,
}

impl VatFault {
    /// Who is to blame for this fault.
    pub fn class(&self) -> FaultClass {
        match self {
            VatFault::Trap(_)
            | VatFault::OutOfFuel { .. }
            | VatFault::MemoryLimit { .. }
            | VatFault::Deadline { .. }
            | VatFault::Exit { .. }
            | VatFault::LimitExceeded(_) => FaultClass::Guest,
            VatFault::WorkerDied(_) => FaultClass::Worker,
            VatFault::IllegalSyscall(_) | VatFault::AbiViolation(_) => FaultClass::Abi,
        }
    }
}

impl fmt::Display for VatFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VatFault::Trap(reason) => write!(f, "guest trapped: {reason}"),
            VatFault::OutOfFuel { fuel_per_delivery } => write!(
                f,
                "delivery exceeded fuel_per_delivery ({fuel_per_delivery})"
            ),
            VatFault::MemoryLimit { memory_bytes_max } => write!(
                f,
                "guest exceeded memory_bytes_max ({memory_bytes_max} bytes)"
            ),
            VatFault::Deadline { deadline_ms } => {
                write!(f, "delivery exceeded deadline_ms ({deadline_ms} ms)")
            }
            VatFault::WorkerDied(reason) => write!(f, "worker process died: {reason}"),
            VatFault::IllegalSyscall(reason) => write!(f, "illegal syscall: {reason}"),
            VatFault::AbiViolation(reason) => write!(f, "vat ABI violation: {reason}"),
            VatFault::Exit {
                failure: true,
                reason,
            } => write!(f, "vat exited with failure: {reason}"),
            VatFault::Exit {
                failure: false,
                reason,
            } => write!(f, "vat exited: {reason}"),
            VatFault::LimitExceeded(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for VatFault {}

/// Errors at the supervisor boundary.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("not a Wasm module: {0}")]
    NotWasm(String),
    #[error("module lacks the vat ABI export `{0}` (is it built with vom::vat_main!?)")]
    MissingExport(&'static str),
    #[error("module speaks vat ABI version {found}; this kernel speaks versions 1 to {newest}")]
    AbiVersion { found: i32, newest: i32 },
    #[error("module imports `{module}.{name}`, which the vat ABI does not offer")]
    UnknownImport { module: String, name: String },
    #[error("module does not fit the vat ABI: {0}")]
    BadSignature(String),
    #[error("{0}")]
    Fault(#[from] VatFault),
    #[error("wasm engine: {0}")]
    Engine(String),
}

/// Why the kernel refused a syscall; either way the guest traps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyscallRefusal {
    /// The syscall breaks a named limit (the reason names it): the guest's
    /// delivery fails, as for any other limit.
    Limit(String),
    /// The syscall names what the vat may not (a forged or malformed
    /// reference, a promise it does not decide): an ABI violation.
    Illegal(String),
}

impl SyscallRefusal {
    /// The fault the refused syscall ends its delivery with.
    pub fn into_fault(self) -> VatFault {
        match self {
            SyscallRefusal::Limit(reason) => VatFault::LimitExceeded(reason),
            SyscallRefusal::Illegal(reason) => VatFault::IllegalSyscall(reason),
        }
    }

    /// The reason, as the guest is told it.
    pub fn reason(&self) -> &str {
        match self {
            SyscallRefusal::Limit(reason) | SyscallRefusal::Illegal(reason) => reason,
        }
    }
}

/// The kernel's side of a delivery: answers the guest's syscalls.
pub trait SyscallHandler {
    /// Carries out `call`. An `Err` refuses it: the guest traps with that reason.
    fn syscall(&mut self, call: Syscall) -> Result<SyscallResult, SyscallRefusal>;
}

/// A running vat, however it is hosted.
pub trait Worker {
    /// Runs one delivery to completion, calling `handler` for each syscall.
    fn deliver(
        &mut self,
        delivery: &Delivery,
        handler: &mut dyn SyscallHandler,
    ) -> Result<(), VatFault>;

    /// The worker's process id, when it runs in a process of its own.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// The fuel the last delivery consumed, when the worker can tell
    /// (thread workers can; the process protocol does not carry it yet).
    fn fuel_used(&self) -> Option<u64> {
        None
    }
}

/// One wasmtime engine, configured for deterministic, metered guests, and the
/// linker that offers the vat ABI. Share one per kernel: modules compiled by it
/// can start any number of workers.
pub struct WasmHost {
    engine: Engine,
    linker: Linker<HostState>,
    /// Tells the epoch ticker thread to stop when the host goes away.
    ticker_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for WasmHost {
    fn drop(&mut self) {
        self.ticker_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmHost").finish_non_exhaustive()
    }
}

/// A compiled module that passed the ABI checks, ready to start workers.
#[derive(Clone)]
pub struct VatModule {
    pre: InstancePre<HostState>,
}

impl fmt::Debug for VatModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VatModule").finish_non_exhaustive()
    }
}

/// Enforces `memory_bytes_max`, and remembers refusing, so the trap it
/// causes is reported as the limit it is.
struct MemoryLimiter {
    memory_bytes_max: usize,
    exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory_bytes_max ({} bytes) exceeded",
                self.memory_bytes_max
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// The most elements a guest's tables may hold.
const TABLE_ELEMENTS_MAX: usize = 100_000;

struct HostState {
    limiter: MemoryLimiter,
    message_bytes_max: usize,
    syscalls_per_delivery_max: u32,
    /// Syscalls made so far in the current delivery.
    syscalls: u32,
    /// Valid only while `ThreadWorker::deliver` runs; see the SAFETY note there.
    handler: Option<*mut (dyn SyscallHandler + 'static)>,
    /// Bytes the last syscall returned, waiting for `read_result`.
    result: Option<Vec<u8>>,
    /// Set when a host function refuses a call, so the trap it causes is reported as such.
    fault: Option<VatFault>,
    /// How the guest encodes syscall payloads (and expects deliveries): its ABI version's.
    encoding: Encoding,
    /// The instance's exported memory, once instantiated: each syscall
    /// reads its payload there, and looking the export up by name hashed
    /// the name every time.
    memory: Option<Memory>,
}

fn engine_error(e: impl fmt::Display) -> SupervisorError {
    SupervisorError::Engine(e.to_string())
}

impl WasmHost {
    pub fn new() -> Result<WasmHost, SupervisorError> {
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            // Determinism: every NaN a guest produces has one bit pattern, and no
            // feature whose results vary by machine or schedule is offered
            // (threads are compiled out: the `threads` feature is not enabled).
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false);
        // For profiling guests with `perf`: names JIT code in /tmp/perf-PID.map.
        if std::env::var_os("VAT_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        define_imports(&mut linker).map_err(engine_error)?;
        // Deadlines are counted in epochs; this thread advances them.
        let ticker_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ticking_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("vat-epoch-ticker".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(EPOCH_TICK_MS));
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(engine_error)?;
        Ok(WasmHost {
            engine,
            linker,
            ticker_stop,
        })
    }

    /// A hash of everything a compiled artifact depends on (wasmtime version,
    /// engine settings): artifacts are cached under it.
    fn compatibility_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Where [`Self::load_cached`] keeps the artifact of module `cid`.
    pub fn artifact_path(&self, cid: &str, cache_dir: &std::path::Path) -> std::path::PathBuf {
        cache_dir.join(format!("{cid}-{}.cwasm", self.compatibility_hash()))
    }

    /// Loads an artifact written by [`Self::load_cached`], checking it against the ABI.
    pub fn load_artifact(&self, path: &std::path::Path) -> Result<VatModule, SupervisorError> {
        // SAFETY: artifacts are written by `Module::serialize` into the kernel's
        // own home, named by the engine's compatibility hash; wasmtime also
        // re-checks the header and compatibility before use.
        let module = unsafe { Module::deserialize_file(&self.engine, path) }
            .map_err(|e| SupervisorError::Engine(format!("artifact {}: {e}", path.display())))?;
        // Artifacts are written only for modules that passed the whole ABI
        // check, so the version probe (an instantiation) is not repeated.
        self.accept(module, false)
    }

    /// Like [`Self::compile`], but keeps the compiled artifact in `cache_dir`
    /// under `cid` and this engine's compatibility hash, and loads it from
    /// there when it is already present: a module is compiled once per
    /// machine, not once per process.
    pub fn load_cached(
        &self,
        wasm: &[u8],
        cid: &str,
        cache_dir: &std::path::Path,
    ) -> Result<VatModule, SupervisorError> {
        let path = self.artifact_path(cid, cache_dir);
        if path.is_file()
            && let Ok(module) = self.load_artifact(&path)
        {
            return Ok(module);
        }
        let module = self.compile_module(wasm)?;
        let accepted = self.accept(module.clone(), true)?;
        let bytes = module.serialize().map_err(engine_error)?;
        let temp = path.with_extension("tmp");
        std::fs::create_dir_all(cache_dir)
            .and_then(|()| std::fs::write(&temp, bytes))
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| {
                SupervisorError::Engine(format!("module cache {}: {e}", path.display()))
            })?;
        Ok(accepted)
    }

    /// Compiles `bytes` and checks them against the ABI: the required exports
    /// with their types, only offered imports, and a matching ABI version.
    pub fn compile(&self, bytes: &[u8]) -> Result<VatModule, SupervisorError> {
        let module = self.compile_module(bytes)?;
        self.accept(module, true)
    }

    fn compile_module(&self, bytes: &[u8]) -> Result<Module, SupervisorError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(SupervisorError::NotWasm(
                "the file does not start with the Wasm magic number".into(),
            ));
        }
        Module::new(&self.engine, bytes)
            .map_err(|e| SupervisorError::NotWasm(format!("{e:#}").replace('\n', " ")))
    }

    /// Checks `module`'s imports and exports against the ABI and, when
    /// `probe_version`, asks an instance which ABI version it speaks.
    fn accept(&self, module: Module, probe_version: bool) -> Result<VatModule, SupervisorError> {
        for import in module.imports() {
            if import.module() != IMPORT_MODULE || !OFFERED_IMPORTS.contains(&import.name()) {
                return Err(SupervisorError::UnknownImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        for name in REQUIRED_EXPORTS {
            if module.get_export(name).is_none() {
                return Err(SupervisorError::MissingExport(name));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| SupervisorError::BadSignature(format!("{e:#}")))?;
        let vat_module = VatModule { pre };
        if !probe_version {
            return Ok(vat_module);
        }
        // Ask the module which ABI it speaks, in a throwaway instance (each
        // worker asks its own instance again, for the encoding it speaks).
        ThreadWorker::start(self, &vat_module, Limits::default())?;
        Ok(vat_module)
    }
}

fn memory_of(caller: &mut Caller<'_, HostState>) -> Result<Memory, VatFault> {
    if let Some(memory) = caller.data().memory {
        return Ok(memory);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(VatFault::AbiViolation(
            "the guest has no exported memory".into(),
        )),
    }
}

fn read_guest(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, VatFault> {
    let max = caller.data().message_bytes_max;
    if len < 0 {
        return Err(VatFault::AbiViolation(format!(
            "payload length {len} is negative"
        )));
    }
    if len as usize > max {
        return Err(VatFault::LimitExceeded(format!(
            "syscall payload of {len} bytes exceeds message_bytes_max ({max})"
        )));
    }
    let memory = memory_of(caller)?;
    let data = memory.data(&caller);
    let start = ptr as u32 as usize;
    data.get(start..start + len as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            VatFault::AbiViolation(format!("buffer {start}+{len} is outside guest memory"))
        })
}

fn read_text(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, VatFault> {
    String::from_utf8(read_guest(caller, ptr, len)?)
        .map_err(|_| VatFault::IllegalSyscall("payload is not UTF-8".into()))
}

/// Records `fault` so the trap it causes is reported precisely, and returns the trap.
fn refuse(caller: &mut Caller<'_, HostState>, fault: VatFault) -> wasmtime::Error {
    let message = fault.to_string();
    caller.data_mut().fault = Some(fault);
    wasmtime::Error::msg(message)
}

fn call_handler(
    caller: &mut Caller<'_, HostState>,
    call: Syscall,
) -> Result<SyscallResult, wasmtime::Error> {
    let state = caller.data_mut();
    state.syscalls += 1;
    if state.syscalls > state.syscalls_per_delivery_max {
        let max = state.syscalls_per_delivery_max;
        return Err(refuse(
            caller,
            VatFault::LimitExceeded(format!(
                "delivery exceeded syscalls_per_delivery_max ({max})"
            )),
        ));
    }
    let handler = caller
        .data()
        .handler
        .expect("vat-supervisor invariant: syscalls happen only during a delivery");
    // SAFETY: `handler` was set from a live `&mut dyn SyscallHandler` by
    // `ThreadWorker::deliver`, which clears it before that borrow ends; the
    // guest can only call in during that window, on this thread.
    let handler = unsafe { &mut *handler };
    handler
        .syscall(call)
        .map_err(|refusal| refuse(caller, refusal.into_fault()))
}

/// Hands a syscall's result to the guest: its length now, its bytes on `read_result`.
fn stash_result(caller: &mut Caller<'_, HostState>, result: SyscallResult) -> i32 {
    match result {
        Some(text) => {
            let len = text.len() as i32;
            caller.data_mut().result = Some(text.into_bytes());
            len
        }
        None => -1,
    }
}

fn encoded_syscall(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    import: &str,
) -> Result<(), wasmtime::Error> {
    let bytes = read_guest(caller, ptr, len).map_err(|f| refuse(caller, f))?;
    let call = caller.data().encoding.decode_syscall(&bytes).map_err(|e| {
        refuse(
            caller,
            VatFault::IllegalSyscall(format!("malformed {import} payload: {e}")),
        )
    })?;
    let matches = matches!(
        (&call, import),
        (Syscall::Send { .. }, "send")
            | (Syscall::Resolve { .. }, "resolve")
            | (Syscall::Subscribe { .. }, "subscribe")
            | (Syscall::DropImports { .. }, "drop_imports")
            | (Syscall::RetireImports { .. }, "retire_imports")
            | (Syscall::RetireExports { .. }, "retire_exports")
            | (Syscall::Exit { .. }, "exit")
            | (Syscall::KeepDecided { .. }, "keep_decided")
            | (Syscall::Log { .. }, "log")
            | (Syscall::Heap { .. }, "heap")
    );
    if !matches {
        return Err(refuse(
            caller,
            VatFault::IllegalSyscall(format!("the {import} import got a different syscall")),
        ));
    }
    if let Syscall::Exit { failure, info } = &call {
        let reason = vom::capdata::decode(info).map_or_else(
            |e| e.to_string(),
            |v| match v {
                vom::Value::String(s) => s,
                vom::Value::Error(e) => e.to_string(),
                other => vom::capdata::encode(&other).body,
            },
        );
        return Err(refuse(
            caller,
            VatFault::Exit {
                failure: *failure,
                reason,
            },
        ));
    }
    call_handler(caller, call).map(|_| ())
}

fn define_imports(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for import in [
        "send",
        "resolve",
        "subscribe",
        "drop_imports",
        "retire_imports",
        "retire_exports",
        "exit",
        "keep_decided",
        "log",
        "heap",
    ] {
        linker.func_wrap(
            IMPORT_MODULE,
            import,
            move |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
                encoded_syscall(&mut caller, ptr, len, import)
            },
        )?;
    }
    define_vatstore_imports(linker)?;
    define_read_result(linker)?;
    Ok(())
}

/// The vatstore's syscalls: text in, a result (if any) stashed for `read_result`.
fn define_vatstore_imports(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "vatstore_get",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let key = read_text(&mut caller, ptr, len).map_err(|f| refuse(&mut caller, f))?;
            let result = call_handler(&mut caller, Syscall::VatstoreGet { key })?;
            Ok(stash_result(&mut caller, result))
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "vatstore_get_next_key",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let key = read_text(&mut caller, ptr, len).map_err(|f| refuse(&mut caller, f))?;
            let result = call_handler(&mut caller, Syscall::VatstoreGetNextKey { key })?;
            Ok(stash_result(&mut caller, result))
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "vatstore_get_prev_key",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let key = read_text(&mut caller, ptr, len).map_err(|f| refuse(&mut caller, f))?;
            let result = call_handler(&mut caller, Syscall::VatstoreGetPrevKey { key })?;
            Ok(stash_result(&mut caller, result))
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "vatstore_set",
        |mut caller: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32|
         -> wasmtime::Result<()> {
            let key = read_text(&mut caller, kp, kl).map_err(|f| refuse(&mut caller, f))?;
            let value = read_text(&mut caller, vp, vl).map_err(|f| refuse(&mut caller, f))?;
            call_handler(&mut caller, Syscall::VatstoreSet { key, value }).map(|_| ())
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "vatstore_delete",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let key = read_text(&mut caller, ptr, len).map_err(|f| refuse(&mut caller, f))?;
            call_handler(&mut caller, Syscall::VatstoreDelete { key }).map(|_| ())
        },
    )?;
    Ok(())
}

/// `read_result`: copies the stashed result of the last syscall into the guest.
fn define_read_result(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "read_result",
        |mut caller: Caller<'_, HostState>, ptr: i32| -> wasmtime::Result<()> {
            let Some(bytes) = caller.data_mut().result.take() else {
                return Err(refuse(
                    &mut caller,
                    VatFault::AbiViolation("read_result with no pending result".into()),
                ));
            };
            let memory = memory_of(&mut caller).map_err(|f| refuse(&mut caller, f))?;
            memory
                .write(&mut caller, ptr as u32 as usize, &bytes)
                .map_err(|_| {
                    refuse(
                        &mut caller,
                        VatFault::AbiViolation("read_result buffer is outside guest memory".into()),
                    )
                })
        },
    )?;
    Ok(())
}

/// A vat hosted in this process, on the caller's thread.
pub struct ThreadWorker {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    deliver: TypedFunc<(i32, i32), i32>,
    limits: Limits,
    last_fuel_used: Option<u64>,
}

impl fmt::Debug for ThreadWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadWorker")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn signature_error(name: &str, e: impl fmt::Display) -> SupervisorError {
    SupervisorError::BadSignature(format!("{name}: {e}"))
}

impl ThreadWorker {
    /// Instantiates `module` with `limits`. Runs no delivery: the kernel sends
    /// `startVat` first.
    pub fn start(
        host: &WasmHost,
        module: &VatModule,
        limits: Limits,
    ) -> Result<ThreadWorker, SupervisorError> {
        let state = HostState {
            limiter: MemoryLimiter {
                memory_bytes_max: limits.memory_bytes_max,
                exceeded: false,
            },
            message_bytes_max: limits.message_bytes_max,
            syscalls_per_delivery_max: limits.syscalls_per_delivery_max,
            syscalls: 0,
            handler: None,
            result: None,
            fault: None,
            // Until the instance says which version it speaks, below.
            encoding: Encoding::native(),
            memory: None,
        };
        let mut store = Store::new(&host.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(limits.fuel_per_delivery)
            .map_err(engine_error)?;
        store.epoch_deadline_trap();
        store.set_epoch_deadline(limits.deadline_ms.div_ceil(EPOCH_TICK_MS).max(1));
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify_trap(&e, &mut store, &limits))
            .map_err(SupervisorError::Fault)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(SupervisorError::MissingExport("memory"))?;
        store.data_mut().memory = Some(memory);
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "vat_alloc")
            .map_err(|e| signature_error("vat_alloc", e))?;
        let deliver = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, "vat_deliver")
            .map_err(|e| signature_error("vat_deliver", e))?;
        store.data_mut().encoding = abi_encoding(&instance, &mut store)?;
        Ok(ThreadWorker {
            store,
            memory,
            alloc,
            deliver,
            limits,
            last_fuel_used: None,
        })
    }

    fn run_delivery(&mut self, bytes: &[u8]) -> Result<(), VatFault> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| VatFault::AbiViolation("delivery too large".into()))?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| classify_trap(&e, &mut self.store, &self.limits))?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, bytes)
            .map_err(|_| {
                VatFault::AbiViolation(format!("vat_alloc returned {ptr}, outside guest memory"))
            })?;
        let status = self
            .deliver
            .call(&mut self.store, (ptr, len))
            .map_err(|e| classify_trap(&e, &mut self.store, &self.limits))?;
        if status != 0 {
            return Err(VatFault::AbiViolation(format!(
                "vat_deliver returned status {status}"
            )));
        }
        Ok(())
    }
}

/// Asks a fresh instance which ABI version it speaks: the encoding of its
/// deliveries and syscalls.
fn abi_encoding(
    instance: &Instance,
    store: &mut Store<HostState>,
) -> Result<Encoding, SupervisorError> {
    let version_fn = instance
        .get_typed_func::<(), i32>(&mut *store, "vat_abi_version")
        .map_err(|e| signature_error("vat_abi_version", e))?;
    let found = version_fn
        .call(&mut *store, ())
        .map_err(|e| SupervisorError::Fault(VatFault::Trap(format!("{e:#}"))))?;
    Encoding::of_version(found).ok_or(SupervisorError::AbiVersion {
        found,
        newest: ABI_VERSION,
    })
}

/// Turns a wasmtime error into the fault that caused it.
fn classify_trap(
    error: &wasmtime::Error,
    store: &mut Store<HostState>,
    limits: &Limits,
) -> VatFault {
    if let Some(fault) = store.data_mut().fault.take() {
        return fault;
    }
    if std::mem::take(&mut store.data_mut().limiter.exceeded) {
        return VatFault::MemoryLimit {
            memory_bytes_max: limits.memory_bytes_max,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => VatFault::OutOfFuel {
            fuel_per_delivery: limits.fuel_per_delivery,
        },
        Some(Trap::Interrupt) => VatFault::Deadline {
            deadline_ms: limits.deadline_ms,
        },
        Some(trap) => VatFault::Trap(trap.to_string()),
        None => VatFault::Trap(format!("{error:#}").replace('\n', " ")),
    }
}

impl Worker for ThreadWorker {
    fn deliver(
        &mut self,
        delivery: &Delivery,
        handler: &mut dyn SyscallHandler,
    ) -> Result<(), VatFault> {
        let bytes = self.store.data().encoding.encode_delivery(delivery);
        self.deliver_encoded(&bytes, handler)
    }

    fn fuel_used(&self) -> Option<u64> {
        self.last_fuel_used
    }
}

impl ThreadWorker {
    /// [`Worker::deliver`] of a delivery in ABI v2's binary encoding, as a
    /// worker process gets it from the kernel: passed on unparsed to a guest
    /// that speaks v2 (a malformed one is the guest's to refuse), re-encoded
    /// for one that speaks v1.
    pub(crate) fn deliver_binary(
        &mut self,
        bytes: &[u8],
        handler: &mut dyn SyscallHandler,
    ) -> Result<(), VatFault> {
        match self.store.data().encoding {
            Encoding::Binary => self.deliver_encoded(bytes, handler),
            encoding => {
                let delivery = Encoding::Binary.decode_delivery(bytes).map_err(|e| {
                    VatFault::WorkerDied(format!("the kernel sent a malformed delivery: {e}"))
                })?;
                self.deliver_encoded(&encoding.encode_delivery(&delivery), handler)
            }
        }
    }

    /// Runs a delivery already in the guest's encoding.
    fn deliver_encoded(
        &mut self,
        bytes: &[u8],
        handler: &mut dyn SyscallHandler,
    ) -> Result<(), VatFault> {
        if bytes.len() > self.limits.message_bytes_max {
            return Err(VatFault::LimitExceeded(format!(
                "delivery of {} bytes exceeds message_bytes_max ({})",
                bytes.len(),
                self.limits.message_bytes_max
            )));
        }
        self.store
            .set_fuel(self.limits.fuel_per_delivery)
            .expect("vat-supervisor invariant: fuel is enabled on the engine");
        self.store
            .set_epoch_deadline(self.limits.deadline_ms.div_ceil(EPOCH_TICK_MS).max(1));
        self.store.data_mut().syscalls = 0;
        // SAFETY: the handler pointer is erased to 'static only to sit in the
        // store's data while the guest runs below; it is cleared before this
        // function returns, so it never outlives the `&mut` it came from.
        let handler: *mut (dyn SyscallHandler + '_) = handler;
        let handler: *mut (dyn SyscallHandler + 'static) = unsafe { std::mem::transmute(handler) };
        self.store.data_mut().handler = Some(handler);
        self.store.data_mut().fault = None;
        let outcome = self.run_delivery(bytes);
        self.last_fuel_used = self
            .store
            .get_fuel()
            .ok()
            .map(|left| self.limits.fuel_per_delivery.saturating_sub(left));
        let state = self.store.data_mut();
        state.handler = None;
        state.result = None;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> WasmHost {
        WasmHost::new().unwrap()
    }

    #[test]
    fn refuses_bytes_that_are_not_wasm() {
        let err = host().compile(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(matches!(err, SupervisorError::NotWasm(_)), "{err}");
    }

    #[test]
    fn refuses_a_module_without_the_abi_exports() {
        let wasm = wat::parse_str("(module (memory (export \"memory\") 1))").unwrap();
        let err = host().compile(&wasm).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module lacks the vat ABI export `vat_abi_version` (is it built with vom::vat_main!?)"
        );
    }

    #[test]
    fn refuses_imports_the_abi_does_not_offer() {
        let wasm = wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
        )
        .unwrap();
        let err = host().compile(&wasm).unwrap_err();
        assert!(
            err.to_string().contains("wasi_snapshot_preview1.fd_write"),
            "{err}"
        );
    }

    const MINIMAL: &str = r#"
        (module
          (import "vat" "vatstore_set" (func $set (param i32 i32 i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "keyvalue")
          (func (export "vat_abi_version") (result i32) i32.const VERSION)
          (func (export "vat_alloc") (param i32) (result i32) i32.const 1024)
          (func (export "vat_deliver") (param i32 i32) (result i32)
            (call $set (i32.const 16) (i32.const 3) (i32.const 19) (i32.const 5))
            (loop $spin (br_if $spin (i32.load8_u (i32.const 0))))
            i32.const 0))
    "#;

    fn minimal(version: i32) -> Vec<u8> {
        wat::parse_str(MINIMAL.replace("VERSION", &version.to_string())).unwrap()
    }

    struct Recorder(Vec<Syscall>, Result<(), SyscallRefusal>);
    impl SyscallHandler for Recorder {
        fn syscall(&mut self, call: Syscall) -> Result<SyscallResult, SyscallRefusal> {
            self.0.push(call);
            self.1.clone().map(|()| None)
        }
    }

    #[test]
    fn refuses_another_abi_version() {
        let err = host().compile(&minimal(7)).unwrap_err();
        assert!(
            matches!(
                err,
                SupervisorError::AbiVersion {
                    found: 7,
                    newest: ABI_VERSION
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn delivers_and_routes_syscalls_to_the_handler() {
        let host = host();
        let module = host.compile(&minimal(ABI_VERSION)).unwrap();
        let mut worker = ThreadWorker::start(&host, &module, Limits::default()).unwrap();
        let mut recorder = Recorder(Vec::new(), Ok(()));
        worker
            .deliver(&Delivery::start_vat(), &mut recorder)
            .unwrap();
        assert_eq!(
            recorder.0,
            [Syscall::VatstoreSet {
                key: "key".into(),
                value: "value".into()
            }]
        );
    }

    #[test]
    fn a_refused_syscall_is_reported_as_such() {
        let host = host();
        let module = host.compile(&minimal(ABI_VERSION)).unwrap();
        let mut worker = ThreadWorker::start(&host, &module, Limits::default()).unwrap();
        let refusal = SyscallRefusal::Illegal("vref o-9 is not in the c-list".into());
        let mut recorder = Recorder(Vec::new(), Err(refusal));
        let fault = worker
            .deliver(&Delivery::start_vat(), &mut recorder)
            .unwrap_err();
        assert_eq!(
            fault,
            VatFault::IllegalSyscall("vref o-9 is not in the c-list".into())
        );
        assert_eq!(fault.class(), FaultClass::Abi);
        // A refusal for a limit is the guest's fault, not an ABI violation.
        let refusal = SyscallRefusal::Limit("entry exceeds ENTRY_BYTES_MAX (8)".into());
        let mut recorder = Recorder(Vec::new(), Err(refusal));
        let mut worker = ThreadWorker::start(&host, &module, Limits::default()).unwrap();
        let fault = worker
            .deliver(&Delivery::start_vat(), &mut recorder)
            .unwrap_err();
        assert_eq!(
            fault,
            VatFault::LimitExceeded("entry exceeds ENTRY_BYTES_MAX (8)".into())
        );
        assert_eq!(fault.class(), FaultClass::Guest);
    }

    fn spinning_module() -> Vec<u8> {
        wat::parse_str(MINIMAL.replace("VERSION", "1").replace(
            "(data (i32.const 16) \"keyvalue\")",
            "(data (i32.const 0) \"\\01\") (data (i32.const 16) \"keyvalue\")",
        ))
        .unwrap()
    }

    #[test]
    fn a_wall_clock_deadline_bounds_a_delivery_whatever_its_fuel() {
        let host = host();
        let module = host.compile(&spinning_module()).unwrap();
        let limits = Limits {
            fuel_per_delivery: u64::MAX,
            deadline_ms: 50,
            ..Limits::default()
        };
        let mut worker = ThreadWorker::start(&host, &module, limits).unwrap();
        let fault = worker
            .deliver(&Delivery::start_vat(), &mut Recorder(Vec::new(), Ok(())))
            .unwrap_err();
        assert_eq!(fault, VatFault::Deadline { deadline_ms: 50 });
    }

    #[test]
    fn syscalls_per_delivery_are_bounded() {
        let host = host();
        let module = host.compile(&minimal(ABI_VERSION)).unwrap();
        let limits = Limits {
            syscalls_per_delivery_max: 0,
            ..Limits::default()
        };
        let mut worker = ThreadWorker::start(&host, &module, limits).unwrap();
        let fault = worker
            .deliver(&Delivery::start_vat(), &mut Recorder(Vec::new(), Ok(())))
            .unwrap_err();
        assert!(
            fault.to_string().contains("syscalls_per_delivery_max (0)"),
            "{fault}"
        );
    }

    #[test]
    fn compiled_modules_are_cached_by_cid_and_engine() {
        let host = host();
        let dir = tempfile::tempdir().unwrap();
        let wasm = minimal(ABI_VERSION);
        host.load_cached(&wasm, "bafkreitest", dir.path()).unwrap();
        let artifact = host.artifact_path("bafkreitest", dir.path());
        assert!(artifact.is_file());
        // A second load comes from the artifact, even if the bytes were lost.
        host.load_cached(b"not even wasm", "bafkreitest", dir.path())
            .unwrap();
        // A damaged artifact is recompiled, not trusted.
        std::fs::write(&artifact, b"garbage").unwrap();
        host.load_cached(&wasm, "bafkreitest", dir.path()).unwrap();
        assert!(host.load_artifact(&artifact).is_ok());
    }

    #[test]
    fn nans_are_canonical_whatever_the_hardware_would_produce() {
        // NaN + 0 keeps the payload 0x7fc00001 on x86; canonicalized, the
        // result is 0x7fc00000 on every machine. The guest traps otherwise.
        let wasm = wat::parse_str(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "vat_abi_version") (result i32) i32.const 1)
                 (func (export "vat_alloc") (param i32) (result i32) i32.const 1024)
                 (func (export "vat_deliver") (param i32 i32) (result i32)
                   (if (i32.ne
                         (i32.reinterpret_f32
                           (f32.add (f32.reinterpret_i32 (i32.const 0x7fc00001)) (f32.const 0)))
                         (i32.const 0x7fc00000))
                     (then unreachable))
                   i32.const 0))"#,
        )
        .unwrap();
        let host = host();
        let module = host.compile(&wasm).unwrap();
        let mut worker = ThreadWorker::start(&host, &module, Limits::default()).unwrap();
        worker
            .deliver(&Delivery::start_vat(), &mut Recorder(Vec::new(), Ok(())))
            .unwrap();
    }

    #[test]
    fn fuel_bounds_a_delivery() {
        let host = host();
        // The guest spins while byte 0 of its memory is non-zero: make it so.
        let wasm = wat::parse_str(MINIMAL.replace("VERSION", "1").replace(
            "(data (i32.const 16) \"keyvalue\")",
            "(data (i32.const 0) \"\\01\") (data (i32.const 16) \"keyvalue\")",
        ))
        .unwrap();
        let module = host.compile(&wasm).unwrap();
        let limits = Limits {
            fuel_per_delivery: 100_000,
            ..Limits::default()
        };
        let mut worker = ThreadWorker::start(&host, &module, limits).unwrap();
        let fault = worker
            .deliver(&Delivery::start_vat(), &mut Recorder(Vec::new(), Ok(())))
            .unwrap_err();
        assert_eq!(
            fault,
            VatFault::OutOfFuel {
                fuel_per_delivery: 100_000
            }
        );
        assert!(fault.to_string().contains("fuel_per_delivery"));
    }
    /// A module that stores each delivery's bytes under `got` and then
    /// subscribes with `payload`, as ABI `version` would encode it.
    fn echoing_module(version: i32, payload: &[u8]) -> Vec<u8> {
        let escaped: String = payload.iter().map(|b| format!("\\{b:02x}")).collect();
        let wat = format!(
            r#"(module
              (import "vat" "vatstore_set" (func $set (param i32 i32 i32 i32)))
              (import "vat" "subscribe" (func $subscribe (param i32 i32)))
              (memory (export "memory") 1)
              (data (i32.const 16) "got")
              (data (i32.const 32) "{escaped}")
              (func (export "vat_abi_version") (result i32) i32.const {version})
              (func (export "vat_alloc") (param i32) (result i32) i32.const 1024)
              (func (export "vat_deliver") (param $ptr i32) (param $len i32) (result i32)
                (call $set (i32.const 16) (i32.const 3) (local.get $ptr) (local.get $len))
                (call $subscribe (i32.const 32) (i32.const {len}))
                i32.const 0))"#,
            len = payload.len()
        );
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn each_module_gets_and_makes_syscalls_in_its_versions_encoding() {
        let host = host();
        let subscribe = Syscall::Subscribe {
            promise: "p+5".into(),
        };
        for encoding in [Encoding::Json, Encoding::Binary] {
            let version = if encoding == Encoding::Json { 1 } else { 2 };
            let wasm = echoing_module(version, &encoding.encode_syscall(&subscribe));
            let module = host.compile(&wasm).unwrap();
            let mut worker = ThreadWorker::start(&host, &module, Limits::default()).unwrap();
            let mut recorder = Recorder(Vec::new(), Ok(()));
            worker
                .deliver(&Delivery::BringOutYourDead, &mut recorder)
                .unwrap();
            let got = String::from_utf8(encoding.encode_delivery(&Delivery::BringOutYourDead));
            assert_eq!(
                recorder.0,
                [
                    Syscall::VatstoreSet {
                        key: "got".into(),
                        value: got.unwrap()
                    },
                    subscribe.clone()
                ],
                "ABI v{version}"
            );
        }
        // A v2 module that sends v1's JSON is refused, not misread.
        let json = Encoding::Json.encode_syscall(&subscribe);
        let module = host.compile(&echoing_module(2, &json)).unwrap();
        let mut worker = ThreadWorker::start(&host, &module, Limits::default()).unwrap();
        let fault = worker
            .deliver(
                &Delivery::BringOutYourDead,
                &mut Recorder(Vec::new(), Ok(())),
            )
            .unwrap_err();
        assert!(
            matches!(&fault, VatFault::IllegalSyscall(m) if m.starts_with("malformed subscribe payload")),
            "{fault}"
        );
    }
}

#[cfg(test)]
mod sync_check {
    fn is_sync<T: Send + Sync>() {}

    /// The kernel runs pure IPVM tasks on several threads over one host.
    #[test]
    fn hosts_and_modules_are_shared_across_threads() {
        is_sync::<super::WasmHost>();
        is_sync::<super::VatModule>();
    }
}
