//! Bearer-token access control: read (queries, metrics), ingest (`POST /v1/events`) and admin
//! (`PUT /v1/rules`). A kind of access without tokens is open; admin tokens open everything.
//! Health checks, the dashboard page and the OpenAPI document are always open, so probes and
//! browsers need no secret (the dashboard's data requests carry one).

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{AppState, Problem};

/// Configured tokens per kind of access.
#[derive(Clone, Default, PartialEq)]
pub struct Tokens {
    pub read: Vec<String>,
    pub ingest: Vec<String>,
    pub admin: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: a token must never reach a log line.
        f.debug_struct("Tokens")
            .field("read", &self.read.len())
            .field("ingest", &self.ingest.len())
            .field("admin", &self.admin.len())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Read,
    Ingest,
    Admin,
}

impl Access {
    pub fn of(method: &Method, path: &str) -> Access {
        match (method, path) {
            (_, "/" | "/healthz" | "/readyz" | "/openapi.json") => Access::Open,
            // The Segment tracking API checks write keys itself (crate::segment).
            (_, p) if crate::segment::is_tracking_path(p) => Access::Open,
            (&Method::POST, "/v1/events") => Access::Ingest,
            (&Method::PUT, "/v1/rules") => Access::Admin,
            _ => Access::Read,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Read => "read",
            Access::Ingest => "ingest",
            Access::Admin => "admin",
        }
    }
}

/// Compares in time that depends only on the lengths, so a wrong token reveals nothing of the
/// right one through timing.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    fn for_access(&self, access: Access) -> &[String] {
        match access {
            Access::Open => &[],
            Access::Read => &self.read,
            Access::Ingest => &self.ingest,
            Access::Admin => &self.admin,
        }
    }

    /// Whether a request with this `Authorization` value may have `access`.
    pub fn allows(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        let own = self.for_access(access);
        if own.is_empty() {
            return Ok(());
        }
        let Some(token) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return Err("this endpoint needs `Authorization: Bearer <token>`");
        };
        let mut ok = false;
        for t in own.iter().chain(&self.admin) {
            ok |= same(t.as_bytes(), token);
        }
        if ok {
            Ok(())
        } else {
            Err("the bearer token is not valid for this endpoint")
        }
    }
}

pub(crate) async fn authorize(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let access = Access::of(req.method(), req.uri().path());
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match s.tokens.allows(access, auth) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            s.metrics
                .unauthorized
                .with_label_values(&[access.label()])
                .inc();
            let mut resp = Problem::new(StatusCode::UNAUTHORIZED, why).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            read: vec!["read-token-0123456789".into()],
            ingest: vec![],
            admin: vec!["admin-token-0123456789".into()],
        }
    }

    #[test]
    fn each_kind_takes_its_own_tokens_and_admin_ones() {
        let t = tokens();
        let bearer = |s: &str| format!("Bearer {s}").into_bytes();
        let read = bearer("read-token-0123456789");
        let admin = bearer("admin-token-0123456789");
        assert!(t.allows(Access::Read, Some(&read)).is_ok());
        assert!(t.allows(Access::Read, Some(&admin)).is_ok());
        assert!(t.allows(Access::Admin, Some(&read)).is_err());
        assert!(t.allows(Access::Read, None).is_err());
        assert!(t
            .allows(Access::Read, Some(b"read-token-0123456789"))
            .is_err());
        assert!(t
            .allows(Access::Read, Some(&bearer("read-token-012345678")))
            .is_err());
        // No ingest tokens: ingest is open. Open paths need nothing.
        assert!(t.allows(Access::Ingest, None).is_ok());
        assert!(t.allows(Access::Open, None).is_ok());
        // No admin tokens: admin is open too.
        assert!(Tokens::default().allows(Access::Admin, None).is_ok());
    }

    #[test]
    fn routes_map_to_access_kinds() {
        assert_eq!(Access::of(&Method::GET, "/healthz"), Access::Open);
        assert_eq!(Access::of(&Method::GET, "/"), Access::Open);
        assert_eq!(Access::of(&Method::GET, "/metrics"), Access::Read);
        assert_eq!(Access::of(&Method::GET, "/v1/rules"), Access::Read);
        assert_eq!(Access::of(&Method::PUT, "/v1/rules"), Access::Admin);
        assert_eq!(Access::of(&Method::POST, "/v1/events"), Access::Ingest);
        assert_eq!(Access::of(&Method::GET, "/v1/funnel"), Access::Read);
        assert_eq!(Access::of(&Method::POST, "/v1/batch"), Access::Open);
    }
}
