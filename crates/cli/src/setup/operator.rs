//! The operator's side of the demo and the fleet simulator, through the server's REST API
//! (`/api/v1`, bearer token from `DATA/api-token` or given), exactly as an operator's scripts
//! would use it: register devices (one, or in bulk), upload packages (multipart), start
//! campaigns, and read back jobs, campaign progress and the card log.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::firmware::Package;

/// A REST client for one server.
pub struct Operator {
    base: String,
    auth: String,
    http: ureq::Agent,
}

/// The device's DM account on a server.
pub struct Account<'a> {
    /// IMEI.
    pub imei: &'a str,
    /// DM user name.
    pub username: &'a str,
    /// The device's DM password.
    pub password: &'a str,
    /// The server's DM password towards the device.
    pub server_password: &'a str,
    /// Model (DevInfo/Mod).
    pub model: &'a str,
}

impl Operator {
    /// A client for the server at `base` whose data folder is `data` (the first API token
    /// is in `data/api-token`).
    pub fn new(base: &str, data: &Path) -> Result<Operator> {
        let token_file = data.join("api-token");
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read the API token {}", token_file.display()))?;
        Ok(Operator::with_token(base, &token))
    }

    /// A client for the server at `base` with the operator API token `token`.
    pub fn with_token(base: &str, token: &str) -> Operator {
        Operator {
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {}", token.trim()),
            http: simfota_device::download::http_agent(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    /// Reads a JSON answer; a non-2xx status becomes an error naming `what` and the
    /// server's message.
    fn answer(
        what: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut r = result.map_err(|e| anyhow!("{what}: the server did not answer: {e}"))?;
        let status = r.status();
        let body = r
            .body_mut()
            .read_to_string()
            .map_err(|e| anyhow!("{what}: reading the answer: {e}"))?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(body);
            bail!("{what}: the server answered {status}: {}", message.trim());
        }
        serde_json::from_str(&body).map_err(|e| anyhow!("{what}: the answer is not JSON: {e}"))
    }

    fn get(&self, what: &str, path: &str) -> Result<Value> {
        Self::answer(
            what,
            self.http
                .get(&self.url(path))
                .header("Authorization", &self.auth)
                .call(),
        )
    }

    fn post_json(&self, what: &str, path: &str, body: &Value) -> Result<Value> {
        Self::answer(
            what,
            self.http
                .post(&self.url(path))
                .header("Authorization", &self.auth)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    /// `POST /devices`: the device's DM credentials.
    pub fn register_device(&self, a: &Account<'_>) -> Result<()> {
        let body = serde_json::json!({
            "imei": a.imei,
            "username": a.username,
            "password": a.password,
            "server_password": a.server_password,
            "model": a.model,
        });
        self.post_json("registering the device", "devices", &body)
            .map(drop)
    }

    /// `POST /devices/bulk`: many devices in one all-or-nothing request (`devices`: objects
    /// with the fields of `POST /devices`); answers how many the server created.
    pub fn register_bulk(&self, devices: &[Value]) -> Result<u64> {
        let what = format!("registering {} devices", devices.len());
        let v = self.post_json(
            &what,
            "devices/bulk",
            &serde_json::json!({ "devices": devices }),
        )?;
        v["created"]
            .as_u64()
            .ok_or_else(|| anyhow!("{what}: the answer names no count: {v}"))
    }

    /// `POST /packages` (multipart: `envelope`, `payload`); answers the package id.
    pub fn upload(&self, p: &Package) -> Result<i64> {
        self.upload_parts(&p.version, &p.envelope, &p.payload)
    }

    /// `POST /packages` of release `version` from its envelope and payload bytes.
    pub fn upload_parts(&self, version: &str, envelope: &[u8], payload: &[u8]) -> Result<i64> {
        let what = format!("uploading package {version}");
        let boundary = format!("simfota-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::with_capacity(envelope.len() + payload.len() + 512);
        for (name, bytes) in [("envelope", envelope), ("payload", payload)] {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                     filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let v = Self::answer(
            &what,
            self.http
                .post(&self.url("packages"))
                .header("Authorization", &self.auth)
                .header(
                    "Content-Type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .send(&body[..]),
        )?;
        v["id"]
            .as_i64()
            .ok_or_else(|| anyhow!("{what}: the answer names no package id: {v}"))
    }

    /// `POST /campaigns` for every device, one wave, offered even to devices already at or
    /// above the package (the demo shows what the card makes of an older package); answers
    /// the campaign id.
    pub fn campaign(&self, name: &str, package_id: i64) -> Result<i64> {
        self.post_campaign(name, package_id, None, true)
    }

    /// `POST /campaigns` for the devices of `model` (every device when `None`), one wave,
    /// never halted by failures; answers the campaign id.
    pub fn campaign_for(&self, name: &str, package_id: i64, model: Option<&str>) -> Result<i64> {
        self.post_campaign(name, package_id, model, false)
    }

    fn post_campaign(
        &self,
        name: &str,
        package_id: i64,
        model: Option<&str>,
        include_up_to_date: bool,
    ) -> Result<i64> {
        let what = format!("starting campaign {name}");
        let body = serde_json::json!({
            "name": name,
            "package_id": package_id,
            "target_model": model,
            "waves": [100],
            "success_threshold": 100,
            "error_threshold": 100,
            "include_up_to_date": include_up_to_date,
        });
        let v = self.post_json(&what, "campaigns", &body)?;
        v["id"]
            .as_i64()
            .ok_or_else(|| anyhow!("{what}: the answer names no campaign id: {v}"))
    }

    /// `GET /campaigns`: every campaign.
    pub fn campaigns(&self) -> Result<Value> {
        self.get("reading the campaigns", "campaigns")
    }

    /// `GET /campaigns/{id}/audit`: its counters next to a recount of its jobs.
    pub fn campaign_audit(&self, id: i64) -> Result<Value> {
        self.get("auditing the campaign", &format!("campaigns/{id}/audit"))
    }

    /// `GET /devices/{imei}`: the device and its jobs.
    pub fn device(&self, imei: &str) -> Result<Value> {
        self.get("reading the device record", &format!("devices/{imei}"))
    }

    /// `GET /cards/{iccid}/log`: the verified card log entries.
    pub fn card_log(&self, iccid: &str) -> Result<Value> {
        self.get("reading the card log", &format!("cards/{iccid}/log"))
    }
}
