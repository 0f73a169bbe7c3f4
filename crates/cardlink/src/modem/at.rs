//! The AT command syntax of the modem link, sans-IO: command lines to send, answer lines to
//! classify and decode (3GPP TS 27.007 §8.17 +CSIM, §8.43 +CGLA, §8.45 +CCHO, §8.46 +CCHC,
//! §9.2 +CME ERROR; framing of ITU-T V.250 §5.7).
//!
//! Nothing here reads or writes a port: [`LineBuffer`] cuts received bytes into lines,
//! [`classify`] says what a line is for the command in flight, and the `parse_*` functions
//! decode an answer into bytes or a session id, each failure a precise [`AtError`].

/// Longest answer line the link accepts: a `+CGLA:` of a 64 KiB response in hex, with room.
pub const MAX_LINE: usize = 2 * 65_538 + 64;

/// Why a line from the modem is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtError {
    /// The answer does not start with the expected information text prefix.
    #[error("expected an answer starting with `{expected}`")]
    Prefix {
        /// The prefix, e.g. `+CGLA:`.
        expected: &'static str,
    },
    /// No comma between `<length>` and the data.
    #[error("no comma between <length> and the data")]
    MissingComma,
    /// `<length>` is not a decimal number.
    #[error("<length> {0:?} is not a decimal number")]
    BadLength(String),
    /// The data is not a quoted string (27.007 gives `<response>` as string type).
    #[error("the data is not enclosed in double quotes")]
    MissingQuotes,
    /// An odd count of hex digits: two per byte.
    #[error("{0} hex digits: a byte is two hex digits, the count must be even")]
    OddHex(usize),
    /// A character that is not a hex digit.
    #[error("{ch:?} at position {at} of the data is not a hex digit")]
    BadHex {
        /// Position in the data (0-based, in characters).
        at: usize,
        /// The character.
        ch: char,
    },
    /// `<length>` does not count the data's characters (27.007: two per byte).
    #[error(
        "<length> says {stated} characters but the data has {actual} (27.007 counts hex characters, two per byte)"
    )]
    LengthMismatch {
        /// The stated length.
        stated: usize,
        /// The hex characters present.
        actual: usize,
    },
    /// `<sessionid>` is not a decimal number.
    #[error("session id {0:?} is not a decimal number")]
    BadSessionId(String),
    /// A line longer than [`MAX_LINE`] without an end.
    #[error("a line of more than {MAX_LINE} characters without a line end")]
    LineTooLong,
}

/// Cuts the bytes from the modem into lines. A line ends at CR or LF (V.250 frames every
/// answer as `<CR><LF>text<CR><LF>`, and echo ends with the command's `<CR>`); empty lines
/// are dropped.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole line, if one is there (its text without the line end, surrounding
    /// spaces removed). Bytes that are not UTF-8 are replaced, so they fail to parse later
    /// with a precise error rather than here.
    pub fn pop(&mut self) -> Result<Option<String>, AtError> {
        loop {
            let Some(end) = self.pending.iter().position(|&b| b == b'\r' || b == b'\n') else {
                if self.pending.len() > MAX_LINE {
                    self.pending.clear();
                    return Err(AtError::LineTooLong);
                }
                return Ok(None);
            };
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            let text = text.trim();
            if !text.is_empty() {
                return Ok(Some(text.to_owned()));
            }
        }
    }

    /// Forgets whatever was received and not taken yet.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// A `+CME ERROR: <err>` value (27.007 §9.2): numeric (`+CMEE=1`) or verbose (`+CMEE=2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmeCode {
    /// The numeric form.
    Numeric(u16),
    /// The verbose form, as the modem wrote it.
    Verbose(String),
}

impl CmeCode {
    /// The numeric code, when the modem gave one.
    pub fn number(&self) -> Option<u16> {
        match self {
            CmeCode::Numeric(n) => Some(*n),
            CmeCode::Verbose(_) => None,
        }
    }

    /// The meaning of the code (27.007 §9.2.1 general errors), or the verbose text.
    pub fn describe(&self) -> &str {
        let n = match self {
            CmeCode::Verbose(text) => return text,
            CmeCode::Numeric(n) => *n,
        };
        match n {
            0 => "phone failure",
            1 => "no connection to phone",
            2 => "phone-adaptor link reserved",
            3 => "operation not allowed",
            4 => "operation not supported",
            5 => "PH-SIM PIN required",
            6 => "PH-FSIM PIN required",
            7 => "PH-FSIM PUK required",
            10 => "SIM not inserted",
            11 => "SIM PIN required",
            12 => "SIM PUK required",
            13 => "SIM failure",
            14 => "SIM busy",
            15 => "SIM wrong",
            16 => "incorrect password",
            17 => "SIM PIN2 required",
            18 => "SIM PUK2 required",
            20 => "memory full",
            21 => "invalid index",
            22 => "not found",
            23 => "memory failure",
            30 => "no network service",
            31 => "network timeout",
            50 => "incorrect parameters",
            100 => "unknown",
            _ => "a code this link does not know",
        }
    }

    /// Whether the code says the modem lacks the command (27.007 §9.2.1 `4`, operation not
    /// supported): the only refusal of AT+CCHO after which the link falls back to AT+CSIM.
    pub fn is_not_supported(&self) -> bool {
        match self {
            CmeCode::Numeric(n) => *n == 4,
            CmeCode::Verbose(text) => text.eq_ignore_ascii_case("operation not supported"),
        }
    }
}

impl std::fmt::Display for CmeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CmeCode::Numeric(n) => write!(f, "{n} ({})", self.describe()),
            CmeCode::Verbose(text) => write!(f, "{text}"),
        }
    }
}

/// A final result code (V.250 §5.7.1, 27.007 §9.2): the command line is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// `OK`.
    Ok,
    /// `ERROR`: a syntax error, a command the modem does not know, or any failure while
    /// `+CMEE=0`.
    Error,
    /// `+CME ERROR: <err>`.
    Cme(CmeCode),
}

/// What answer the command in flight waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing but the final result code.
    Nothing,
    /// An information text line starting with this prefix (`+CGLA:`, `+CSIM:`).
    Prefix(&'static str),
    /// The session id of AT+CCHO: the bare number (27.007 Table 105) or `+CCHO: <n>`, as
    /// many modems write it.
    SessionId,
}

/// What one line from the modem is, for the command in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The command line itself, echoed (`ATE1`).
    Echo,
    /// The information text the command waits for.
    Answer(String),
    /// The final result code.
    Final(Final),
    /// Anything else: an unsolicited result code (`+CREG: 1`, `RING`, ...), skipped.
    Unsolicited(String),
}

/// Classifies `line`, received while `sent` (without its CR) waits for `expect`.
pub fn classify(line: &str, sent: &str, expect: Expect) -> Line {
    if line == "OK" {
        return Line::Final(Final::Ok);
    }
    if line == "ERROR" {
        return Line::Final(Final::Error);
    }
    if let Some(rest) = line.strip_prefix("+CME ERROR:") {
        let rest = rest.trim();
        let code = match rest.parse::<u16>() {
            Ok(n) => CmeCode::Numeric(n),
            Err(_) => CmeCode::Verbose(rest.to_owned()),
        };
        return Line::Final(Final::Cme(code));
    }
    if line.eq_ignore_ascii_case(sent) {
        return Line::Echo;
    }
    match expect {
        Expect::Prefix(prefix) if line.starts_with(prefix) => Line::Answer(line.to_owned()),
        Expect::SessionId
            if line.starts_with("+CCHO:") || line.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Line::Answer(line.to_owned())
        }
        _ => Line::Unsolicited(line.to_owned()),
    }
}

/// Upper-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    s
}

/// Bytes of a hex string (either case), two digits per byte.
pub fn unhex(text: &str) -> Result<Vec<u8>, AtError> {
    if let Some((at, ch)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_hexdigit())
    {
        return Err(AtError::BadHex { at, ch });
    }
    if !text.len().is_multiple_of(2) {
        return Err(AtError::OddHex(text.len()));
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    Ok(text
        .as_bytes()
        .chunks_exact(2)
        .map(|p| (digit(p[0]) << 4) | digit(p[1]))
        .collect())
}

/// `<length>,"<hex>"` as +CGLA and +CSIM carry it (in commands and answers alike): the
/// bytes, after checking that `<length>` counts the hex characters (27.007 §8.17, §8.43:
/// "length of the characters", two per byte).
pub fn parse_length_and_hex(text: &str) -> Result<Vec<u8>, AtError> {
    let (length, data) = text.split_once(',').ok_or(AtError::MissingComma)?;
    let length = length.trim();
    let stated: usize = if !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit()) {
        length
            .parse()
            .map_err(|_| AtError::BadLength(length.to_owned()))?
    } else {
        return Err(AtError::BadLength(length.to_owned()));
    };
    let data = data.trim();
    let inner = data
        .strip_prefix('"')
        .and_then(|d| d.strip_suffix('"'))
        .ok_or(AtError::MissingQuotes)?;
    let bytes = unhex(inner)?;
    if stated != inner.len() {
        return Err(AtError::LengthMismatch {
            stated,
            actual: inner.len(),
        });
    }
    Ok(bytes)
}

/// The response APDU of a `+CGLA: <length>,"<response>"` or `+CSIM: ...` answer line.
pub fn parse_hex_answer(prefix: &'static str, line: &str) -> Result<Vec<u8>, AtError> {
    let rest = line
        .strip_prefix(prefix)
        .ok_or(AtError::Prefix { expected: prefix })?;
    parse_length_and_hex(rest)
}

/// The session id of an AT+CCHO answer: `<sessionid>` or `+CCHO: <sessionid>`.
pub fn parse_session_id(line: &str) -> Result<u32, AtError> {
    let id = line.strip_prefix("+CCHO:").unwrap_or(line).trim();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AtError::BadSessionId(id.to_owned()));
    }
    id.parse().map_err(|_| AtError::BadSessionId(id.to_owned()))
}

/// `AT+CCHO="<dfname>"` (27.007 §8.45): open a logical channel and select the application.
pub fn ccho(aid: &[u8]) -> String {
    format!("AT+CCHO=\"{}\"", hex(aid))
}

/// `AT+CCHC=<sessionid>` (27.007 §8.46): close the logical channel.
pub fn cchc(session: u32) -> String {
    format!("AT+CCHC={session}")
}

/// `AT+CGLA=<sessionid>,<length>,"<command>"` (27.007 §8.43), `<length>` in hex characters.
pub fn cgla(session: u32, apdu: &[u8]) -> String {
    format!("AT+CGLA={session},{},\"{}\"", apdu.len() * 2, hex(apdu))
}

/// `AT+CSIM=<length>,"<command>"` (27.007 §8.17), `<length>` in hex characters.
pub fn csim(apdu: &[u8]) -> String {
    format!("AT+CSIM={},\"{}\"", apdu.len() * 2, hex(apdu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_count_hex_characters() {
        assert_eq!(
            cgla(3, &[0x00, 0xA4, 0x04, 0x00]),
            "AT+CGLA=3,8,\"00A40400\""
        );
        assert_eq!(
            csim(&[0x80, 0xCA, 0x01, 0x01, 0x00]),
            "AT+CSIM=10,\"80CA010100\""
        );
        assert_eq!(ccho(&[0xA0, 0x00, 0x01]), "AT+CCHO=\"A00001\"");
        assert_eq!(cchc(7), "AT+CCHC=7");
    }

    #[test]
    fn answers_decode_to_bytes() {
        assert_eq!(
            parse_hex_answer("+CGLA:", "+CGLA: 4,\"9000\"").unwrap(),
            vec![0x90, 0x00]
        );
        assert_eq!(
            parse_hex_answer("+CSIM:", "+CSIM:6,\"01Ab90\"").unwrap(),
            vec![0x01, 0xAB, 0x90]
        );
        assert_eq!(
            parse_hex_answer("+CGLA:", "+CGLA: 0,\"\"").unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn malformed_answers_are_named() {
        let p = |line| parse_hex_answer("+CGLA:", line).unwrap_err();
        assert_eq!(
            p("+CSIM: 4,\"9000\""),
            AtError::Prefix { expected: "+CGLA:" }
        );
        assert_eq!(p("+CGLA: 4 \"9000\""), AtError::MissingComma);
        assert_eq!(p("+CGLA: x4,\"9000\""), AtError::BadLength("x4".into()));
        assert_eq!(p("+CGLA: ,\"9000\""), AtError::BadLength(String::new()));
        assert_eq!(p("+CGLA: -4,\"9000\""), AtError::BadLength("-4".into()));
        assert_eq!(
            p("+CGLA: 99999999999999999999999,\"9000\""),
            AtError::BadLength("99999999999999999999999".into())
        );
        assert_eq!(p("+CGLA: 4,9000"), AtError::MissingQuotes);
        assert_eq!(p("+CGLA: 4,\"9000"), AtError::MissingQuotes);
        assert_eq!(p("+CGLA: 3,\"900\""), AtError::OddHex(3));
        assert_eq!(p("+CGLA: 4,\"90G0\""), AtError::BadHex { at: 2, ch: 'G' });
        assert_eq!(p("+CGLA: 4,\"90 0\""), AtError::BadHex { at: 2, ch: ' ' });
        // A modem that counts bytes instead of characters is caught, not trusted.
        assert_eq!(
            p("+CGLA: 2,\"9000\""),
            AtError::LengthMismatch {
                stated: 2,
                actual: 4
            }
        );
        // Every error reads as one clear sentence.
        assert!(p("+CGLA: 2,\"9000\"").to_string().contains("two per byte"));
    }

    #[test]
    fn session_ids_in_both_forms() {
        assert_eq!(parse_session_id("+CCHO: 2").unwrap(), 2);
        assert_eq!(parse_session_id("+CCHO:17").unwrap(), 17);
        assert_eq!(parse_session_id("257").unwrap(), 257);
        assert_eq!(
            parse_session_id("+CCHO: two").unwrap_err(),
            AtError::BadSessionId("two".into())
        );
        assert_eq!(
            parse_session_id("+CCHO:").unwrap_err(),
            AtError::BadSessionId(String::new())
        );
        assert_eq!(
            parse_session_id("99999999999").unwrap_err(),
            AtError::BadSessionId("99999999999".into())
        );
    }

    #[test]
    fn lines_are_classified_for_the_command_in_flight() {
        let sent = "AT+CGLA=1,10,\"80CA010100\"";
        let c = |line| classify(line, sent, Expect::Prefix("+CGLA:"));
        assert_eq!(c(sent), Line::Echo);
        assert_eq!(c("OK"), Line::Final(Final::Ok));
        assert_eq!(c("ERROR"), Line::Final(Final::Error));
        assert_eq!(
            c("+CME ERROR: 13"),
            Line::Final(Final::Cme(CmeCode::Numeric(13)))
        );
        assert_eq!(
            c("+CME ERROR: SIM busy"),
            Line::Final(Final::Cme(CmeCode::Verbose("SIM busy".into())))
        );
        assert_eq!(
            c("+CGLA: 4,\"9000\""),
            Line::Answer("+CGLA: 4,\"9000\"".into())
        );
        assert_eq!(c("+CREG: 1"), Line::Unsolicited("+CREG: 1".into()));
        assert_eq!(c("RING"), Line::Unsolicited("RING".into()));
        // An answer of another command is not the awaited one.
        assert_eq!(
            c("+CSIM: 4,\"9000\""),
            Line::Unsolicited("+CSIM: 4,\"9000\"".into())
        );
        let s = |line| classify(line, "AT+CCHO=\"A0\"", Expect::SessionId);
        assert_eq!(s("3"), Line::Answer("3".into()));
        assert_eq!(s("+CCHO: 3"), Line::Answer("+CCHO: 3".into()));
        assert_eq!(s("+CPIN: READY"), Line::Unsolicited("+CPIN: READY".into()));
        assert_eq!(
            classify("+CGLA: 4,\"9000\"", "ATE0", Expect::Nothing),
            Line::Unsolicited("+CGLA: 4,\"9000\"".into())
        );
    }

    #[test]
    fn cme_codes_of_clause_9_2() {
        let d = |n| CmeCode::Numeric(n).describe().to_owned();
        assert_eq!(d(3), "operation not allowed");
        assert_eq!(d(4), "operation not supported");
        assert_eq!(d(10), "SIM not inserted");
        assert_eq!(d(13), "SIM failure");
        assert_eq!(d(14), "SIM busy");
        assert_eq!(d(100), "unknown");
        assert_eq!(d(777), "a code this link does not know");
        assert_eq!(CmeCode::Numeric(13).to_string(), "13 (SIM failure)");
        assert!(CmeCode::Numeric(4).is_not_supported());
        assert!(CmeCode::Verbose("operation not supported".into()).is_not_supported());
        assert!(!CmeCode::Numeric(3).is_not_supported());
    }

    #[test]
    fn the_line_buffer_splits_on_cr_and_lf_and_drops_empty_lines() {
        let mut b = LineBuffer::new();
        b.push(b"ATE0\r\r\nOK\r\n\r\n+CGLA: 4,\"90");
        assert_eq!(b.pop().unwrap().as_deref(), Some("ATE0"));
        assert_eq!(b.pop().unwrap().as_deref(), Some("OK"));
        assert_eq!(b.pop().unwrap(), None);
        b.push(b"00\"\r\n");
        assert_eq!(b.pop().unwrap().as_deref(), Some("+CGLA: 4,\"9000\""));
        b.push(b"\xFF\xFEOK\n");
        let odd = b.pop().unwrap().unwrap();
        assert!(odd.ends_with("OK") && odd != "OK", "{odd:?}");
        b.push(&vec![b'A'; MAX_LINE + 1]);
        assert_eq!(b.pop().unwrap_err(), AtError::LineTooLong);
        assert_eq!(b.pop().unwrap(), None);
    }

    #[test]
    fn hex_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)).unwrap(), all);
        assert_eq!(unhex(&hex(&all).to_lowercase()).unwrap(), all);
    }
}
