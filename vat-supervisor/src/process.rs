//! Worker processes: [`ProcessWorker`] is the kernel's side, [`serve`] the
//! `vat-supervisor` binary's. They speak `schema/worker.capnp` over the
//! child's stdin and stdout.
//!
//! A worker process's crash, hang or memory blow-up is the vat's fault, never
//! the kernel's: the kernel sees [`VatFault::WorkerDied`] and decides.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use capnp::message::{Builder, ReaderOptions};
use capnp::serialize;
use vom::abi::{Delivery, Encoding, Syscall, SyscallResult};

use crate::worker_capnp::{fault, from_worker, start, syscall_result, to_worker};
use crate::{
    Limits, SupervisorError, SyscallHandler, SyscallRefusal, ThreadWorker, VatFault, WasmHost,
    Worker,
};

/// The protocol version both sides must speak (`protocolVersion` in the schema).
pub const PROTOCOL_VERSION: u32 = crate::worker_capnp::PROTOCOL_VERSION;

/// Where a worker process gets its module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// Compile these bytes.
    Wasm(Vec<u8>),
    /// Load this artifact, written by [`WasmHost::load_cached`].
    Artifact(PathBuf),
}

fn reader_options(limits: &Limits) -> ReaderOptions {
    let mut options = ReaderOptions::new();
    // A frame may carry a module (on start) or a message of up to
    // message_bytes_max, plus framing; anything larger is refused unread.
    let words = (limits.message_bytes_max.max(64 << 20) / 8 + 1024) as u64;
    options.traversal_limit_in_words(Some(words as usize));
    options
}

fn protocol_error(e: impl std::fmt::Display) -> VatFault {
    VatFault::WorkerDied(format!("worker protocol: {e}"))
}

/// A text field of a frame, as an owned string.
fn owned_text(field: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, VatFault> {
    field
        .and_then(|t| Ok(t.to_string()?))
        .map_err(protocol_error)
}

/// Words of a frame's fixed parts (its root, a list's pointer and each
/// element's padding): what [`frame_builder`] adds to the payload.
const FRAME_FIXED_WORDS: usize = 16;

/// Words per element of a list of byte blobs beyond the blob itself: a
/// pointer, and padding to the word.
const FRAME_WORDS_PER_BLOB: usize = 2;

/// A builder whose first segment holds a frame of `blobs` blobs, `bytes`
/// bytes in all: one segment, and nothing more to zero. capnp's default
/// first segment is 8 KB, allocated and zeroed for every frame: more than
/// the rest of a small delivery's encoding.
fn frame_builder(blobs: usize, bytes: usize) -> Builder<capnp::message::HeapAllocator> {
    let words = FRAME_FIXED_WORDS + blobs * FRAME_WORDS_PER_BLOB + bytes.div_ceil(8);
    let words = u32::try_from(words).unwrap_or(u32::MAX);
    Builder::new(capnp::message::HeapAllocator::new().first_segment_words(words))
}

fn write_frame(
    writer: &mut impl Write,
    message: &Builder<capnp::message::HeapAllocator>,
) -> Result<(), VatFault> {
    serialize::write_message(&mut *writer, message).map_err(protocol_error)?;
    writer
        .flush()
        .map_err(|e| VatFault::WorkerDied(format!("pipe closed: {e}")))
}

/// `spin_us`: how long a thread that waits for the next frame polls for
/// it before it sleeps, while its recent waits were that short: either end
/// of a worker's pipe (the kernel waiting for a delivery's answer, a worker
/// for its next delivery or a syscall's result), and the daemon's loop
/// waiting for its next event. Set by the environment variable
/// [`SPIN_US_VAR`] (a worker inherits the kernel's); 0 turns polling off.
pub const SPIN_US_DEFAULT: u64 = 500;
/// The environment variable that sets `spin_us`.
pub const SPIN_US_VAR: &str = "VAT_SPIN_US";
/// The most `spin_us` may be: a longer poll only burns a core.
pub const SPIN_US_MAX: u64 = 10_000;

/// `spin_us` as the environment sets it, read once per process. A value
/// that is not a number up to [`SPIN_US_MAX`] is ignored (the default
/// holds): it only tunes speed, never what is delivered.
pub fn spin_us() -> u64 {
    static SPIN_US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SPIN_US.get_or_init(|| parse_spin_us(std::env::var(SPIN_US_VAR).ok().as_deref()))
}

fn parse_spin_us(text: Option<&str>) -> u64 {
    text.and_then(|text| text.parse().ok())
        .filter(|&us| us <= SPIN_US_MAX)
        .unwrap_or(SPIN_US_DEFAULT)
}

/// A pipe read that first waits for data by polling, giving the core away
/// between polls, for up to `spin_us`, and only then blocks. Blocking on a
/// pipe whose writer answers within microseconds costs a sleep and a wakeup
/// (tens of microseconds on a virtual machine's idle core); a short poll
/// keeps the core awake for the answer. It polls only while the waits have
/// been short: after a wait longer than `spin_us` (an idle vat, a slow
/// delivery, a busy machine) it blocks at once until a wait is short again,
/// so an idle or overloaded worker burns no core on polls that do not pay.
#[derive(Debug)]
struct SpinRead<R> {
    inner: R,
    spin_us: u64,
    /// Whether the last wait for data was within `spin_us`.
    last_wait_short: bool,
}

impl<R> SpinRead<R> {
    fn new(inner: R, spin_us: u64) -> SpinRead<R> {
        SpinRead {
            inner,
            spin_us,
            last_wait_short: true,
        }
    }

    /// The next frame is expected soon whatever the last wait was: its
    /// reader has just asked for it (a delivery's answer, a start's ready,
    /// a syscall's result during a delivery).
    fn expect_soon(&mut self) {
        self.last_wait_short = true;
    }
}

impl<R: Read + std::os::fd::AsRawFd> SpinRead<R> {
    /// Polls until data is there or `budget` has passed; whether it came.
    fn poll_for(&self, started: std::time::Instant, budget: std::time::Duration) -> bool {
        let mut poll = libc::pollfd {
            fd: self.inner.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `poll` points at one valid pollfd for the call's duration.
            if unsafe { libc::poll(&mut poll, 1, 0) } != 0 {
                return true;
            }
            if started.elapsed() >= budget {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

impl<R: Read + std::os::fd::AsRawFd> Read for SpinRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.spin_us == 0 {
            return self.inner.read(buf);
        }
        let started = std::time::Instant::now();
        let budget = std::time::Duration::from_micros(self.spin_us);
        if self.last_wait_short && self.poll_for(started, budget) {
            return self.inner.read(buf);
        }
        let read = self.inner.read(buf);
        self.last_wait_short = started.elapsed() < budget;
        read
    }
}

/// The kernel's handle on a vat hosted in a `vat-supervisor` child process.
#[derive(Debug)]
pub struct ProcessWorker {
    child: Child,
    to_worker: BufWriter<ChildStdin>,
    from_worker: BufReader<SpinRead<ChildStdout>>,
    options: ReaderOptions,
    /// A start sent ahead ([`ProcessWorker::host_ahead`]) whose answer is
    /// not read yet.
    started_ahead: Option<(ModuleSource, Limits)>,
}

impl ProcessWorker {
    /// Starts `program` (the `vat-supervisor` binary) hosting `module` with
    /// `limits`. `label` (the vat's id) shows in `ps` as `--vat LABEL`.
    pub fn start(
        program: &Path,
        label: &str,
        module: ModuleSource,
        limits: Limits,
    ) -> Result<ProcessWorker, SupervisorError> {
        let mut worker = ProcessWorker::spawn(program, label, &limits)?;
        worker.host(module, limits)?;
        Ok(worker)
    }

    /// Starts `program` with nothing to host yet: a spare process that
    /// [`Self::host`] gives a vat later, its start already paid (`ps`
    /// shows it as `--vat spare`).
    pub fn spare(program: &Path) -> Result<ProcessWorker, SupervisorError> {
        ProcessWorker::spawn(program, "spare", &Limits::default())
    }

    /// Starts `program` with nothing to host yet.
    fn spawn(
        program: &Path,
        label: &str,
        limits: &Limits,
    ) -> Result<ProcessWorker, SupervisorError> {
        let mut child = Command::new(program)
            // A worker's own heap is small (its guest's memory is mapped
            // apart): its allocator starts without a transparent huge page
            // to zero and with a 32 MiB arena, not 1 GiB to map. The
            // process starts about 0.3 ms sooner.
            .env("MIMALLOC_ALLOW_THP", "0")
            .env("MIMALLOC_ARENA_RESERVE", "32MiB")
            .args(["--vat", label])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                SupervisorError::Engine(format!("cannot start {}: {e}", program.display()))
            })?;
        let to_worker = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let stdout = child.stdout.take().expect("piped stdout");
        let from_worker = BufReader::new(SpinRead::new(stdout, spin_us()));
        Ok(ProcessWorker {
            child,
            to_worker,
            from_worker,
            options: reader_options(limits),
            started_ahead: None,
        })
    }

    /// Has this worker process host `module` with `limits` from now on,
    /// in place of the vat it hosted (a sleeping vat's process taking on
    /// one that wakes: no process start). The process keeps the modules it
    /// compiled, by where they came from, so a vat of the same bundle
    /// starts without compiling or loading. `label` stays the one it was
    /// started with: `ps` shows the vat a process was started for.
    pub fn host(&mut self, module: ModuleSource, limits: Limits) -> Result<(), SupervisorError> {
        if self.is_started_ahead(&module, limits) {
            self.started_ahead = None;
            return self.read_started();
        }
        self.drop_started_ahead();
        self.send_start(&module, limits)?;
        self.read_started()
    }

    /// Sends [`Self::host`]'s start without waiting for its answer: the
    /// process loads `module` (a spawn's cached artifact) while the kernel
    /// writes the bundle. The `host` call with the same module and limits
    /// reads the answer; one with others reads it and starts anew.
    pub fn host_ahead(
        &mut self,
        module: ModuleSource,
        limits: Limits,
    ) -> Result<(), SupervisorError> {
        if self.is_started_ahead(&module, limits) {
            return Ok(());
        }
        self.drop_started_ahead();
        self.send_start(&module, limits)?;
        self.started_ahead = Some((module, limits));
        Ok(())
    }

    fn is_started_ahead(&self, module: &ModuleSource, limits: Limits) -> bool {
        self.started_ahead
            .as_ref()
            .is_some_and(|(ahead, ahead_limits)| ahead == module && *ahead_limits == limits)
    }

    /// Reads and leaves the answer to a start sent ahead for a vat that
    /// did not come (its spawn failed first). A process that fails here
    /// fails the next start too, and is replaced then.
    fn drop_started_ahead(&mut self) {
        if self.started_ahead.take().is_some() {
            let _ = self.read_started();
        }
    }

    fn send_start(&mut self, module: &ModuleSource, limits: Limits) -> Result<(), SupervisorError> {
        self.options = reader_options(&limits);
        let mut message = Builder::new_default();
        {
            let mut start = message.init_root::<to_worker::Builder>().init_start();
            start.set_protocol_version(PROTOCOL_VERSION);
            let mut wire_limits = start.reborrow().init_limits();
            wire_limits.set_fuel_per_delivery(limits.fuel_per_delivery);
            wire_limits.set_memory_bytes_max(limits.memory_bytes_max as u64);
            wire_limits.set_message_bytes_max(limits.message_bytes_max as u64);
            wire_limits.set_deadline_ms(limits.deadline_ms);
            wire_limits.set_syscalls_per_delivery_max(limits.syscalls_per_delivery_max);
            match module {
                ModuleSource::Wasm(bytes) => start.set_wasm(bytes),
                ModuleSource::Artifact(path) => start.set_artifact(path.to_string_lossy().as_ref()),
            }
        }
        write_frame(&mut self.to_worker, &message).map_err(|e| self.exited_at_start(&e))
    }

    /// The answer to the start sent last: ready, or why the module failed.
    fn read_started(&mut self) -> Result<(), SupervisorError> {
        let reply = match serialize::read_message(&mut self.from_worker, self.options) {
            Ok(reply) => reply,
            Err(e) => return Err(self.exited_at_start(&e)),
        };
        let root = reply
            .get_root::<from_worker::Reader>()
            .map_err(protocol_error)?;
        match root.which().map_err(protocol_error)? {
            from_worker::Ready(()) => Ok(()),
            from_worker::StartFailed(reason) => {
                let reason = owned_text(reason)?;
                Err(SupervisorError::Fault(VatFault::Trap(reason)))
            }
            _ => Err(protocol_error("expected ready").into()),
        }
    }

    /// Why the start failed when its pipe did: the process's exit, if it
    /// exits within [`WORKER_EXIT_WAIT_MS`] (a closed pipe is usually a
    /// process on its way out). One still up spoke out of turn (a program
    /// that is not `vat-supervisor`): it is stopped, and the error says
    /// what it sent.
    fn exited_at_start(&mut self, e: &dyn std::fmt::Display) -> SupervisorError {
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(WORKER_EXIT_WAIT_MS);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return VatFault::WorkerDied(format!("worker exited at start ({status})"))
                        .into();
                }
                Ok(None) if started.elapsed() < limit => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                _ => {
                    let _ = self.child.kill();
                    return protocol_error(e).into();
                }
            }
        }
    }

    /// The worker process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Applies a batch of syscalls in order; the first refusal stops the batch.
    fn apply(
        calls: capnp::data_list::Reader<'_>,
        handler: &mut dyn SyscallHandler,
    ) -> Result<Result<SyscallResult, SyscallRefusal>, VatFault> {
        let mut last = Ok(None);
        for bytes in calls.iter() {
            let call = Encoding::Binary
                .decode_syscall(bytes.map_err(protocol_error)?)
                .map_err(protocol_error)?;
            last = handler.syscall(call);
            if last.is_err() {
                break;
            }
        }
        Ok(last)
    }
}

fn fault_from_wire(fault: fault::Reader<'_>) -> Result<VatFault, VatFault> {
    let message = owned_text(fault.get_message())?;
    let limit = fault.get_limit();
    Ok(match fault.get_kind().map_err(protocol_error)? {
        fault::Kind::Trap => VatFault::Trap(message),
        fault::Kind::OutOfFuel => VatFault::OutOfFuel {
            fuel_per_delivery: limit,
        },
        fault::Kind::MemoryLimit => VatFault::MemoryLimit {
            memory_bytes_max: limit as usize,
        },
        fault::Kind::Deadline => VatFault::Deadline { deadline_ms: limit },
        fault::Kind::IllegalSyscall => VatFault::IllegalSyscall(message),
        fault::Kind::AbiViolation => VatFault::AbiViolation(message),
        fault::Kind::Exit => VatFault::Exit {
            failure: fault.get_failure(),
            reason: message,
        },
        fault::Kind::LimitExceeded => VatFault::LimitExceeded(message),
    })
}

fn fault_to_wire(fault: &VatFault, mut wire: fault::Builder<'_>) {
    let (kind, message, limit, failure) = match fault {
        VatFault::Trap(m) | VatFault::WorkerDied(m) => (fault::Kind::Trap, m.clone(), 0, false),
        VatFault::OutOfFuel { fuel_per_delivery } => (
            fault::Kind::OutOfFuel,
            String::new(),
            *fuel_per_delivery,
            false,
        ),
        VatFault::MemoryLimit { memory_bytes_max } => (
            fault::Kind::MemoryLimit,
            String::new(),
            *memory_bytes_max as u64,
            false,
        ),
        VatFault::Deadline { deadline_ms } => {
            (fault::Kind::Deadline, String::new(), *deadline_ms, false)
        }
        VatFault::IllegalSyscall(m) => (fault::Kind::IllegalSyscall, m.clone(), 0, false),
        VatFault::AbiViolation(m) => (fault::Kind::AbiViolation, m.clone(), 0, false),
        VatFault::Exit { failure, reason } => (fault::Kind::Exit, reason.clone(), 0, *failure),
        VatFault::LimitExceeded(m) => (fault::Kind::LimitExceeded, m.clone(), 0, false),
    };
    wire.set_kind(kind);
    wire.set_message(message.as_str());
    wire.set_limit(limit);
    wire.set_failure(failure);
}

impl Worker for ProcessWorker {
    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    fn deliver(
        &mut self,
        delivery: &Delivery,
        handler: &mut dyn SyscallHandler,
    ) -> Result<(), VatFault> {
        assert!(
            self.started_ahead.is_none(),
            "process worker invariant: a start sent ahead is answered before a delivery"
        );
        let bytes = Encoding::Binary.encode_delivery(delivery);
        let mut message = frame_builder(1, bytes.len());
        message
            .init_root::<to_worker::Builder>()
            .set_deliver(&bytes);
        write_frame(&mut self.to_worker, &message)?;
        self.from_worker.get_mut().expect_soon();
        // A refusal the guest was told of ends the delivery with the guest's
        // fault report; the kernel's own account of why it refused wins.
        let mut refused: Option<SyscallRefusal> = None;
        loop {
            let frame =
                serialize::read_message(&mut self.from_worker, self.options).map_err(|e| {
                    let status = self.child.try_wait().ok().flatten();
                    match status {
                        Some(status) => VatFault::WorkerDied(format!("{status}")),
                        None => protocol_error(e),
                    }
                })?;
            let root = frame
                .get_root::<from_worker::Reader>()
                .map_err(protocol_error)?;
            match root.which().map_err(protocol_error)? {
                from_worker::Syscalls(batch) => {
                    let batch = batch.map_err(protocol_error)?;
                    let outcome = Self::apply(batch.get_calls().map_err(protocol_error)?, handler)?;
                    if let Err(refusal) = &outcome {
                        if !batch.get_awaits_result() {
                            return Err(refusal.clone().into_fault());
                        }
                        refused = Some(refusal.clone());
                    }
                    if batch.get_awaits_result() {
                        let text = match &outcome {
                            Ok(value) => value.as_deref().map_or(0, str::len),
                            Err(refusal) => refusal.reason().len(),
                        };
                        let mut reply = frame_builder(1, text);
                        let mut result = reply
                            .init_root::<to_worker::Builder>()
                            .init_syscall_result();
                        match &outcome {
                            Ok(None) => result.set_none(()),
                            Ok(Some(value)) => result.set_value(value.as_str()),
                            Err(refusal) => result.set_refused(refusal.reason()),
                        }
                        write_frame(&mut self.to_worker, &reply)?;
                    }
                }
                from_worker::Delivered(calls) => {
                    let outcome = Self::apply(calls.map_err(protocol_error)?, handler)?;
                    return outcome.map(|_| ()).map_err(SyscallRefusal::into_fault);
                }
                from_worker::Fault(fault) => {
                    let reported = fault_from_wire(fault.map_err(protocol_error)?)?;
                    return Err(refused.map_or(reported, SyscallRefusal::into_fault));
                }
                _ => return Err(protocol_error("unexpected frame during a delivery")),
            }
        }
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        // Closing stdin ends a healthy worker; a stuck one is killed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `worker_exit_wait_ms`: how long a start whose pipe failed waits for the
/// worker process to exit, to report how it ended, before stopping it.
pub const WORKER_EXIT_WAIT_MS: u64 = 200;

/// `vatstore_cache_entries_max`: how many vatstore keys a worker process
/// remembers the value of; past it (or past
/// [`VATSTORE_CACHE_BYTES_MAX`]) the cache starts over.
pub const VATSTORE_CACHE_ENTRIES_MAX: usize = 10_000;
/// `vatstore_cache_bytes_max`: the most bytes of keys and values the cache holds.
pub const VATSTORE_CACHE_BYTES_MAX: usize = 16 << 20;

/// The vatstore values a worker process has read or written, so that a key
/// read again costs no pipe round trip. Sound for the same reason vom's heap
/// caches are: a vat's vatstore changes only through its own syscalls, and
/// the kernel discards a worker whose delivery's crank it aborts. The cache
/// starts over with each `Start` and after a failed delivery.
#[derive(Debug, Default)]
struct VatstoreCache {
    values: std::collections::HashMap<String, Option<String>>,
    bytes: usize,
}

impl VatstoreCache {
    fn get(&self, key: &str) -> Option<Option<String>> {
        self.values.get(key).cloned()
    }

    fn put(&mut self, key: String, value: Option<String>) {
        let added = key.len() + value.as_ref().map_or(0, String::len);
        if self.values.len() >= VATSTORE_CACHE_ENTRIES_MAX
            || self.bytes + added > VATSTORE_CACHE_BYTES_MAX
        {
            self.clear();
        }
        if added > VATSTORE_CACHE_BYTES_MAX {
            return;
        }
        if let Some(old) = self.values.remove(&key) {
            self.bytes -= key.len() + old.map_or(0, |v| v.len());
        }
        self.bytes += added;
        self.values.insert(key, value);
    }

    fn clear(&mut self) {
        self.values.clear();
        self.bytes = 0;
    }
}

/// The worker side of a syscall: batches what returns nothing, asks the
/// kernel for what returns something (unless the cache knows it).
struct PipeSyscalls<'a, R: Read, W: Write> {
    input: &'a mut R,
    output: &'a mut W,
    options: ReaderOptions,
    batch: Vec<Vec<u8>>,
    failed: Option<VatFault>,
    cache: &'a mut VatstoreCache,
}

impl<R: Read, W: Write> PipeSyscalls<'_, R, W> {
    /// Sends the batched syscalls and `call` now; the kernel answers only
    /// when `awaits_result`.
    fn send_batch(&mut self, call: &Syscall, awaits_result: bool) -> Result<(), VatFault> {
        self.batch.push(Encoding::Binary.encode_syscall(call));
        let bytes = self.batch.iter().map(Vec::len).sum();
        let mut message = frame_builder(self.batch.len(), bytes);
        {
            let mut syscalls = message.init_root::<from_worker::Builder>().init_syscalls();
            syscalls.set_awaits_result(awaits_result);
            let mut calls = syscalls.init_calls(self.batch.len() as u32);
            for (i, bytes) in self.batch.drain(..).enumerate() {
                calls.set(i as u32, &bytes);
            }
        }
        write_frame(self.output, &message)
    }

    fn ask(&mut self, call: &Syscall) -> Result<SyscallResult, VatFault> {
        self.send_batch(call, true)?;
        let reply =
            serialize::read_message(&mut *self.input, self.options).map_err(protocol_error)?;
        let root = reply
            .get_root::<to_worker::Reader>()
            .map_err(protocol_error)?;
        let to_worker::SyscallResult(result) = root.which().map_err(protocol_error)? else {
            return Err(protocol_error("expected a syscall result"));
        };
        match result
            .map_err(protocol_error)?
            .which()
            .map_err(protocol_error)?
        {
            syscall_result::None(()) => Ok(None),
            syscall_result::Value(text) => Ok(Some(owned_text(text)?)),
            syscall_result::Refused(text) => Err(VatFault::IllegalSyscall(owned_text(text)?)),
        }
    }

    /// A read the kernel answers; a refusal or a broken pipe fails the delivery.
    fn ask_or_refuse(&mut self, call: &Syscall) -> Result<SyscallResult, SyscallRefusal> {
        self.ask(call).map_err(|fault| {
            let reason = match &fault {
                VatFault::IllegalSyscall(reason) => reason.clone(),
                other => other.to_string(),
            };
            self.failed = Some(fault);
            SyscallRefusal::Illegal(reason)
        })
    }
}

impl<R: Read, W: Write> SyscallHandler for PipeSyscalls<'_, R, W> {
    fn syscall(&mut self, call: Syscall) -> Result<SyscallResult, SyscallRefusal> {
        match call {
            Syscall::VatstoreGet { ref key } => {
                if let Some(known) = self.cache.get(key) {
                    return Ok(known);
                }
                let value = self.ask_or_refuse(&call)?;
                self.cache.put(key.clone(), value.clone());
                Ok(value)
            }
            Syscall::VatstoreGetNextKey { .. } | Syscall::VatstoreGetPrevKey { .. } => {
                self.ask_or_refuse(&call)
            }
            // A log line leaves at once: the delivery may fail before its
            // batch would, and the line is wanted most then.
            Syscall::Log { .. } => match self.send_batch(&call, false) {
                Ok(()) => Ok(None),
                Err(fault) => {
                    let reason = fault.to_string();
                    self.failed = Some(fault);
                    Err(SyscallRefusal::Illegal(reason))
                }
            },
            other => {
                self.batch.push(Encoding::Binary.encode_syscall(&other));
                match other {
                    Syscall::VatstoreSet { key, value } => self.cache.put(key, Some(value)),
                    Syscall::VatstoreDelete { key } => self.cache.put(key, None),
                    _ => {}
                }
                Ok(None)
            }
        }
    }
}

fn start_failed(output: &mut impl Write, reason: &str) -> Result<(), VatFault> {
    let mut message = Builder::new_default();
    message
        .init_root::<from_worker::Builder>()
        .set_start_failed(reason);
    write_frame(output, &message)
}

/// `modules_per_worker_max`: how many compiled modules a worker process
/// keeps for vats it may host next (the least recently used goes first).
pub const MODULES_PER_WORKER_MAX: usize = 8;

/// What a worker process keeps between the vats it hosts: the engine (its
/// epoch ticker enforces deadlines) and the modules it compiled or loaded.
struct WorkerHome {
    host: Option<WasmHost>,
    /// By where each came from (an artifact's path, a hash of Wasm bytes),
    /// most recently used last.
    modules: Vec<(String, crate::VatModule)>,
}

/// Runs a worker: reads `Start` and then deliveries from `input`, answers on
/// `output`, until `input` closes. A `Start` between deliveries replaces the
/// vat it hosts (the kernel hands a sleeping vat's process to one that
/// wakes). The body of the `vat-supervisor` binary.
pub fn serve(input: impl Read + std::os::fd::AsRawFd, output: impl Write) -> Result<(), VatFault> {
    let mut input = BufReader::new(SpinRead::new(input, spin_us()));
    let mut output = BufWriter::new(output);
    // The engine is made before the first frame arrives: a spare process
    // (started ahead of need) has it ready when a vat comes. One that
    // cannot be made is made again, and its failure told, at the start.
    let mut home = WorkerHome {
        host: WasmHost::new().ok(),
        modules: Vec::new(),
    };
    let mut hosted: Option<(ThreadWorker, Limits)> = None;
    let mut cache = VatstoreCache::default();
    loop {
        let limits = hosted.as_ref().map_or_else(Limits::default, |(_, l)| *l);
        let options = reader_options(&limits);
        let frame =
            match serialize::try_read_message(&mut input, options).map_err(protocol_error)? {
                Some(frame) => frame,
                None => return Ok(()), // The kernel closed our stdin: done.
            };
        let root = frame
            .get_root::<to_worker::Reader>()
            .map_err(protocol_error)?;
        match root.which().map_err(protocol_error)? {
            to_worker::Start(start) => {
                // The vat hosted so far goes first: its memory is freed
                // before the next one's is made.
                drop(hosted.take());
                cache.clear();
                hosted = start_worker(&mut home, start.map_err(protocol_error)?, &mut output)?;
            }
            to_worker::Deliver(bytes) => {
                let Some((worker, _)) = hosted.as_mut() else {
                    return Err(protocol_error("a delivery before a successful start"));
                };
                // Passed on as the kernel encoded it to a v2 guest.
                let bytes = bytes.map_err(protocol_error)?;
                // The kernel answers a delivery's syscalls at once.
                input.get_mut().expect_soon();
                let io = (&mut input, &mut output, options);
                deliver(worker, bytes, io, &mut cache)?;
            }
            _ => return Err(protocol_error("expected a start or a delivery")),
        }
    }
}

/// Starts the guest `start` names and answers `ready`, or `startFailed`
/// saying why (then `None`: nothing is hosted).
fn start_worker(
    home: &mut WorkerHome,
    start: crate::worker_capnp::start::Reader<'_>,
    output: &mut impl Write,
) -> Result<Option<(ThreadWorker, Limits)>, VatFault> {
    if start.get_protocol_version() != PROTOCOL_VERSION {
        let reason = format!(
            "worker protocol version {} requested, this worker speaks {PROTOCOL_VERSION}",
            start.get_protocol_version()
        );
        return start_failed(output, &reason).map(|()| None);
    }
    let wire = start.get_limits().map_err(protocol_error)?;
    let limits = Limits {
        fuel_per_delivery: wire.get_fuel_per_delivery(),
        memory_bytes_max: wire.get_memory_bytes_max() as usize,
        message_bytes_max: wire.get_message_bytes_max() as usize,
        deadline_ms: wire.get_deadline_ms(),
        syscalls_per_delivery_max: wire.get_syscalls_per_delivery_max(),
    };
    if home.host.is_none() {
        match WasmHost::new() {
            Ok(host) => home.host = Some(host),
            Err(e) => return start_failed(output, &e.to_string()).map(|()| None),
        }
    }
    let module = match start.which().map_err(protocol_error)? {
        start::Wasm(bytes) => {
            let bytes = bytes.map_err(protocol_error)?;
            let key = format!("wasm:{}", bytes_fingerprint(bytes));
            home.module(key, |host| host.compile(bytes))
        }
        start::Artifact(path) => {
            let path = owned_text(path)?;
            home.module(format!("artifact:{path}"), |host| {
                host.load_artifact(Path::new(&path))
            })
        }
    };
    let host = home.host.as_ref().expect("the host was made above");
    let started = module.and_then(|module| ThreadWorker::start(host, &module, limits));
    match started {
        Ok(worker) => {
            let mut message = Builder::new_default();
            message.init_root::<from_worker::Builder>().set_ready(());
            write_frame(output, &message)?;
            Ok(Some((worker, limits)))
        }
        Err(e) => start_failed(output, &e.to_string()).map(|()| None),
    }
}

/// A cheap fingerprint of Wasm bytes, to find a module compiled from the
/// same bytes (a collision costs only a wrong start, which the module's
/// own checks then refuse; the kernel sends artifacts in production).
fn bytes_fingerprint(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}-{}", hasher.finish(), bytes.len())
}

impl WorkerHome {
    /// The module known as `key`, made by `make` the first time.
    fn module(
        &mut self,
        key: String,
        make: impl FnOnce(&WasmHost) -> Result<crate::VatModule, SupervisorError>,
    ) -> Result<crate::VatModule, SupervisorError> {
        if let Some(at) = self.modules.iter().position(|(k, _)| *k == key) {
            let entry = self.modules.remove(at);
            let module = entry.1.clone();
            self.modules.push(entry);
            return Ok(module);
        }
        let host = self.host.as_ref().expect("the host is made before modules");
        let module = make(host)?;
        if self.modules.len() >= MODULES_PER_WORKER_MAX {
            self.modules.remove(0);
        }
        self.modules.push((key, module.clone()));
        Ok(module)
    }
}

/// Runs one delivery, its syscalls over the pipe, and answers with its
/// outcome (the syscalls it batched, or its fault).
fn deliver<R: Read, W: Write>(
    worker: &mut ThreadWorker,
    delivery: &[u8],
    (input, output, options): (&mut R, &mut W, ReaderOptions),
    cache: &mut VatstoreCache,
) -> Result<(), VatFault> {
    let mut syscalls = PipeSyscalls {
        input,
        output: &mut *output,
        options,
        batch: Vec::new(),
        failed: None,
        cache: &mut *cache,
    };
    let outcome = worker.deliver_binary(delivery, &mut syscalls);
    if outcome.is_err() {
        // The kernel aborts the crank: what this delivery wrote never was.
        syscalls.cache.clear();
    }
    let (failed, batch) = (syscalls.failed.take(), std::mem::take(&mut syscalls.batch));
    let bytes = batch.iter().map(Vec::len).sum();
    let mut reply = frame_builder(batch.len(), bytes);
    {
        let root = reply.init_root::<from_worker::Builder>();
        match outcome.map_err(|fault| failed.unwrap_or(fault)) {
            Ok(()) => {
                let mut calls = root.init_delivered(batch.len() as u32);
                for (i, bytes) in batch.iter().enumerate() {
                    calls.set(i as u32, bytes);
                }
            }
            Err(fault) => fault_to_wire(&fault, root.init_fault()),
        }
    }
    write_frame(output, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_are_built_in_one_segment_whatever_their_payload() {
        for bytes in [0, 1, 7, 8, 100, 65_536, 1 << 20] {
            let payload = vec![7u8; bytes];
            let mut message = frame_builder(1, payload.len());
            message
                .init_root::<to_worker::Builder>()
                .set_deliver(&payload);
            assert_eq!(message.get_segments_for_output().len(), 1, "{bytes} bytes");
        }
        for (blobs, each) in [(1, 0), (3, 5), (200, 9), (1_000, 64)] {
            let batch = vec![vec![1u8; each]; blobs];
            let mut message = frame_builder(blobs, blobs * each);
            let mut calls = message
                .init_root::<from_worker::Builder>()
                .init_syscalls()
                .init_calls(blobs as u32);
            for (i, bytes) in batch.iter().enumerate() {
                calls.set(i as u32, bytes);
            }
            assert_eq!(
                message.get_segments_for_output().len(),
                1,
                "{blobs} blobs of {each} bytes"
            );
        }
    }

    #[test]
    fn spin_us_falls_back_to_its_default_on_a_bad_or_too_large_value() {
        assert_eq!(parse_spin_us(None), SPIN_US_DEFAULT);
        assert_eq!(parse_spin_us(Some("soon")), SPIN_US_DEFAULT);
        assert_eq!(parse_spin_us(Some("-5")), SPIN_US_DEFAULT);
        let too_long = (SPIN_US_MAX + 1).to_string();
        assert_eq!(parse_spin_us(Some(&too_long)), SPIN_US_DEFAULT);
        assert_eq!(parse_spin_us(Some("0")), 0);
        assert_eq!(parse_spin_us(Some("250")), 250);
    }

    /// Data that arrives within the poll, and data that arrives long after
    /// it (the read then blocks), are read whole and in order.
    #[test]
    fn a_spinning_read_gets_data_sent_before_and_after_its_poll_ends() {
        let (reader, mut writer) = UnixStream::pair().unwrap();
        let mut read = SpinRead::new(reader, 2_000);
        let sender = std::thread::spawn(move || {
            writer.write_all(b"soon").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            writer.write_all(b"late").unwrap();
        });
        let mut got = [0u8; 8];
        read.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"soonlate");
        // The late data took longer than the poll: the next read blocks at once.
        assert!(!read.last_wait_short);
        sender.join().unwrap();
    }
}
