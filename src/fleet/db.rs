//! PostgreSQL connections, and errors that say which database failed
//! (its conninfo without the password) on one line.

use std::error::Error as _;

use tokio_postgres::{Client, Config, NoTls};

use super::FleetError;

/// One database: its parsed conninfo and the name it is shown under.
#[derive(Clone)]
pub struct Db {
    config: Config,
    target: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target)
    }
}

impl Db {
    /// Parses a libpq conninfo or `postgresql://` URL.
    pub fn new(url: &str) -> Result<Self, FleetError> {
        let config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            FleetError::Schema(format!("postgres.url: {}", error_line(&e)))
        })?;
        let target = describe(&config);
        Ok(Self { config, target })
    }

    /// `host=.. port=.. user=.. dbname=..` (never the password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A new connection; its driver task runs on the current runtime.
    pub async fn connect(&self) -> Result<Client, FleetError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.error(e))?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(database = %target, error = %error_line(&e), "PostgreSQL connection ended.");
            }
        });
        Ok(client)
    }

    /// `e` tied to this database.
    pub fn error(&self, e: tokio_postgres::Error) -> FleetError {
        FleetError::Postgres {
            target: self.target.clone(),
            message: error_line(&e),
            source: e,
        }
    }

    /// A [`FleetError::Sql`] from a statement, tied to this database.
    pub fn name(&self, e: FleetError) -> FleetError {
        match e {
            FleetError::Sql(s) => self.error(s),
            other => other,
        }
    }
}

fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", hosts.join(",")));
    }
    parts.push(format!(
        "port={}",
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        }
    ));
    if let Some(u) = config.get_user() {
        parts.push(format!("user={u}"));
    }
    if let Some(d) = config.get_dbname() {
        parts.push(format!("dbname={d}"));
    }
    parts.join(" ")
}

/// A PostgreSQL error with its causes, on one line (the server's message
/// and detail for statement errors).
pub fn error_line(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(&format!(": {text}"));
        }
        cause = c.source();
    }
    s.replace('\n', " ")
}

/// Whether `e` is the connection failing (or a conflict worth a retry:
/// deadlock, serialization), as opposed to a statement refused for its
/// data.
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c == "40001"
                || c == "40P01"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_shows_the_password() {
        let db = Db::new("host=db.example port=6543 user=fleet password=secret dbname=f").unwrap();
        assert_eq!(db.target(), "host=db.example port=6543 user=fleet dbname=f");
        let db = Db::new("postgresql://u:pw@h:5/d").unwrap();
        assert!(!db.target().contains("pw"), "{}", db.target());
        assert!(Db::new("host=").is_ok() || Db::new("nonsense ==").is_err());
    }
}
