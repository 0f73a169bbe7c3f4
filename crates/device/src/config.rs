//! The agent's configuration file (`DEVICE.toml`) and its data folder layout.
//!
//! Example:
//!
//! ```toml
//! server_url = "http://127.0.0.1:8443"   # the DM endpoint is <server_url>/dm
//! server_id = "simfota-demo"             # the DM server's ServerID (SyncML RepPro 1.2 §6.1.6)
//! encoding = "xml"                       # or "wbxml"
//! imei = "490154203237518"               # DevId is "IMEI:" + this (DM StdObj 1.2 §5.3.1)
//! data_dir = "device-data"               # relative paths are relative to this file
//! notification_port = 47001              # UDP port for package 0; absent = poll only
//! poll_interval_secs = 300
//! ca_file = "operator-ca.pem"            # extra CA for https:// (the system's bundle is used too)
//!
//! [credentials]
//! auth = "md5"                           # syncml:auth-md5, or "hmac" (syncml:auth-MAC)
//! username = "dev-490154203237518"
//! password = "client secret"             # the device proves itself with this
//! server_password = "server secret"      # the server proves itself to the device with this
//! nonce = "aW5pdGlhbA=="                  # optional: the first credentials' nonce (base64),
//!                                        # given to the server at registration too
//!
//! [card]
//! state = "CARD.state"                   # in-process card; or: reader = "Virtual PCD 00 00",
//!                                        # or: modem = "/dev/ttyUSB2" (the modem's SIM)
//! channel = "basic"                      # or "logical": a channel of its own (MANAGE CHANNEL)
//! # With `modem` (AT commands, 3GPP TS 27.007; `channel` does not apply: the applet always
//! # runs on a logical channel, the basic one is the modem's):
//! # at_mode = "auto"                     # AT+CCHO/AT+CGLA, else AT+CSIM; or "cgla", "csim"
//! # modem_timeout_ms = 5000              # the longest wait for one AT answer
//! # modem_baud = 115200                  # a UART's line speed (USB modems ignore it)
//!
//! [info]                                 # DevInfo / DevDetail values
//! manufacturer = "Example"
//! model = "EX-1"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::download::TlsTrust;

/// Why a configuration file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The I/O error is the source, not part of this text:
    /// the binary prints the chain (`{:#}`), which would otherwise say it twice.
    #[error("cannot read the device configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("the device configuration {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The CA file (`ca_file`, `--ca`) cannot be used.
    #[error("the CA file {path} cannot be used: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why: unreadable, no PEM certificate, or a certificate that is no usable CA.
        reason: String,
    },
    /// A value is out of its allowed range.
    #[error("the device configuration has a bad value for `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// How SyncML messages are encoded on the wire (SyncML RepPro 1.2 §4; WBXML per OMA-TS-DM_RepPro).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `application/vnd.syncml.dm+xml`
    #[default]
    Xml,
    /// `application/vnd.syncml.dm+wbxml`
    Wbxml,
}

impl Encoding {
    /// The HTTP Content-Type for this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Xml => "application/vnd.syncml.dm+xml",
            Encoding::Wbxml => "application/vnd.syncml.dm+wbxml",
        }
    }
}

/// The DM authentication scheme (OMA DM Security 1.2 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `syncml:auth-md5`
    #[default]
    Md5,
    /// `syncml:auth-MAC` (HTTP header `x-syncml-hmac`)
    Hmac,
}

/// DM credentials, both directions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The scheme.
    #[serde(default)]
    pub auth: AuthScheme,
    /// The device's DM user name.
    pub username: String,
    /// The device's DM secret.
    pub password: String,
    /// The secret the server proves itself with.
    pub server_password: String,
    /// The nonce of the device's first credentials (base64, 1 to 64 bytes), provisioned with
    /// its DM account; the server is given the same at registration (`nonce`). Used until the
    /// server sends the next one. Absent: the server challenges the first message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Credentials {
    /// The provisioned nonce, decoded.
    pub fn nonce_bytes(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        use base64::Engine as _;
        let Some(text) = &self.nonce else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            field: "credentials.nonce",
            reason,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| invalid(format!("not base64 ({e})")))?;
        if bytes.is_empty() || bytes.len() > 64 {
            return Err(invalid(format!(
                "1 to 64 bytes once decoded ({} given)",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }
}

/// Where the card is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardConfig {
    /// A card state file for the in-process card.
    pub state: Option<PathBuf>,
    /// A PC/SC reader name.
    pub reader: Option<String>,
    /// The serial port of a cellular modem whose SIM is the card (AT commands).
    pub modem: Option<PathBuf>,
    /// Line speed of the modem's serial port; absent leaves the port's.
    pub modem_baud: Option<u32>,
    /// The longest wait for one AT answer, in milliseconds (default 5000).
    pub modem_timeout_ms: Option<u64>,
    /// Which AT access reaches the card in the modem.
    #[serde(default)]
    pub at_mode: AtMode,
    /// The card channel the agent works on (not for a modem: always a logical channel).
    #[serde(default)]
    pub channel: CardChannel,
}

/// Which AT access reaches the card in a modem (docs/cardlink.md, "Modem link").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtMode {
    /// AT+CCHO/AT+CGLA, AT+CSIM when the modem does not have them.
    #[default]
    Auto,
    /// AT+CCHO/AT+CGLA only.
    Cgla,
    /// AT+CSIM only.
    Csim,
}

/// Default of `modem_timeout_ms`.
const MODEM_TIMEOUT_MS: u64 = 5000;

impl CardConfig {
    /// The modem link's options for this configuration.
    pub fn modem_options(&self) -> simfota_cardlink::modem::ModemOptions {
        use simfota_cardlink::modem;
        modem::ModemOptions {
            at_mode: match self.at_mode {
                AtMode::Auto => modem::AtMode::Auto,
                AtMode::Cgla => modem::AtMode::Cgla,
                AtMode::Csim => modem::AtMode::Csim,
            },
            timeout: std::time::Duration::from_millis(
                self.modem_timeout_ms.unwrap_or(MODEM_TIMEOUT_MS),
            ),
            baud: self.modem_baud,
            ..modem::ModemOptions::default()
        }
    }

    /// The client's channel mode for this card: a modem's card always on a logical channel
    /// (the modem's own through AT+CCHO, or one the agent opens through AT+CSIM), so the
    /// modem keeps the basic channel and its USIM.
    pub fn mode(&self) -> simfota_cardlink::ChannelMode {
        if self.modem.is_some() {
            simfota_cardlink::ChannelMode::Logical
        } else {
            self.channel.mode()
        }
    }
}

/// The card channel the agent works on (docs/apdu.md "Logical channels").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardChannel {
    /// The basic channel: the agent has the card to itself (a PC/SC reader, the in-process
    /// card).
    #[default]
    Basic,
    /// A logical channel the agent opens (MANAGE CHANNEL) and works on, as a phone or module
    /// reaches an applet while its modem keeps the basic channel.
    Logical,
}

impl CardChannel {
    /// The client's channel mode for this setting.
    pub fn mode(self) -> simfota_cardlink::ChannelMode {
        match self {
            CardChannel::Basic => simfota_cardlink::ChannelMode::Basic,
            CardChannel::Logical => simfota_cardlink::ChannelMode::Logical,
        }
    }
}

/// The card, resolved: exactly one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardSource {
    /// The in-process card, persisted in this file.
    State(PathBuf),
    /// A card in this PC/SC reader.
    Reader(String),
    /// The SIM of the modem on this serial port.
    Modem(PathBuf),
}

/// Values the agent publishes in ./DevInfo and ./DevDetail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceInfo {
    /// DevInfo/Man
    pub manufacturer: String,
    /// DevInfo/Mod (also the model the packages must be built for)
    pub model: String,
    /// DevInfo/Lang
    pub lang: String,
    /// DevDetail/DevTyp
    pub dev_type: String,
    /// DevDetail/OEM
    pub oem: String,
    /// DevDetail/HwV
    pub hw_version: String,
    /// DevDetail/SwV (the agent's own version)
    pub sw_version: String,
    /// The SUIT vendor-id of this device (UUID text); packages for another vendor get 403.
    pub vendor_id: Option<String>,
    /// The SUIT class-id of this model (UUID text); packages for another model get 403.
    pub class_id: Option<String>,
}

impl DeviceInfo {
    /// The vendor-id as 16 bytes.
    pub fn vendor_uuid(&self) -> Result<Option<[u8; 16]>, ConfigError> {
        self.vendor_id
            .as_deref()
            .map(|t| parse_uuid(t, "info.vendor_id"))
            .transpose()
    }

    /// The class-id as 16 bytes.
    pub fn class_uuid(&self) -> Result<Option<[u8; 16]>, ConfigError> {
        self.class_id
            .as_deref()
            .map(|t| parse_uuid(t, "info.class_id"))
            .transpose()
    }
}

/// Parses a UUID in its text form (RFC 9562 §4: 32 hex digits, hyphens optional).
pub fn parse_uuid(text: &str, field: &'static str) -> Result<[u8; 16], ConfigError> {
    let hexits: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    hex::decode_to_slice(&hexits, &mut out).map_err(|_| ConfigError::Invalid {
        field,
        reason: format!("`{text}` is not a UUID (32 hex digits)"),
    })?;
    Ok(out)
}

impl Default for DeviceInfo {
    fn default() -> Self {
        DeviceInfo {
            manufacturer: "simfota".into(),
            model: "simfota-sim".into(),
            lang: "en-US".into(),
            dev_type: "iot".into(),
            oem: "simfota".into(),
            hw_version: "1".into(),
            sw_version: env!("CARGO_PKG_VERSION").into(),
            vendor_id: None,
            class_id: None,
        }
    }
}

/// Size bounds the agent enforces on what it fetches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest payload (full image or delta) the agent downloads.
    pub max_payload_bytes: u64,
    /// Largest SUIT envelope fetched from PkgURL, integrated payload included (the card is
    /// given it severed).
    pub max_envelope_bytes: u64,
    /// Largest DM message the agent accepts.
    pub max_message_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 512 * 1024 * 1024,
            max_envelope_bytes: 16 * 1024,
            max_message_bytes: 256 * 1024,
        }
    }
}

/// The parsed `DEVICE.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Base URL of the DM server; messages go to `<server_url>/dm`.
    pub server_url: String,
    /// The server's ServerID, as in ./DMAcc.
    pub server_id: String,
    /// XML or WBXML.
    #[serde(default)]
    pub encoding: Encoding,
    /// The terminal's IMEI (15 digits, Luhn check digit).
    pub imei: String,
    /// DM credentials.
    pub credentials: Credentials,
    /// The card.
    #[serde(default)]
    pub card: CardConfig,
    /// The agent's data folder.
    pub data_dir: PathBuf,
    /// The A/B slot folder (default: `<data_dir>/slots`).
    #[serde(default)]
    pub slot_dir: Option<PathBuf>,
    /// UDP port for package 0 notifications (absent: poll only).
    #[serde(default)]
    pub notification_port: Option<u16>,
    /// Seconds between client-initiated sessions in `device run`.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// A PEM file of CA certificates trusted for `https://` besides the system's bundle
    /// (a private CA of the DM and package servers).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// DevInfo / DevDetail values.
    #[serde(default)]
    pub info: DeviceInfo,
    /// Size bounds.
    #[serde(default)]
    pub limits: Limits,
}

fn default_poll_interval() -> u64 {
    300
}

impl DeviceConfig {
    /// Reads, parses and validates a configuration file. Relative paths in it are taken relative
    /// to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        // A bad CA file is a configuration error now, not a refused connection later.
        config.tls_trust()?;
        Ok(config)
    }

    /// Parses and validates configuration text (paths stay as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: DeviceConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes the configuration (for `simfota device init` and tests).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid {
            field: "config",
            reason: e.to_string(),
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.data_dir);
        if let Some(p) = self.slot_dir.as_mut() {
            join(p);
        }
        if let Some(p) = self.card.state.as_mut() {
            join(p);
        }
        if let Some(p) = self.ca_file.as_mut() {
            join(p);
        }
    }

    /// The CA certificates trusted for `https://`: the system's bundle, plus `ca_file`.
    pub fn tls_trust(&self) -> Result<TlsTrust, ConfigError> {
        match &self.ca_file {
            Some(path) => TlsTrust::with_ca_file(path),
            None => Ok(TlsTrust::system()),
        }
    }

    /// The device's HTTP client (DM sessions and downloads) with this configuration's trust.
    pub fn http_agent(&self) -> Result<ureq::Agent, ConfigError> {
        Ok(crate::download::http_agent_with(&self.tls_trust()?))
    }

    /// Checks every value that has a format.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.into(),
        };
        if !(self.server_url.starts_with("http://") || self.server_url.starts_with("https://")) {
            return Err(invalid("server_url", "must start with http:// or https://"));
        }
        if self.server_id.is_empty() || self.server_id.len() > 64 {
            return Err(invalid("server_id", "must be 1 to 64 bytes"));
        }
        check_imei(&self.imei).map_err(|reason| invalid("imei", reason))?;
        if self.credentials.username.is_empty() {
            return Err(invalid("credentials.username", "must not be empty"));
        }
        self.credentials.nonce_bytes()?;
        if self.poll_interval_secs == 0 {
            return Err(invalid("poll_interval_secs", "must be at least 1"));
        }
        let sources = [
            self.card.state.is_some(),
            self.card.reader.is_some(),
            self.card.modem.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() > 1 {
            return Err(invalid(
                "card",
                "give one of `state`, `reader` or `modem`, not several",
            ));
        }
        if self
            .card
            .modem_timeout_ms
            .is_some_and(|t| !(1..=600_000).contains(&t))
        {
            return Err(invalid(
                "card.modem_timeout_ms",
                "must be 1 to 600000 (ten minutes)",
            ));
        }
        if self.card.modem_baud == Some(0) {
            return Err(invalid("card.modem_baud", "must be a line speed, not 0"));
        }
        self.info.vendor_uuid()?;
        self.info.class_uuid()?;
        if self.limits.max_payload_bytes == 0 || self.limits.max_envelope_bytes == 0 {
            return Err(invalid("limits", "sizes must be positive"));
        }
        Ok(())
    }

    /// Settings that start a working agent but that an operator most likely did not mean:
    /// one line each, naming the setting and what to do (`simfota device run` and
    /// `check-update` print them as warnings before the first session). A DM server on this
    /// machine (a loopback address, `localhost`) is a lab, a test or a local tunnel, and draws
    /// none of them, as the server's own plain-HTTP warning spares a loopback listener.
    pub fn risks(&self) -> Vec<String> {
        let mut risks = Vec::new();
        let Some(host) = remote_host(&self.server_url) else {
            return risks;
        };
        if self.server_url.starts_with("http://") {
            risks.push(format!(
                "server_url {} is plain HTTP to another machine ({host}): DM messages would \
                 cross the network in clear, open to reading and to change on the way (use an \
                 https:// URL)",
                self.server_url
            ));
        }
        if self.credentials.auth == AuthScheme::Md5 {
            // OMA DM Security 1.2 §5.3: syncml:auth-md5 digests the credentials and the nonce
            // only; syncml:auth-MAC digests each message, so a change on the way is refused.
            risks.push(
                "credentials.auth = \"md5\": its digest proves the credentials but not the \
                 message, so a DM message can be changed on its way unnoticed (set auth = \
                 \"hmac\", with the device registered for HMAC on the server)"
                    .to_owned(),
            );
        }
        risks
    }

    /// The card source, with command-line overrides (`--state`, `--reader`) taking precedence.
    pub fn card_source(
        &self,
        state: Option<&Path>,
        reader: Option<&str>,
    ) -> Result<CardSource, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            field: "card",
            reason: reason.into(),
        };
        match (state, reader) {
            (Some(_), Some(_)) => Err(invalid("give either --state or --reader, not both")),
            (Some(s), None) => Ok(CardSource::State(s.to_owned())),
            (None, Some(r)) => Ok(CardSource::Reader(r.to_owned())),
            (None, None) => match (&self.card.state, &self.card.reader, &self.card.modem) {
                (Some(s), None, None) => Ok(CardSource::State(s.clone())),
                (None, Some(r), None) => Ok(CardSource::Reader(r.clone())),
                (None, None, Some(m)) => Ok(CardSource::Modem(m.clone())),
                _ => Err(invalid(
                    "no card: set [card] state = \"CARD.state\", reader = \"NAME\" or \
                     modem = \"/dev/ttyUSB2\", or pass --state / --reader",
                )),
            },
        }
    }

    /// The DevId this device reports (DM StdObj 1.2 §5.3.1: "IMEI:" + 15 digits).
    pub fn dev_id(&self) -> String {
        format!("IMEI:{}", self.imei)
    }

    /// The DM endpoint URL.
    pub fn dm_url(&self) -> String {
        format!("{}/dm", self.server_url.trim_end_matches('/'))
    }

    /// The data folder layout.
    pub fn data(&self) -> DataDir {
        DataDir::new(self.data_dir.clone(), self.slot_dir.clone())
    }
}

/// The host of `url` unless it is this machine (a loopback address, `localhost` or a name
/// under it, RFC 6761 §6.3); `None` too for a URL that does not parse (the session then fails
/// on it, with its own error).
fn remote_host(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let local = match url.host()? {
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    (!local).then(|| url.host_str().unwrap_or_default().to_owned())
}

/// The warning for a file of secrets that users other than its owner may read or change
/// (mode wider than 0600): `what` names the file (`the device configuration`), `holds` its
/// secrets (`the DM passwords`). `None` when only its owner can, or when its mode cannot be
/// read (where the file is read, that is an error of its own).
pub fn secret_file_risk(path: &Path, what: &str, holds: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    let others = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "other users can read and change it",
        (true, false) => "other users can read it",
        (false, true) => "other users can change it",
        (false, false) => return None,
    };
    Some(format!(
        "{what} {} holds {holds} and {others} (mode {mode:04o}): chmod 600 {}",
        path.display(),
        path.display()
    ))
}

/// Checks an IMEI: 15 decimal digits whose last is the Luhn check digit (3GPP TS 23.003 §6.2.1,
/// check digit per Annex B).
pub fn check_imei(imei: &str) -> Result<(), &'static str> {
    if imei.len() != 15 || !imei.bytes().all(|b| b.is_ascii_digit()) {
        return Err("an IMEI has exactly 15 decimal digits");
    }
    let mut sum = 0u32;
    for (i, b) in imei.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    if !sum.is_multiple_of(10) {
        return Err("the IMEI's check digit (Luhn) is wrong");
    }
    Ok(())
}

/// The agent's data folder:
///
/// ```text
/// <data>/fumo.json          the persistent FUMO job (crate::fumo)
/// <data>/dm.json            DM session state: nonces, session counter
/// <data>/download/          resumable downloads: <name>.part + <name>.meta.json
/// <data>/slots/             A/B slots (unless slot_dir says otherwise): slot_a.img, slot_b.img,
///                           boot.json
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
    slots: PathBuf,
}

impl DataDir {
    /// A layout rooted at `root`, with an optional separate slot folder.
    pub fn new(root: PathBuf, slot_dir: Option<PathBuf>) -> Self {
        let slots = slot_dir.unwrap_or_else(|| root.join("slots"));
        DataDir { root, slots }
    }

    /// The data folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The persistent FUMO job file.
    pub fn fumo_state(&self) -> PathBuf {
        self.root.join("fumo.json")
    }

    /// The persistent DM session state.
    pub fn dm_state(&self) -> PathBuf {
        self.root.join("dm.json")
    }

    /// The folder for resumable downloads.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("download")
    }

    /// The A/B slot folder.
    pub fn slots(&self) -> &Path {
        &self.slots
    }

    /// Creates the folders.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.downloads())?;
        std::fs::create_dir_all(&self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server_url = "http://127.0.0.1:8443/"
server_id = "simfota-demo"
encoding = "wbxml"
imei = "490154203237518"
data_dir = "data"
notification_port = 47001
poll_interval_secs = 30

[credentials]
username = "dev1"
password = "p1"
server_password = "s1"

[card]
state = "CARD.state"
"#;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DEVICE.toml");
        std::fs::write(&path, GOOD).unwrap();
        let c = DeviceConfig::load(&path).unwrap();
        assert_eq!(c.encoding, Encoding::Wbxml);
        assert_eq!(c.dm_url(), "http://127.0.0.1:8443/dm");
        assert_eq!(c.dev_id(), "IMEI:490154203237518");
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.data().slots(), dir.path().join("data/slots"));
        assert_eq!(
            c.card_source(None, None).unwrap(),
            CardSource::State(dir.path().join("CARD.state"))
        );
        assert_eq!(
            c.card_source(None, Some("Virtual PCD 00 00")).unwrap(),
            CardSource::Reader("Virtual PCD 00 00".into())
        );
        // Round trip through the serializer used by `device init`.
        let again = DeviceConfig::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.imei, c.imei);
    }

    #[test]
    fn a_provisioned_nonce_is_base64_of_1_to_64_bytes() {
        let with = |n: &str| {
            GOOD.replace(
                "server_password = \"s1\"\n",
                &format!("server_password = \"s1\"\nnonce = \"{n}\"\n"),
            )
        };
        let c = DeviceConfig::parse(&with("aW5pdGlhbA==")).unwrap();
        assert_eq!(
            c.credentials.nonce_bytes().unwrap(),
            Some(b"initial".to_vec())
        );
        assert_eq!(DeviceConfig::parse(GOOD).unwrap().credentials.nonce, None);
        for (bad, why) in [("not base64!", "not base64"), ("", "1 to 64 bytes")] {
            let e = DeviceConfig::parse(&with(bad)).unwrap_err().to_string();
            assert!(
                e.contains("credentials.nonce") && e.contains(why),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn card_channel_is_basic_unless_asked() {
        let c = DeviceConfig::parse(GOOD).unwrap();
        assert_eq!(c.card.channel, CardChannel::Basic);
        let logical = GOOD.replace("[card]\n", "[card]\nchannel = \"logical\"\n");
        let c = DeviceConfig::parse(&logical).unwrap();
        assert_eq!(c.card.channel, CardChannel::Logical);
        assert_eq!(
            c.card.channel.mode(),
            simfota_cardlink::ChannelMode::Logical
        );
        let again = DeviceConfig::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.card.channel, CardChannel::Logical);
        let bad = GOOD.replace("[card]\n", "[card]\nchannel = \"modem\"\n");
        let e = DeviceConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("channel") && e.contains("logical"), "{e}");
    }

    #[test]
    fn a_modem_card_with_its_options() {
        let modem = GOOD.replace(
            "state = \"CARD.state\"",
            "modem = \"/dev/ttyUSB2\"\nat_mode = \"csim\"\nmodem_timeout_ms = 1500\nmodem_baud = 115200",
        );
        let c = DeviceConfig::parse(&modem).unwrap();
        assert_eq!(
            c.card_source(None, None).unwrap(),
            CardSource::Modem("/dev/ttyUSB2".into())
        );
        let o = c.card.modem_options();
        assert_eq!(o.at_mode, simfota_cardlink::modem::AtMode::Csim);
        assert_eq!(o.timeout, std::time::Duration::from_millis(1500));
        assert_eq!(o.baud, Some(115_200));
        assert_eq!(o.aid, simfota_cardlink::card::AID.to_vec());
        // The applet runs on a logical channel whatever `channel` says: the basic one is the
        // modem's.
        assert_eq!(c.card.mode(), simfota_cardlink::ChannelMode::Logical);
        let again = DeviceConfig::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.card.at_mode, AtMode::Csim);
        // Command-line overrides still win.
        assert_eq!(
            c.card_source(Some(Path::new("x.state")), None).unwrap(),
            CardSource::State("x.state".into())
        );
        // Defaults: auto, 5 s.
        let plain = GOOD.replace("state = \"CARD.state\"", "modem = \"/dev/ttyACM0\"");
        let o = DeviceConfig::parse(&plain).unwrap().card.modem_options();
        assert_eq!(o.at_mode, simfota_cardlink::modem::AtMode::Auto);
        assert_eq!(o.timeout, std::time::Duration::from_secs(5));
        assert_eq!(o.baud, None);

        for (extra, field, why) in [
            ("state = \"a\"\n", "card", "not several"),
            (
                "modem_timeout_ms = 0\n",
                "card.modem_timeout_ms",
                "1 to 600000",
            ),
            ("modem_baud = 0\n", "card.modem_baud", "not 0"),
        ] {
            let text = plain.replace("[card]\n", &format!("[card]\n{extra}"));
            match DeviceConfig::parse(&text) {
                Err(e @ ConfigError::Invalid { field: f, .. }) => {
                    assert_eq!(f, field);
                    assert!(e.to_string().contains(why), "{e}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
        let bad = plain.replace("[card]\n", "[card]\nat_mode = \"serial\"\n");
        let e = DeviceConfig::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("at_mode") && e.contains("cgla"), "{e}");
    }

    #[test]
    fn refuses_bad_values_with_the_field_named() {
        let cases = [("490154203237519", "imei"), ("49015420323751", "imei")];
        for (imei, field) in cases {
            let text = GOOD.replace("490154203237518", imei);
            match DeviceConfig::parse(&text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{imei}: {other:?}"),
            }
        }
        let text = GOOD.replace("http://127", "ftp://127");
        assert!(matches!(
            DeviceConfig::parse(&text),
            Err(ConfigError::Invalid {
                field: "server_url",
                ..
            })
        ));
        let text = GOOD.replace("state = \"CARD.state\"", "state = \"a\"\nreader = \"b\"");
        assert!(matches!(
            DeviceConfig::parse(&text),
            Err(ConfigError::Invalid { field: "card", .. })
        ));
        let text = GOOD.replace("poll_interval_secs = 30", "poll_intervall = 30");
        assert!(matches!(
            DeviceConfig::parse(&text),
            Err(ConfigError::Parse { .. })
        ));
    }

    /// The example in docs/dm-tree.md is a valid configuration.
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/dm-tree.md");
        let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let c = DeviceConfig::parse(&doc[start..end]).unwrap();
        assert_eq!(c.info.class_uuid().unwrap().unwrap()[15], 2);
        assert_eq!(c.limits.max_envelope_bytes, 16384);
        assert_eq!(
            c.card_source(None, None).unwrap(),
            CardSource::State("CARD.state".into())
        );
    }

    /// The I/O error is the source of `Read`, so the chain the binary prints (`{:#}`) says
    /// it once.
    #[test]
    fn unreadable_file_names_the_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothere.toml");
        let err = anyhow::Error::from(DeviceConfig::load(&path).unwrap_err());
        let text = format!("{err:#}");
        assert_eq!(
            text,
            format!(
                "cannot read the device configuration {}: No such file or directory (os error 2)",
                path.display()
            )
        );
    }

    #[test]
    fn ca_file_is_relative_to_the_config_and_checked_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DEVICE.toml");
        std::fs::write(&path, format!("ca_file = \"ca.pem\"\n{GOOD}")).unwrap();
        let refused = |want: &str| {
            let err = DeviceConfig::load(&path).unwrap_err();
            assert!(matches!(err, ConfigError::CaFile { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "the CA file {} cannot be used: ",
                    dir.path().join("ca.pem").display()
                )) && text.contains(want),
                "{text}"
            );
        };
        refused("cannot read it: No such file or directory");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        refused("it holds no PEM certificate");
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        refused("certificate 1 is not a usable CA certificate");
    }

    /// Each risky setting is named in its own line, with what to do; the same settings
    /// towards this machine, and HMAC over https://, draw none.
    #[test]
    fn risky_settings_are_named_and_a_careful_one_has_none() {
        let with = |url: &str, auth: &str| {
            let text = GOOD.replace("http://127.0.0.1:8443/", url).replace(
                "[credentials]\n",
                &format!("[credentials]\nauth = \"{auth}\"\n"),
            );
            DeviceConfig::parse(&text).unwrap().risks()
        };
        assert_eq!(
            with("http://dm.example.net:8080", "md5"),
            [
                "server_url http://dm.example.net:8080 is plain HTTP to another machine \
                 (dm.example.net): DM messages would cross the network in clear, open to \
                 reading and to change on the way (use an https:// URL)",
                "credentials.auth = \"md5\": its digest proves the credentials but not the \
                 message, so a DM message can be changed on its way unnoticed (set auth = \
                 \"hmac\", with the device registered for HMAC on the server)",
            ]
        );
        assert_eq!(
            with("http://10.1.2.3", "hmac"),
            [
                "server_url http://10.1.2.3 is plain HTTP to another machine (10.1.2.3): DM \
                 messages would cross the network in clear, open to reading and to change on \
                 the way (use an https:// URL)"
            ]
        );
        assert_eq!(
            with("https://dm.example.net", "md5"),
            [
                "credentials.auth = \"md5\": its digest proves the credentials but not the \
                 message, so a DM message can be changed on its way unnoticed (set auth = \
                 \"hmac\", with the device registered for HMAC on the server)"
            ]
        );
        assert_eq!(with("https://dm.example.net", "hmac"), Vec::<String>::new());
        for local in [
            "http://127.0.0.1:8443",
            "http://127.8.9.10",
            "http://localhost:8443",
            "http://LOCALHOST.:8443",
            "http://dm.localhost",
            "http://[::1]:8443",
            "http://[::ffff:127.0.0.1]",
        ] {
            assert_eq!(with(local, "md5"), Vec::<String>::new(), "{local}");
        }
        // Not this machine, however close the name.
        assert_eq!(with("http://localhost.example.net", "hmac").len(), 1);
        assert_eq!(with("http://[::2]", "hmac").len(), 1);
    }

    /// A file of secrets that others may read or change is named with its mode and the fix.
    #[test]
    fn a_secret_file_open_to_others_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DEVICE.toml");
        std::fs::write(&path, GOOD).unwrap();
        let with_mode = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            secret_file_risk(&path, "the device configuration", "the DM passwords")
        };
        let p = path.display();
        for (mode, says) in [
            (0o644, "other users can read it (mode 0644)"),
            (0o640, "other users can read it (mode 0640)"),
            (0o604, "other users can read it (mode 0604)"),
            (0o620, "other users can change it (mode 0620)"),
            (0o666, "other users can read and change it (mode 0666)"),
        ] {
            assert_eq!(
                with_mode(mode).as_deref(),
                Some(
                    format!(
                        "the device configuration {p} holds the DM passwords and {says}: \
                         chmod 600 {p}"
                    )
                    .as_str()
                ),
                "{mode:o}"
            );
        }
        for careful in [0o600, 0o400, 0o700] {
            assert_eq!(with_mode(careful), None, "{careful:o}");
        }
        assert_eq!(
            secret_file_risk(&dir.path().join("nothere"), "the PIN file", "the card PIN"),
            None
        );
    }

    #[test]
    fn missing_card_is_a_clear_error() {
        let text = GOOD.replace("state = \"CARD.state\"", "");
        let c = DeviceConfig::parse(&text).unwrap();
        let err = c.card_source(None, None).unwrap_err().to_string();
        assert!(err.contains("--state"), "{err}");
    }
}
