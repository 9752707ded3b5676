//! The fleet side: what vehicles publish over MQTT (see
//! [`crate::uplink::message`]) lands in PostgreSQL with pgvector, and is
//! searched there across vehicles.
//!
//! ```text
//! vehicle outbox -> MQTT broker -> fleet ingest workers -> PostgreSQL/pgvector
//!                                                            ^
//!                                     fleet search / summary / serve
//! ```
//!
//! - [`config`] (`fleet.toml`): broker, database, batching, index, model.
//! - [`schema`]: tables, time partitions, one HNSW index per model.
//! - [`db`]: connections, and errors that name the database.
//! - [`writer`]: decoded messages -> batched, idempotent inserts.
//! - [`ingest`]: the MQTT subscriber: persistent session, manual acks after
//!   the transaction commits.
//! - [`search`]: text query -> cosine ranking in pgvector with filters.
//! - [`summary`]: one vehicle's segments as lines.
//! - [`serve`]: the same over HTTP.
//!
//! Usage: `roadrep fleet init -c config/fleet.toml`, then
//! `roadrep fleet ingest -c config/fleet.toml` (one or more), and
//! `roadrep fleet search "foggy highway at night" --vehicle v7 --tag weather=foggy`.

pub mod config;
pub mod db;
pub mod ingest;
pub mod schema;
pub mod search;
pub mod serve;
pub mod summary;
pub mod writer;

pub use config::FleetConfig;

/// Errors of the fleet side.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database could not be reached or failed a statement; the
    /// message names it (conninfo without the password).
    #[error("PostgreSQL {target}: {message}")]
    Postgres {
        /// `host=.. port=.. user=.. dbname=..`.
        target: String,
        /// The error and its causes, on one line.
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed (before it is tied to a database by [`db::Db`]).
    #[error("PostgreSQL: {}", db::error_line(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The schema is missing, old, or newer than this build.
    #[error("{0}")]
    Schema(String),
    /// A malformed request (the message names the parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The query model failed.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The broker's settings are unusable (TLS files, ...).
    #[error("broker {target}: {message}")]
    Broker {
        /// `host:port`.
        target: String,
        /// What is wrong.
        message: String,
    },
}

impl FleetError {
    /// Whether a statement was refused for the data it carried (SQLSTATE
    /// classes 22 and 23): the message, not the database, is at fault.
    pub fn is_data(&self) -> bool {
        match self {
            Self::Postgres { source, .. } | Self::Sql(source) => source
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
            _ => false,
        }
    }

    /// Whether the database connection itself failed (retry after
    /// reconnecting), as opposed to a statement refused for its data.
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Postgres { source, .. } | Self::Sql(source) => db::is_connection_error(source),
            _ => false,
        }
    }
}
