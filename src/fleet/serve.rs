//! `roadrep fleet serve`: the fleet search and summaries over HTTP.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness, and whether the database answers |
//! | `GET /api/fleet/search?q=&vehicle=&camera=&from=&to=&tag=&top=&exact=` | as `fleet search --json` |
//! | `GET /api/fleet/summary?vehicle=&camera=&from=&to=&q=&top=` | as `fleet summary --json` |
//!
//! Lists are comma-separated (`vehicle=v1,v2`, `tag=weather:foggy,scene:highway`).
//! A bad parameter is a 400 with `{"error": "<one line naming it>"}`; a
//! database that cannot be reached is a 503 naming it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::Semaphore;
use tokio_postgres::Client;

use super::FleetError;
use super::config::{FleetConfig, IndexConfig};
use super::db::Db;
use super::search::{FleetSearchRequest, FleetSearchResponse, QueryEncoder, search_frames};
use super::summary::{FleetSummaryRequest, FleetSummaryResponse, summary};
use crate::api::ApiError;

/// Shared handler state.
#[derive(Clone)]
pub struct FleetState {
    db: Db,
    /// Idle connections, reused (a connection costs a few ms to open).
    idle: Arc<Mutex<Vec<Client>>>,
    encoder: QueryEncoder,
    index: IndexConfig,
    /// Bounds concurrent searches (text encoder + query).
    limit: Arc<Semaphore>,
}

impl FleetState {
    /// State for `config`, with its query encoder loaded.
    pub fn new(config: &FleetConfig, encoder: QueryEncoder) -> Result<Self, FleetError> {
        Ok(Self {
            db: Db::new(&config.postgres.url)?,
            idle: Arc::default(),
            encoder,
            index: config.index.clone(),
            limit: Arc::new(Semaphore::new(config.serve.max_concurrent_requests)),
        })
    }

    async fn client(&self) -> Result<Client, FleetError> {
        let reused = self.idle.lock().expect("not poisoned").pop();
        match reused {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.db.connect().await,
        }
    }

    fn give_back(&self, client: Client) {
        let mut idle = self.idle.lock().expect("not poisoned");
        if !client.is_closed() && idle.len() < 8 {
            idle.push(client);
        }
    }
}

/// The fleet API's routes.
pub fn router(state: FleetState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/fleet/search", get(search))
        .route("/api/fleet/summary", get(summarize))
        .with_state(state)
}

/// Serves `config.serve.listen` until `shutdown`.
pub async fn run(
    config: &FleetConfig,
    encoder: QueryEncoder,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FleetError> {
    let state = FleetState::new(config, encoder)?;
    let listener = tokio::net::TcpListener::bind(&config.serve.listen)
        .await
        .map_err(|e| {
            FleetError::BadRequest(format!("serve.listen {}: {e}", config.serve.listen))
        })?;
    tracing::info!(listen = %config.serve.listen, "Fleet API listening.");
    let limits = crate::api::server::ConnectionLimits {
        max_connections: 256,
        header_timeout: Duration::from_secs(10),
    };
    crate::api::server::serve(listener, router(state), limits, shutdown).await;
    Ok(())
}

fn api_error(e: FleetError) -> ApiError {
    let status = match &e {
        FleetError::BadRequest(_) => StatusCode::BAD_REQUEST,
        e if e.is_connection() => StatusCode::SERVICE_UNAVAILABLE,
        FleetError::Schema(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError {
        status,
        message: e.to_string(),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(crate::models::manifest::one_line(&e.body_text())))
}

async fn health(State(state): State<FleetState>) -> (StatusCode, Json<serde_json::Value>) {
    match state.client().await {
        Ok(c) => {
            state.give_back(c);
            (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "degraded", "error": e.to_string()})),
        ),
    }
}

async fn search(
    State(state): State<FleetState>,
    q: Result<Query<FleetSearchRequest>, QueryRejection>,
) -> Result<Json<FleetSearchResponse>, ApiError> {
    let req = query(q)?;
    let text = req.text().map_err(api_error)?.to_string();
    let filter = req.filter().map_err(api_error)?;
    let _slot = state.limit.acquire().await.expect("never closed");
    let encoder = state.encoder.clone();
    let embedding = tokio::task::spawn_blocking(move || encoder.embed(&text))
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })?
        .map_err(api_error)?;
    let mut client = state.client().await.map_err(api_error)?;
    let fp = state.encoder.fingerprint().to_string();
    let found = search_frames(&mut client, &fp, &embedding, &filter, &state.index)
        .await
        .map_err(|e| api_error(state.db.name(e)))?;
    state.give_back(client);
    Ok(Json(FleetSearchResponse { model: fp, found }))
}

async fn summarize(
    State(state): State<FleetState>,
    q: Result<Query<FleetSummaryRequest>, QueryRejection>,
) -> Result<Json<FleetSummaryResponse>, ApiError> {
    let req = query(q)?;
    let client = state.client().await.map_err(api_error)?;
    let segments = summary(&client, &req)
        .await
        .map_err(|e| api_error(state.db.name(e)))?;
    state.give_back(client);
    Ok(Json(FleetSummaryResponse { segments }))
}
