//! Everything the agent measures on its node: CPU, stored energy, and the BMC's sensors.
pub mod bmc;
pub mod cpu;
pub mod energy;
pub mod roles;
