//! Bearer-token access to the API.
//!
//! A daemon whose API is reachable from other machines (any listen address
//! that is not loopback) must have `[api] token_file`, and every request
//! must then carry `Authorization: Bearer <token>`. A token file that does
//! not exist yet is created with a random token, readable by its owner
//! only, so a container or a fresh install starts safe; the CLI reads the
//! same file to talk to the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Errors about the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read or created.
    #[error("api.token_file '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It holds no token.
    #[error("api.token_file '{path}' is empty")]
    Empty { path: PathBuf },
}

/// The secret requests must present.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// Reads the token in `path`.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(token.to_string()))
    }

    /// Reads the token in `path`, or creates the file (mode 0600) with a
    /// new random token. Returns the token and whether it was created.
    pub fn read_or_create(path: &Path) -> Result<(Self, bool), TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            return Ok((Self::read(path)?, false));
        }
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
            .map_err(io)?;
        let token = hex::encode(secret);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{token}").map_err(io)?;
        Ok((Self(token), true))
    }

    /// Whether a request's `Authorization` header carries this token
    /// (compared in constant time).
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The header value a client sends.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Whether `listen` can be reached from other machines: anything but a
/// loopback address or `localhost`.
pub fn reachable_from_outside(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return !addr.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    !host.eq_ignore_ascii_case("localhost")
}

/// Middleware: 401 (JSON) unless the request carries the token.
pub async fn require_token(
    State(token): State<ApiToken>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if token.admits(given) {
        return next.run(request).await;
    }
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "missing or wrong bearer token (send 'Authorization: Bearer <token>', the token in the daemon's api.token_file)".into(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("a valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_private_every_other_address_is_not() {
        for private in [
            "127.0.0.1:8470",
            "[::1]:8470",
            "localhost:8470",
            "127.0.0.2:1",
        ] {
            assert!(!reachable_from_outside(private), "{private}");
        }
        for public in [
            "0.0.0.0:8470",
            "[::]:8470",
            "192.0.2.7:8470",
            "roadrep.example:80",
        ] {
            assert!(reachable_from_outside(public), "{public}");
        }
    }

    #[test]
    fn a_token_file_is_created_private_and_then_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api-token");
        let (token, created) = ApiToken::read_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = ApiToken::read_or_create(&path).unwrap();
        assert!(!created);
        assert!(again.admits(Some(&token.header_value())));
        assert!(!again.admits(None));
        assert!(!again.admits(Some("Bearer nope")));
        assert!(
            !again.admits(Some(token.0.as_str())),
            "the scheme is required"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            ApiToken::read(&path),
            Err(TokenError::Empty { .. })
        ));
    }
}
