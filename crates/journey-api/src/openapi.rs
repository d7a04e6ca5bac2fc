//! The OpenAPI 3.1 description served at `/openapi.json`.

use serde_json::{json, Value};

fn range_params() -> Value {
    json!([
        { "name": "from", "in": "query", "schema": { "type": "string" }, "description": "RFC 3339, epoch ms or relative (now-24h). Default: to − 24h" },
        { "name": "to", "in": "query", "schema": { "type": "string" }, "description": "RFC 3339, epoch ms or relative. Default: now" }
    ])
}

fn with(extra: Value) -> Value {
    let mut p = range_params();
    if let (Some(a), Some(b)) = (p.as_array_mut(), extra.as_array()) {
        a.extend(b.iter().cloned());
    }
    p
}

fn ok(description: &str) -> Value {
    json!({
        "200": { "description": description, "content": { "application/json": {} } },
        "400": { "description": "a bad parameter, named in the problem document", "content": { "application/problem+json": {} } }
    })
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": { "title": "journeyd", "version": env!("CARGO_PKG_VERSION"), "description": "Live customer-journey analytics" },
        "paths": {
            "/v1/funnel": { "get": { "summary": "Phase funnel of journeys starting in the range", "parameters": with(json!([
                { "name": "breakdown", "in": "query", "schema": { "type": "string" }, "description": "source, first_touchpoint or a configured attribute" },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }])), "responses": ok("the funnel") } },
            "/v1/touchpoints": { "get": { "summary": "Figures per touchpoint", "parameters": with(json!([
                { "name": "sort", "in": "query", "schema": { "enum": ["rules", "drop_off_rate", "visits"] } }])), "responses": ok("touchpoints") } },
            "/v1/transitions": { "get": { "summary": "Transitions between touchpoints within sessions", "parameters": with(json!([
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1 } }])), "responses": ok("transitions, most frequent first") } },
            "/v1/timeseries": { "get": { "summary": "One figure over time for a touchpoint or phase", "parameters": with(json!([
                { "name": "figure", "in": "query", "schema": { "type": "string" } },
                { "name": "touchpoint", "in": "query", "schema": { "type": "string" } },
                { "name": "phase", "in": "query", "schema": { "type": "string" } },
                { "name": "step", "in": "query", "schema": { "type": "string" }, "description": "a duration such as 5m" }])), "responses": ok("points") } },
            "/v1/customers/{id}": { "get": { "summary": "A customer's live journey and open session", "parameters": [
                { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "the customer" }, "404": { "description": "no live state" } } } },
            "/v1/alerts": { "get": { "summary": "Drop-off alerts (pending, firing, resolved) and how they are evaluated", "parameters": [
                { "name": "state", "in": "query", "schema": { "type": "string", "enum": ["pending", "firing", "resolved"] } }],
                "responses": ok("alerts") } },
            "/v1/rules": {
                "get": { "summary": "The rules in force", "responses": ok("rules") },
                "put": { "summary": "Replace the rules (TOML body); an invalid set is rejected whole",
                         "requestBody": { "content": { "application/toml": {} } },
                         "responses": { "200": { "description": "the new rules" }, "422": { "description": "every problem, listed in `errors`" } } } },
            "/v1/events": { "post": { "summary": "Ingest events: a JSON object, a JSON array or NDJSON", "parameters": [
                { "name": "source", "in": "query", "schema": { "type": "string" } },
                { "name": "format", "in": "query", "schema": { "enum": ["canonical", "segment", "cloudevents"] } }],
                "responses": { "202": { "description": "accepted and rejected counts, with an error per rejected line" },
                               "400": { "description": "nothing accepted" }, "413": { "description": "body or batch too large" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "text format" } } } },
            "/healthz": { "get": { "summary": "Liveness", "responses": { "200": { "description": "alive" } } } },
            "/readyz": { "get": { "summary": "Readiness", "responses": { "200": { "description": "ready" } } } }
        }
    })
}
