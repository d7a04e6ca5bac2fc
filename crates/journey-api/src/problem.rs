//! RFC 9457 problem documents: every API error is mapped to a status here, in one place.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error a client can act on. Internal details never go in here.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// The query parameter at fault, when there is one.
    pub parameter: Option<&'static str>,
    /// Further machine-readable facts, such as every rule error.
    pub extra: Option<(&'static str, Value)>,
}

impl Problem {
    pub fn bad_parameter(parameter: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
            parameter: Some(parameter),
            extra: None,
        }
    }

    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            parameter: None,
            extra: None,
        }
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Problem {
        self.extra = Some((key, value));
        self
    }

    /// For failures that are ours, not the client's: logged, never shown.
    pub fn internal(what: &str) -> Problem {
        tracing::error!("internal error: {what}");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down or overloaded; retry later",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(p) = self.parameter {
            body["parameter"] = json!(p);
        }
        if let Some((k, v)) = self.extra {
            body[k] = v;
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}
