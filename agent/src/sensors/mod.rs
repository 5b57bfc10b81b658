//! Everything the agent measures on its node: CPU, stored energy, and the BMC's sensors.
pub mod bmc;
pub mod collector;
pub mod cpu;
pub mod energy;
pub mod roles;
