//! The commands that manage vats' lives and the names of references.

use anyhow::Result;
use kernel::Kernel;

use crate::request::Outcome;

pub fn name(kernel: &mut Kernel, kref: &str, name: &str, out: &mut Outcome) -> Result<()> {
    let kref = kernel.resolve_reference(kref)?;
    kernel.bind_pet_name(name, &kref)?;
    out.line(format!("{name} -> {kref}"));
    Ok(())
}

pub fn unname(kernel: &mut Kernel, name: &str, out: &mut Outcome) -> Result<()> {
    let kref = kernel.unbind_pet_name(name)?;
    out.line(format!("unbound {name} (was {kref})"));
    Ok(())
}

pub fn forget(kernel: &mut Kernel, kref: Option<&str>, out: &mut Outcome) -> Result<()> {
    let count = kernel.forget_shown(kref)?;
    out.line(format!("let go of {count} shown reference(s)"));
    Ok(())
}

pub fn resume(kernel: &mut Kernel, name: &str, out: &mut Outcome) -> Result<()> {
    kernel.resume_vat(name)?;
    out.line(format!("resumed {name}"));
    Ok(())
}

pub fn terminate(kernel: &mut Kernel, name: &str, out: &mut Outcome) -> Result<()> {
    kernel.terminate_vat_by_owner(name)?;
    out.line(format!(
        "terminated {name}; its data is kept until `vat rm {name}`"
    ));
    Ok(())
}

pub fn rm(kernel: &mut Kernel, name: &str, out: &mut Outcome) -> Result<()> {
    kernel.remove_vat(name)?;
    out.line(format!("removed {name}: its data is being deleted"));
    Ok(())
}

pub fn collect(kernel: &mut Kernel, name: &str, out: &mut Outcome) -> Result<()> {
    kernel.collect_vat_garbage(name)?;
    out.line(format!("{name}: collected"));
    Ok(())
}
