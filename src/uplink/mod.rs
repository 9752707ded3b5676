//! Uplink: what a vehicle found, shipped to the fleet over MQTT without
//! losing anything when the link drops (see `message` for the wire
//! contract).

pub mod message;
