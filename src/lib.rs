//! connwatch: finds leaked and excessive NATS connections per user across a cluster.

pub mod advisory;
pub mod alloc;
pub mod api;
pub mod app;
#[cfg(test)]
mod bench;
pub mod census;
pub mod cli;
pub mod config;
pub mod connlist;
pub mod enforce;
pub mod error;
pub mod ha;
pub mod human;
pub mod intern;
pub mod ipv4;
pub mod jetstream;
pub mod kick;
pub mod lifecycle;
pub mod live;
pub mod metrics;
pub mod nats;
pub mod report;
pub mod rules;
pub mod service;
pub mod session;
pub mod snapshot;
pub mod stamp;
pub mod state;
pub mod sweep;
pub mod tail;
pub mod top;
pub mod topology;
