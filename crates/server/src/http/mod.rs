//! The HTTP surface: routes, body limits, request tracing.

pub mod range;
pub mod serve;
pub mod valid;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::Result;
use crate::packages;

/// Builds the application router.
pub fn router(state: AppState) -> Router {
    let api = crate::api::routes(state.config.max_package_bytes, state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/dm", axum::routing::post(crate::dm::handle))
        .route("/packages/{id}/envelope", get(packages::serve_envelope))
        .route("/packages/{id}/payload", get(packages::serve_payload))
        .route(
            "/packages/{id}/d/{token}/envelope",
            get(packages::serve_signed_envelope),
        )
        .route(
            "/packages/{id}/d/{token}/payload",
            get(packages::serve_signed_payload),
        )
        .nest("/api/v1", api)
        .merge(crate::dashboard::routes())
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn(valid::refuse_hostile_uri))
        .layer(middleware::from_fn_with_state(
            (
                state.config.max_body_bytes,
                state.config.max_package_bytes,
                state.config.conn_limits.body_idle,
            ),
            serve::limit_bodies,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of a request in the logs: method and path only. The query string stays out
/// (`/ui/login?token=...` carries an API token) and so do the headers (`Authorization`).
fn request_span(req: &Request) -> tracing::Span {
    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
}

async fn count_responses(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    s.metrics.http_responses.with_label_values(&[class]).inc();
    resp
}

/// `GET /healthz`: 200 when the database answers, 503 otherwise (load balancers use it).
async fn healthz(State(s): State<AppState>) -> Result<&'static str> {
    // Any database failure makes this replica unfit for traffic, whatever its kind.
    s.db.ping().await.map_err(|e| match e {
        crate::error::ServerError::DbUnavailable(m) | crate::error::ServerError::Db(m) => {
            crate::error::ServerError::DbUnavailable(m)
        }
        other => other,
    })?;
    Ok("ok\n")
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(s): State<AppState>) -> Result<Response> {
    let text = s.metrics.render(&s.db).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response())
}
