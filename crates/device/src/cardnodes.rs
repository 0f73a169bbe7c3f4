//! The card subtree `./SIMFOTA/Card` (docs/dm-tree.md): the device relays between the DM
//! server and the card. Nothing here is trusted by either side; the card checks every signed
//! object itself, and its answers are signed or encrypted for the server.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use simfota_cardlink::client::{CardInfo, ClientError};
use simfota_cardlink::{CardClient, Channel};
use simfota_syncml::StatusCode;
use simfota_syncml::tree::{NodeValue, SubtreeHandler};
use simfota_syncml::uri::NodeUri;

/// Where the card subtree is mounted.
pub const CARD_ROOT: &str = "./SIMFOTA/Card";

/// The card, shared between the DM tree (card nodes) and the update executor.
pub type SharedCard<C> = Arc<Mutex<CardClient<C>>>;

/// The handler of `./SIMFOTA/Card`.
pub struct CardNodes<C: Channel> {
    root: NodeUri,
    card: SharedCard<C>,
    log_response: Option<Vec<u8>>,
    admin_result: Option<String>,
}

impl<C: Channel> CardNodes<C> {
    /// The handler over a shared card.
    pub fn new(card: SharedCard<C>) -> Result<Self, simfota_syncml::uri::UriError> {
        Ok(CardNodes {
            root: NodeUri::parse(CARD_ROOT)?,
            card,
            log_response: None,
            admin_result: None,
        })
    }

    fn with_card<T>(
        &self,
        f: impl FnOnce(&mut CardClient<C>) -> Result<T, ClientError>,
    ) -> Result<T, StatusCode> {
        let mut card = self.card.lock().map_err(|_| StatusCode::COMMAND_FAILED)?;
        f(&mut card).map_err(|e| status_for(&e))
    }
}

/// The DM status for a card error (docs/dm-tree.md, "Status codes of the card nodes").
pub fn status_for(e: &ClientError) -> StatusCode {
    match e {
        ClientError::Link(_) => StatusCode(503),
        ClientError::Refused { .. }
        | ClientError::WrongPin { .. }
        | ClientError::Blocked { .. } => StatusCode::FORBIDDEN,
        ClientError::Input(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::COMMAND_FAILED,
    }
}

fn b64_value(bytes: &[u8]) -> NodeValue {
    NodeValue {
        format: "b64".into(),
        mime_type: None,
        data: B64.encode(bytes).into_bytes(),
    }
}

/// The value's bytes: the session already decoded `b64` items to `bin`; a `chr` item that
/// holds base64 text is decoded here.
fn raw_bytes(value: &NodeValue) -> Result<Vec<u8>, StatusCode> {
    if value.format == "chr" || value.format == "b64" {
        let text = std::str::from_utf8(&value.data).map_err(|_| StatusCode::BAD_REQUEST)?;
        return B64.decode(text.trim()).map_err(|_| StatusCode::BAD_REQUEST);
    }
    Ok(value.data.clone())
}

/// `Info` as CBOR (docs/dm-tree.md "Card answers").
pub fn encode_info(info: &CardInfo) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = (|| -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
        e.map(10)?;
        e.u8(1)?.str(&info.iccid)?;
        e.u8(2)?.str(&info.imsi)?;
        e.u8(3)?;
        match &info.card_key {
            Some(k) => e.bytes(k)?,
            None => e.null()?,
        };
        e.u8(4)?.bytes(&info.certificate)?;
        e.u8(5)?.array(2)?.u8(info.version.0)?.u8(info.version.1)?;
        e.u8(6)?.u64(info.installed_sequence)?;
        e.u8(7)?.u32(info.log_next)?;
        e.u8(8)?.u32(info.log_acked)?;
        e.u8(9)?.u32(info.log_free)?;
        e.u8(10)?.bool(info.update_pending)?;
        Ok(())
    })();
    e.into_writer()
}

impl<C: Channel + Send> SubtreeHandler for CardNodes<C> {
    fn get(&mut self, uri: &NodeUri) -> Result<NodeValue, StatusCode> {
        let rel = uri.relative_to(&self.root).ok_or(StatusCode::NOT_FOUND)?;
        Ok(match rel {
            "" => NodeValue::interior(
                &[
                    "Nonce",
                    "Info",
                    "Servers",
                    "Policy",
                    "Originators",
                    "LogRequest",
                    "LogResponse",
                    "LogAck",
                    "Admin",
                    "AdminResult",
                ]
                .map(String::from),
            ),
            // Each Get asks the card for a new one-time nonce (design §4 step 2).
            "Nonce" => b64_value(&self.with_card(|c| c.get_nonce())?.0),
            "Info" => b64_value(&encode_info(&self.with_card(|c| c.card_info())?)),
            "Servers" => {
                let list = self.with_card(|c| c.servers())?;
                let mut e = minicbor::Encoder::new(Vec::new());
                let _ = (|| -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
                    e.array(list.len() as u64)?;
                    for s in &list {
                        e.array(3)?
                            .str(&s.id)?
                            .bytes(&s.key.to_sec1())?
                            .u8(s.rights.0)?;
                    }
                    Ok(())
                })();
                b64_value(&e.into_writer())
            }
            "Originators" => {
                let list = self.with_card(|c| c.originators())?;
                let mut e = minicbor::Encoder::new(Vec::new());
                let _ = (|| -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
                    e.array(list.len() as u64)?;
                    for o in &list {
                        e.array(2)?.str(&o.id)?.bytes(&o.key.to_sec1())?;
                    }
                    Ok(())
                })();
                b64_value(&e.into_writer())
            }
            "Policy" => {
                let policy = self.with_card(|c| c.policy())?;
                let mut buf = [0u8; simfota_wire::Policy::MAX_ENCODED_LEN];
                let n = policy
                    .encode(&mut buf)
                    .map_err(|_| StatusCode::COMMAND_FAILED)?;
                b64_value(&buf[..n])
            }
            "LogResponse" => b64_value(self.log_response.as_deref().ok_or(StatusCode::NOT_FOUND)?),
            "AdminResult" => {
                NodeValue::chr(self.admin_result.clone().ok_or(StatusCode::NOT_FOUND)?)
            }
            // Write-only relays.
            "LogRequest" | "LogAck" | "Admin" => return Err(StatusCode::COMMAND_NOT_ALLOWED),
            _ => return Err(StatusCode::NOT_FOUND),
        })
    }

    fn replace(&mut self, uri: &NodeUri, value: NodeValue) -> Result<(), StatusCode> {
        let rel = uri.relative_to(&self.root).ok_or(StatusCode::NOT_FOUND)?;
        match rel {
            "LogRequest" => {
                let request = raw_bytes(&value)?;
                self.log_response = None;
                let export = self.with_card(|c| c.read_log(&request))?;
                self.log_response = Some(export);
            }
            "LogAck" => {
                let ack = raw_bytes(&value)?;
                self.with_card(|c| c.ack_log(&ack))?;
            }
            "Admin" => {
                let cmd = raw_bytes(&value)?;
                let mut card = self.card.lock().map_err(|_| StatusCode::COMMAND_FAILED)?;
                match card.admin(&cmd) {
                    Ok(()) => self.admin_result = Some("9000".into()),
                    Err(e) => {
                        self.admin_result = e.status().map(|sw| format!("{:04X}", sw.0));
                        return Err(status_for(&e));
                    }
                }
            }
            "" | "Nonce" | "Info" | "Servers" | "Policy" | "Originators" | "LogResponse"
            | "AdminResult" => return Err(StatusCode::COMMAND_NOT_ALLOWED),
            _ => return Err(StatusCode::NOT_FOUND),
        }
        Ok(())
    }
}
