//! One error type for every handler: a status code and a JSON body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::search::SearchError;
use crate::store::StoreError;

/// A handler error: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// One-line message.
    pub message: String,
}

impl ApiError {
    /// 400 with a message naming the bad parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "Request failed.");
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::UnknownStream(_) => StatusCode::NOT_FOUND,
            StoreError::Dimension { .. } => StatusCode::BAD_REQUEST,
            StoreError::NoEmbeddings { .. } => StatusCode::CONFLICT,
            StoreError::Unwritable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

impl From<crate::daemon::StoreUnavailable> for ApiError {
    fn from(e: crate::daemon::StoreUnavailable) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::BadRequest(m) => Self::bad_request(m),
            SearchError::Store(s) => s.into(),
            SearchError::Model(m) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: m.to_string(),
            },
        }
    }
}
