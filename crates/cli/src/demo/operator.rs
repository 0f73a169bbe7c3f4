//! The operator's side of the demo, through the server's REST API (`/api/v1`, bearer token
//! from `DATA/api-token`), exactly as an operator's scripts would use it: register the
//! device, upload packages (multipart), start campaigns, and read back jobs and the card log.

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
        Ok(Operator {
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {}", token.trim()),
            http: simfota_device::download::http_agent(),
        })
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

    /// `POST /packages` (multipart: `envelope`, `payload`); answers the package id.
    pub fn upload(&self, p: &Package) -> Result<i64> {
        let what = format!("uploading package {}", p.version);
        let boundary = format!("simfota-demo-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::with_capacity(p.envelope.len() + p.payload.len() + 512);
        for (name, bytes) in [("envelope", &p.envelope), ("payload", &p.payload)] {
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

    /// `POST /campaigns` for every device, one wave; answers the campaign id.
    pub fn campaign(&self, name: &str, package_id: i64) -> Result<i64> {
        let what = format!("starting campaign {name}");
        let body = serde_json::json!({
            "name": name,
            "package_id": package_id,
            "waves": [100],
            "success_threshold": 100,
            "error_threshold": 100,
        });
        let v = self.post_json(&what, "campaigns", &body)?;
        v["id"]
            .as_i64()
            .ok_or_else(|| anyhow!("{what}: the answer names no campaign id: {v}"))
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
