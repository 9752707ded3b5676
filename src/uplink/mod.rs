//! Uplink: what a vehicle found, shipped to the fleet over MQTT without
//! losing anything when the link drops.
//!
//! - [`message`]: the wire contract (topics, JSON payloads).
//! - [`config`]: the `[uplink]` settings.
//! - The outbox lives in the store (`store::outbox`): messages are queued
//!   in the transaction of what they describe.
//! - [`publisher`]: sends the outbox, removes what the broker acknowledged,
//!   reconnects with backoff.
//! - [`task`]: the publisher started and stopped with the daemon or a
//!   replay.
//! - [`link`]: the link's state and the report of `roadrep uplink status`.

pub mod config;
pub mod link;
pub mod message;
pub mod publisher;
pub mod task;

pub use config::UplinkConfig;
pub use link::{LinkBoard, LinkState, UplinkError, UplinkReport};
pub use task::RunningUplink;
