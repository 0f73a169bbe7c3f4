//! The real DM server (`simfota-server`, SQLite in a temporary folder) on loopback, with one
//! operator's worth of set-up: keys, a card personalized for that server, a registered device,
//! an uploaded package and a campaign. The end-to-end tests differ only in how the agent
//! reaches the card (in process, or through pcscd).

#![allow(clippy::panic)] // test support: a failure here is a test failure

use std::path::Path;
use std::sync::{Arc, Mutex};

use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::{Channel, FileCard, InProcessChannel};
use simfota_device::agent::Agent;
use simfota_device::config::DeviceConfig;
use simfota_device::download::{TlsTrust, http_agent, http_agent_with};
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{Iccid, IntegrityMode, Policy, PublicKey, Rights, UnauthorizedRule};

pub const IMEI: &str = "490154203237518";
pub const ICCID: &str = "89882110000000000010";
const SERVER_ID: &str = "simfota-demo";

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

/// How a server under test serves HTTPS.
pub struct TlsSetup {
    /// Its certificate chain and key.
    pub files: simfota_server::config::TlsFiles,
    /// The CA that signed the certificate.
    pub ca: std::path::PathBuf,
    /// The host name the operator and the device use for it (`127.0.0.1` or `localhost`).
    pub host: String,
}

/// A running server and the operator's keys and API access.
pub struct RealServer {
    rt: tokio::runtime::Runtime,
    server: simfota_server::RunningServer,
    base: String,
    /// The operator's HTTP client (trusting the test CA when the server serves TLS).
    http: ureq::Agent,
    auth: String,
    issuer: SigningKey,
    oem: SigningKey,
    server_pub: PublicKey,
}

impl RealServer {
    /// Starts the server in this process on a free port, data under `d/srv`.
    pub fn start(d: &Path) -> Self {
        Self::start_with_tls(d, None)
    }

    /// [`start`](Self::start), serving HTTPS with `tls` when given. The operator's API calls
    /// and [`device_config`](Self::device_config) then reach the server at `tls.host`, trusting
    /// `tls.ca`; the server still tells devices its own `https://127.0.0.1:PORT` base.
    pub fn start_with_tls(d: &Path, tls: Option<TlsSetup>) -> Self {
        let mut rng = rand_core::OsRng;
        let issuer = SigningKey::random(&mut rng);
        let oem = SigningKey::random(&mut rng);
        std::fs::write(d.join("issuer.pub.pem"), pem(&issuer)).unwrap();
        std::fs::write(d.join("oem.pub.pem"), pem(&oem)).unwrap();

        let mut cfg = simfota_server::ServerConfig::with_data_dir(d.join("srv"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server_id = SERVER_ID.into();
        cfg.tls = tls.as_ref().map(|t| t.files.clone());
        cfg.issuer_keys = vec![d.join("issuer.pub.pem")];
        cfg.originators = vec![simfota_server::config::OriginatorConfig {
            id: "oem".into(),
            key: d.join("oem.pub.pem"),
        }];
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt.block_on(simfota_server::start(cfg)).unwrap();
        let (base, http) = match &tls {
            Some(t) => (
                server.base_url().replace("127.0.0.1", &t.host),
                http_agent_with(&TlsTrust::with_ca_file(&t.ca).unwrap()),
            ),
            None => (server.base_url().to_owned(), http_agent()),
        };
        let token = std::fs::read_to_string(d.join("srv/api-token")).unwrap();
        let server_pub = std::fs::read_to_string(d.join("srv/server-pub.pem")).unwrap();
        let server_pub = simfota_wire::p256::PublicKey::from_public_key_pem(&server_pub).unwrap();
        let server_pub = PublicKey::from_sec1(server_pub.to_sec1_bytes().as_ref()).unwrap();
        RealServer {
            rt,
            server,
            base,
            http,
            auth: format!("Bearer {}", token.trim()),
            issuer,
            oem,
            server_pub,
        }
    }

    /// Personalizes the card of `state` in process: this server authorized, the originator
    /// trusted, unlisted servers refused. The state file is closed again on return.
    pub fn personalize_card(&self, state: &Path) {
        let card = FileCard::open(state).unwrap();
        let mut client = CardClient::new(InProcessChannel::new(card, "in-process"));
        client
            .personalize(
                &self.issuer,
                &Personalization {
                    issuer_name: "operator.example".into(),
                    iccid: Iccid::parse(ICCID).unwrap(),
                    imsi: "001010123456789".into(),
                    pin: ("1234".into(), 3),
                    puk: ("12345678".into(), 10),
                    servers: vec![(SERVER_ID.into(), self.server_pub, Rights::ALL)],
                    originators: vec![("oem".into(), PublicKey::from(&self.oem))],
                    policy: Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
                },
            )
            .unwrap();
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    /// The operator's side: registers the device, uploads firmware 2.0 (payload by relative
    /// URI) and starts a campaign for it.
    pub fn publish_update(&self) {
        self.register_device();
        self.publish(&content(200_000, 2), "2.0", 2, "c1");
    }

    /// Registers the device through the REST API.
    pub fn register_device(&self) {
        self.register_device_with(None);
    }

    /// Registers the device, with the nonce its account was provisioned with (base64).
    pub fn register_device_with(&self, nonce: Option<&str>) {
        let nonce = nonce.map_or_else(String::new, |n| format!(r#","nonce":"{n}""#));
        let http = &self.http;
        let mut r = http
            .post(&self.api("devices"))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(format!(
                r#"{{"imei":"{IMEI}","username":"dev-1","password":"client-secret","server_password":"server-secret","model":"EX-1"{nonce}}}"#
            ))
            .unwrap();
        assert!(
            r.status().is_success(),
            "{}",
            r.body_mut().read_to_string().unwrap()
        );
    }

    /// Uploads a full package for `image` (payload by relative URI) and starts a campaign
    /// `campaign` for it on every registered device.
    pub fn publish(&self, image: &[u8], version: &str, sequence: u64, campaign: &str) {
        let http = &self.http;
        let v2 = image;
        let env = suit::build(
            &BuildParams {
                vendor_id: [1; 16],
                class_id: [2; 16],
                sequence,
                image: ImageSource::Bytes(v2),
                name: Some("firmware"),
                version: Some(version),
                uri: Some("payload"),
                integrate: false,
                precursor_digest: None,
            },
            &self.oem,
        )
        .unwrap();
        let boundary = "simfota-boundary-7";
        let mut body = Vec::new();
        for (name, bytes) in [("envelope", &env[..]), ("payload", v2)] {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut r = http
            .post(&self.api("packages"))
            .header("Authorization", &self.auth)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..])
            .unwrap();
        let pkg = r.body_mut().read_to_string().unwrap();
        let pkg: serde_json::Value = serde_json::from_str(&pkg).unwrap_or_else(|_| panic!("{pkg}"));
        let pkg_id = pkg["id"].as_i64().unwrap();
        let mut r = http
            .post(&self.api("campaigns"))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(format!(
                r#"{{"name":"{campaign}","package_id":{pkg_id},"waves":[100],"success_threshold":90,"error_threshold":10}}"#
            ))
            .unwrap();
        assert!(
            r.status().is_success(),
            "{}",
            r.body_mut().read_to_string().unwrap()
        );
    }

    /// The device's configuration (`card` is the `[card]` table's line: `state = ...` or
    /// `reader = ...`), with firmware 1.0 in slot A.
    pub fn device_config(&self, d: &Path, card: &str) -> DeviceConfig {
        let text = format!(
            "server_url = \"{}\"\nserver_id = \"{SERVER_ID}\"\nimei = \"{IMEI}\"\ndata_dir = \"{}\"\n\
             [credentials]\nusername = \"dev-1\"\npassword = \"client-secret\"\nserver_password = \"server-secret\"\n\
             [card]\n{card}\n[info]\nmodel = \"EX-1\"\n",
            self.base,
            d.join("dev").display(),
        );
        let dcfg = DeviceConfig::parse(&text).unwrap();
        std::fs::write(d.join("v1.bin"), content(150_000, 1)).unwrap();
        SlotStore::init(dcfg.data().slots(), &d.join("v1.bin"), "1.0").unwrap();
        dcfg
    }

    /// Runs the agent's check-update with `client` and asserts what the device and the
    /// server both show: result 200 with the card's receipt verified, firmware 2.0 active.
    pub fn check_update_succeeds<C: Channel + Send + 'static>(
        &self,
        dcfg: &DeviceConfig,
        client: CardClient<C>,
    ) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let sink = said.clone();
        let mut agent = Agent {
            cfg: dcfg.clone(),
            card: Arc::new(Mutex::new(client)),
            prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
            boot_check: Box::new(StandardBootCheck),
            progress: false,
            say: Box::new(move |s: &str| sink.lock().unwrap().push(s.to_owned())),
        };
        let outcome = agent.check_update().unwrap();
        let said = said.lock().unwrap().clone();
        assert_eq!(outcome.reported, Some((200, true)), "{said:?}");
        assert_eq!(
            SlotStore::open(dcfg.data().slots())
                .unwrap()
                .active_version()
                .unwrap(),
            "2.0"
        );

        let http = &self.http;
        let mut r = http
            .get(&self.api(&format!("devices/{IMEI}")))
            .header("Authorization", &self.auth)
            .call()
            .unwrap();
        let dev: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let job = &dev["jobs"][0];
        assert_eq!(job["state"], "succeeded", "{dev}");
        assert_eq!(job["result_code"], 200, "{dev}");
        assert_eq!(job["receipt_status"], "verified", "{dev}");
        assert_eq!(dev["device"]["iccid"], ICCID, "{dev}");
        assert_eq!(dev["device"]["fw_version"], "2.0", "{dev}");
    }

    /// Failed device authentications the server counted (`/metrics`).
    pub fn auth_failures(&self) -> u64 {
        let mut r = self
            .http
            .get(&format!("{}/metrics", self.base))
            .call()
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        text.lines()
            .find(|l| l.starts_with("simfota_verification_failures_total{kind=\"device_auth\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// The device's record as the REST API shows it (`device` and its `jobs`).
    pub fn device_record(&self) -> serde_json::Value {
        let http = &self.http;
        let mut r = http
            .get(&self.api(&format!("devices/{IMEI}")))
            .header("Authorization", &self.auth)
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// Stops the server gracefully.
    pub fn shutdown(self) {
        self.rt.block_on(self.server.shutdown()).unwrap();
    }
}
