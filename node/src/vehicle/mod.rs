//! The vehicle room: everything about the car a node runs in. The pure policy with time passed in
//! (`policy`: vehicle state, the owner's admission rules, a simulated commuter, departure prediction),
//! week-time helpers (`week`), the `[car]` and `[energy]` configuration (`config`), and the [`Car`] at run
//! time (`car`: the clock, admission changes, the departure history kept in the store, power and tariff
//! bookkeeping).
//!
//! The room sits above the store (it keeps the departure history there) and the clock; nothing below it
//! names a vehicle type.

mod car;
mod config;
mod policy;
mod week;

pub use car::{AdmissionSignal, Car, CarView, NoBid, ReportError};
pub use config::{CarConfig, CarSection, EnergySection, SourceKind};
pub use policy::*;
pub use week::{parse_week_time, week_time};
