//! The process worker against the real `vat-supervisor` binary.

use std::path::Path;

use vat_supervisor::{
    Limits, ModuleSource, ProcessWorker, SyscallHandler, SyscallRefusal, VatFault, Worker,
};
use vom::abi::{Delivery, Syscall, SyscallResult};

/// A guest that reads key "in", then writes its value under "out" and sends
/// one message, so a delivery needs a syscall answered mid-way and a batch.
const ECHO: &str = r##"
    (module
      (import "vat" "vatstore_get" (func $get (param i32 i32) (result i32)))
      (import "vat" "vatstore_set" (func $set (param i32 i32 i32 i32)))
      (import "vat" "read_result" (func $read (param i32)))
      (import "vat" "send" (func $send (param i32 i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "inout")
      (data (i32.const 64) "{\"type\":\"send\",\"target\":\"o+0\",\"method\":\"m\",\"args\":{\"body\":\"#[]\",\"slots\":[]}}")
      (func (export "vat_abi_version") (result i32) i32.const 1)
      (func (export "vat_alloc") (param i32) (result i32) i32.const 2048)
      (func (export "vat_deliver") (param i32 i32) (result i32)
        (local $len i32)
        (local.set $len (call $get (i32.const 16) (i32.const 2)))
        (if (i32.ge_s (local.get $len) (i32.const 0))
          (then
            (call $read (i32.const 512))
            (call $set (i32.const 18) (i32.const 3) (i32.const 512) (local.get $len))
            (call $send (i32.const 64) (i32.const 76))))
        i32.const 0))
"##;

struct Kernelish {
    seen: Vec<Syscall>,
    value: Option<String>,
}

/// A kernel whose vatstore holds `value` under "in".
fn kernel_with(value: &str) -> Kernelish {
    Kernelish {
        seen: Vec::new(),
        value: Some(value.into()),
    }
}

impl SyscallHandler for Kernelish {
    fn syscall(&mut self, call: Syscall) -> Result<SyscallResult, SyscallRefusal> {
        self.seen.push(call.clone());
        match call {
            Syscall::VatstoreGet { .. } => Ok(self.value.clone()),
            Syscall::VatstoreSet { .. } => Ok(None),
            Syscall::Send { ref target, .. } if target == "o+0" => Ok(None),
            other => Err(SyscallRefusal::Illegal(format!("refused {other:?}"))),
        }
    }
}

fn supervisor() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vat-supervisor"))
}

fn worker() -> ProcessWorker {
    let wasm = wat::parse_str(ECHO).unwrap();
    ProcessWorker::start(
        supervisor(),
        "v1",
        ModuleSource::Wasm(wasm),
        Limits::default(),
    )
    .unwrap()
}

#[test]
fn syscalls_cross_the_pipe_in_order_with_answers() {
    let mut worker = worker();
    let mut kernel = kernel_with("hello");
    worker.deliver(&Delivery::start_vat(), &mut kernel).unwrap();
    assert_eq!(kernel.seen.len(), 3, "{:?}", kernel.seen);
    assert_eq!(kernel.seen[0], Syscall::VatstoreGet { key: "in".into() });
    assert_eq!(
        kernel.seen[1],
        Syscall::VatstoreSet {
            key: "out".into(),
            value: "hello".into()
        }
    );
    assert!(matches!(&kernel.seen[2], Syscall::Send { method, .. } if method == "m"));
    // The worker stays up for the next delivery, and answers the key it
    // read from its cache: only the vat writes its vatstore.
    kernel.seen.clear();
    worker.deliver(&Delivery::start_vat(), &mut kernel).unwrap();
    assert_eq!(kernel.seen.len(), 2, "{:?}", kernel.seen);
    assert!(matches!(&kernel.seen[0], Syscall::VatstoreSet { value, .. } if value == "hello"));
}

#[test]
fn a_worker_hosting_a_vat_anew_forgets_the_values_it_read() {
    let mut worker = worker();
    let mut kernel = kernel_with("hello");
    worker.deliver(&Delivery::start_vat(), &mut kernel).unwrap();
    // The process takes on another vat (a sleeping vat's process reused).
    let wasm = wat::parse_str(ECHO).unwrap();
    worker
        .host(ModuleSource::Wasm(wasm), Limits::default())
        .unwrap();
    kernel.seen.clear();
    kernel.value = None;
    worker.deliver(&Delivery::start_vat(), &mut kernel).unwrap();
    assert_eq!(kernel.seen, [Syscall::VatstoreGet { key: "in".into() }]);
}

#[test]
fn a_refused_batched_syscall_fails_the_delivery() {
    let wasm = wat::parse_str(ECHO.replace("o+0", "o-9")).unwrap();
    let mut worker = ProcessWorker::start(
        supervisor(),
        "v1",
        ModuleSource::Wasm(wasm),
        Limits::default(),
    )
    .unwrap();
    let mut kernel = kernel_with("x");
    let fault = worker
        .deliver(&Delivery::start_vat(), &mut kernel)
        .unwrap_err();
    assert!(
        matches!(&fault, VatFault::IllegalSyscall(reason) if reason.contains("o-9")),
        "{fault}"
    );
}

#[test]
fn a_killed_worker_is_reported_as_such() {
    let mut worker = worker();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &worker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut kernel = Kernelish {
        seen: Vec::new(),
        value: None,
    };
    let fault = worker
        .deliver(&Delivery::start_vat(), &mut kernel)
        .unwrap_err();
    assert!(matches!(fault, VatFault::WorkerDied(_)), "{fault}");
}

#[test]
fn a_module_the_worker_cannot_load_fails_the_start() {
    let err = ProcessWorker::start(
        supervisor(),
        "v1",
        ModuleSource::Wasm(b"nope".to_vec()),
        Limits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a Wasm module"), "{err}");
}

#[test]
fn a_start_sent_ahead_is_answered_to_the_host_of_the_same_module() {
    let wasm = wat::parse_str(ECHO).unwrap();
    let mut worker = ProcessWorker::spare(supervisor()).unwrap();
    worker
        .host_ahead(ModuleSource::Wasm(wasm.clone()), Limits::default())
        .unwrap();
    worker
        .host(ModuleSource::Wasm(wasm), Limits::default())
        .unwrap();
    let mut kernel = kernel_with("hello");
    worker.deliver(&Delivery::start_vat(), &mut kernel).unwrap();
    assert_eq!(kernel.seen.len(), 3, "{:?}", kernel.seen);
}

#[test]
fn a_start_sent_ahead_for_another_module_gives_way_to_the_one_hosted() {
    // The one sent ahead would send to an import the kernel refuses.
    let refused = wat::parse_str(ECHO.replace("o+0", "o-9")).unwrap();
    let mut worker = ProcessWorker::spare(supervisor()).unwrap();
    worker
        .host_ahead(ModuleSource::Wasm(refused), Limits::default())
        .unwrap();
    let wasm = wat::parse_str(ECHO).unwrap();
    worker
        .host(ModuleSource::Wasm(wasm), Limits::default())
        .unwrap();
    let mut kernel = kernel_with("hello");
    worker.deliver(&Delivery::start_vat(), &mut kernel).unwrap();
    assert!(
        matches!(&kernel.seen[2], Syscall::Send { target, .. } if target == "o+0"),
        "{:?}",
        kernel.seen
    );
}

#[test]
fn a_module_sent_ahead_that_cannot_load_fails_its_host() {
    let mut worker = ProcessWorker::spare(supervisor()).unwrap();
    let bytes = b"not wasm".to_vec();
    worker
        .host_ahead(ModuleSource::Wasm(bytes.clone()), Limits::default())
        .unwrap();
    let err = worker
        .host(ModuleSource::Wasm(bytes), Limits::default())
        .unwrap_err();
    assert!(err.to_string().contains("not a Wasm module"), "{err}");
}

#[test]
fn a_program_that_is_not_a_worker_fails_the_start_instead_of_hanging_it() {
    // A program that never exits and writes what is no frame: the start
    // reads it, says so, and stops the process.
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("not-a-worker");
    std::fs::write(&program, "#!/bin/sh\nexec yes garbage\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut worker = ProcessWorker::spare(&program).unwrap();
    let err = worker
        .host(ModuleSource::Wasm(b"\0asm".to_vec()), Limits::default())
        .unwrap_err();
    assert!(err.to_string().contains("protocol"), "{err}");
}

#[test]
fn a_program_that_exits_at_start_is_reported_with_its_exit() {
    let mut worker = ProcessWorker::spare(Path::new("/bin/true")).unwrap();
    let err = worker
        .host(ModuleSource::Wasm(b"\0asm".to_vec()), Limits::default())
        .unwrap_err();
    assert!(err.to_string().contains("exited at start"), "{err}");
}
