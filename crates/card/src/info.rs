//! GET DATA (CLA `00` or `80`, INS `CA`): what the device may read without authentication (design
//! R5, R6: the server list, the policy and the trusted originators are readable by the
//! device) and the card information. Every answer is encoded by the contract module
//! (`simfota_wire::contract`), the one definition the device and the server decode with,
//! straight into the I/O buffer.

use simfota_wire::contract::{
    CardInfo, Digits, Lifecycle as WireLifecycle, LogStatus, OriginatorListWriter, ServerListWriter,
};
use simfota_wire::{Error as WireError, Rights};

use crate::apdu::Command;
use crate::applet::{APPLET_VERSION, Core, IO_CAP, Platform};
use crate::layout::{
    CERT_MAX, ICCID_MAX, IMSI_MAX, KEY_LEN, LOG_CAPACITY, Lifecycle, MAX_ORIGINATORS, MAX_SERVERS,
    O_ADMIN_COUNTER, O_CARD_PK, O_CERT, O_ICCID, O_IMSI, O_INSTALLED_SEQ, O_TRUSTED_TIME,
    PERSISTENT_SIZE, POLICY_MAX, RECORD_LEN,
};
use crate::store::Store;
use crate::{CardError, ring, tables};

/// P1-P2 values of GET DATA.
pub mod tag {
    /// Card information (identity, key, certificate, capacities, log usage).
    pub const CARD_INFO: u16 = 0x0101;
    /// Authorized servers: ids, keys, rights.
    pub const SERVERS: u16 = 0x0102;
    /// The policy, as the wire crate encodes it.
    pub const POLICY: u16 = 0x0103;
    /// Trusted originators: ids, keys.
    pub const ORIGINATORS: u16 = 0x0104;
    /// Log counters and chain head.
    pub const LOG_STATUS: u16 = 0x0105;
    /// The authorized update in progress, if any.
    pub const PENDING_UPDATE: u16 = 0x0106;
}

/// An encoding failure: the answer does not fit, or stored data the contract refuses (which
/// only a corrupt image can hold: everything was checked when it was stored).
fn encoding(e: WireError) -> CardError {
    match e {
        WireError::BufferTooSmall => CardError::Internal("answer does not fit the I/O buffer"),
        _ => CardError::Internal("stored data does not encode"),
    }
}

pub(crate) fn get_data<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    io: &mut [u8],
) -> Result<usize, CardError> {
    let which = u16::from_be_bytes([cmd.p1, cmd.p2]);
    // Card info is readable during personalization too (to check what was stored).
    if which != tag::CARD_INFO {
        crate::commands::require_operational(core)?;
    }
    let p = &core.p;
    let out = &mut io[..IO_CAP];
    match which {
        tag::CARD_INFO => card_info(p, out),
        tag::SERVERS => {
            let mut count = 0;
            tables::for_each_server(p, |_, _, _| {
                count += 1;
                Ok(())
            })?;
            let mut w = ServerListWriter::new(out, count).map_err(encoding)?;
            tables::for_each_server(p, |id, key, rights| {
                w.push(id, key, Rights(rights)).map_err(encoding)
            })?;
            w.finish().map_err(encoding)
        }
        tag::ORIGINATORS => {
            let mut count = 0;
            tables::for_each_originator(p, |_, _| {
                count += 1;
                Ok(())
            })?;
            let mut w = OriginatorListWriter::new(out, count).map_err(encoding)?;
            tables::for_each_originator(p, |id, key| w.push(id, key).map_err(encoding))?;
            w.finish().map_err(encoding)
        }
        tag::POLICY => {
            let mut buf = [0u8; POLICY_MAX];
            let bytes = tables::policy_bytes(p, &mut buf)?;
            let n = bytes.len();
            out[..n].copy_from_slice(bytes);
            Ok(n)
        }
        tag::LOG_STATUS => {
            let st = ring::state(p)?;
            LogStatus {
                next: st.next,
                acked: st.acked,
                free: st.free(),
                head: st.head,
                capacity: LOG_CAPACITY as u32,
            }
            .encode(out)
            .map_err(encoding)
        }
        tag::PENDING_UPDATE => crate::update::encode_pending(p, out),
        _ => Err(CardError::WrongP1P2),
    }
}

fn digits<const N: usize>(b: &[u8]) -> Result<Digits<N>, CardError> {
    core::str::from_utf8(b)
        .ok()
        .and_then(|s| Digits::new(s).ok())
        .ok_or(CardError::Internal("corrupt identity"))
}

fn card_info<S: Store>(p: &crate::layout::Persist<S>, out: &mut [u8]) -> Result<usize, CardError> {
    let mut iccid = [0u8; ICCID_MAX];
    let iccid = p.lv_at(O_ICCID, ICCID_MAX, &mut iccid)?;
    let mut imsi = [0u8; IMSI_MAX];
    let imsi = p.lv_at(O_IMSI, IMSI_MAX, &mut imsi)?;
    let mut pk = [0u8; KEY_LEN];
    p.read(O_CARD_PK, &mut pk)?;
    let mut cert = [0u8; CERT_MAX];
    let cert_len = usize::from(p.u16_at(O_CERT)?).min(CERT_MAX);
    p.read(O_CERT + 2, &mut cert[..cert_len])?;
    let st = ring::state(p)?;
    let info = CardInfo {
        iccid: digits(iccid)?,
        imsi: digits(imsi)?,
        // Before key generation the key bytes are not a SEC1 point.
        card_key: (pk[0] == 0x04).then_some(pk),
        certificate: &cert[..cert_len],
        version: APPLET_VERSION,
        installed_sequence: p.u64_at(O_INSTALLED_SEQ)?,
        log_next: st.next,
        log_acked: st.acked,
        log_free: st.free(),
        update_pending: crate::update::pending_exists(p)?,
        lifecycle: match p.lifecycle()? {
            Lifecycle::Blank => WireLifecycle::Blank,
            Lifecycle::Personalizing => WireLifecycle::Personalizing,
            Lifecycle::Operational => WireLifecycle::Operational,
        },
        trusted_time: p.u64_at(O_TRUSTED_TIME)?,
        admin_counter: p.u64_at(O_ADMIN_COUNTER)?,
        log_capacity: LOG_CAPACITY as u32,
        max_servers: MAX_SERVERS as u32,
        max_originators: MAX_ORIGINATORS as u32,
        io_capacity: IO_CAP as u32,
        persistent_size: PERSISTENT_SIZE as u32,
        record_len: RECORD_LEN as u32,
    };
    info.encode(out).map_err(encoding)
}
