//! The one error type of the crate: each variant names the check that failed, so callers (the
//! card maps them to status words, the CLI prints them) and tests can tell refusals apart.

/// Why decoding, verification or encoding of a signed object failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input is not well-formed CBOR (RFC 8949), or an item has the wrong major type.
    #[error("malformed CBOR at byte {at}")]
    BadCbor {
        /// Byte offset in the input where decoding stopped.
        at: usize,
    },
    /// Bytes follow the end of the object (RFC 8949 §5.3: a decoder must not ignore them here).
    #[error("trailing bytes after the object at byte {at}")]
    TrailingBytes {
        /// Offset of the first extra byte.
        at: usize,
    },
    /// An indefinite-length item where this profile requires definite lengths.
    #[error("indefinite-length CBOR item at byte {at}")]
    IndefiniteLength {
        /// Offset of the item.
        at: usize,
    },
    /// A map repeats a key (RFC 8949 §5.6; RFC 9052 §3 for header labels).
    #[error("duplicate map key at byte {at}")]
    DuplicateKey {
        /// Offset of the repeated key.
        at: usize,
    },
    /// A map key of a type this object does not allow.
    #[error("map key of an unexpected type at byte {at}")]
    BadMapKey {
        /// Offset of the key.
        at: usize,
    },
    /// A CBOR tag other than the one this object requires.
    #[error("unexpected CBOR tag {found}")]
    UnexpectedTag {
        /// The tag number found.
        found: u64,
    },
    /// The object's type code (key 0 of simfota payloads) is not the expected one.
    #[error("wrong object type: expected {expected}, found {found}")]
    WrongObjectType {
        /// Type code expected here.
        expected: u64,
        /// Type code found.
        found: u64,
    },
    /// A COSE or SUIT algorithm identifier this profile does not implement.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlg(i64),
    /// The COSE `alg` parameter is not in the protected header bucket.
    #[error("the COSE algorithm is not integrity protected")]
    AlgNotProtected,
    /// A COSE `crit` parameter lists a label this implementation does not process (RFC 9052 §3.1).
    #[error("unknown critical header parameter {0}")]
    UnknownCritical(i64),
    /// A member this object does not define, where unknown members are not allowed.
    #[error("unknown field {key} in {object}")]
    UnknownField {
        /// Which object.
        object: &'static str,
        /// The unknown key.
        key: i64,
    },
    /// A required member is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A member has a value outside its allowed range or form.
    #[error("invalid value in field {0}")]
    InvalidField(&'static str),
    /// A length or count exceeds the configured `Limits`.
    #[error("{what} is too large (limit {max})")]
    TooLarge {
        /// What exceeded its bound.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// Nesting deeper than `Limits::max_depth`.
    #[error("CBOR nesting too deep")]
    TooDeep,
    /// The ECDSA signature does not verify under the given key.
    #[error("signature does not verify")]
    BadSignature,
    /// A SHA-256 digest does not match the signed one.
    #[error("digest mismatch: {0}")]
    DigestMismatch(&'static str),
    /// A size does not match the signed one.
    #[error("size mismatch: {0}")]
    SizeMismatch(&'static str),
    /// A verified SUIT manifest uses a command, condition, parameter or structure this
    /// processor does not implement (draft-ietf-suit-manifest §8.4.6: such a manifest must not
    /// be processed). `code` is the command or parameter number.
    #[error("unsupported SUIT {what} {code}")]
    UnsupportedSuit {
        /// What kind of item ("command", "condition", "parameter", ...).
        what: &'static str,
        /// Its number in the manifest.
        code: i64,
    },
    /// The SUIT manifest version is not 1 (draft-ietf-suit-manifest §8.4.1).
    #[error("unsupported SUIT manifest version {0}")]
    UnsupportedVersion(u64),
    /// A public key is not a valid P-256 point, or a COSE_Key is not an EC2 P-256 key.
    #[error("invalid P-256 public key")]
    BadKey,
    /// An ICCID is not 18-20 digits with a valid Luhn check digit (ITU-T E.118).
    #[error("invalid ICCID")]
    BadIccid,
    /// An IMEI is not 15 digits with a valid Luhn check digit (3GPP TS 23.003 §6.2.1).
    #[error("invalid IMEI")]
    BadImei,
    /// An identifier or text is empty, too long, or has control characters.
    #[error("invalid identifier or text: {0}")]
    BadId(&'static str),
    /// AES-GCM authentication of an encrypted export failed (wrong key or tampered ciphertext).
    #[error("decryption failed")]
    DecryptFailed,
    /// The caller's output buffer cannot hold the encoding.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The record source of an export could not supply the record with this sequence number.
    #[error("log record {0} unavailable")]
    RecordUnavailable(u32),
    /// A PEM or DER key file could not be parsed (host side).
    #[error("cannot parse key: {0}")]
    KeyFile(&'static str),
}

/// Result alias of the crate.
pub type Result<T> = core::result::Result<T, Error>;
