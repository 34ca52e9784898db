//! How a message sent for a task or an invocation ended: its settlement
//! read as a receipt's `out`, and the kernel run until nothing is left to
//! do (its cranks, and the HTTP requests they leave).

use kernel::{Kernel, KernelError};
use vom::{CapData, Value};

use crate::ReceiptOut;

pub(crate) fn decode_output(data: &CapData) -> ReceiptOut {
    let value = vom::capdata::decode(data).map_err(|e| e.to_string())?;
    crate::value_to_json(&value).map_err(|e| e.to_string())
}

pub(crate) fn rejection(data: &CapData) -> String {
    match vom::capdata::decode(data) {
        Ok(Value::Error(error)) => error.to_string(),
        Ok(other) => format!("rejected with {}", vom::capdata::encode(&other).body),
        Err(e) => e.to_string(),
    }
}

/// Runs the kernel's cranks, and the HTTP requests they leave (each sent
/// after its crank committed), until nothing is left to do.
pub(crate) fn run_until_quiet(kernel: &mut Kernel) -> Result<(), KernelError> {
    loop {
        while kernel.step()? {}
        kernel.commit()?;
        if devices::http::send_pending(kernel)? == 0 {
            return Ok(());
        }
    }
}
