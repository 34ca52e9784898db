@0xd3f0c2a9e4b7a615;
# The pipe protocol between the kernel and a `vat-supervisor` worker process.
#
# Each frame is one Cap'n Proto message in the standard stream framing:
# `ToWorker` on the worker's stdin, `FromWorker` on its stdout. The vat ABI's
# own messages (deliveries, syscalls) travel inside in ABI v2's binary
# encoding (vom::abi::Encoding::Binary), whichever version the guest speaks
# (the worker re-encodes for a v1 guest), so this protocol never changes when
# the ABI gains a syscall.
#
# A session: Start -> Ready (or StartFailed); then per delivery: Deliver ->
# zero or more Syscalls (each answered by SyscallResult when `awaitsResult`)
# -> Delivered or Fault. Syscalls that return nothing are batched into the
# next Syscalls or Delivered frame; the kernel applies them in order.
# A Start between deliveries replaces the hosted vat: the kernel hands a
# sleeping vat's process to one that wakes (the worker keeps the modules it
# loaded, so a vat of the same bundle starts without loading it).

const protocolVersion :UInt32 = 2;

struct Limits {
  fuelPerDelivery @0 :UInt64;
  memoryBytesMax @1 :UInt64;
  messageBytesMax @2 :UInt64;
  deadlineMs @3 :UInt64;
  syscallsPerDeliveryMax @4 :UInt32;
}

struct Start {
  protocolVersion @0 :UInt32;
  limits @1 :Limits;
  union {
    wasm @2 :Data;        # Compile these bytes.
    artifact @3 :Text;    # Load this compiled artifact (written by a compatible engine).
  }
}

struct ToWorker {
  union {
    start @0 :Start;
    deliver @1 :Data;     # A vom::abi::Delivery, binary-encoded.
    syscallResult @2 :SyscallResult;
  }
}

struct SyscallResult {
  union {
    none @0 :Void;
    value @1 :Text;
    refused @2 :Text;     # The kernel refused one of the batch: the guest traps.
  }
}

struct Fault {
  kind @0 :Kind;
  message @1 :Text;
  limit @2 :UInt64;       # The limit a limit fault names.
  failure @3 :Bool;       # For `exit`: whether the vat exited with failure.

  enum Kind {
    trap @0;
    outOfFuel @1;
    memoryLimit @2;
    deadline @3;
    illegalSyscall @4;
    abiViolation @5;
    exit @6;
    limitExceeded @7;   # A limit the guest ran into; the message names it.
  }
}

struct FromWorker {
  union {
    ready @0 :Void;
    startFailed @1 :Text;
    syscalls @2 :Syscalls;
    delivered @3 :List(Data);   # Batched syscalls, each a binary-encoded vom::abi::Syscall.
    fault @4 :Fault;
  }
}

struct Syscalls {
  calls @0 :List(Data);         # Each a binary-encoded vom::abi::Syscall, in order.
  awaitsResult @1 :Bool;        # The last call wants a SyscallResult.
}
