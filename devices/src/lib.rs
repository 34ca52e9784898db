//! Devices: kernel endpoints (`d<N>`) beside the vats that reach outside
//! the kernel. Like peers, they are asynchronous: what they learn from the
//! world (a clock reaching a deadline) enters as a crank, and nothing they
//! do is visible outside before that crank commits.
//!
//! The timer ([`timer`]): a vat reaches it as an object (the pet name
//! `timer`): `after(ms)` and `at(unix_ms)` answer with promises that fire
//! once, after restarts too; `now()` answers the time. Guests have no
//! clock of their own. The HTTP device ([`http`], the pet name `http`)
//! sends messages whose method is a routed command to an HTTP endpoint
//! once their crank commits, and settles them with the answer.
//!
//! Tables (besides the kernel's c-list of each device, whose one entry is
//! its root object `o+0`):
//!
//! | key | value |
//! |---|---|
//! | `kernel.nextDevice` | the next device number |
//! | `d<N>.name`, `d<N>.state` | which device it is (`timer`), `running` |
//! | `d<N>.root` | its root object (the device holds it) |
//! | `d<N>.t.<due_ms>.<seq>` | a pending timer: the promise it fires |
//! | `d<N>.nextTimer`, `d<N>.timers` | timer numbering, how many are pending |

use kernel::{EndpointId, EndpointKind, Kernel, KernelError, Kref, Message, Tables, TablesRef};
use swingstore::StoreError;

pub mod http;
pub mod timer;

/// The devices' engine: routes each device's deliveries to its kind.
#[derive(Debug, Default)]
pub struct Devices;

/// Attaches the devices' engine: a kernel whose store holds devices needs
/// it before it runs a crank.
pub fn attach(kernel: &mut Kernel) {
    kernel.attach(EndpointKind::Device, Box::new(Devices));
}

pub(crate) mod keys {
    use std::fmt::Display;

    pub(crate) const NEXT_DEVICE: &str = "kernel.nextDevice";

    type Id<'a> = &'a (dyn Display + 'a);

    /// A field of device `device`'s record: `name`, `state`, `root`,
    /// `nextTimer`, `timers`.
    pub(crate) fn record(device: Id<'_>, field: &str) -> String {
        format!("{device}.{field}")
    }

    /// Where a device's pending timers start, in due order.
    pub(crate) fn timers_prefix(device: Id<'_>) -> String {
        format!("{device}.t.")
    }

    pub(crate) fn timer(device: Id<'_>, due_ms: u64, seq: u64) -> String {
        format!("{device}.t.{due_ms:020}.{seq:010}")
    }
}

/// Device `name`, made on first use: its root object (held by the device
/// for good), bound to the pet name `name` if that name is free. Idempotent.
pub(crate) fn install_named(kernel: &mut Kernel, name: &str) -> Result<Kref, KernelError> {
    if let Some((_, root)) = find_named(&kernel.tables_ref(), name)? {
        return Ok(root);
    }
    let root = kernel.in_crank(|k| -> Result<Kref, KernelError> {
        let mut t = k.tables();
        let device = EndpointId::new(EndpointKind::Device, t.next_id(keys::NEXT_DEVICE)?);
        t.set(&keys::record(&device, "name"), name)?;
        t.set(&keys::record(&device, "state"), "running")?;
        let root = t.allocate_import(&device)?;
        t.clist_add(&device, &root, "o+0")?;
        t.set(&keys::record(&device, "root"), &root)?;
        t.incref(&root)?;
        Ok(root)
    })?;
    if kernel.pet_name(name)?.is_none() {
        kernel.bind_pet_name(name, &root)?;
    }
    kernel.commit()?;
    Ok(root)
}

/// Device `name` and its root, if it was installed.
pub(crate) fn find_named(
    t: &TablesRef<'_>,
    name: &str,
) -> Result<Option<(EndpointId, Kref)>, StoreError> {
    for device in device_ids(t)? {
        if t.get(&keys::record(&device, "name"))?.as_deref() == Some(name) {
            let root = t
                .get(&keys::record(&device, "root"))?
                .and_then(|text| Kref::parse(&text))
                .unwrap_or_else(|| panic!("kernel invariant: {device}.root is a kref"));
            return Ok(Some((device, root)));
        }
    }
    Ok(None)
}

/// Every device id ever allocated.
pub(crate) fn device_ids(t: &TablesRef<'_>) -> Result<Vec<EndpointId>, StoreError> {
    let next = t.count(keys::NEXT_DEVICE)?.max(1);
    Ok((1..next)
        .map(|n| EndpointId::new(EndpointKind::Device, n))
        .collect())
}

impl kernel::Endpoint for Devices {
    fn deliver(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        target: &kernel::Kref,
        message: Message,
    ) -> Result<(), StoreError> {
        let name = tables.get(&keys::record(endpoint, "name"))?;
        // A message nobody awaits asks for nothing; a device's promises are
        // only awaited.
        let Some(result) = message.result.clone() else {
            return Ok(());
        };
        if target.is_promise() {
            let reason = format!(
                "the {} device's promises accept no messages: await them",
                name.as_deref().unwrap_or("?")
            );
            return tables.reject_if_unresolved(Some(&result), &reason);
        }
        match name.as_deref() {
            Some(timer::NAME) => timer::deliver(tables, endpoint, &result, message),
            Some(http::NAME) => http::deliver(tables, endpoint, &result, message),
            other => panic!("kernel invariant: device {endpoint} is a known device ({other:?})"),
        }
    }

    fn notify(
        &self,
        _tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        kpid: &kernel::Kref,
    ) -> Result<(), StoreError> {
        panic!("kernel invariant: devices subscribe to nothing ({endpoint} told of {kpid})")
    }

    fn drop_export(
        &self,
        _tables: &mut Tables<'_>,
        _endpoint: &EndpointId,
        _ko: &kernel::Kref,
    ) -> Result<(), StoreError> {
        // A device holds its root itself: nothing it exports goes away.
        Ok(())
    }

    fn input(
        &self,
        _tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        input: &str,
    ) -> Result<(), StoreError> {
        panic!("kernel invariant: devices queue no inputs ({endpoint}: {input:?})")
    }

    fn references_in_record(
        &self,
        _endpoint: &EndpointId,
        field: &str,
        value: &str,
    ) -> Vec<String> {
        // The root the device holds, each pending timer's promise, and each
        // kept HTTP request's promise.
        if field == "root" || field.starts_with("t.") {
            vec![value.to_owned()]
        } else if field.starts_with("q.") {
            serde_json::from_str::<serde_json::Value>(value)
                .ok()
                .and_then(|request| request["kpid"].as_str().map(str::to_owned))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        }
    }

    fn check_records(&self, tables: &TablesRef<'_>) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        for device in device_ids(tables)? {
            match tables.get(&keys::record(&device, "name"))?.as_deref() {
                Some(timer::NAME) => problems.extend(timer::check(tables, &device)?),
                Some(http::NAME) => problems.extend(http::check(tables, &device)?),
                _ => {}
            }
        }
        Ok(problems)
    }
}
