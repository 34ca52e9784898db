//! vom: the guest SDK a vat program links, and the data formats its host shares.
//!
//! A vat is a Rust crate built for `wasm32-unknown-unknown`. It defines objects
//! by implementing [`Exo`], names its root object with [`vat_main!`], and talks
//! to other objects with [`send`], awaiting the [`Promise`]s it gets back:
//!
//! ```ignore
//! use std::rc::Rc;
//! use vom::{Args, Exo, Reply, Value};
//!
//! struct Greeter;
//! impl Exo for Greeter {
//!     fn interface_name(&self) -> &str { "Greeter" }
//!     fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
//!         match method {
//!             "hello" => Reply::ready(args.string(0).map(|who| Value::from(format!("hello, {who}")))),
//!             other => Reply::no_such_method(other),
//!         }
//!     }
//! }
//! vom::vat_main!(Greeter);
//! ```
//!
//! Host-side crates (kernel, supervisor) use [`capdata`] and [`abi`] only.

use std::future::Future;
use std::rc::Rc;

pub mod abi;
pub mod capdata;
pub mod collections;
pub mod durable;
pub mod flow;
mod imports;
pub mod inflight;
pub mod passable;
pub mod runtime;
mod sys;

pub use capdata::{CapData, ErrorValue, Ref, Value};
pub use collections::{Baggage, MapStore, SetStore, WeakMapStore};
pub use durable::{Durable, Kind, Schema, define, define_migrating};
pub use inflight::{Resolver, durable_promise, watch};
pub use passable::{FromPassable, IntoReply, Record, ToPassable};
pub use runtime::{Promise, Root, export, send};
pub use vom_macros::{Schema, exo};

/// Writes a line to the vat's log, which `vat log NAME` shows: for the
/// vat's author, kept even when the delivery fails. Lines over
/// [`abi::LOG_LINE_BYTES_MAX`] are cut.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log_line(::std::format!($($arg)*))
    };
}

/// The function behind [`log!`].
pub fn log_line(mut line: String) {
    abi::cut_log_line(&mut line);
    sys::syscall(&abi::Syscall::Log { line });
}

/// What a method fails with: an error that travels as data to the caller.
pub type Error = ErrorValue;

impl ErrorValue {
    pub fn new(message: impl Into<String>) -> Error {
        ErrorValue {
            name: "Error".into(),
            message: message.into(),
        }
    }

    pub fn type_error(message: impl Into<String>) -> Error {
        ErrorValue {
            name: "TypeError".into(),
            message: message.into(),
        }
    }
}

/// An object a vat exports: it answers messages by name.
pub trait Exo: 'static {
    /// The name callers see as the object's alleged interface.
    fn interface_name(&self) -> &str;
    /// Handles `method(args)`. Errors become the caller's rejection.
    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply;
}

/// A method's answer: now, or once a future completes.
pub enum Reply {
    Ready(Result<Value, Error>),
    Later(std::pin::Pin<Box<dyn Future<Output = Result<Value, Error>>>>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Ready(outcome) => f.debug_tuple("Ready").field(outcome).finish(),
            Reply::Later(_) => f.write_str("Later(..)"),
        }
    }
}

impl Reply {
    pub fn ready<T: Into<Value>>(outcome: Result<T, Error>) -> Reply {
        Reply::Ready(outcome.map(Into::into))
    }

    pub fn later<T: Into<Value>>(
        future: impl Future<Output = Result<T, Error>> + 'static,
    ) -> Reply {
        Reply::Later(Box::pin(async move { future.await.map(Into::into) }))
    }

    pub fn no_such_method(method: &str) -> Reply {
        Reply::Ready(Err(Error::type_error(format!("no such method: {method}"))))
    }
}

/// A message's arguments, with typed accessors that fail with a clear error.
#[derive(Debug, Clone)]
pub struct Args(Vec<Value>);

impl Args {
    pub fn new(items: Vec<Value>) -> Args {
        Args(items)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fails unless exactly `count` arguments were given.
    pub fn expect_count(&self, count: usize) -> Result<(), Error> {
        if self.0.len() == count {
            Ok(())
        } else {
            Err(Error::type_error(format!(
                "expected {count} argument(s), got {}",
                self.0.len()
            )))
        }
    }

    pub fn get(&self, index: usize) -> Result<&Value, Error> {
        self.0
            .get(index)
            .ok_or_else(|| Error::type_error(format!("missing argument {index}")))
    }

    pub fn u64(&self, index: usize) -> Result<u64, Error> {
        let value = self.get(index)?;
        value.as_u64().ok_or_else(|| {
            Error::type_error(format!(
                "argument {index} must be a natural number (u64: 0 to 18446744073709551615, a bigint beyond 2^53 - 1), got {}",
                capdata::encode(value).body
            ))
        })
    }

    pub fn string(&self, index: usize) -> Result<String, Error> {
        let value = self.get(index)?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::type_error(format!("argument {index} must be a string")))
    }

    pub fn reference(&self, index: usize) -> Result<Ref, Error> {
        match self.get(index)? {
            Value::Remotable(r) | Value::Promise(r) => Ok(r.clone()),
            _ => Err(Error::type_error(format!(
                "argument {index} must be a reference"
            ))),
        }
    }

    pub fn into_vec(self) -> Vec<Value> {
        self.0
    }
}

/// The vat's durable key-value store. Writes join the current crank: if the
/// crank fails, they are gone. Keys starting with `vom.` are reserved.
pub mod vatstore {
    use crate::runtime::RESERVED_PREFIX;
    use crate::sys;

    fn check(key: &str) {
        assert!(
            !key.starts_with(RESERVED_PREFIX),
            "vom invariant: vatstore keys starting with {RESERVED_PREFIX:?} are reserved for the SDK (got {key:?})"
        );
    }

    pub fn get(key: &str) -> Option<String> {
        check(key);
        sys::vatstore_get(key)
    }

    pub fn set(key: &str, value: &str) {
        check(key);
        sys::vatstore_set(key, value)
    }

    pub fn delete(key: &str) {
        check(key);
        sys::vatstore_delete(key)
    }

    /// The next key after `key` in byte order, skipping vom's own keys.
    pub fn next_key(key: &str) -> Option<String> {
        let mut next = sys::vatstore_get_next_key(key)?;
        while next.starts_with(RESERVED_PREFIX) {
            next = sys::vatstore_get_next_key(&next)?;
        }
        Some(next)
    }
}

/// Defines a vat's Wasm exports.
///
/// - `vat_main!(start: path::to::start)`: `start(&Baggage)` runs each time the
///   vat starts (first start, restart, upgrade); it defines the vat's durable
///   kinds and returns its root object (anything convertible to [`Root`]).
/// - `vat_main!(expr)`: `expr`, a value of a type that implements [`Exo`], is
///   the root object, built each time the vat starts.
#[macro_export]
macro_rules! vat_main {
    (start: $start:path) => {
        $crate::vat_main!(@exports |baggage| $crate::Root::from($start(baggage)));
    };
    (@exports $make_root:expr) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn vat_abi_version() -> i32 {
            $crate::abi::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn vat_alloc(len: i32) -> i32 {
            $crate::runtime::alloc(len)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn vat_deliver(ptr: i32, len: i32) -> i32 {
            // SAFETY: the host passes back the buffer it got from `vat_alloc`, once.
            unsafe { $crate::runtime::deliver_raw(ptr, len, $make_root) }
        }
    };
    ($root:expr) => {
        $crate::vat_main!(@exports |_baggage: &$crate::Baggage| {
            $crate::runtime::Root::Heap(::std::rc::Rc::new($root) as ::std::rc::Rc<dyn $crate::Exo>)
        });
    };
}
