//! Placeholder
#![warn(missing_docs)]
pub mod lease;
pub mod limiter;
pub mod sim;
pub mod units;
