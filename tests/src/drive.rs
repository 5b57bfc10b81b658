//! Driving a fake node the way the demo and the calibration tests do: the utilisation the agent
//! reads (`cpu.source: file`) and what its BMC measures.

use std::path::Path;

use anyhow::Result;

use crate::bmc::Bmc;

/// Replaces `path`'s contents in one rename, so a reader never sees a half-written file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Sets the utilisation (fraction, clamped to 0..1) in an agent's `cpu.file`.
pub fn set_utilisation(cpu_file: &Path, utilisation: f64) -> Result<()> {
    write_atomically(cpu_file, &format!("{:.4}\n", utilisation.clamp(0.0, 1.0)))
}

/// Sets a DCMI BMC's power reading to `watts` as DCMI reports it: in whole watts.
pub fn set_dcmi_power(bmc: &mut Bmc, watts: f64) -> Result<()> {
    bmc.set_dcmi_watts(watts.round())
}
