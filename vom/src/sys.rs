//! The raw host imports of the vat ABI (see [`crate::abi`]) and safe wrappers.
//!
//! Only a Wasm guest has a host to call. On other targets the wrappers panic:
//! vom's host-side users (the kernel, the supervisor) use its data types and
//! never call into a host that is not there.

use crate::abi::Syscall;

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "vat")]
    unsafe extern "C" {
        pub fn send(ptr: *const u8, len: usize);
        pub fn resolve(ptr: *const u8, len: usize);
        pub fn subscribe(ptr: *const u8, len: usize);
        pub fn vatstore_get(key_ptr: *const u8, key_len: usize) -> i32;
        pub fn vatstore_set(
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        );
        pub fn vatstore_delete(key_ptr: *const u8, key_len: usize);
        pub fn vatstore_get_next_key(key_ptr: *const u8, key_len: usize) -> i32;
        pub fn vatstore_get_prev_key(key_ptr: *const u8, key_len: usize) -> i32;
        pub fn drop_imports(ptr: *const u8, len: usize);
        pub fn retire_imports(ptr: *const u8, len: usize);
        pub fn retire_exports(ptr: *const u8, len: usize);
        pub fn exit(ptr: *const u8, len: usize);
        pub fn keep_decided(ptr: *const u8, len: usize);
        pub fn log(ptr: *const u8, len: usize);
        pub fn heap(ptr: *const u8, len: usize);
        pub fn read_result(ptr: *mut u8);
    }
}

#[cfg(target_arch = "wasm32")]
fn take_result(len: i32) -> Option<String> {
    if len < 0 {
        return None;
    }
    let mut buffer = vec![0u8; len as usize];
    // SAFETY: the host writes exactly `len` bytes, the length it just reported.
    unsafe { imports::read_result(buffer.as_mut_ptr()) };
    Some(String::from_utf8(buffer).expect("vat ABI invariant: the host returns UTF-8"))
}

#[cfg(not(target_arch = "wasm32"))]
fn no_host() -> ! {
    panic!("vom invariant: syscalls are only available inside a Wasm vat")
}

/// Makes a syscall that returns nothing.
pub(crate) fn syscall(call: &Syscall) {
    let payload = crate::abi::Encoding::native().encode_syscall(call);
    #[cfg(target_arch = "wasm32")]
    {
        let (ptr, len) = (payload.as_ptr(), payload.len());
        // SAFETY: the host reads `len` bytes at `ptr` during the call.
        unsafe {
            match call {
                Syscall::Send { .. } => imports::send(ptr, len),
                Syscall::Resolve { .. } => imports::resolve(ptr, len),
                Syscall::Subscribe { .. } => imports::subscribe(ptr, len),
                Syscall::DropImports { .. } => imports::drop_imports(ptr, len),
                Syscall::RetireImports { .. } => imports::retire_imports(ptr, len),
                Syscall::RetireExports { .. } => imports::retire_exports(ptr, len),
                Syscall::Exit { .. } => imports::exit(ptr, len),
                Syscall::KeepDecided { .. } => imports::keep_decided(ptr, len),
                Syscall::Log { .. } => imports::log(ptr, len),
                Syscall::Heap { .. } => imports::heap(ptr, len),
                Syscall::VatstoreGet { .. }
                | Syscall::VatstoreSet { .. }
                | Syscall::VatstoreDelete { .. }
                | Syscall::VatstoreGetNextKey { .. }
                | Syscall::VatstoreGetPrevKey { .. } => {
                    panic!("vom invariant: vatstore calls use their own imports")
                }
            }
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = payload;
        no_host()
    }
}

pub(crate) fn vatstore_get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the host reads `key` during the call.
        let len = unsafe { imports::vatstore_get(key.as_ptr(), key.len()) };
        take_result(len)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        no_host()
    }
}

pub(crate) fn vatstore_set(key: &str, value: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads both buffers during the call.
    unsafe {
        imports::vatstore_set(key.as_ptr(), key.len(), value.as_ptr(), value.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (key, value);
        no_host()
    }
}

pub(crate) fn vatstore_delete(key: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `key` during the call.
    unsafe {
        imports::vatstore_delete(key.as_ptr(), key.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        no_host()
    }
}

pub(crate) fn vatstore_get_prev_key(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the host reads `key` during the call.
        let len = unsafe { imports::vatstore_get_prev_key(key.as_ptr(), key.len()) };
        take_result(len)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        no_host()
    }
}

pub(crate) fn vatstore_get_next_key(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the host reads `key` during the call.
        let len = unsafe { imports::vatstore_get_next_key(key.as_ptr(), key.len()) };
        take_result(len)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        no_host()
    }
}
