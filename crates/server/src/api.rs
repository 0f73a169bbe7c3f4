//! The operator REST API under `/api/v1` (JSON; `Authorization: Bearer <token>`).
//!
//! The OpenAPI 3.1 document at `/api/v1/openapi.json` lists every route below; a test checks
//! that the document and the router agree.

use axum::Json;
use axum::Router;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Operator;
use crate::campaign::{self, Action, CampaignSpec};
use crate::error::{Result, ServerError};
use crate::{packages, registry};

/// The `/api/v1` routes.
pub fn routes(upload_limit: usize) -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/devices", get(list_devices).post(create_device))
        .route("/devices/{imei}", get(get_device))
        .route("/devices/{imei}/notify", post(notify_device))
        .route("/groups", get(list_groups).post(create_group))
        .route(
            "/groups/{name}/devices/{imei}",
            put(add_member).delete(remove_member),
        )
        .route("/cards", get(list_cards).post(register_card))
        .route("/cards/{iccid}", get(get_card))
        .route("/cards/{iccid}/log", get(card_log))
        .route("/cards/{iccid}/admin", get(list_admin).post(queue_admin))
        .route(
            "/packages",
            get(list_packages)
                .post(upload_package)
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route("/packages/{id}", get(get_package))
        .route("/campaigns", get(list_campaigns).post(create_campaign))
        .route("/campaigns/{id}", get(get_campaign))
        .route("/campaigns/{id}/pause", post(pause))
        .route("/campaigns/{id}/resume", post(resume))
        .route("/campaigns/{id}/cancel", post(cancel))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/updates/{id}/proof", get(proof))
}

/// Every (method, path) the API serves, as the OpenAPI document lists them.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/devices", "List devices"),
    (
        "post",
        "/devices",
        "Register a device with its DM credentials",
    ),
    (
        "get",
        "/devices/{imei}",
        "One device and its jobs (newest first, at most 500)",
    ),
    (
        "post",
        "/devices/{imei}/notify",
        "Send package 0 (UDP) to the device's notification address",
    ),
    ("get", "/groups", "List groups and members"),
    ("post", "/groups", "Create a group"),
    (
        "put",
        "/groups/{name}/devices/{imei}",
        "Add a device to a group",
    ),
    (
        "delete",
        "/groups/{name}/devices/{imei}",
        "Remove a device from a group",
    ),
    ("get", "/cards", "List cards"),
    (
        "post",
        "/cards",
        "Register a card by its issuer-signed certificate (base64)",
    ),
    ("get", "/cards/{iccid}", "One card"),
    (
        "get",
        "/cards/{iccid}/log",
        "The card's verified log entries (raw and decoded)",
    ),
    (
        "get",
        "/cards/{iccid}/admin",
        "Issuer admin commands queued for the card, with their state and result",
    ),
    (
        "post",
        "/cards/{iccid}/admin",
        "Queue an issuer-signed admin command (base64) for the card's next session",
    ),
    ("get", "/packages", "List packages"),
    (
        "post",
        "/packages",
        "Upload a SUIT package (multipart: envelope, payload)",
    ),
    ("get", "/packages/{id}", "One package"),
    ("get", "/campaigns", "List campaigns with progress"),
    ("post", "/campaigns", "Create a campaign"),
    ("get", "/campaigns/{id}", "One campaign with progress"),
    ("post", "/campaigns/{id}/pause", "Pause a running campaign"),
    (
        "post",
        "/campaigns/{id}/resume",
        "Resume a paused or halted campaign",
    ),
    (
        "post",
        "/campaigns/{id}/cancel",
        "Cancel a campaign (undelivered jobs cancelled)",
    ),
    ("get", "/jobs", "List jobs (?campaign=ID)"),
    ("get", "/jobs/{id}", "One job"),
    (
        "get",
        "/updates/{id}/proof",
        "Proof bundle of an update (update id hex); check with `simfota proof verify`",
    ),
];

/// The schema of a route's 200 answer, where the document describes one.
fn response_schema(method: &str, path: &str) -> Option<Value> {
    let card = json!({"$ref": "#/components/schemas/Card"});
    Some(match (method, path) {
        ("get", "/cards") => json!({"type": "array", "items": card}),
        ("get", "/cards/{iccid}") | ("post", "/cards") => card,
        ("get", "/cards/{iccid}/log") => json!({
            "type": "object",
            "properties": {
                "card": card,
                "entries": {"type": "array", "items": {"$ref": "#/components/schemas/CardLogEntry"}}
            }
        }),
        ("get", "/updates/{id}/proof") => json!({"$ref": "#/components/schemas/ProofBundle"}),
        _ => return None,
    })
}

/// Component schemas: the card resource, its log entries and the proof bundle.
fn schemas() -> Value {
    let text = json!({"type": ["string", "null"]});
    let int = json!({"type": ["integer", "null"]});
    json!({
        "Card": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "iccid": {"type": "string"},
                "imsi": text,
                "card_pub": {"type": ["string", "null"], "description": "SEC1 public key, hex"},
                "cert_status": {"type": "string", "description": "verified when the certificate checked out under an issuer key"},
                "servers": {
                    "type": ["array", "null"],
                    "description": "The card's authorized servers as last read (docs/dm-tree.md)",
                    "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "key": {"type": "string"},
                        "rights": {"type": "array", "items": {"enum": ["firmware_update", "log_read", "log_ack", "dm_other"]}}
                    }}
                },
                "policy": {
                    "type": ["object", "null"],
                    "description": "The card's update policy as last read",
                    "properties": {
                        "unauthorized": {"enum": ["refuse", "warn_confirm", "confirm_with_pin", "free_device"]},
                        "integrity": {"enum": ["device_digest", "card_digest"]},
                        "card_digest_max_bytes": int,
                        "allowed_classes": {"type": "array", "items": {"type": "object", "properties": {
                            "vendor_id": {"type": "string"}, "class_id": {"type": "string"}
                        }}}
                    }
                },
                "originators": {
                    "type": ["array", "null"],
                    "description": "The card's trusted software originators as last read",
                    "items": {"type": "object", "properties": {"id": {"type": "string"}, "key": {"type": "string"}}}
                },
                "log_head_seq": int,
                "log_status": {"enum": ["ok", "gap", "fork"]},
                "acked_seq": int
            }
        },
        "CardLogEntry": {
            "type": "object",
            "properties": {
                "seq": {"type": "integer"},
                "event": {"enum": ["authorized", "denied", "consent", "integrity_ok", "integrity_failed", "installed", "acknowledged", "admin_applied", "refusals"]},
                "detail": text,
                "deny_reason": {"type": ["string", "null"], "description": "refusal name from the card's reason table (user_declined, rollback, ...)"},
                "deny_code": int,
                "free_device": {"type": "boolean", "description": "authorized through an unauthorized server under the free-device policy"},
                "consent_pin_verified": {"type": ["boolean", "null"]},
                "update_id": text, "server_id": text, "originator": text,
                "release_name": text, "release_version": text, "imei": text,
                "fumo_result": int, "trusted_time": int, "device_time": int,
                "entry_hash": {"type": "string"},
                "raw": {"type": "string", "description": "the record the card chained, hex"},
                "verified": {"type": "boolean"},
                "unverified_fields": {"type": ["array", "null"], "items": {"enum": ["server_id", "update_id", "imei"]}, "description": "fields the card took from the request without verifying them (claims); null for records written before cards marked them"},
                "refusal_counts": {"type": "array", "items": {"type": "object", "properties": {"reason": {"type": "string"}, "code": {"type": "integer"}, "count": {"type": "integer"}}}, "description": "for refusals: requests nothing authenticated, counted by reason"},
                "first_trusted_time": int, "first_device_time": int
            }
        },
        "ProofBundle": {
            "type": "object",
            "properties": {
                "format": {"const": crate::proof::FORMAT},
                "update_id": {"type": "string"},
                "card_certificate": {"type": "string"},
                "receipt": {"type": "string"},
                "delivery_token": {"type": "string"},
                "server_public_key": {"type": "string"},
                "log_records": {"type": "array", "items": {"type": "string"}},
                "entries": {"type": "array", "items": {"type": "object"}, "description": "log_records decoded (checked against them by simfota proof verify)"}
            }
        }
    })
}

async fn openapi() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let ok = match response_schema(method, path) {
            Some(schema) => {
                json!({"description": "OK (JSON)", "content": {"application/json": {"schema": schema}}})
            }
            None => json!({"description": "OK (JSON)"}),
        };
        if let Value::Object(m) = entry {
            m.insert(
                (*method).to_owned(),
                json!({
                    "summary": summary,
                    "parameters": params,
                    "responses": {
                        "200": ok,
                        "400": {"description": "Bad request: {\"error\": message}"},
                        "401": {"description": "Missing or invalid API token"},
                        "404": {"description": "Not found"},
                        "409": {"description": "Conflict with the current state"},
                        "503": {"description": "Database unavailable; retry"}
                    }
                }),
            );
        }
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "simfota operator API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
        "security": [{"token": []}],
        "paths": paths,
    }))
}

async fn list_devices(_: Operator, State(s): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(registry::list_devices(&s.db).await?))
}

async fn create_device(
    _: Operator,
    State(s): State<AppState>,
    Json(d): Json<registry::NewDevice>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(registry::create_device(&s.db, &d, "api").await?),
    ))
}

async fn get_device(
    _: Operator,
    State(s): State<AppState>,
    Path(imei): Path<String>,
) -> Result<impl IntoResponse> {
    let device = registry::get_device(&s.db, &imei).await?;
    let jobs = campaign::device_jobs(&s.db, device.id).await?;
    Ok(Json(json!({ "device": device, "jobs": jobs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
}

async fn list_groups(_: Operator, State(s): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(registry::list_groups(&s.db).await?))
}

async fn create_group(
    _: Operator,
    State(s): State<AppState>,
    Json(g): Json<NewGroup>,
) -> Result<impl IntoResponse> {
    registry::create_group(&s.db, &g.name).await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": g.name }))))
}

async fn add_member(
    _: Operator,
    State(s): State<AppState>,
    Path((name, imei)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    registry::set_membership(&s.db, &name, &imei, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    _: Operator,
    State(s): State<AppState>,
    Path((name, imei)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    registry::set_membership(&s.db, &name, &imei, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_cards(_: Operator, State(s): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(registry::list_cards(&s.db).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCard {
    /// Base64 (standard alphabet) of the issuer-signed card certificate.
    certificate: String,
}

async fn register_card(
    _: Operator,
    State(s): State<AppState>,
    Json(c): Json<NewCard>,
) -> Result<impl IntoResponse> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c.certificate.trim())
        .map_err(|e| ServerError::BadRequest(format!("certificate: not base64 ({e})")))?;
    match registry::register_card(&s.db, &s.keys.issuers, &bytes).await {
        Ok(card) => Ok((StatusCode::CREATED, Json(card))),
        Err(e) => {
            if matches!(e, ServerError::Verification(_)) {
                s.metrics
                    .verification_failures
                    .with_label_values(&["certificate"])
                    .inc();
            }
            Err(e)
        }
    }
}

async fn get_card(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(registry::get_card(&s.db, &iccid).await?))
}

async fn card_log(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<impl IntoResponse> {
    let card = registry::get_card(&s.db, &iccid).await?;
    let entries = crate::cardlog::entries(&s, &iccid).await?;
    Ok(Json(json!({ "card": card, "entries": entries })))
}

async fn list_packages(_: Operator, State(s): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(packages::list(&s.db).await?))
}

async fn upload_package(
    _: Operator,
    State(s): State<AppState>,
    form: Multipart,
) -> Result<impl IntoResponse> {
    let p = packages::upload(&s, form).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn get_package(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    let p = packages::get(&s.db, id).await?;
    let urls = json!({
        "envelope": format!("{}/packages/{id}/envelope", s.base_url),
        "payload": format!("{}/packages/{id}/payload", s.base_url),
    });
    Ok(Json(json!({ "package": p, "urls": urls })))
}

async fn list_campaigns(_: Operator, State(s): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(campaign::list(&s.db).await?))
}

async fn create_campaign(
    _: Operator,
    State(s): State<AppState>,
    Json(spec): Json<CampaignSpec>,
) -> Result<impl IntoResponse> {
    let c = campaign::create(&s.db, &spec).await?;
    // Devices with a notification address are woken up; the others find the job when they poll.
    let notified = crate::notify::pending_devices(&s, c.id).await?;
    tracing::info!(campaign = c.id, notified, "campaign created");
    Ok((StatusCode::CREATED, Json(c)))
}

async fn get_campaign(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::get(&s.db, id).await?))
}

async fn pause(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::act(&s.db, id, Action::Pause).await?))
}

async fn resume(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    let before = campaign::get(&s.db, id).await?.current_wave;
    let c = campaign::act(&s.db, id, Action::Resume).await?;
    // Resuming can release waves (the engine re-evaluates): wake their devices.
    let notified = crate::notify::released_since(&s, id, before).await?;
    tracing::info!(campaign = id, notified, "campaign resumed");
    Ok(Json(c))
}

async fn cancel(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::act(&s.db, id, Action::Cancel).await?))
}

#[derive(Deserialize)]
struct JobQuery {
    campaign: Option<i64>,
}

async fn list_jobs(
    _: Operator,
    State(s): State<AppState>,
    Query(q): Query<JobQuery>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::jobs(&s.db, q.campaign).await?))
}

async fn get_job(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::job(&s.db, id).await?))
}

async fn proof(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(crate::proof::bundle(&s, &id).await?))
}

async fn notify_device(
    _: Operator,
    State(s): State<AppState>,
    Path(imei): Path<String>,
) -> Result<impl IntoResponse> {
    let session_id = crate::notify::send(&s, &imei).await?;
    Ok(Json(json!({ "imei": imei, "session_id": session_id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdmin {
    /// Base64 of the issuer-signed admin command.
    command: String,
    #[serde(default)]
    note: Option<String>,
}

async fn queue_admin(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
    Json(a): Json<NewAdmin>,
) -> Result<impl IntoResponse> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(a.command.trim())
        .map_err(|e| ServerError::BadRequest(format!("command: not base64 ({e})")))?;
    Ok((
        StatusCode::CREATED,
        Json(crate::admin::queue(&s, &iccid, &bytes, a.note.as_deref()).await?),
    ))
}

async fn list_admin(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(crate::admin::list(&s, &iccid).await?))
}
