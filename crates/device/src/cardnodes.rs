//! The card subtree `./SIMFOTA/Card` (docs/dm-tree.md): the device relays between the DM
//! server and the card. Nothing here is trusted by either side; the card checks every signed
//! object itself, and its answers are signed or encrypted for the server.

use std::sync::{Arc, Mutex};

use simfota_cardlink::client::ClientError;
use simfota_cardlink::wire::contract::{Node, OriginatorEntry, ServerEntry};
use simfota_cardlink::{CardClient, Channel};
use simfota_syncml::StatusCode;
use simfota_syncml::tree::{NodeValue, SubtreeHandler};
use simfota_syncml::uri::NodeUri;

/// Where the card subtree is mounted (the contract module's node table).
pub const CARD_ROOT: &str = Node::CARD_ROOT;

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

/// A value of `node`, in the Format and MIME type the node declares.
fn node_value(node: Node, bytes: &[u8]) -> NodeValue {
    NodeValue {
        format: node.format().as_str().into(),
        mime_type: node.mime_type().map(str::to_owned),
        data: node.encode_value(bytes),
    }
}

/// The octets of a value written to `node`, by the Format of the item that carried it (the
/// session already turned `b64` items into `bin`); anything else is refused, never guessed.
fn value_bytes(node: Node, value: &NodeValue) -> Result<Vec<u8>, StatusCode> {
    node.decode_value(Some(&value.format), &value.data)
        .map_err(|_| StatusCode::BAD_REQUEST)
}

/// A list the contract module encodes; a failure here is the device's own.
fn encoded(list: Result<Vec<u8>, simfota_cardlink::wire::Error>) -> Result<Vec<u8>, StatusCode> {
    list.map_err(|_| StatusCode::COMMAND_FAILED)
}

impl<C: Channel + Send> SubtreeHandler for CardNodes<C> {
    fn get(&mut self, uri: &NodeUri) -> Result<NodeValue, StatusCode> {
        let rel = uri.relative_to(&self.root).ok_or(StatusCode::NOT_FOUND)?;
        if rel.is_empty() {
            return Ok(NodeValue::interior(
                &Node::CARD.map(|n| n.name().to_owned()),
            ));
        }
        let node = Node::card_child(rel).ok_or(StatusCode::NOT_FOUND)?;
        let bytes = match node {
            // Each Get asks the card for a new one-time nonce (design §4 step 2).
            Node::CardNonce => self.with_card(|c| c.get_nonce())?.0.to_vec(),
            // The card's answer, checked against the contract, is the node's value.
            Node::CardInfo => self.with_card(|c| c.card_info_bytes())?,
            Node::CardServers => {
                encoded(ServerEntry::encode_vec(&self.with_card(|c| c.servers())?))?
            }
            Node::CardOriginators => encoded(OriginatorEntry::encode_vec(
                &self.with_card(|c| c.originators())?,
            ))?,
            Node::CardPolicy => {
                let policy = self.with_card(|c| c.policy())?;
                let mut buf = [0u8; simfota_cardlink::wire::Policy::MAX_ENCODED_LEN];
                let n = policy
                    .encode(&mut buf)
                    .map_err(|_| StatusCode::COMMAND_FAILED)?;
                buf[..n].to_vec()
            }
            Node::CardLogResponse => self.log_response.clone().ok_or(StatusCode::NOT_FOUND)?,
            Node::CardAdminResult => self
                .admin_result
                .clone()
                .ok_or(StatusCode::NOT_FOUND)?
                .into_bytes(),
            // Write-only relays.
            _ => return Err(StatusCode::COMMAND_NOT_ALLOWED),
        };
        Ok(node_value(node, &bytes))
    }

    fn replace(&mut self, uri: &NodeUri, value: NodeValue) -> Result<(), StatusCode> {
        let rel = uri.relative_to(&self.root).ok_or(StatusCode::NOT_FOUND)?;
        if rel.is_empty() {
            return Err(StatusCode::COMMAND_NOT_ALLOWED);
        }
        let node = Node::card_child(rel).ok_or(StatusCode::NOT_FOUND)?;
        match node {
            Node::CardLogRequest => {
                let request = value_bytes(node, &value)?;
                self.log_response = None;
                let export = self.with_card(|c| c.read_log(&request))?;
                self.log_response = Some(export);
            }
            Node::CardLogAck => {
                let ack = value_bytes(node, &value)?;
                self.with_card(|c| c.ack_log(&ack))?;
            }
            Node::CardAdmin => {
                let cmd = value_bytes(node, &value)?;
                let mut card = self.card.lock().map_err(|_| StatusCode::COMMAND_FAILED)?;
                match card.admin(&cmd) {
                    Ok(()) => self.admin_result = Some("9000".into()),
                    Err(e) => {
                        self.admin_result = e.status().map(|sw| format!("{:04X}", sw.0));
                        return Err(status_for(&e));
                    }
                }
            }
            _ => return Err(StatusCode::COMMAND_NOT_ALLOWED),
        }
        Ok(())
    }
}
