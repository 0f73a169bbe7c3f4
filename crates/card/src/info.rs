//! GET DATA (CLA `80`, INS `CA`): what the device may read without authentication (design
//! R5, R6: the server list, the policy and the trusted originators are readable by the
//! device) and the card information. Answers are small CBOR items (RFC 8949) with integer
//! keys, built into the I/O buffer; [`decode`] reads them back on the host.

use minicbor::Encoder;
use minicbor::encode::write::Cursor;

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

type Enc<'b> = Encoder<Cursor<&'b mut [u8]>>;

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
    let mut enc: Enc<'_> = Encoder::new(Cursor::new(&mut io[..IO_CAP]));
    match which {
        tag::CARD_INFO => card_info(p, &mut enc)?,
        tag::SERVERS => {
            let mut count = 0u64;
            tables::for_each_server(p, |_, _, _| {
                count += 1;
                Ok(())
            })?;
            enc.array(count)?;
            tables::for_each_server(p, |id, key, rights| {
                enc.array(3)?.str(id)?.bytes(key)?.u8(rights)?;
                Ok(())
            })?;
        }
        tag::ORIGINATORS => {
            let mut count = 0u64;
            tables::for_each_originator(p, |_, _| {
                count += 1;
                Ok(())
            })?;
            enc.array(count)?;
            tables::for_each_originator(p, |id, key| {
                enc.array(2)?.str(id)?.bytes(key)?;
                Ok(())
            })?;
        }
        tag::POLICY => {
            let mut buf = [0u8; POLICY_MAX];
            let bytes = tables::policy_bytes(p, &mut buf)?;
            let n = bytes.len();
            io[..n].copy_from_slice(bytes);
            return Ok(n);
        }
        tag::LOG_STATUS => {
            let st = ring::state(p)?;
            enc.map(6)?;
            enc.u8(1)?
                .u32(st.next)?
                .u8(2)?
                .u32(st.acked)?
                .u8(3)?
                .u32(st.unacked())?;
            enc.u8(4)?
                .u32(st.free())?
                .u8(5)?
                .bytes(&st.head)?
                .u8(6)?
                .u32(LOG_CAPACITY as u32)?;
        }
        tag::PENDING_UPDATE => crate::update::encode_pending(p, &mut enc)?,
        _ => return Err(CardError::WrongP1P2),
    }
    Ok(enc.writer().position())
}

fn text(b: &[u8]) -> Result<&str, CardError> {
    core::str::from_utf8(b).map_err(|_| CardError::Internal("corrupt identity"))
}

fn card_info<S: Store>(p: &crate::layout::Persist<S>, enc: &mut Enc<'_>) -> Result<(), CardError> {
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
    let life = match p.lifecycle()? {
        Lifecycle::Blank => 0,
        Lifecycle::Personalizing => 1,
        Lifecycle::Operational => 2,
    };
    enc.map(12)?;
    enc.u8(1)?.str(text(iccid)?)?.u8(2)?.str(text(imsi)?)?;
    enc.u8(3)?
        .array(2)?
        .u8(APPLET_VERSION.0)?
        .u8(APPLET_VERSION.1)?;
    if pk[0] == 0x04 {
        enc.u8(4)?.bytes(&pk)?;
    } else {
        enc.u8(4)?.null()?;
    }
    enc.u8(5)?.bytes(&cert[..cert_len])?;
    enc.u8(6)?
        .map(6)?
        .u8(1)?
        .u32(LOG_CAPACITY as u32)?
        .u8(2)?
        .u32(MAX_SERVERS as u32)?;
    enc.u8(3)?
        .u32(MAX_ORIGINATORS as u32)?
        .u8(4)?
        .u32(IO_CAP as u32)?;
    enc.u8(5)?
        .u32(PERSISTENT_SIZE as u32)?
        .u8(6)?
        .u32(RECORD_LEN as u32)?;
    enc.u8(7)?
        .map(4)?
        .u8(1)?
        .u32(st.next)?
        .u8(2)?
        .u32(st.acked)?
        .u8(3)?
        .u32(st.unacked())?;
    enc.u8(4)?.u32(st.free())?;
    enc.u8(8)?.u8(life)?;
    enc.u8(9)?.u64(p.u64_at(O_INSTALLED_SEQ)?)?;
    enc.u8(10)?.u64(p.u64_at(O_TRUSTED_TIME)?)?;
    enc.u8(11)?.u64(p.u64_at(O_ADMIN_COUNTER)?)?;
    enc.u8(12)?.bool(crate::update::pending_exists(p)?)?;
    Ok(())
}

/// Host-side readers of the GET DATA answers.
pub mod decode {
    use minicbor::Decoder;
    use minicbor::data::Type;

    /// Why a GET DATA answer does not decode.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("malformed card answer: {0}")]
    pub struct BadAnswer(pub &'static str);

    fn bad<E>(what: &'static str) -> impl Fn(E) -> BadAnswer {
        move |_| BadAnswer(what)
    }

    /// Card information (GET DATA `0101`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CardInfo<'a> {
        /// ICCID digits.
        pub iccid: &'a str,
        /// IMSI digits.
        pub imsi: &'a str,
        /// Applet version (major, minor).
        pub version: (u8, u8),
        /// Card public key, SEC1 uncompressed (absent before key generation).
        pub card_key: Option<&'a [u8]>,
        /// Issuer-signed card certificate (COSE_Sign1), empty before personalization.
        pub certificate: &'a [u8],
        /// Log capacity in entries.
        pub log_capacity: u32,
        /// Server table capacity.
        pub max_servers: u32,
        /// Originator table capacity.
        pub max_originators: u32,
        /// I/O buffer size: largest command data after chaining and largest answer.
        pub io_capacity: u32,
        /// Persistent bytes the applet allocates.
        pub persistent_size: u32,
        /// Log record size.
        pub record_len: u32,
        /// Sequence number of the next log entry.
        pub log_next: u32,
        /// Every entry below this one is acknowledged.
        pub log_acked: u32,
        /// Free log slots.
        pub log_free: u32,
        /// Life cycle: 0 blank, 1 personalizing, 2 operational.
        pub lifecycle: u8,
        /// Installed firmware sequence number (anti-rollback).
        pub installed_sequence: u64,
        /// Trusted time: newest verified token `iat`.
        pub trusted_time: u64,
        /// Last applied admin command counter.
        pub admin_counter: u64,
        /// Whether an authorized update is in progress.
        pub update_pending: bool,
    }

    fn small_map<'a>(
        d: &mut Decoder<'a>,
        mut f: impl FnMut(u8, &mut Decoder<'a>) -> Result<(), BadAnswer>,
    ) -> Result<(), BadAnswer> {
        let n = d
            .map()
            .map_err(bad("map"))?
            .ok_or(BadAnswer("indefinite map"))?;
        for _ in 0..n {
            let k = d.u8().map_err(bad("key"))?;
            f(k, d)?;
        }
        Ok(())
    }

    impl<'a> CardInfo<'a> {
        /// Decodes a card-info answer.
        pub fn decode(b: &'a [u8]) -> Result<Self, BadAnswer> {
            let mut d = Decoder::new(b);
            let mut ci = CardInfo {
                iccid: "",
                imsi: "",
                version: (0, 0),
                card_key: None,
                certificate: &[],
                log_capacity: 0,
                max_servers: 0,
                max_originators: 0,
                io_capacity: 0,
                persistent_size: 0,
                record_len: 0,
                log_next: 0,
                log_acked: 0,
                log_free: 0,
                lifecycle: 0,
                installed_sequence: 0,
                trusted_time: 0,
                admin_counter: 0,
                update_pending: false,
            };
            small_map(&mut d, |k, d| {
                match k {
                    1 => ci.iccid = d.str().map_err(bad("iccid"))?,
                    2 => ci.imsi = d.str().map_err(bad("imsi"))?,
                    3 => {
                        d.array().map_err(bad("version"))?;
                        ci.version = (
                            d.u8().map_err(bad("version"))?,
                            d.u8().map_err(bad("version"))?,
                        );
                    }
                    4 => {
                        if d.datatype().map_err(bad("card key"))? == Type::Null {
                            d.null().map_err(bad("card key"))?;
                        } else {
                            ci.card_key = Some(d.bytes().map_err(bad("card key"))?);
                        }
                    }
                    5 => ci.certificate = d.bytes().map_err(bad("certificate"))?,
                    6 => small_map(d, |k, d| {
                        let v = d.u32().map_err(bad("capacity"))?;
                        match k {
                            1 => ci.log_capacity = v,
                            2 => ci.max_servers = v,
                            3 => ci.max_originators = v,
                            4 => ci.io_capacity = v,
                            5 => ci.persistent_size = v,
                            6 => ci.record_len = v,
                            _ => {}
                        }
                        Ok(())
                    })?,
                    7 => small_map(d, |k, d| {
                        let v = d.u32().map_err(bad("log usage"))?;
                        match k {
                            1 => ci.log_next = v,
                            2 => ci.log_acked = v,
                            4 => ci.log_free = v,
                            _ => {}
                        }
                        Ok(())
                    })?,
                    8 => ci.lifecycle = d.u8().map_err(bad("lifecycle"))?,
                    9 => ci.installed_sequence = d.u64().map_err(bad("sequence"))?,
                    10 => ci.trusted_time = d.u64().map_err(bad("trusted time"))?,
                    11 => ci.admin_counter = d.u64().map_err(bad("admin counter"))?,
                    12 => ci.update_pending = d.bool().map_err(bad("pending"))?,
                    _ => d.skip().map_err(bad("unknown member"))?,
                }
                Ok(())
            })?;
            Ok(ci)
        }
    }

    /// One authorized server (GET DATA `0102`): id, SEC1 key, rights bits.
    pub type ServerRecord<'a> = (&'a str, &'a [u8], u8);

    /// Decodes the server list into `out`, returns how many were written.
    pub fn servers<'a>(b: &'a [u8], out: &mut [ServerRecord<'a>]) -> Result<usize, BadAnswer> {
        let mut d = Decoder::new(b);
        let n = d
            .array()
            .map_err(bad("servers"))?
            .ok_or(BadAnswer("indefinite"))? as usize;
        if n > out.len() {
            return Err(BadAnswer("more servers than room"));
        }
        for slot in out.iter_mut().take(n) {
            d.array().map_err(bad("server"))?;
            *slot = (
                d.str().map_err(bad("server id"))?,
                d.bytes().map_err(bad("server key"))?,
                d.u8().map_err(bad("rights"))?,
            );
        }
        Ok(n)
    }

    /// One trusted originator (GET DATA `0104`): id, SEC1 key.
    pub type OriginatorRecord<'a> = (&'a str, &'a [u8]);

    /// Decodes the originator list into `out`, returns how many were written.
    pub fn originators<'a>(
        b: &'a [u8],
        out: &mut [OriginatorRecord<'a>],
    ) -> Result<usize, BadAnswer> {
        let mut d = Decoder::new(b);
        let n = d
            .array()
            .map_err(bad("originators"))?
            .ok_or(BadAnswer("indefinite"))? as usize;
        if n > out.len() {
            return Err(BadAnswer("more originators than room"));
        }
        for slot in out.iter_mut().take(n) {
            d.array().map_err(bad("originator"))?;
            *slot = (
                d.str().map_err(bad("originator id"))?,
                d.bytes().map_err(bad("originator key"))?,
            );
        }
        Ok(n)
    }

    /// The authorized update in progress (GET DATA `0106`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PendingUpdate<'a> {
        /// Update id (the token's `cti`).
        pub update_id: &'a [u8],
        /// Integrity: 0 not checked, 1 passed, 2 failed.
        pub integrity: u8,
        /// Manifest sequence number.
        pub sequence: u64,
        /// Signed image size.
        pub image_size: u64,
        /// Signed image digest.
        pub image_digest: [u8; 32],
    }

    impl<'a> PendingUpdate<'a> {
        /// Decodes the answer; `None` when no update is in progress (empty map).
        pub fn decode(b: &'a [u8]) -> Result<Option<Self>, BadAnswer> {
            let mut d = Decoder::new(b);
            let mut p = PendingUpdate {
                update_id: &[],
                integrity: 0,
                sequence: 0,
                image_size: 0,
                image_digest: [0; 32],
            };
            let mut any = false;
            small_map(&mut d, |k, d| {
                any = true;
                match k {
                    1 => p.update_id = d.bytes().map_err(bad("update id"))?,
                    2 => p.integrity = d.u8().map_err(bad("integrity"))?,
                    3 => p.sequence = d.u64().map_err(bad("sequence"))?,
                    4 => p.image_size = d.u64().map_err(bad("image size"))?,
                    5 => {
                        p.image_digest = d
                            .bytes()
                            .map_err(bad("image digest"))?
                            .try_into()
                            .map_err(bad("image digest length"))?
                    }
                    _ => d.skip().map_err(bad("member"))?,
                }
                Ok(())
            })?;
            Ok(any.then_some(p))
        }
    }

    /// Log status (GET DATA `0105`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct LogStatus {
        /// Next sequence number.
        pub next: u32,
        /// Acknowledged below this.
        pub acked: u32,
        /// Free slots.
        pub free: u32,
        /// Chain head.
        pub head: [u8; 32],
    }

    impl LogStatus {
        /// Decodes a log-status answer.
        pub fn decode(b: &[u8]) -> Result<Self, BadAnswer> {
            let mut d = Decoder::new(b);
            let mut s = LogStatus::default();
            small_map(&mut d, |k, d| {
                match k {
                    1 => s.next = d.u32().map_err(bad("next"))?,
                    2 => s.acked = d.u32().map_err(bad("acked"))?,
                    4 => s.free = d.u32().map_err(bad("free"))?,
                    5 => {
                        s.head = d
                            .bytes()
                            .map_err(bad("head"))?
                            .try_into()
                            .map_err(bad("head length"))?
                    }
                    _ => d.skip().map_err(bad("member"))?,
                }
                Ok(())
            })?;
            Ok(s)
        }
    }
}
