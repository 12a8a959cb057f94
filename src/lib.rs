//! connwatch: finds leaked and excessive NATS connections per user across a cluster.

pub mod app;
pub mod census;
pub mod cli;
pub mod config;
pub mod dev;
pub mod nats;
pub mod report;
pub mod rules;
pub mod snapshot;
pub mod state;
pub mod sweep;
