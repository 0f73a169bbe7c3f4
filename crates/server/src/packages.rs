//! Packages: upload (originator signature checked), storage, and hosting with HTTP ranges.
//!
//! An upload is `multipart/form-data` with a part `envelope` (a SUIT envelope, RFC 9124 model)
//! and, unless the envelope integrates its payload, a part `payload`. The envelope must verify
//! under one of the configured originator keys (draft-ietf-suit-manifest §8.3); the payload's
//! size and SHA-256 must equal the signed image size and digest (for a delta package, the
//! signed size and digest of the delta payload itself). The server keeps the envelope
//! severed of any integrated payload (a few hundred bytes: what the device hands to the card)
//! and writes the payload to `DATA/packages/<manifest digest>.payload`.
//!
//! Devices fetch `GET /packages/{id}/envelope` (FUMO `PkgURL`) and
//! `GET /packages/{id}/payload`, whatever URI the manifest names: the payload is served with a
//! strong ETag derived from its signed digest, `Range`, `If-Range` and `If-None-Match`, so a
//! download interrupted on one replica resumes on any other (same ETag everywhere).
//!
//! Several replicas must share the payload folder (a network filesystem, or a copy step on
//! upload); the database says which packages exist.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use simfota_wire::suit::{Envelope, sever};
use simfota_wire::{Limits, PublicKey};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::AppState;
use crate::config::PayloadAccess;
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Result, ServerError};
use crate::http::range::{RangeDecision, decide};

/// A stored package, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Package {
    /// Id (used in URLs).
    pub id: i64,
    /// Release name from the manifest text.
    pub name: String,
    /// Release version from the manifest text.
    pub version: String,
    /// The originator whose key verified the manifest.
    pub originator: String,
    /// Vendor id (hex UUID).
    pub vendor_id: Option<String>,
    /// Class id (hex UUID): the device model.
    pub class_id: Option<String>,
    /// Anti-rollback sequence number.
    pub sequence: i64,
    /// SHA-256 of the bstr-wrapped manifest (what tokens bind to), hex.
    pub manifest_digest: String,
    /// Signed image digest, hex.
    pub image_digest: String,
    /// Signed image size.
    pub image_size: i64,
    /// For a delta: digest of the image it applies to, hex.
    pub precursor_digest: Option<String>,
    /// Created (Unix ms).
    pub created_ms: i64,
}

fn package_from_row(r: &sqlx::any::AnyRow) -> Result<Package> {
    Ok(Package {
        id: r.i64("id")?,
        name: r.text("name")?,
        version: r.text("version")?,
        originator: r.text("originator")?,
        vendor_id: r.opt_bytes("vendor_id")?.map(hex::encode),
        class_id: r.opt_bytes("class_id")?.map(hex::encode),
        sequence: r.i64("sequence")?,
        manifest_digest: hex::encode(r.bytes("manifest_digest")?),
        image_digest: hex::encode(r.bytes("image_digest")?),
        image_size: r.i64("image_size")?,
        precursor_digest: r.opt_bytes("precursor_digest")?.map(hex::encode),
        created_ms: r.i64("created_ms")?,
    })
}

/// Lists packages, newest first.
pub async fn list(db: &Db) -> Result<Vec<Package>> {
    let rows = sqlx::query(
        "SELECT id, name, version, originator, vendor_id, class_id, sequence, manifest_digest, \
         image_digest, image_size, precursor_digest, created_ms FROM packages \
         WHERE deleted_ms IS NULL ORDER BY id DESC",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(package_from_row).collect()
}

/// Reads one package.
pub async fn get(db: &Db, id: i64) -> Result<Package> {
    let row = sqlx::query(
        "SELECT id, name, version, originator, vendor_id, class_id, sequence, manifest_digest, \
         image_digest, image_size, precursor_digest, created_ms FROM packages WHERE id = $1 \
         AND deleted_ms IS NULL",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| ServerError::NotFound(format!("package {id}")))?;
    package_from_row(&row)
}

/// The severed envelope of a package.
pub async fn envelope(db: &Db, id: i64) -> Result<Vec<u8>> {
    let row = sqlx::query("SELECT envelope FROM packages WHERE id = $1 AND deleted_ms IS NULL")
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("package {id}")))?;
    row.bytes("envelope")
}

/// What an originator check found.
struct Checked {
    originator: String,
    name: String,
    version: String,
    vendor_id: Option<Vec<u8>>,
    class_id: Option<Vec<u8>>,
    sequence: u64,
    manifest_digest: [u8; 32],
    image_digest: [u8; 32],
    image_size: u64,
    precursor_digest: Option<[u8; 32]>,
    /// For a delta: the signed size and digest of the transported delta payload.
    delta: Option<(u64, [u8; 32])>,
    integrated: Option<Vec<u8>>,
    /// The payload is named by an absolute path or URL (not relative to the envelope's URL).
    absolute_uri: bool,
    severed: Vec<u8>,
}

/// Decodes the envelope and verifies it under the configured originators.
/// Under `payload_access = delivered` a device reaches the payload only inside the signed URL
/// its delivery gave it: the manifest must name the payload by a relative URI.
fn refuse_absolute_uri(state: &AppState, c: Checked) -> Result<Checked> {
    if state.config.payload_access == PayloadAccess::Delivered && c.absolute_uri {
        return Err(ServerError::BadRequest(
            "the manifest names its payload by an absolute URI; with payload_access = delivered \
             devices fetch it only inside the signed URL of their delivery: build the package \
             with a relative URI (simfota pack build --uri payload)"
                .into(),
        ));
    }
    Ok(c)
}

fn check_envelope(bytes: &[u8], originators: &[(String, PublicKey)]) -> Result<Checked> {
    let limits = Limits::DEFAULT;
    let env = Envelope::decode(bytes, &limits)
        .map_err(|e| ServerError::BadRequest(format!("not a valid SUIT envelope: {e}")))?;
    if originators.is_empty() {
        return Err(ServerError::Verification(
            "no originator keys are configured (--originator ID=KEY.pem)".into(),
        ));
    }
    let mut last = None;
    for (id, key) in originators {
        match env.verify(key) {
            Ok(v) => {
                let m = v.get();
                let image_digest = m.image_digest.ok_or_else(|| {
                    ServerError::BadRequest("manifest has no image digest".into())
                })?;
                let image_size = m
                    .image_size
                    .ok_or_else(|| ServerError::BadRequest("manifest has no image size".into()))?;
                let severed = sever(bytes, &limits)
                    .map_err(|e| ServerError::BadRequest(format!("cannot sever envelope: {e}")))?;
                return Ok(Checked {
                    originator: id.clone(),
                    name: m.name.unwrap_or("").to_owned(),
                    version: m.version.unwrap_or("").to_owned(),
                    vendor_id: m.vendor_id.map(|u| u.to_vec()),
                    class_id: m.class_id.map(|u| u.to_vec()),
                    sequence: m.sequence,
                    manifest_digest: m.manifest_digest().0,
                    image_digest: image_digest.0,
                    image_size,
                    precursor_digest: m.precursor_digest.map(|d| d.0),
                    delta: m.payload_digest.zip(m.payload_size).map(|(d, n)| (n, d.0)),
                    integrated: m.payload.map(<[u8]>::to_vec),
                    absolute_uri: m
                        .uri
                        .is_some_and(|u| u.starts_with('/') || u.contains("://")),
                    severed,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ServerError::Verification(format!(
        "the manifest does not verify under any configured originator key ({})",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

/// What an envelope holds besides an integrated payload, at most: the manifest, its
/// signature and the severable members (a few hundred bytes to a few KiB in practice).
const ENVELOPE_ROOM: usize = 1024 * 1024;

/// Room in an upload's body for the multipart boundaries and part headers.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// The largest envelope an upload takes: [`ENVELOPE_ROOM`] beside a payload of up to
/// `max_package` bytes it may integrate.
fn envelope_limit(max_package: usize) -> usize {
    max_package.saturating_add(ENVELOPE_ROOM)
}

/// The largest body `POST /api/v1/packages` takes when payloads may reach `max_package`
/// bytes (`max_package_bytes`): a payload of that size, an envelope beside it and the
/// multipart framing. The payload part alone is held to `max_package` as it arrives (before
/// this, the limit counted the whole body: a payload of exactly `max_package_bytes` was
/// refused), the envelope part to [`envelope_limit`].
pub fn upload_body_limit(max_package: usize) -> usize {
    envelope_limit(max_package).saturating_add(MULTIPART_OVERHEAD)
}

/// `POST /api/v1/packages` (multipart: `envelope`, optional `payload`).
pub async fn upload(state: &AppState, mut form: Multipart) -> Result<Package> {
    let dir = state.config.package_dir();
    let tmp = dir.join(format!(".upload-{}", uuid::Uuid::new_v4()));
    let res = async {
        let mut envelope: Option<Vec<u8>> = None;
        let mut payload: Option<(u64, [u8; 32])> = None;
        let max_payload = state.config.max_package_bytes as u64;
        let multipart_err = |e: axum::extract::multipart::MultipartError| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServerError::TooLarge { limit: upload_body_limit(state.config.max_package_bytes) as u64 }
            } else {
                ServerError::BadRequest(format!("multipart: {}", e.body_text()))
            }
        };
        while let Some(mut field) = form.next_field().await.map_err(multipart_err)? {
            match field.name() {
                Some("envelope") => {
                    let max = envelope_limit(state.config.max_package_bytes);
                    let mut buf = Vec::new();
                    while let Some(chunk) = field.chunk().await.map_err(multipart_err)? {
                        if buf.len() + chunk.len() > max {
                            return Err(ServerError::TooLarge { limit: max as u64 });
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    envelope = Some(buf);
                }
                Some("payload") => {
                    let mut file = tokio::fs::File::create(&tmp)
                        .await
                        .map_err(|e| ServerError::io("cannot write", &tmp, e))?;
                    let mut hasher = Sha256::new();
                    let mut size = 0u64;
                    while let Some(chunk) = field.chunk().await.map_err(multipart_err)? {
                        size += chunk.len() as u64;
                        // `max_package_bytes` is the payload's limit, not the whole body's.
                        if size > max_payload {
                            return Err(ServerError::TooLarge { limit: max_payload });
                        }
                        hasher.update(&chunk);
                        file.write_all(&chunk)
                            .await
                            .map_err(|e| ServerError::io("cannot write", &tmp, e))?;
                    }
                    file.sync_all().await.map_err(|e| ServerError::io("cannot write", &tmp, e))?;
                    payload = Some((size, hasher.finalize().into()));
                }
                other => {
                    return Err(ServerError::BadRequest(format!(
                        "unexpected form part {:?} (expected envelope, payload)",
                        other.unwrap_or("")
                    )));
                }
            }
        }
        let envelope =
            envelope.ok_or_else(|| ServerError::BadRequest("missing form part `envelope`".into()))?;
        let checked = match check_envelope(&envelope, &state.keys.originators)
            .and_then(|c| refuse_absolute_uri(state, c))
        {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, ServerError::Verification(_)) {
                    state.metrics.verification_failures.with_label_values(&["package"]).inc();
                }
                return Err(e);
            }
        };
        let (size, digest) = match (payload, &checked.integrated) {
            (Some(p), _) => p,
            (None, Some(bytes)) => {
                tokio::fs::write(&tmp, bytes).await.map_err(|e| ServerError::io("cannot write", &tmp, e))?;
                (bytes.len() as u64, Sha256::digest(bytes).into())
            }
            (None, None) => {
                return Err(ServerError::BadRequest(
                    "missing form part `payload` (the envelope integrates none)".into(),
                ));
            }
        };
        // The signed digest and size are what the card will hold the device to (design §4
        // step 6): a payload that differs is refused now rather than failing on every device.
        // A delta package signs its transported payload separately (docs/formats.md, SUIT
        // parameters -258/-259); the image digest then describes the rebuilt image.
        let (want_size, want_digest, what) = match checked.delta {
            Some((n, d)) => (n, d, "delta payload"),
            None => (checked.image_size, checked.image_digest, "image"),
        };
        if size != want_size || digest != want_digest {
            state.metrics.verification_failures.with_label_values(&["package"]).inc();
            return Err(ServerError::Verification(format!(
                "payload ({size} bytes, sha256 {}) does not match the signed {what} ({want_size} bytes, sha256 {})",
                hex::encode(digest),
                hex::encode(want_digest)
            )));
        }
        let file_name = format!("{}.payload", hex::encode(checked.manifest_digest));
        let final_path = dir.join(&file_name);
        tokio::fs::rename(&tmp, &final_path)
            .await
            .map_err(|e| ServerError::io("cannot store the payload", &final_path, e))?;
        let etag = format!("\"sha256-{}\"", hex::encode(want_digest));
        let row = sqlx::query(
            "INSERT INTO packages (name, version, originator, vendor_id, class_id, sequence, \
             manifest_digest, image_digest, image_size, precursor_digest, envelope, payload_file, \
             payload_etag, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14) ON CONFLICT (manifest_digest) DO UPDATE SET deleted_ms = NULL, \
             payload_file = excluded.payload_file, payload_etag = excluded.payload_etag \
             WHERE packages.deleted_ms IS NOT NULL RETURNING id",
        )
        .bind(checked.name)
        .bind(checked.version)
        .bind(checked.originator)
        .bind(checked.vendor_id)
        .bind(checked.class_id)
        .bind(i64::try_from(checked.sequence).map_err(|_| ServerError::BadRequest("sequence number too large".into()))?)
        .bind(checked.manifest_digest.to_vec())
        .bind(checked.image_digest.to_vec())
        .bind(i64::try_from(checked.image_size).unwrap_or(i64::MAX))
        .bind(checked.precursor_digest.map(|d| d.to_vec()))
        .bind(checked.severed)
        .bind(file_name)
        .bind(etag)
        .bind(now_ms())
        .fetch_optional(state.db.pool())
        .await?;
        let Some(row) = row else {
            return Err(ServerError::Conflict(format!(
                "a package with manifest digest {} exists already",
                hex::encode(checked.manifest_digest)
            )));
        };
        let id = row.i64("id")?;
        tracing::info!(package = id, "package stored");
        get(&state.db, id).await
    }
    .await;
    // Left over only when the upload failed before the rename.
    let _ = tokio::fs::remove_file(&tmp).await;
    res
}

/// The orders of the package list besides `id`.
pub static PACKAGE_SORTS: [crate::listing::SortField; 1] = [crate::listing::SortField {
    name: "name",
    expr: "p.name",
    text: true,
}];

/// Longest name prefix `GET /packages?q=` takes.
const NAME_PREFIX_MAX: usize = 200;

/// A page of packages (not deleted), of names that start with `name_prefix` when given.
pub async fn page(
    db: &Db,
    keys: &crate::listing::Keyset,
    name_prefix: Option<&str>,
) -> Result<crate::listing::Page<Package>> {
    use crate::listing::Arg;
    let mut filters = crate::listing::Filters::default();
    filters.fixed("p.deleted_ms IS NULL");
    if let Some(q) = name_prefix {
        if q.is_empty() || q.len() > NAME_PREFIX_MAX || q.chars().any(char::is_control) {
            return Err(ServerError::BadRequest(format!(
                "q: a name prefix of 1 to {NAME_PREFIX_MAX} bytes, no control characters"
            )));
        }
        // Compared as text in both engines (LIKE differs: case-insensitive in SQLite).
        let n = i64::try_from(q.chars().count()).unwrap_or(i64::MAX);
        filters.add_all(
            "substr(p.name, 1, CAST(? AS INTEGER)) = ?",
            [Arg::Int(n), Arg::Text(q.to_owned())],
        );
    }
    let rows = filters
        .fetch(
            &mut *db.conn().await?,
            keys,
            "SELECT p.id, p.name, p.version, p.originator, p.vendor_id, p.class_id, p.sequence, \
             p.manifest_digest, p.image_digest, p.image_size, p.precursor_digest, p.created_ms \
             FROM packages p",
            "p.id",
        )
        .await?;
    keys.page(rows, package_from_row)
}

/// Deletes package `id`: refused (409) while a campaign that is neither completed nor
/// cancelled uses it. The row stays, marked deleted (campaigns and proofs name it); its
/// payload file is removed and it is served no more.
pub async fn delete(state: &AppState, id: i64) -> Result<()> {
    let mut tx = state.db.begin_write().await?;
    // Marked first, which locks the row until the end (PostgreSQL; SQLite writes one
    // transaction at a time): a campaign being created on the package meanwhile
    // (`campaign::create` locks the row first too) is either committed before the check of its
    // users below, which then sees it, or finds the package gone. A refusal rolls it back.
    let row = sqlx::query(
        "UPDATE packages SET deleted_ms = $1 WHERE id = $2 AND deleted_ms IS NULL \
         RETURNING payload_file",
    )
    .bind(now_ms())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ServerError::NotFound(format!("package {id}")))?;
    let users = sqlx::query(
        "SELECT id FROM campaigns WHERE package_id = $1 AND state NOT IN ('completed', 'cancelled') \
         ORDER BY id LIMIT 5",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let ids = users
            .iter()
            .map(|r| r.i64("id").map(|i| i.to_string()))
            .collect::<Result<Vec<_>>>()?;
        return Err(ServerError::Conflict(format!(
            "package {id} is used by campaign {} (not completed or cancelled): cancel it first",
            ids.join(", ")
        )));
    }
    tx.commit().await?;
    let path = state.config.package_dir().join(row.text("payload_file")?);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // The package is deleted either way; the file is only space.
        Err(e) => {
            tracing::warn!(package = id, path = %path.display(), error = %e, "payload file of a deleted package not removed")
        }
    }
    tracing::info!(package = id, "package deleted");
    Ok(())
}

/// How long a package URL given to the operator API stays valid.
const OPERATOR_URL_SECS: u64 = 3600;

/// The URL of `part` (`envelope` or `payload`) of `package`, for `job` (0: the operator API):
/// plain under `payload_access = public`, signed and expiring under `delivered`.
pub fn package_url(state: &AppState, package: i64, part: &str, job: i64) -> String {
    match state.config.payload_access {
        PayloadAccess::Public => format!("{}/packages/{package}/{part}", state.base_url),
        PayloadAccess::Delivered => {
            let valid = if job == 0 {
                OPERATOR_URL_SECS
            } else {
                // As long as the delivery may go without a result (a download resumes).
                state
                    .config
                    .delivery_timeout
                    .unwrap_or(crate::config::DEFAULT_DELIVERY_TIMEOUT)
                    .as_secs()
            };
            let exp = u64::try_from(now_ms() / 1000).unwrap_or(0) + valid;
            let token = state.keys.urls.token(package, exp, job);
            format!("{}/packages/{package}/d/{token}/{part}", state.base_url)
        }
    }
}

/// Whether a request for package files may be served: any under `public`; under `delivered`,
/// only one whose URL the server signed and that has not expired.
fn may_serve(state: &AppState, package: i64, token: Option<&str>) -> Result<()> {
    match (state.config.payload_access, token) {
        (PayloadAccess::Public, _) => Ok(()),
        (PayloadAccess::Delivered, Some(t))
            if state
                .keys
                .urls
                .check(package, t, u64::try_from(now_ms() / 1000).unwrap_or(0)) =>
        {
            Ok(())
        }
        (PayloadAccess::Delivered, Some(_)) => Err(ServerError::Forbidden(
            "this package URL is not valid (expired, or not signed by this server)".into(),
        )),
        (PayloadAccess::Delivered, None) => Err(ServerError::Forbidden(
            "package files are served only through the URLs this server hands out \
             (payload_access = delivered)"
                .into(),
        )),
    }
}

/// `GET /packages/{id}/d/{token}/envelope`: [`serve_envelope`] through a signed URL.
pub async fn serve_signed_envelope(
    State(state): State<AppState>,
    Path((id, token)): Path<(i64, String)>,
) -> Result<Response> {
    may_serve(&state, id, Some(&token))?;
    envelope_response(&state, id).await
}

/// `GET /packages/{id}/d/{token}/payload`: [`serve_payload`] through a signed URL.
pub async fn serve_signed_payload(
    State(state): State<AppState>,
    Path((id, token)): Path<(i64, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    may_serve(&state, id, Some(&token))?;
    payload_response(&state, id, &headers).await
}

/// `GET /packages/{id}/envelope`: the severed SUIT envelope.
pub async fn serve_envelope(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response> {
    may_serve(&state, id, None)?;
    envelope_response(&state, id).await
}

async fn envelope_response(state: &AppState, id: i64) -> Result<Response> {
    let bytes = envelope(&state.db, id).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/suit-envelope+cose")],
        bytes,
    )
        .into_response())
}

/// Bytes read from a payload file per chunk sent: large reads keep the hand-offs to tokio's
/// file threads (one per read) and the chunk overhead small next to the copy itself.
const PAYLOAD_CHUNK: usize = 256 * 1024;

/// `GET /packages/{id}/payload` with `Range`, `If-Range`, `If-None-Match`.
pub async fn serve_payload(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response> {
    may_serve(&state, id, None)?;
    payload_response(&state, id, &headers).await
}

async fn payload_response(state: &AppState, id: i64, headers: &HeaderMap) -> Result<Response> {
    let row = sqlx::query(
        "SELECT payload_file, payload_etag FROM packages WHERE id = $1 AND deleted_ms IS NULL",
    )
    .bind(id)
    .fetch_optional(state.db.pool())
    .await?
    .ok_or_else(|| ServerError::NotFound(format!("package {id}")))?;
    let path: PathBuf = state.config.package_dir().join(row.text("payload_file")?);
    let etag = row.text("payload_etag")?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ServerError::io("cannot open", &path, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ServerError::io("cannot stat", &path, e))?
        .len();
    let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| ServerError::internal("stored ETag", e))?;

    // RFC 9110 §13.1.2: If-None-Match with our tag -> 304 without a body.
    if let Some(inm) = h(header::IF_NONE_MATCH)
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let decision = decide(h(header::RANGE), h(header::IF_RANGE), len, &etag);
    let mut builder = Response::builder()
        .header(header::ETAG, etag_value)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let resp = match decision {
        RangeDecision::Full => builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(file, PAYLOAD_CHUNK),
            )),
        RangeDecision::Partial { start, end } => {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ServerError::io("cannot seek", &path, e))?;
            let n = end - start + 1;
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(header::CONTENT_LENGTH, n);
            builder.body(Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(file.take(n), PAYLOAD_CHUNK),
            ))
        }
        RangeDecision::Unsatisfiable => builder
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .body(Body::empty()),
    };
    resp.map_err(|e| ServerError::internal("package response", e))
}
