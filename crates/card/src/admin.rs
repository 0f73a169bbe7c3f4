//! ADMIN (CLA `80`, INS `1E`, P1-P2 `0000`): an issuer-signed change to the server list,
//! the originator list or the policy (design §3). Checks in order: issuer signature, target
//! ICCID = this card, counter above the last one applied. The change and the new counter are
//! written in one transaction, so a command is applied once or not at all.

use simfota_wire::{AdminChange, AdminCommand};

use crate::applet::{Core, Platform};
use crate::crypto::{self, LIMITS};
use crate::layout::{ICCID_MAX, KEY_LEN, O_ADMIN_COUNTER, O_ICCID, O_ISSUER_PK};
use crate::store::Store;
use crate::{CardError, Reason, tables};

pub(crate) fn admin<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let mut issuer = [0u8; KEY_LEN];
    core.p.read(O_ISSUER_PK, &mut issuer)?;
    let issuer =
        crypto::public_key(&issuer).map_err(|_| CardError::Internal("stored issuer key"))?;
    let signed = AdminCommand::decode(&io[..n], &LIMITS)
        .map_err(|_| CardError::WrongData("admin command"))?;
    core.ops.verify();
    let command = signed
        .verify_with(&crypto::Via(&core.platform), &issuer)
        .map_err(|_| CardError::Refused(Reason::AdminSignature))?;
    let mut iccid = [0u8; ICCID_MAX];
    let own = core.p.lv_at(O_ICCID, ICCID_MAX, &mut iccid)?;
    if command.target.as_str().as_bytes() != own {
        return Err(CardError::Refused(Reason::AdminWrongCard));
    }
    if command.counter <= core.p.u64_at(O_ADMIN_COUNTER)? {
        return Err(CardError::Refused(Reason::AdminReplay));
    }
    core.p.transaction(|p| -> Result<(), CardError> {
        match &command.change {
            AdminChange::PutServer { id, key, rights } => {
                tables::put_server(p, id.as_str(), &key.to_sec1(), rights.0)?
            }
            AdminChange::RemoveServer { id } => tables::remove_server(p, id.as_str())?,
            AdminChange::PutOriginator { id, key } => {
                tables::put_originator(p, id.as_str(), &key.to_sec1())?
            }
            AdminChange::RemoveOriginator { id } => tables::remove_originator(p, id.as_str())?,
            AdminChange::SetPolicy(policy) => {
                let mut buf = [0u8; crate::layout::POLICY_MAX];
                let len = policy
                    .encode(&mut buf)
                    .map_err(|_| CardError::WrongData("policy does not encode"))?;
                tables::set_policy(p, &buf[..len])?
            }
        }
        p.put_u64(O_ADMIN_COUNTER, command.counter)?;
        Ok(())
    })?;
    Ok(0)
}
