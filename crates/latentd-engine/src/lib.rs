//! The latentd serving core: validation, a bounded queue, a pure batch planner,
//! step-level batching workers on dedicated threads, job lifecycle and events.
//!
//! No HTTP here: the server crate maps these types onto routes.

mod call;
pub mod config;
mod decoder;
mod encoder;
pub mod engine;
pub mod error;
mod failure;
pub mod input_image;
mod janitor;
pub mod job;
pub mod memory;
pub mod planner;
pub mod png_meta;
pub mod request;
pub mod seed;
pub mod store;
mod supervisor;
mod worker;
#[cfg(test)]
mod worker_tests;

pub use worker::EngineStats;

pub use config::EngineConfig;
pub use engine::{Engine, WorkerHealth};
pub use error::{Code, EngineError, ValidationError};
pub use job::{Event, EventStream, Job, JobSnapshot, JobState};
pub use request::{GenerateRequest, ValidRequest};
