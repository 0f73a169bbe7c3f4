//! The registry: devices (with their DM credentials), groups and cards.
//!
//! DM credentials are per device: the device's own (it proves itself with them, OMA DM
//! Security 1.2 §5.3) and the server's (the server proves itself to the device). Only their
//! digests `B64(H(name:password))` are stored (`dm_secret`, `server_secret`): MD5 and HMAC
//! authentication and package 0 need nothing more, and a copy of the database gives no
//! password away (though the digest still answers the protocol's challenges: keep the
//! database private). The API never returns them and no log prints them.

use serde::{Deserialize, Serialize};
use simfota_wire::{CardCertificate, Iccid, Imei, Limits, PublicKey};

use sqlx::{AnyConnection, Connection as _, Row as _};

use crate::db::{Db, RowExt, now_ms};
use crate::error::{Result, ServerError};

/// `POST /api/v1/devices`.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// 15-digit IMEI (Luhn-checked).
    #[schema(pattern = "^[0-9]{15}$")]
    pub imei: String,
    /// DM user name the device authenticates with.
    #[schema(min_length = 1, max_length = 128)]
    pub username: String,
    /// The device's DM password.
    #[schema(min_length = 1, max_length = 256)]
    pub password: String,
    /// The server's DM password towards this device.
    #[schema(min_length = 1, max_length = 256)]
    pub server_password: String,
    /// `md5` (syncml:auth-md5, default) or `hmac` (syncml:auth-MAC).
    #[serde(default = "default_auth")]
    #[schema(pattern = "^(md5|hmac)$")]
    pub auth: String,
    /// Model (DevInfo/Mod), until the device reports it.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub model: Option<String>,
    /// Manufacturer (DevInfo/Man).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub manufacturer: Option<String>,
    /// Firmware version (DevDetail/FwV).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub fw_version: Option<String>,
    /// UDP address for package 0 notifications (`host:port`).
    #[serde(default)]
    pub notify_addr: Option<String>,
    /// Groups to put the device in (created if missing).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The nonce the device's first credentials use, base64 (1 to 64 bytes): provisioned
    /// with the device's DM account, as its bootstrap gives it (DM Security 1.2 §5.4). Absent,
    /// the server challenges the device's first message (401 with a fresh nonce).
    #[serde(default)]
    pub nonce: Option<String>,
}

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("imei", &self.imei)
            .field("username", &self.username)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

fn default_auth() -> String {
    "md5".into()
}

/// A device as the API shows it (no credentials).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Device {
    /// Database id.
    pub id: i64,
    /// IMEI.
    pub imei: String,
    /// DM user name.
    pub username: String,
    /// Auth scheme.
    pub auth: String,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Firmware version.
    pub fw_version: Option<String>,
    /// The card (ICCID) last seen in this device.
    pub iccid: Option<String>,
    /// Notification address.
    pub notify_addr: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// How it was registered (`api`, `enrolment`).
    pub enrolled_by: String,
    /// Last DM message (Unix ms).
    pub last_seen_ms: Option<i64>,
}

fn check_text(field: &str, v: &str, max: usize) -> Result<()> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ServerError::BadRequest(format!(
            "{field}: 1 to {max} bytes, no control characters"
        )));
    }
    Ok(())
}

impl NewDevice {
    /// Refuses a field the registry would not store.
    pub(crate) fn check(&self) -> Result<()> {
        Imei::parse(&self.imei).map_err(|e| ServerError::BadRequest(format!("imei: {e}")))?;
        check_text("username", &self.username, 128)?;
        check_text("password", &self.password, 256)?;
        check_text("server_password", &self.server_password, 256)?;
        for (field, value) in [
            ("model", &self.model),
            ("manufacturer", &self.manufacturer),
            ("fw_version", &self.fw_version),
        ] {
            if let Some(v) = value {
                check_text(field, v, 128)?;
            }
        }
        if self.auth != "md5" && self.auth != "hmac" {
            return Err(ServerError::BadRequest("auth must be md5 or hmac".into()));
        }
        if let Some(a) = &self.notify_addr {
            a.parse::<std::net::SocketAddr>().map_err(|_| {
                ServerError::BadRequest("notify_addr must be host:port (an IP)".into())
            })?;
        }
        for g in &self.groups {
            check_text("group", g, 100)?;
        }
        self.nonce_bytes()?;
        Ok(())
    }

    /// The provisioned nonce, decoded.
    fn nonce_bytes(&self) -> Result<Option<Vec<u8>>> {
        use base64::Engine as _;
        let Some(text) = &self.nonce else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| ServerError::BadRequest(format!("nonce: not base64 ({e})")))?;
        if bytes.is_empty() || bytes.len() > NONCE_MAX {
            return Err(ServerError::BadRequest(format!(
                "nonce: 1 to {NONCE_MAX} bytes once decoded ({} given)",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }
}

/// Longest provisioned nonce, in bytes.
const NONCE_MAX: usize = 64;

/// Columns of a `devices` row as [`bind_device`] binds them.
const DEVICE_COLUMNS: usize = 14;

/// The columns [`bind_device`] binds, in its order.
const DEVICE_INSERT: &str = "INSERT INTO devices (imei, dm_username, dm_password, server_password, \
     auth_scheme, manufacturer, model, fw_version, notify_addr, enrolled_by, created_ms, \
     device_nonce, dm_secret, server_secret)";

/// Most devices one bulk registration takes.
pub const BULK_MAX: usize = 10_000;
/// Rows per INSERT statement of a bulk registration (12 parameters each: well under both
/// engines' limits on bound parameters).
const BULK_ROWS_PER_STATEMENT: usize = 500;

/// Registers many devices at once, all or none: every entry is checked first, then they are
/// inserted in one transaction, [`BULK_ROWS_PER_STATEMENT`] rows per statement. An IMEI or
/// user name that exists already (or repeats within the batch) refuses the whole batch.
pub async fn create_devices(
    conn: &mut AnyConnection,
    devices: &[NewDevice],
    enrolled_by: &str,
    server_id: &str,
) -> Result<u64> {
    if devices.len() > BULK_MAX {
        return Err(ServerError::BadRequest(format!(
            "at most {BULK_MAX} devices per request ({} given)",
            devices.len()
        )));
    }
    for (i, d) in devices.iter().enumerate() {
        d.check()
            .map_err(|e| ServerError::BadRequest(format!("devices[{i}]: {e}")))?;
    }
    let now = now_ms();
    let mut tx = conn.begin().await?;
    let mut created = 0;
    for chunk in devices.chunks(BULK_ROWS_PER_STATEMENT) {
        let sql = format!(
            "{DEVICE_INSERT} VALUES {} ON CONFLICT DO NOTHING",
            crate::db::values_list(chunk.len(), DEVICE_COLUMNS)
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = bind_device(q, d, enrolled_by, now, server_id)?;
        }
        let done = q.execute(&mut *tx).await?.rows_affected();
        if done != chunk.len() as u64 {
            // Nothing of the batch is kept (the transaction rolls back when dropped).
            return Err(ServerError::Conflict(format!(
                "{} of the devices exist already or repeat in the batch (IMEI or user name); none was registered",
                chunk.len() as u64 - done
            )));
        }
        created += done;
        for d in chunk {
            for g in &d.groups {
                add_to_group(&mut tx, &d.imei, g).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(created)
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the [`DEVICE_COLUMNS`] values of a `devices` row in the column order of
/// [`DEVICE_INSERT`] (the entry [`NewDevice::check`]ed before). The passwords are stored as
/// their digests only.
fn bind_device<'q>(
    q: Query<'q>,
    d: &NewDevice,
    enrolled_by: &str,
    now: i64,
    server_id: &str,
) -> Result<Query<'q>> {
    let (dm_secret, server_secret) =
        secrets(&d.username, &d.password, server_id, &d.server_password);
    Ok(q.bind(d.imei.clone())
        .bind(d.username.clone())
        .bind(String::new())
        .bind(String::new())
        .bind(d.auth.clone())
        .bind(d.manufacturer.clone())
        .bind(d.model.clone())
        .bind(d.fw_version.clone())
        .bind(d.notify_addr.clone())
        .bind(enrolled_by.to_owned())
        .bind(now)
        .bind(d.nonce_bytes()?)
        .bind(dm_secret)
        .bind(server_secret))
}

/// The stored forms of a device's DM credentials: `B64(H(user:password))` and
/// `B64(H(server-id:server-password))`.
fn secrets(user: &str, password: &str, server_id: &str, server_password: &str) -> (String, String) {
    use simfota_syncml::auth::Credentials;
    (
        Credentials::new(user, password).secret_digest(),
        Credentials::new(server_id, server_password).secret_digest(),
    )
}

/// Replaces the DM passwords a database from before migration 0009 keeps in clear by their
/// digests (`server_id` names the server's side); answers how many devices changed. Run at
/// every start, before the server listens: afterwards no password is stored.
pub async fn protect_stored_passwords(db: &Db, server_id: &str) -> Result<u64> {
    let mut changed = 0;
    loop {
        let rows = sqlx::query(
            "SELECT id, dm_username, dm_password, server_password FROM devices \
             WHERE dm_secret IS NULL OR server_secret IS NULL LIMIT 500",
        )
        .fetch_all(db.pool())
        .await?;
        if rows.is_empty() {
            return Ok(changed);
        }
        let mut tx = db.pool().begin().await?;
        for r in &rows {
            let (dm_secret, server_secret) = secrets(
                &r.text("dm_username")?,
                &r.text("dm_password")?,
                server_id,
                &r.text("server_password")?,
            );
            sqlx::query(
                "UPDATE devices SET dm_secret = $1, server_secret = $2, dm_password = '', \
                 server_password = '' WHERE id = $3",
            )
            .bind(dm_secret)
            .bind(server_secret)
            .bind(r.i64("id")?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        changed += rows.len() as u64;
    }
}

async fn add_to_group(conn: &mut AnyConnection, imei: &str, group: &str) -> Result<()> {
    sqlx::query("INSERT INTO device_groups (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(group.to_owned())
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO group_members (group_id, device_id) \
         SELECT g.id, d.id FROM device_groups g, devices d WHERE g.name = $1 AND d.imei = $2 \
         ON CONFLICT DO NOTHING",
    )
    .bind(group.to_owned())
    .bind(imei.to_owned())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Registers a device.
pub async fn create_device(
    conn: &mut AnyConnection,
    d: &NewDevice,
    enrolled_by: &str,
    server_id: &str,
) -> Result<Device> {
    d.check()?;
    let mut tx = conn.begin().await?;
    let sql = format!(
        "{DEVICE_INSERT} VALUES {} ON CONFLICT DO NOTHING RETURNING id",
        crate::db::values_list(1, DEVICE_COLUMNS)
    );
    let query = sqlx::query(&sql);
    let row = bind_device(query, d, enrolled_by, now_ms(), server_id)?
        .fetch_optional(&mut *tx)
        .await?;
    if row.is_none() {
        return Err(ServerError::Conflict(format!(
            "a device with IMEI {} or user name {} exists already",
            d.imei, d.username
        )));
    };
    for g in &d.groups {
        add_to_group(&mut tx, &d.imei, g).await?;
    }
    tx.commit().await?;
    get_device(&mut *conn, &d.imei).await
}

async fn groups_of(conn: &mut AnyConnection, device_id: i64) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT g.name FROM device_groups g JOIN group_members m ON m.group_id = g.id \
         WHERE m.device_id = $1 ORDER BY g.name",
    )
    .bind(device_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| r.text("name")).collect()
}

async fn device_from_row(conn: &mut AnyConnection, r: &sqlx::any::AnyRow) -> Result<Device> {
    let id = r.i64("id")?;
    Ok(Device {
        id,
        imei: r.text("imei")?,
        username: r.text("dm_username")?,
        auth: r.text("auth_scheme")?,
        manufacturer: r.opt_text("manufacturer")?,
        model: r.opt_text("model")?,
        fw_version: r.opt_text("fw_version")?,
        iccid: r.opt_text("iccid")?,
        notify_addr: r.opt_text("notify_addr")?,
        groups: groups_of(conn, id).await?,
        enrolled_by: r.text("enrolled_by")?,
        last_seen_ms: r.opt_i64("last_seen_ms")?,
    })
}

const DEVICE_COLS: &str = "id, imei, dm_username, auth_scheme, manufacturer, model, fw_version, \
                           iccid, notify_addr, enrolled_by, last_seen_ms";

/// Reads a device by IMEI.
pub async fn get_device(conn: &mut AnyConnection, imei: &str) -> Result<Device> {
    let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE imei = $1");
    let row = sqlx::query(&sql)
        .bind(imei.to_owned())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("device {imei}")))?;
    device_from_row(&mut *conn, &row).await
}

/// Lists devices.
pub async fn list_devices(db: &Db) -> Result<Vec<Device>> {
    let sql = format!("SELECT {DEVICE_COLS} FROM devices ORDER BY id");
    let mut conn = db.conn().await?;
    let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(device_from_row(&mut conn, r).await?);
    }
    Ok(out)
}

/// The orders of the device list besides `id`.
pub static DEVICE_SORTS: [crate::listing::SortField; 2] = [
    crate::listing::SortField {
        name: "imei",
        expr: "d.imei",
        text: true,
    },
    crate::listing::SortField {
        // Never seen sorts first (as 0), on the `devices_last_seen` index.
        name: "last_seen",
        expr: "COALESCE(d.last_seen_ms, 0)",
        text: false,
    },
];

/// What `GET /devices` filters on (every one optional).
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    /// Devices of this model.
    pub model: Option<String>,
    /// Members of this group.
    pub group: Option<String>,
    /// Devices on this firmware version.
    pub version: Option<String>,
    /// IMEIs that start with these digits.
    pub imei_prefix: Option<String>,
}

/// A page of devices (groups read in one query for the page).
pub async fn page_devices(
    db: &Db,
    keys: &crate::listing::Keyset,
    f: &DeviceFilter,
) -> Result<crate::listing::Page<Device>> {
    use crate::listing::Arg;
    let mut filters = crate::listing::Filters::default();
    filters
        .opt("d.model = ?", f.model.clone().map(Arg::Text))
        .opt("d.fw_version = ?", f.version.clone().map(Arg::Text));
    if let Some(name) = &f.group {
        // By the group's id, so that both planners see how many members it has (a small
        // group read from its members, not found by scanning every device), and an unknown
        // group lists nothing.
        let id = sqlx::query("SELECT id FROM device_groups WHERE name = $1")
            .bind(name.clone())
            .fetch_optional(db.pool())
            .await?
            .map(|r| r.i64("id"))
            .transpose()?
            .unwrap_or(0);
        filters.add(
            "d.id IN (SELECT m.device_id FROM group_members m WHERE m.group_id = ?)",
            Arg::Int(id),
        );
    }
    if let Some(q) = &f.imei_prefix {
        let (low, high) = crate::listing::digit_prefix("q", q)?;
        filters
            .add("d.imei >= ?", Arg::Text(low))
            .opt("d.imei < ?", high.map(Arg::Text));
    }
    let mut conn = db.conn().await?;
    let cols: String = DEVICE_COLS
        .split(", ")
        .map(|c| format!("d.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = filters
        .fetch(
            &mut conn,
            keys,
            &format!("SELECT {cols} FROM devices d"),
            "d.id",
        )
        .await?;
    let mut page = keys.page(rows, |r| {
        Ok(Device {
            id: r.i64("id")?,
            imei: r.text("imei")?,
            username: r.text("dm_username")?,
            auth: r.text("auth_scheme")?,
            manufacturer: r.opt_text("manufacturer")?,
            model: r.opt_text("model")?,
            fw_version: r.opt_text("fw_version")?,
            iccid: r.opt_text("iccid")?,
            notify_addr: r.opt_text("notify_addr")?,
            groups: Vec::new(),
            enrolled_by: r.text("enrolled_by")?,
            last_seen_ms: r.opt_i64("last_seen_ms")?,
        })
    })?;
    if !page.items.is_empty() {
        let ids = crate::db::values_list(1, page.items.len());
        let sql = format!(
            "SELECT m.device_id, g.name FROM group_members m JOIN device_groups g \
             ON g.id = m.group_id WHERE m.device_id IN {ids} ORDER BY g.name"
        );
        let mut q = sqlx::query(&sql);
        for d in &page.items {
            q = q.bind(d.id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let id = r.i64("device_id")?;
            if let Some(d) = page.items.iter_mut().find(|d| d.id == id) {
                d.groups.push(r.text("name")?);
            }
        }
    }
    Ok(page)
}

/// Deletes device `imei`: its unfinished jobs end failed ("device deleted", their campaigns'
/// counters moved), its DM sessions and group memberships go; its jobs, card-log entries,
/// exports, proofs and audit entries stay (evidence is never deleted with a device). Answers
/// the campaigns that released waves, with the wave each was at (whose devices to notify).
pub async fn delete_device(db: &Db, imei: &str) -> Result<Vec<(i64, i64)>> {
    let mut tx = db.begin_write().await?;
    let row = sqlx::query("SELECT id FROM devices WHERE imei = $1")
        .bind(imei.to_owned())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("device {imei}")))?;
    let id = row.i64("id")?;
    let released = crate::campaign::end_device_jobs(&mut tx, id).await?;
    // What keeps a record of the device keeps it without the link to a row that goes.
    for sql in [
        "UPDATE log_requests SET device_id = NULL WHERE device_id = $1",
        "UPDATE log_exports SET device_id = NULL WHERE device_id = $1",
        "DELETE FROM dm_sessions WHERE device_id = $1",
        "DELETE FROM group_members WHERE device_id = $1",
        "DELETE FROM devices WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::info!(%imei, device = id, "device deleted");
    Ok(released)
}

/// The orders of the card list besides `id`.
pub static CARD_SORTS: [crate::listing::SortField; 1] = [crate::listing::SortField {
    name: "iccid",
    expr: "c.iccid",
    text: true,
}];

/// A page of cards, of ICCIDs that start with `iccid_prefix` when given.
pub async fn page_cards(
    db: &Db,
    keys: &crate::listing::Keyset,
    iccid_prefix: Option<&str>,
) -> Result<crate::listing::Page<Card>> {
    use crate::listing::Arg;
    let mut filters = crate::listing::Filters::default();
    if let Some(q) = iccid_prefix {
        let (low, high) = crate::listing::digit_prefix("q", q)?;
        filters
            .add("c.iccid >= ?", Arg::Text(low))
            .opt("c.iccid < ?", high.map(Arg::Text));
    }
    let rows = filters
        .fetch(
            &mut *db.conn().await?,
            keys,
            "SELECT c.* FROM cards c",
            "c.id",
        )
        .await?;
    keys.page(rows, card_from_row)
}

/// Creates a group (idempotent).
pub async fn create_group(db: &Db, name: &str) -> Result<()> {
    check_text("group", name, 100)?;
    sqlx::query("INSERT INTO device_groups (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name.to_owned())
        .execute(db.pool())
        .await?;
    Ok(())
}

/// A group and its members.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Member IMEIs.
    pub devices: Vec<String>,
}

/// Lists groups with members.
pub async fn list_groups(db: &Db) -> Result<Vec<Group>> {
    let rows = sqlx::query(
        "SELECT g.name, d.imei FROM device_groups g LEFT JOIN group_members m ON m.group_id = g.id \
         LEFT JOIN devices d ON d.id = m.device_id ORDER BY g.name, d.imei",
    )
    .fetch_all(db.pool())
    .await?;
    let mut out: Vec<Group> = Vec::new();
    for r in rows {
        let name = r.text("name")?;
        if out.last().is_none_or(|g| g.name != name) {
            out.push(Group {
                name: name.clone(),
                devices: Vec::new(),
            });
        }
        if let (Some(imei), Some(g)) = (r.opt_text("imei")?, out.last_mut()) {
            g.devices.push(imei);
        }
    }
    Ok(out)
}

/// Adds (or with `remove`, removes) a device to a group.
pub async fn set_membership(db: &Db, group: &str, imei: &str, remove: bool) -> Result<()> {
    let dev = get_device(&mut *db.conn().await?, imei).await?;
    let g = sqlx::query("SELECT id FROM device_groups WHERE name = $1")
        .bind(group.to_owned())
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("group {group}")))?;
    let gid = g.i64("id")?;
    let q = if remove {
        "DELETE FROM group_members WHERE group_id = $1 AND device_id = $2"
    } else {
        "INSERT INTO group_members (group_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    };
    sqlx::query(q)
        .bind(gid)
        .bind(dev.id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// A card as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Card {
    /// Database id.
    pub id: i64,
    /// ICCID.
    pub iccid: String,
    /// IMSI from the certificate.
    pub imsi: Option<String>,
    /// Card public key (SEC1, hex).
    pub card_pub: Option<String>,
    /// `verified` when the certificate checked out under an issuer key.
    pub cert_status: String,
    /// The card's authorized-server list as last read (decoded, JSON).
    #[schema(value_type = Option<Vec<Object>>)]
    pub servers: Option<serde_json::Value>,
    /// The card's policy as last read (decoded, JSON: `unauthorized`, `integrity`,
    /// `card_digest_max_bytes`, `allowed_classes`).
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
    /// The card's trusted originators as last read (decoded, JSON: `[{id, key}]`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub originators: Option<serde_json::Value>,
    /// Newest stored log sequence number.
    pub log_head_seq: Option<i64>,
    /// `ok`, or `gap` / `fork` when a chain problem was seen.
    pub log_status: String,
    /// Highest sequence acknowledged to the card.
    pub acked_seq: Option<i64>,
    /// The card's PIN retry counter as its newest verified export page stated it; `None` until
    /// a page did (cards built before exports carried it never state it).
    pub pin: Option<crate::cardinfo::PinReport>,
}

fn card_from_row(r: &sqlx::any::AnyRow) -> Result<Card> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(Card {
        id: r.i64("id")?,
        iccid: r.text("iccid")?,
        imsi: r.opt_text("imsi")?,
        card_pub: r.opt_bytes("card_pub")?.map(hex::encode),
        cert_status: r.text("cert_status")?,
        servers: json(r.opt_text("servers_json")?),
        policy: json(r.opt_text("policy_json")?),
        originators: json(r.opt_text("originators_json")?),
        log_head_seq: r.opt_i64("log_head_seq")?,
        log_status: r.text("log_status")?,
        acked_seq: r.opt_i64("acked_seq")?,
        pin: crate::cardinfo::PinReport::from_row(r)?,
    })
}

/// Reads a card by ICCID.
pub async fn get_card(conn: &mut AnyConnection, iccid: &str) -> Result<Card> {
    let row = sqlx::query("SELECT * FROM cards WHERE iccid = $1")
        .bind(iccid.to_owned())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("card {iccid}")))?;
    card_from_row(&row)
}

/// Lists cards.
pub async fn list_cards(db: &Db) -> Result<Vec<Card>> {
    let rows = sqlx::query("SELECT * FROM cards ORDER BY id")
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(card_from_row).collect()
}

/// Card certificates this process verified and registered, by SHA-256 of their bytes, with the
/// ICCID each names. A device relays its card's certificate in every session; verifying it (a
/// P-256 signature) and writing the card row once per process is enough: a certificate's bytes
/// never change meaning, and issuer keys change only with a restart. Bounded: when full it is
/// emptied, and the next sessions verify again.
#[derive(Debug, Default)]
pub struct VerifiedCards {
    by_digest: std::sync::Mutex<std::collections::HashMap<[u8; 32], String>>,
}

/// Most certificates [`VerifiedCards`] remembers (about 100 bytes each).
pub const VERIFIED_CARDS_MAX: usize = 100_000;

impl VerifiedCards {
    fn digest(certificate: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(certificate).into()
    }

    /// The ICCID of `certificate` if this process verified it before.
    pub fn get(&self, certificate: &[u8]) -> Option<String> {
        let map = self.by_digest.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&Self::digest(certificate)).cloned()
    }

    /// Remembers that `certificate` verified and names `iccid`.
    pub fn insert(&self, certificate: &[u8], iccid: &str) {
        let mut map = self.by_digest.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= VERIFIED_CARDS_MAX {
            map.clear();
        }
        map.insert(Self::digest(certificate), iccid.to_owned());
    }

    /// How many certificates are remembered.
    pub fn len(&self) -> usize {
        self.by_digest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verifies a card certificate under the configured issuer keys and registers (or updates)
/// the card. A certificate that verifies under no issuer key is refused: the server then has
/// no card key to check exports and receipts with.
pub async fn register_card(
    conn: &mut AnyConnection,
    issuers: &[PublicKey],
    certificate: &[u8],
) -> Result<Card> {
    Ok(register_card_queued(conn, issuers, certificate).await?.0)
}

/// [`register_card`], answering also whether the card's issuer admin queue holds a command
/// (read by the statement that stores the card: the DM flow relays such a command).
pub async fn register_card_queued(
    conn: &mut AnyConnection,
    issuers: &[PublicKey],
    certificate: &[u8],
) -> Result<(Card, bool)> {
    if issuers.is_empty() {
        return Err(ServerError::Verification(
            "no issuer keys are configured (--issuer-key ISSUER.pem)".into(),
        ));
    }
    let limits = Limits::DEFAULT;
    let mut last = None;
    let mut verified = None;
    for k in issuers {
        match CardCertificate::verify(certificate, k, &limits) {
            Ok(v) => {
                verified = Some(v.into_inner());
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let cert = verified.ok_or_else(|| {
        ServerError::Verification(format!(
            "card certificate does not verify under any issuer key ({})",
            last.map_or_else(String::new, |e| e.to_string())
        ))
    })?;
    let iccid: &Iccid = &cert.iccid;
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO cards (iccid, imsi, card_pub, certificate, cert_status, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, 'verified', $5, $5) \
         ON CONFLICT (iccid) DO UPDATE SET imsi = $2, card_pub = $3, certificate = $4, \
         cert_status = 'verified', updated_ms = $5 \
         RETURNING *, EXISTS (SELECT 1 FROM admin_queue a WHERE a.card_id = cards.id \
         AND a.state = 'queued') AS admin_queued",
    )
    .bind(iccid.as_str().to_owned())
    .bind(cert.imsi.map(|i| i.as_str().to_owned()))
    .bind(cert.card_key.to_sec1().to_vec())
    .bind(certificate.to_vec())
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    // `EXISTS` is a boolean in PostgreSQL and an integer in SQLite.
    let queued = match row.try_get::<bool, _>("admin_queued") {
        Ok(b) => b,
        Err(_) => row.i64("admin_queued")? != 0,
    };
    Ok((card_from_row(&row)?, queued))
}
