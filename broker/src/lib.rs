//! The HERMES broker: runs the Lua policy out of the target's process and answers the
//! mediation layers (the preload in each target thread, the ptrace tracer).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod board;
pub mod engine;
pub mod errno;
pub mod event;
mod json;
pub mod lane;
pub mod policy;
pub mod replay;
pub mod report;
pub mod resolve;
pub mod server;
mod shm;
pub mod state;
pub mod symbols;
pub mod trace;

pub use policy::{Policy, PolicyError};
pub use server::Broker;
pub use trace::Sink;
