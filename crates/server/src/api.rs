//! The operator REST API under `/api/v1` (JSON; `Authorization: Bearer <token>`).
//!
//! Each handler carries its own OpenAPI description (`#[utoipa::path]`), and the request and
//! response types derive their schemas (`utoipa::ToSchema`). One list (`fn api`) registers every
//! handler in the router and in the document served at `/api/v1/openapi.json` together, with
//! the HTTP method and path taken from the description: a route cannot be served without being
//! documented, nor documented without being served.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, OriginalUri, Path, Query, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{HttpMethod, Operation, Paths};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;
use crate::auth::Operator;
use crate::campaign::{self, Action, CampaignSpec};
use crate::error::{Result, ServerError};
use crate::http::valid::ValidJson;
use crate::listing::{Keyset, PageParams};
use crate::{packages, registry};

/// Name of the bearer-token security scheme in the document (the `OpenApi` derive below
/// spells it as a literal; a test checks the two agree).
const TOKEN_SCHEME: &str = "token";

/// The `/api/v1` routes.
pub fn routes(upload_limit: usize, state: AppState) -> Router<AppState> {
    api(upload_limit)
        .router
        // Only where a route matched: an unknown route or method is 404/405 as before.
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::auth::authenticate,
        ))
        .fallback(|| async { ServerError::NotFound("no such API route".into()) })
        .layer(axum::middleware::from_fn(crate::http::valid::json_errors))
}

/// The OpenAPI 3.1 document of [`routes`], built once from the same list.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    // The body limit shapes the router only; the document does not depend on it.
    DOCUMENT.get_or_init(|| api(0).into_document())
}

/// Every route of the API: the one list both the router and the document are built from.
fn api(upload_limit: usize) -> Api {
    Api::default()
        .op(__path_openapi, openapi)
        .op(__path_list_devices, list_devices)
        .op(__path_create_device, create_device)
        .op_with(__path_create_devices, create_devices, |m| {
            // 10,000 entries of a few hundred bytes each.
            m.layer(DefaultBodyLimit::max(BULK_BODY_MAX))
        })
        .op(__path_get_device, get_device)
        .op(__path_delete_device, delete_device)
        .op(__path_notify_device, notify_device)
        .op(__path_list_groups, list_groups)
        .op(__path_create_group, create_group)
        .op(__path_add_member, add_member)
        .op(__path_remove_member, remove_member)
        .op(__path_list_cards, list_cards)
        .op(__path_register_card, register_card)
        .op(__path_get_card, get_card)
        .op(__path_card_log, card_log)
        .op(__path_list_admin, list_admin)
        .op(__path_queue_admin, queue_admin)
        .op(__path_list_packages, list_packages)
        .op(__path_create_ui_link, create_ui_link)
        .op(__path_list_tokens, list_tokens)
        .op(__path_create_token, create_token)
        .op(__path_revoke_token, revoke_token)
        .op(__path_audit_log, audit_log)
        .op_with(__path_upload_package, upload_package, |m| {
            // Uploads carry whole firmware images: their own, larger body limit.
            m.layer(DefaultBodyLimit::max(packages::upload_body_limit(
                upload_limit,
            )))
        })
        .op(__path_get_package, get_package)
        .op(__path_delete_package, delete_package)
        .op(__path_list_campaigns, list_campaigns)
        .op(__path_create_campaign, create_campaign)
        .op(__path_get_campaign, get_campaign)
        .op(__path_audit_campaign, audit_campaign)
        .op(__path_pause, pause)
        .op(__path_resume, resume)
        .op(__path_cancel, cancel)
        .op(__path_retry, retry)
        .op(__path_list_jobs, list_jobs)
        .op(__path_get_job, get_job)
        .op(__path_proof, proof)
}

/// The router and the document's paths, grown one operation at a time.
#[derive(Default)]
struct Api {
    router: Router<AppState>,
    paths: Paths,
    /// Component schemas the operations refer to (request and response bodies).
    schemas: Vec<(String, RefOr<Schema>)>,
    /// Each operation's id next to the handler registered for it, for the test that the two
    /// arguments of [`Api::op`] name the same function.
    handlers: Vec<(String, &'static str)>,
}

impl Api {
    /// Serves `handler` at the method and path its description `doc` (the `__path_*` type of
    /// `#[utoipa::path]`) declares, and adds that description to the document.
    fn op<P, H, T>(self, doc: P, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.op_with(doc, handler, |m| m)
    }

    /// [`Api::op`], with `wrap` applied to the route (a layer that only this route needs).
    fn op_with<P, H, T>(
        mut self,
        _doc: P,
        handler: H,
        wrap: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>,
    ) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        H: Handler<T, AppState>,
        T: 'static,
    {
        // `SchemaReferences` (hidden in utoipa, and what its own `OpenApi` derive and axum
        // bindings use) yields the component schemas the description refers to: the document
        // carries exactly the schemas its operations need, with no list to keep by hand.
        let path = P::path();
        let methods = P::methods();
        let route = methods.iter().fold(MethodRouter::new(), |route, method| {
            route.on(method_filter(method), handler.clone())
        });
        let mut operation = P::operation();
        add_common_errors(&mut operation);
        self.handlers.push((
            operation.operation_id.clone().unwrap_or_default(),
            std::any::type_name::<H>(),
        ));
        P::schemas(&mut self.schemas);
        self.paths.add_path_operation(&path, methods, operation);
        // axum merges the method routers of one path (a method served twice panics at start-up).
        self.router = self.router.route(&path, wrap(route));
        self
    }

    fn into_document(self) -> utoipa::openapi::OpenApi {
        let mut doc = Document::openapi();
        doc.paths = self.paths;
        let components = doc.components.get_or_insert_with(Default::default);
        components.schemas.extend(self.schemas);
        doc
    }
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// The error answers every authenticated operation can give (see [`ServerError::status`]),
/// as references to the document's shared responses; an operation's own description of a
/// status wins.
const COMMON_ERRORS: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "Bad request: the message says which field and why",
    ),
    (
        "401",
        "Unauthorized",
        "Missing, unknown or revoked API token",
    ),
    (
        "403",
        "Forbidden",
        "The token's role does not allow this operation (viewer < operator < admin)",
    ),
    ("404", "NotFound", "No such resource"),
    ("409", "Conflict", "Conflict with the current state"),
    (
        "503",
        "Unavailable",
        "Database unavailable or contended; retry (Retry-After)",
    ),
];

/// The errors of an operation that takes a request body, beside [`COMMON_ERRORS`].
const BODY_ERRORS: &[(&str, &str, &str)] = &[
    (
        "413",
        "TooLarge",
        "The body (or its declared length) is over the route's limit",
    ),
    (
        "415",
        "UnsupportedMedia",
        "The body's Content-Type is not one the operation takes",
    ),
];

fn add_common_errors(operation: &mut Operation) {
    // Operations that override the document's security (the document itself) are public and
    // touch no database.
    if operation.security.is_some() {
        return;
    }
    let body = operation.request_body.is_some();
    let extra = if body { BODY_ERRORS } else { &[] };
    for (status, name, _) in COMMON_ERRORS.iter().chain(extra) {
        operation
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
    }
}

/// The document without its paths: metadata, the bearer-token scheme, the error body.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "simfota operator API",
        description = "Devices, groups, cards, packages, campaigns and update proofs of a simfota DM server."
    ),
    servers((url = "/api/v1")),
    security(("token" = [])),
    components(schemas(ErrorBody)),
    modifiers(&Shared)
)]
struct Document;

/// Adds what the derive cannot express: the security scheme and the shared error responses.
struct Shared;

impl utoipa::Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TOKEN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An operator API token: `DATA/api-token` after the first run, or `simfota server --new-api-token NAME`"))
                    .build(),
            ),
        );
        for (_, name, description) in COMMON_ERRORS.iter().chain(BODY_ERRORS) {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build();
            components.responses.insert(
                (*name).to_owned(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(*description)
                        .content("application/json", content)
                        .build(),
                ),
            );
        }
    }
}

/// The body of every error answer.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "describes the body ServerError answers with; never built here"
)]
struct ErrorBody {
    /// What was refused and why (never a secret or an internal detail).
    error: String,
}

/// The document describing every route of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// `GET /devices` filters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeviceQuery {
    /// Only devices of this model (DevInfo/Mod).
    model: Option<String>,
    /// Only members of this group.
    group: Option<String>,
    /// Only devices on this firmware version (DevDetail/FwV).
    version: Option<String>,
    /// Only IMEIs that start with these digits.
    q: Option<String>,
}

/// List devices, a page at a time (sort: `id`, `imei`, `last_seen`; `-` for descending).
#[utoipa::path(
    get,
    path = "/devices",
    params(PageParams, DeviceQuery),
    responses((status = 200, description = "A page of devices", body = [registry::Device], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )))
)]
async fn list_devices(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
    Query(f): Query<DeviceQuery>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("devices", &p, &registry::DEVICE_SORTS, false)?;
    let filter = registry::DeviceFilter {
        model: f.model,
        group: f.group,
        version: f.version,
        imei_prefix: f.q,
    };
    let page = registry::page_devices(&s.db, &keys, &filter).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// Delete a device: its unfinished jobs end failed ("device deleted"); its jobs, card-log
/// entries, proofs and audit entries are kept.
#[utoipa::path(
    delete,
    path = "/devices/{imei}",
    params(("imei" = String, Path, description = "The device's IMEI")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such device"))
)]
async fn delete_device(
    _: Operator,
    State(s): State<AppState>,
    Path(imei): Path<String>,
) -> Result<impl IntoResponse> {
    let released = registry::delete_device(&s.db, &imei).await?;
    for (campaign, before) in released {
        let notified = crate::notify::released_since(&s, campaign, before).await?;
        tracing::info!(campaign, notified, "wave released after a device deletion");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Register a device with its DM credentials.
#[utoipa::path(
    post,
    path = "/devices",
    request_body = registry::NewDevice,
    responses((status = 201, description = "Registered (credentials are never shown)", body = registry::Device))
)]
async fn create_device(
    _: Operator,
    State(s): State<AppState>,
    ValidJson(d): ValidJson<registry::NewDevice>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(
            registry::create_device(&mut *s.db.conn().await?, &d, "api", &s.config.server_id)
                .await?,
        ),
    ))
}

/// `POST /api/v1/ui/links`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewLink {
    /// The dashboard page to land on (`/ui/...`; anything else lands on `/ui`).
    #[serde(default)]
    next: Option<String>,
}

/// A one-time dashboard sign-in link.
#[derive(Serialize, ToSchema)]
struct SignInLink {
    /// Opens a dashboard session for this token, once.
    url: String,
    /// Seconds the link waits for its use.
    expires_in_secs: i64,
}

/// A one-time dashboard sign-in link for the calling token: it opens a session once, within
/// a minute (for tools that open the dashboard; the token itself never goes in a URL).
#[utoipa::path(
    post,
    path = "/ui/links",
    request_body = NewLink,
    responses((status = 201, description = "The link", body = SignInLink))
)]
async fn create_ui_link(
    op: Operator,
    State(s): State<AppState>,
    ValidJson(l): ValidJson<NewLink>,
) -> Result<impl IntoResponse> {
    let next = crate::signin::normalize_next(l.next.as_deref());
    let code = crate::signin::create_link(&s.db, op.token_id, next).await?;
    Ok((
        StatusCode::CREATED,
        Json(SignInLink {
            url: format!("{}/ui/login/{code}", s.base_url),
            expires_in_secs: crate::signin::LINK_TTL_MS / 1000,
        }),
    ))
}

/// `POST /api/v1/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// A name for people (who holds it, what for).
    name: String,
    /// `viewer`, `operator` or `admin`.
    role: crate::auth::Role,
}

/// A token just made: shown this once.
#[derive(Serialize, ToSchema)]
struct CreatedToken {
    /// The token's id (to revoke it).
    id: i64,
    /// The bearer token itself; only its digest is kept.
    token: String,
    /// Its role.
    role: crate::auth::Role,
}

/// The API tokens (admin): id, name, role, when made, revoked or not; never the tokens.
#[utoipa::path(
    get,
    path = "/tokens",
    params(PageParams),
    responses((status = 200, description = "A page of tokens (sort: `id`, `name`)", body = [crate::auth::TokenInfo], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )), (status = 403, description = "Not an admin token"))
)]
async fn list_tokens(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("tokens", &p, &crate::auth::TOKEN_SORTS, false)?;
    let page = crate::auth::page_tokens(&s.db, &keys).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// A new API token with a role (admin); the token is shown in this answer only.
#[utoipa::path(
    post,
    path = "/tokens",
    request_body = NewToken,
    responses((status = 201, description = "The token, shown once", body = CreatedToken), (status = 403, description = "Not an admin token"))
)]
async fn create_token(
    _: Operator,
    State(s): State<AppState>,
    ValidJson(t): ValidJson<NewToken>,
) -> Result<impl IntoResponse> {
    let (id, token) = crate::auth::create_token_with_id(&s.db, &t.name, t.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id,
            token,
            role: t.role,
        }),
    ))
}

/// Revokes a token (admin): it opens nothing any more, its dashboard sessions end. The last
/// live admin token cannot be revoked (409).
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    params(("id" = i64, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No live token with that id"), (status = 409, description = "The last admin token"))
)]
async fn revoke_token(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    crate::auth::revoke(&s.db, &id.to_string()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/audit` query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only entries older than this id (the paging of earlier releases; `cursor` does the same).
    #[serde(default)]
    before: Option<i64>,
}

/// The audit log (operator or admin): every state-changing request and dashboard sign-in,
/// who, what, the answer, when, from where; newest first.
#[utoipa::path(
    get,
    path = "/audit",
    params(PageParams, AuditQuery),
    responses((status = 200, description = "Audit entries, newest first unless `sort` says otherwise (`id`, `-id`)", body = [crate::auth::AuditEntry], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )), (status = 403, description = "A viewer token"))
)]
async fn audit_log(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
    Query(q): Query<AuditQuery>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("audit", &p, &[], true)?;
    let page = crate::auth::page_audit(&s.db, &keys, q.before).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// Largest body of a bulk registration.
pub const BULK_BODY_MAX: usize = 16 * 1024 * 1024;

/// `POST /api/v1/devices/bulk`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDevices {
    /// The devices, at most 10,000 (`registry::BULK_MAX`).
    devices: Vec<registry::NewDevice>,
}

/// How many devices a bulk registration created.
#[derive(Serialize, ToSchema)]
struct Created {
    /// Devices registered.
    created: u64,
}

/// Register many devices at once, all or none (a fleet's provisioning): `{devices: [...]}` as
/// JSON, or a provisioning file as `text/csv` (columns in `crate::provisioning`).
#[utoipa::path(
    post,
    path = "/devices/bulk",
    request_body(content(
        (NewDevices = "application/json"),
        (String = "text/csv", example = "imei,username,password,server_password,nonce\n490154203237518,dev-1,pw,spw,AAECAwQFBgc=\n")
    )),
    responses(
        (status = 201, description = "Every device registered", body = Created),
        (status = 400, description = "An entry or a line refused, named; nothing registered"),
        (status = 409, description = "An IMEI or user name exists already or repeats; nothing registered"),
        (status = 415, description = "Neither application/json nor text/csv")
    )
)]
async fn create_devices(
    _: Operator,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::response::Response> {
    let media = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let devices = match media.as_str() {
        "text/csv" => crate::provisioning::devices_from_csv(&body)?,
        "application/json" => crate::http::valid::parse_json::<NewDevices>(&body)?.devices,
        other => {
            let error = format!(
                "Content-Type {other:?}: send application/json ({{\"devices\": [...]}}) or text/csv"
            );
            return Ok((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(serde_json::json!({ "error": error })),
            )
                .into_response());
        }
    };
    let created = registry::create_devices(
        &mut *s.db.conn().await?,
        &devices,
        "api",
        &s.config.server_id,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Created { created })).into_response())
}

/// A device and its jobs.
#[derive(Serialize, ToSchema)]
struct DeviceDetail {
    device: registry::Device,
    /// The device's jobs, newest first, at most [`campaign::DEVICE_JOBS_MAX`].
    jobs: Vec<campaign::Job>,
}

/// One device and its jobs (newest first, at most 500).
#[utoipa::path(
    get,
    path = "/devices/{imei}",
    params(("imei" = String, Path, description = "The device's IMEI")),
    responses((status = 200, description = "The device and its jobs", body = DeviceDetail))
)]
async fn get_device(
    _: Operator,
    State(s): State<AppState>,
    Path(imei): Path<String>,
) -> Result<impl IntoResponse> {
    let device = registry::get_device(&mut *s.db.conn().await?, &imei).await?;
    let jobs = campaign::device_jobs(&s.db, device.id).await?;
    Ok(Json(DeviceDetail { device, jobs }))
}

/// `POST /groups`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    /// The group's name.
    name: String,
}

/// A group just created.
#[derive(Serialize, ToSchema)]
struct GroupCreated {
    /// The group's name.
    name: String,
}

/// List groups and members.
#[utoipa::path(get, path = "/groups", responses((status = 200, description = "Every group with its members", body = [registry::Group])))]
async fn list_groups(_: Operator, State(s): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(registry::list_groups(&s.db).await?))
}

/// Create a group.
#[utoipa::path(
    post,
    path = "/groups",
    request_body = NewGroup,
    responses((status = 201, description = "Created", body = GroupCreated))
)]
async fn create_group(
    _: Operator,
    State(s): State<AppState>,
    ValidJson(g): ValidJson<NewGroup>,
) -> Result<impl IntoResponse> {
    registry::create_group(&s.db, &g.name).await?;
    Ok((StatusCode::CREATED, Json(GroupCreated { name: g.name })))
}

/// Add a device to a group.
#[utoipa::path(
    put,
    path = "/groups/{name}/devices/{imei}",
    params(
        ("name" = String, Path, description = "The group's name"),
        ("imei" = String, Path, description = "The device's IMEI")
    ),
    responses((status = 204, description = "The device is a member"))
)]
async fn add_member(
    _: Operator,
    State(s): State<AppState>,
    Path((name, imei)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    registry::set_membership(&s.db, &name, &imei, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a device from a group.
#[utoipa::path(
    delete,
    path = "/groups/{name}/devices/{imei}",
    params(
        ("name" = String, Path, description = "The group's name"),
        ("imei" = String, Path, description = "The device's IMEI")
    ),
    responses((status = 204, description = "The device is not a member"))
)]
async fn remove_member(
    _: Operator,
    State(s): State<AppState>,
    Path((name, imei)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    registry::set_membership(&s.db, &name, &imei, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A prefix search.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PrefixQuery {
    /// Only items whose key (a card's ICCID, a package's name) starts with this.
    q: Option<String>,
}

/// List cards, a page at a time (sort: `id`, `iccid`; `q`: an ICCID prefix, digits).
#[utoipa::path(
    get,
    path = "/cards",
    params(PageParams, PrefixQuery),
    responses((status = 200, description = "A page of cards", body = [registry::Card], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )))
)]
async fn list_cards(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
    Query(f): Query<PrefixQuery>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("cards", &p, &registry::CARD_SORTS, false)?;
    let page = registry::page_cards(&s.db, &keys, f.q.as_deref()).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// `POST /cards`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCard {
    /// Base64 (standard alphabet) of the issuer-signed card certificate.
    certificate: String,
}

/// Register a card by its issuer-signed certificate (base64).
#[utoipa::path(
    post,
    path = "/cards",
    request_body = NewCard,
    responses((status = 201, description = "Verified under an issuer key and registered", body = registry::Card))
)]
async fn register_card(
    _: Operator,
    State(s): State<AppState>,
    ValidJson(c): ValidJson<NewCard>,
) -> Result<impl IntoResponse> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c.certificate.trim())
        .map_err(|e| ServerError::BadRequest(format!("certificate: not base64 ({e})")))?;
    match registry::register_card(&mut *s.db.conn().await?, &s.keys.issuers, &bytes).await {
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

/// One card.
#[utoipa::path(
    get,
    path = "/cards/{iccid}",
    params(("iccid" = String, Path, description = "The card's ICCID")),
    responses((status = 200, description = "The card", body = registry::Card))
)]
async fn get_card(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(
        registry::get_card(&mut *s.db.conn().await?, &iccid).await?,
    ))
}

/// A card and its verified log.
#[derive(Serialize, ToSchema)]
struct CardLog {
    card: registry::Card,
    /// The stored entries, oldest first.
    entries: Vec<crate::cardlog::StoredEntry>,
}

/// The card's verified log entries (raw and decoded).
#[utoipa::path(
    get,
    path = "/cards/{iccid}/log",
    params(("iccid" = String, Path, description = "The card's ICCID")),
    responses((status = 200, description = "The card and its log, oldest entry first", body = CardLog))
)]
async fn card_log(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<impl IntoResponse> {
    let card = registry::get_card(&mut *s.db.conn().await?, &iccid).await?;
    let entries = crate::cardlog::entries(&s, &iccid).await?;
    Ok(Json(CardLog { card, entries }))
}

/// List packages, a page at a time (sort: `id`, `name`; `q`: a name prefix).
#[utoipa::path(
    get,
    path = "/packages",
    params(PageParams, PrefixQuery),
    responses((status = 200, description = "A page of packages", body = [packages::Package], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )))
)]
async fn list_packages(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
    Query(f): Query<PrefixQuery>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("packages", &p, &packages::PACKAGE_SORTS, false)?;
    let page = packages::page(&s.db, &keys, f.q.as_deref()).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// Delete a package (its payload file goes; its row stays for the campaigns and proofs that
/// name it). Refused while a campaign that is neither completed nor cancelled uses it.
#[utoipa::path(
    delete,
    path = "/packages/{id}",
    params(("id" = i64, Path, description = "The package's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such package"),
        (status = 409, description = "A campaign that is neither completed nor cancelled uses it")
    )
)]
async fn delete_package(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    packages::delete(&s, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The parts of `POST /packages`.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "describes the multipart form packages::upload reads"
)]
struct PackageUpload {
    /// The SUIT envelope (COSE-signed manifest).
    #[schema(value_type = String, format = Binary)]
    envelope: Vec<u8>,
    /// The firmware image (or delta) the manifest describes.
    #[schema(value_type = String, format = Binary)]
    payload: Vec<u8>,
}

/// Upload a SUIT package (multipart: envelope, payload).
#[utoipa::path(
    post,
    path = "/packages",
    request_body(content = PackageUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Verified under an originator key and stored", body = packages::Package),
        (status = 413, description = "Envelope or payload over the configured limit", body = ErrorBody)
    )
)]
async fn upload_package(
    _: Operator,
    State(s): State<AppState>,
    form: Multipart,
) -> Result<impl IntoResponse> {
    let p = packages::upload(&s, form).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

/// Where devices download a package's parts.
#[derive(Serialize, ToSchema)]
struct PackageUrls {
    /// URL of the SUIT envelope.
    envelope: String,
    /// URL of the payload (HTTP range requests allowed).
    payload: String,
}

/// A package and its download URLs.
#[derive(Serialize, ToSchema)]
struct PackageDetail {
    package: packages::Package,
    urls: PackageUrls,
}

/// One package.
#[utoipa::path(
    get,
    path = "/packages/{id}",
    params(("id" = i64, Path, description = "The package's id")),
    responses((status = 200, description = "The package and its download URLs", body = PackageDetail))
)]
async fn get_package(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    let p = packages::get(&s.db, id).await?;
    let urls = PackageUrls {
        envelope: packages::package_url(&s, id, "envelope", 0),
        payload: packages::package_url(&s, id, "payload", 0),
    };
    Ok(Json(PackageDetail { package: p, urls }))
}

/// `GET /campaigns` filters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CampaignQuery {
    /// Only campaigns in this state.
    state: Option<campaign::CampaignState>,
}

/// List campaigns with progress, a page at a time (sort: `id`, `name`, `updated`).
#[utoipa::path(
    get,
    path = "/campaigns",
    params(PageParams, CampaignQuery),
    responses((status = 200, description = "A page of campaigns", body = [campaign::Campaign], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )))
)]
async fn list_campaigns(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
    Query(f): Query<CampaignQuery>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("campaigns", &p, &campaign::CAMPAIGN_SORTS, false)?;
    let page = campaign::page(&s.db, &keys, f.state).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// Create a campaign.
#[utoipa::path(
    post,
    path = "/campaigns",
    request_body = CampaignSpec,
    responses((status = 201, description = "Created; devices with a notification address are woken up", body = campaign::Campaign))
)]
async fn create_campaign(
    _: Operator,
    State(s): State<AppState>,
    ValidJson(spec): ValidJson<CampaignSpec>,
) -> Result<impl IntoResponse> {
    let c = campaign::create(&s.db, &spec).await?;
    // Devices with a notification address are woken up; the others find the job when they poll.
    let notified = crate::notify::pending_devices(&s, c.id).await?;
    tracing::info!(campaign = c.id, notified, "campaign created");
    Ok((StatusCode::CREATED, Json(c)))
}

/// One campaign with progress.
#[utoipa::path(
    get,
    path = "/campaigns/{id}",
    params(("id" = i64, Path, description = "The campaign's id")),
    responses((status = 200, description = "The campaign", body = campaign::Campaign))
)]
async fn get_campaign(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::get(&mut *s.db.conn().await?, id).await?))
}

/// A campaign's counters next to a recount of its jobs.
#[utoipa::path(
    get,
    path = "/campaigns/{id}/audit",
    params(("id" = i64, Path, description = "The campaign's id")),
    responses((status = 200, description = "The counters the campaign decides on, a recount of its jobs by state, and whether the two agree", body = campaign::Audit))
)]
async fn audit_campaign(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::audit(&mut *s.db.conn().await?, id).await?))
}

/// Pause a running campaign.
#[utoipa::path(
    post,
    path = "/campaigns/{id}/pause",
    params(("id" = i64, Path, description = "The campaign's id")),
    responses((status = 200, description = "The campaign, paused (409 unless it was running)", body = campaign::Campaign))
)]
async fn pause(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::act(&s.db, id, Action::Pause).await?))
}

/// Resume a paused or halted campaign.
#[utoipa::path(
    post,
    path = "/campaigns/{id}/resume",
    params(("id" = i64, Path, description = "The campaign's id")),
    responses((status = 200, description = "The campaign, running again (409 unless it was paused or halted)", body = campaign::Campaign))
)]
async fn resume(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    let before = campaign::get(&mut *s.db.conn().await?, id)
        .await?
        .current_wave;
    let c = campaign::act(&s.db, id, Action::Resume).await?;
    // Resuming can release waves (the engine re-evaluates): wake their devices.
    let notified = crate::notify::released_since(&s, id, before).await?;
    tracing::info!(campaign = id, notified, "campaign resumed");
    Ok(Json(c))
}

/// Cancel a campaign (undelivered jobs cancelled).
#[utoipa::path(
    post,
    path = "/campaigns/{id}/cancel",
    params(("id" = i64, Path, description = "The campaign's id")),
    responses((status = 200, description = "The campaign, cancelled", body = campaign::Campaign))
)]
async fn cancel(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::act(&s.db, id, Action::Cancel).await?))
}

/// `POST /campaigns/{id}/retry`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    /// Retry only the jobs that failed for one of these reasons (as the campaign's
    /// `failures` name them); every failed job when left out.
    #[serde(default)]
    reasons: Option<Vec<String>>,
}

/// Offer a campaign's failed jobs again (all, or those failed for the reasons given).
#[utoipa::path(
    post,
    path = "/campaigns/{id}/retry",
    params(("id" = i64, Path, description = "The campaign's id")),
    request_body(content = Option<RetrySpec>, description = "Optional: the reasons to retry", content_type = "application/json"),
    responses((status = 200, description = "The campaign, its failed jobs pending again (409 when cancelled or past its deadline)", body = campaign::Campaign))
)]
async fn retry(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::response::Response> {
    let spec = if body.is_empty() {
        RetrySpec { reasons: None }
    } else {
        let media = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if media != "application/json" {
            return Err(ServerError::UnsupportedMedia(format!(
                "Content-Type {media:?}: this route takes application/json (or no body)"
            )));
        }
        crate::http::valid::parse_json::<RetrySpec>(&body)?
    };
    let c = campaign::retry(&s.db, id, spec.reasons.as_deref()).await?;
    // The jobs offered again are pending: wake their devices, as at creation.
    let notified = crate::notify::pending_devices(&s, id).await?;
    tracing::info!(campaign = id, notified, "failed jobs offered again");
    Ok(Json(c).into_response())
}

/// `GET /jobs` filters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JobQuery {
    /// Only the jobs of this campaign.
    campaign: Option<i64>,
    /// Only the jobs of the device with this IMEI.
    device: Option<String>,
    /// Only jobs in this state.
    state: Option<campaign::JobState>,
    /// Only jobs that failed (or were skipped) for this reason, as the campaign's `failures`
    /// name it.
    reason: Option<String>,
}

/// List jobs, a page at a time (sort: `id`, `updated`).
#[utoipa::path(
    get,
    path = "/jobs",
    params(PageParams, JobQuery),
    responses((status = 200, description = "A page of jobs", body = [campaign::Job], headers(
        ("Link" = String, description = "`<...>; rel=\"next\"`: the next page, when more items follow"),
        ("X-Next-Cursor" = String, description = "The `cursor` of the next page, when more items follow")
    )))
)]
async fn list_jobs(
    _: Operator,
    State(s): State<AppState>,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageParams>,
    Query(q): Query<JobQuery>,
) -> Result<impl IntoResponse> {
    let keys = Keyset::parse("jobs", &p, &campaign::JOB_SORTS, false)?;
    let filter = campaign::JobFilter {
        campaign: q.campaign,
        device: q.device,
        state: q.state,
        reason: q.reason,
    };
    let page = campaign::page_jobs(&s.db, &keys, &filter).await?;
    Ok(crate::listing::respond(page, &uri))
}

/// One job.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = campaign::Job))
)]
async fn get_job(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse> {
    Ok(Json(campaign::job(&mut *s.db.conn().await?, id).await?))
}

/// Proof bundle of an update; check it with `simfota proof verify`.
#[utoipa::path(
    get,
    path = "/updates/{id}/proof",
    params(("id" = String, Path, description = "The update id (the delivery token's `cti`), hex")),
    responses((status = 200, description = "The proof bundle", body = crate::proof::Bundle))
)]
async fn proof(
    _: Operator,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(crate::proof::bundle(&s, &id).await?))
}

/// A notification sent.
#[derive(Serialize, ToSchema)]
struct Notification {
    /// The device's IMEI.
    imei: String,
    /// The DM session id the notification (package 0) announces.
    session_id: u16,
}

/// Send package 0 (UDP) to the device's notification address.
#[utoipa::path(
    post,
    path = "/devices/{imei}/notify",
    params(("imei" = String, Path, description = "The device's IMEI")),
    responses((status = 200, description = "Package 0 sent", body = Notification))
)]
async fn notify_device(
    _: Operator,
    State(s): State<AppState>,
    Path(imei): Path<String>,
) -> Result<impl IntoResponse> {
    let session_id = crate::notify::send(&s, &imei).await?;
    Ok(Json(Notification { imei, session_id }))
}

/// `POST /cards/{iccid}/admin`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAdmin {
    /// Base64 of the issuer-signed admin command.
    command: String,
    /// A note for operators.
    #[serde(default)]
    note: Option<String>,
}

/// Queue an issuer-signed admin command (base64) for the card's next session.
#[utoipa::path(
    post,
    path = "/cards/{iccid}/admin",
    params(("iccid" = String, Path, description = "The card's ICCID")),
    request_body = NewAdmin,
    responses((status = 201, description = "Verified under an issuer key and queued", body = crate::admin::Queued))
)]
async fn queue_admin(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
    ValidJson(a): ValidJson<NewAdmin>,
) -> Result<impl IntoResponse> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(a.command.trim())
        .map_err(|e| ServerError::BadRequest(format!("command: not base64 ({e})")))?;
    Ok((
        StatusCode::CREATED,
        Json(crate::admin::queue(&s, &iccid, &bytes, a.note.as_deref()).await?),
    ))
}

/// Issuer admin commands queued for the card, with their state and result.
#[utoipa::path(
    get,
    path = "/cards/{iccid}/admin",
    params(("iccid" = String, Path, description = "The card's ICCID")),
    responses(
        (status = 200, description = "The card's admin commands", body = [crate::admin::Queued]),
        (status = 404, description = "No such card")
    )
)]
async fn list_admin(
    _: Operator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<impl IntoResponse> {
    // An unknown card is 404, as on the card's other routes (not an empty list).
    registry::get_card(&mut *s.db.conn().await?, &iccid).await?;
    Ok(Json(crate::admin::list(&s, &iccid).await?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    /// The HTTP methods an OpenAPI 3.1 path item can hold (OpenAPI 3.1 §4.8.9).
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// The two arguments of each [`Api::op`] name the same function: the description of one
    /// handler cannot route requests to another.
    #[test]
    fn each_description_belongs_to_its_handler() {
        let api = api(0);
        assert!(!api.handlers.is_empty());
        for (operation_id, handler) in &api.handlers {
            assert_eq!(
                handler.rsplit("::").next(),
                Some(operation_id.as_str()),
                "{handler}"
            );
        }
    }

    /// Every operation the router gets is in the document, once.
    #[test]
    fn document_lists_every_registered_operation() {
        let api = api(0);
        let registered: BTreeSet<&str> = api.handlers.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            registered.len(),
            api.handlers.len(),
            "an operation id twice"
        );
        let doc = doc();
        let mut documented = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for method in METHODS {
                if let Some(op) = item.get(*method) {
                    assert!(documented.insert(op["operationId"].as_str().unwrap().to_owned()));
                }
            }
        }
        let registered: BTreeSet<String> = registered.into_iter().map(str::to_owned).collect();
        assert_eq!(documented, registered);
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// Every `$ref` points at a component of the document itself.
    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r}: not local"));
            assert!(pointer.starts_with("/components/"), "{r}");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    /// The document has the structure OpenAPI 3.1 requires (§4.8): the version, `info` with a
    /// title and version, paths starting with `/`, each operation with a summary and a
    /// response, each path template parameter declared once as a required path parameter, and
    /// security requirements naming declared schemes.
    #[test]
    fn document_is_openapi_3_1() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string());
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["servers"][0]["url"], "/api/v1");
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes[TOKEN_SCHEME]["type"], "http");
        assert_eq!(schemes[TOKEN_SCHEME]["scheme"], "bearer");
        let check_security = |security: &Value| {
            for requirement in security.as_array().unwrap() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "unknown scheme {name}");
                }
            }
        };
        check_security(&doc["security"]);
        assert_eq!(doc["security"], serde_json::json!([{ TOKEN_SCHEME: [] }]));
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (name, schema) in schemas {
            assert!(schema.is_object(), "{name}");
        }
        for name in ["Card", "CardLogEntry", "ProofBundle", "ErrorBody"] {
            assert!(schemas.contains_key(name), "{name}");
        }
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/openapi.json"));
        for (path, item) in paths {
            assert!(path.starts_with('/'), "{path}");
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            let item = item.as_object().unwrap();
            assert!(!item.is_empty(), "{path}");
            for (method, op) in item {
                assert!(METHODS.contains(&method.as_str()), "{method} {path}");
                assert!(op["summary"].is_string(), "{method} {path}: no summary");
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no success response"
                );
                for (status, r) in responses {
                    assert!(
                        status.len() == 3 && status.parse::<u16>().is_ok(),
                        "{status}"
                    );
                    assert!(
                        r.get("$ref").is_some() || r["description"].is_string(),
                        "{method} {path} {status}: a response needs a description"
                    );
                }
                let mut declared = BTreeSet::new();
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let name = p["name"].as_str().unwrap();
                    assert!(
                        ["path", "query", "header", "cookie"].contains(&p["in"].as_str().unwrap())
                    );
                    if p["in"] == "path" {
                        assert_eq!(p["required"], true, "{method} {path} {name}");
                        assert!(declared.insert(name), "{method} {path}: {name} twice");
                    }
                }
                assert_eq!(declared, in_template, "{method} {path}");
                if let Some(security) = op.get("security") {
                    check_security(security);
                }
            }
        }
    }
}
