//! SUIT envelopes: the software originator's signed package description
//! (draft-ietf-suit-manifest-37, in the RFC 9124 information model).
//!
//! Decoding borrows everything from the input; [`Envelope::verify`] performs the checks of
//! draft §8.3 (authentication wrapper) in order and only then hands out the manifest as
//! `Verified<Manifest>`:
//! 1. one authentication block (a COSE_Sign1, ES256 or ESP256) verifies under the originator
//!    key, its detached payload being the SUIT_Digest (draft §8.3, RFC 9052 §4.4);
//! 2. that digest (SHA-256, alg -16) equals the SHA-256 of the bstr-wrapped manifest, CBOR head
//!    included (draft §8.3: "the digest of the bstr-wrapped manifest");
//! 3. the manifest is well-formed, version 1 (draft §8.4.1);
//! 4. every severable member present in the envelope matches the digest the manifest keeps for
//!    it (draft §8.4.11); a member severed away is simply absent;
//! 5. an integrated payload the manifest points to (`uri` "#name", draft §7.5) matches the
//!    signed image digest and size (checked after step 6, which decides the uri);
//! 6. the command sequences are processed as draft §6 and §8.4.5-§8.4.10 define them, at
//!    authorization time (private fn `process`): the shared sequence before each of
//!    dependency-resolution, payload-fetch, install, validate, load and invoke, every try-each
//!    option and run-sequence included. A command, condition, parameter or argument this
//!    processor does not implement, or a manifest that does not describe exactly one image
//!    the card can authorize, is refused with [`Error::UnsupportedSuit`] (draft §8.4.6: such a
//!    manifest must not be processed). Implemented: conditions vendor-id, class-id and
//!    image-match; directives set-component-index, try-each, override-parameters, fetch, copy,
//!    invoke and run-sequence; parameters vendor-id, class-id, image-digest, image-size, uri,
//!    source-component and simfota's own negative ones below.
//!
//! The fields simfota reports are the parameters of the component the install sequence
//! writes, as they are when its fetch or copy runs (override-parameters replaces, draft
//! §8.4.10.4; parameters are per component, §8.4.8). Delta packages carry the digest of the
//! image they apply to in a custom parameter, [`PARAM_PRECURSOR_DIGEST`] (negative numbers are
//! custom parameters, draft §8.4.8), and the digest and size of the delta itself in
//! [`PARAM_PAYLOAD_DIGEST`] / [`PARAM_PAYLOAD_SIZE`]. Release name and version come from the
//! text member (draft §8.4.4): the manifest-level `manifest-description` (1) and the first
//! component's `component-version` (6).
//!
//! Not done here: conditions on device state (component slot, current image, device id) and
//! dependencies on other manifests are refused rather than evaluated; image-match on the
//! installed image is the integrity check the card performs itself against the reported digest.

use crate::cbor::{Key, Reader};
use crate::cose::{BUILTIN, CoseSign1, PublicKey, Verified, Verifier};
use crate::error::{Error, Result};
use crate::ids::{Digest, Uuid};
use crate::limits::Limits;

/// CBOR tag of SUIT_Envelope_Tagged (draft §8.2).
pub const TAG_ENVELOPE: u64 = 107;
/// SUIT digest algorithm SHA-256 (COSE alg -16).
pub const DIGEST_SHA256: i64 = -16;
/// Custom SUIT parameter (negative, draft §8.4.8.1) carrying `bstr .cbor SUIT_Digest` of the
/// image a delta package must be applied to.
pub const PARAM_PRECURSOR_DIGEST: i64 = -257;
/// Custom SUIT parameter: `bstr .cbor SUIT_Digest` of the transported payload when it is not
/// the image itself (a delta); the image digest and size stay those of the resulting image.
pub const PARAM_PAYLOAD_DIGEST: i64 = -258;
/// Custom SUIT parameter: size in bytes of the transported payload (with
/// [`PARAM_PAYLOAD_DIGEST`]).
pub const PARAM_PAYLOAD_SIZE: i64 = -259;
/// Envelope name of the integrated payload the simfota builder emits.
pub const INTEGRATED_NAME: &str = "#image";
/// Envelope name of an integrated delta payload (`build_delta`, with `std`).
pub const DELTA_NAME: &str = "#delta";

/// Map keys and command / parameter numbers of draft-ietf-suit-manifest-37.
pub mod key {
    /// Envelope: delegation (§8.2).
    pub const DELEGATION: i64 = 1;
    /// Envelope: authentication wrapper (§8.3).
    pub const AUTHENTICATION: i64 = 2;
    /// Envelope and manifest: the manifest.
    pub const MANIFEST: i64 = 3;
    /// Manifest: version.
    pub const VERSION: i64 = 1;
    /// Manifest: sequence number (§8.4.2).
    pub const SEQUENCE: i64 = 2;
    /// Manifest: common (§8.4.5).
    pub const COMMON: i64 = 3;
    /// Manifest: reference URI (§8.4.3).
    pub const REFERENCE_URI: i64 = 4;
    /// Manifest: manifest component id.
    pub const MANIFEST_COMPONENT_ID: i64 = 5;
    /// Manifest: validate sequence.
    pub const VALIDATE: i64 = 7;
    /// Manifest: load sequence.
    pub const LOAD: i64 = 8;
    /// Manifest: invoke sequence.
    pub const INVOKE: i64 = 9;
    /// Manifest and envelope (severable): dependency resolution.
    pub const DEPENDENCY_RESOLUTION: i64 = 15;
    /// Manifest and envelope (severable): payload fetch.
    pub const PAYLOAD_FETCH: i64 = 16;
    /// Manifest and envelope (severable): install.
    pub const INSTALL: i64 = 20;
    /// Manifest and envelope (severable): text.
    pub const TEXT: i64 = 23;
    /// Common: dependencies.
    pub const DEPENDENCIES: i64 = 1;
    /// Common: components.
    pub const COMPONENTS: i64 = 2;
    /// Common: shared sequence.
    pub const SHARED_SEQUENCE: i64 = 4;
    /// Command: condition vendor identifier.
    pub const COND_VENDOR: i64 = 1;
    /// Command: condition class identifier.
    pub const COND_CLASS: i64 = 2;
    /// Command: condition image match.
    pub const COND_IMAGE_MATCH: i64 = 3;
    /// Command: directive set component index.
    pub const DIR_SET_COMPONENT: i64 = 12;
    /// Command: directive try-each.
    pub const DIR_TRY_EACH: i64 = 15;
    /// Command: directive write.
    pub const DIR_WRITE: i64 = 18;
    /// Command number 19: set-parameters in earlier drafts; draft-37 does not assign it, so
    /// it is refused like any unknown command.
    pub const DIR_SET_PARAMETERS: i64 = 19;
    /// Command: directive override parameters.
    pub const DIR_OVERRIDE_PARAMETERS: i64 = 20;
    /// Command: directive fetch.
    pub const DIR_FETCH: i64 = 21;
    /// Command: directive copy.
    pub const DIR_COPY: i64 = 22;
    /// Command: directive invoke.
    pub const DIR_INVOKE: i64 = 23;
    /// Command: directive run sequence.
    pub const DIR_RUN_SEQUENCE: i64 = 32;
    /// Parameter: vendor id.
    pub const P_VENDOR_ID: i64 = 1;
    /// Parameter: class id.
    pub const P_CLASS_ID: i64 = 2;
    /// Parameter: image digest.
    pub const P_IMAGE_DIGEST: i64 = 3;
    /// Parameter: image size.
    pub const P_IMAGE_SIZE: i64 = 14;
    /// Parameter: uri.
    pub const P_URI: i64 = 21;
    /// Parameter: source component (copy, draft §8.4.8.12).
    pub const P_SOURCE_COMPONENT: i64 = 22;
    /// Text: manifest description (manifest level).
    pub const T_MANIFEST_DESCRIPTION: i64 = 1;
    /// Text: component version (component level).
    pub const T_COMPONENT_VERSION: i64 = 6;
}

const MAX_AUTH_BLOCKS: usize = 4;
const MAX_INTEGRATED: usize = 4;

/// Why [`Envelope::verify_as_signer`] refused an envelope under one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerCheck {
    /// No authentication block verifies under this key (or none can be checked with it: an
    /// unsupported algorithm, a malformed COSE_Sign1). Nothing says this key's owner signed.
    NotSigned(Error),
    /// A block's signature verifies under this key, but the envelope fails a later check
    /// (manifest digest, structure, an unsupported command): the signer is known.
    Invalid(Error),
}

impl SignerCheck {
    /// The underlying error.
    pub fn into_error(self) -> Error {
        match self {
            SignerCheck::NotSigned(e) | SignerCheck::Invalid(e) => e,
        }
    }
}

/// A decoded, unverified SUIT envelope.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    suit_digest: &'a [u8],
    stated_digest: Digest,
    auth: [&'a [u8]; MAX_AUTH_BLOCKS],
    n_auth: usize,
    manifest_wrapped: &'a [u8],
    manifest: &'a [u8],
    severed: [Option<&'a [u8]>; 4],
    integrated: [(&'a str, &'a [u8]); MAX_INTEGRATED],
    n_integrated: usize,
    limits: Limits,
}

/// What a verified manifest says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// Anti-rollback sequence number (draft §8.4.2).
    pub sequence: u64,
    /// Vendor id (UUID).
    pub vendor_id: Option<Uuid>,
    /// Class id (UUID): the device model.
    pub class_id: Option<Uuid>,
    /// Signed SHA-256 of the image.
    pub image_digest: Option<Digest>,
    /// Signed image size in bytes.
    pub image_size: Option<u64>,
    /// Where to fetch the payload (or "#name" when integrated).
    pub uri: Option<&'a str>,
    /// Reference URI of the manifest (draft §8.4.3).
    pub reference_uri: Option<&'a str>,
    /// Release name (text `manifest-description`).
    pub name: Option<&'a str>,
    /// Release version (text `component-version`).
    pub version: Option<&'a str>,
    /// Digest of the image a delta applies to ([`PARAM_PRECURSOR_DIGEST`]).
    pub precursor_digest: Option<Digest>,
    /// Signed digest of the transported payload when it differs from the image (a delta,
    /// [`PARAM_PAYLOAD_DIGEST`]).
    pub payload_digest: Option<Digest>,
    /// Signed size of that payload ([`PARAM_PAYLOAD_SIZE`]).
    pub payload_size: Option<u64>,
    /// The integrated payload the `uri` names, when the envelope carries it (checked).
    pub payload: Option<&'a [u8]>,
    /// Number of components the manifest declares.
    pub components: usize,
    manifest_digest: Digest,
}

impl Manifest<'_> {
    /// SHA-256 over the bstr-wrapped manifest: what delivery tokens bind to.
    pub fn manifest_digest(&self) -> Digest {
        self.manifest_digest
    }
}

fn severable_index(k: i64) -> Option<usize> {
    match k {
        key::DEPENDENCY_RESOLUTION => Some(0),
        key::PAYLOAD_FETCH => Some(1),
        key::INSTALL => Some(2),
        key::TEXT => Some(3),
        _ => None,
    }
}

/// Reads `[alg, bstr]` (SUIT_Digest, draft §10) requiring SHA-256.
fn read_digest(r: &mut Reader<'_, '_>) -> Result<Digest> {
    r.array_n(2)?;
    let alg = r.i64()?;
    if alg != DIGEST_SHA256 {
        return Err(Error::UnsupportedAlg(alg));
    }
    Ok(Digest(r.bytes_n("SUIT digest bytes")?))
}

fn read_wrapped_digest(r: &mut Reader<'_, '_>) -> Result<Digest> {
    let (_, mut d) = r.nested()?;
    let dig = read_digest(&mut d)?;
    d.finish()?;
    Ok(dig)
}

impl<'a> Envelope<'a> {
    /// Decodes an envelope (tag 107 optional) spanning all of `bytes`.
    pub fn decode(bytes: &'a [u8], limits: &Limits) -> Result<Self> {
        if bytes.len() > limits.max_envelope_len {
            return Err(Error::TooLarge {
                what: "SUIT envelope",
                max: limits.max_envelope_len,
            });
        }
        let mut r = Reader::new(bytes, limits);
        match r.opt_tag()? {
            None | Some(TAG_ENVELOPE) => {}
            Some(found) => return Err(Error::UnexpectedTag { found }),
        }
        let mut env = Envelope {
            suit_digest: &[],
            stated_digest: Digest::default(),
            auth: [&[]; MAX_AUTH_BLOCKS],
            n_auth: 0,
            manifest_wrapped: &[],
            manifest: &[],
            severed: [None; 4],
            integrated: [("", &[]); MAX_INTEGRATED],
            n_integrated: 0,
            limits: *limits,
        };
        let (mut have_auth, mut have_manifest) = (false, false);
        r.map(false, |r, k| {
            match k {
                Key::Int(key::AUTHENTICATION) => {
                    have_auth = true;
                    let (_, mut a) = r.nested()?;
                    let n = a.array()?;
                    if n < 2 {
                        return Err(Error::MissingField("SUIT authentication block"));
                    }
                    if n - 1 > MAX_AUTH_BLOCKS {
                        return Err(Error::TooLarge {
                            what: "authentication blocks",
                            max: MAX_AUTH_BLOCKS,
                        });
                    }
                    let (dig, mut dr) = a.nested()?;
                    env.stated_digest = read_digest(&mut dr)?;
                    dr.finish()?;
                    env.suit_digest = dig;
                    for i in 0..n - 1 {
                        env.auth[i] = a.bytes()?;
                    }
                    env.n_auth = n - 1;
                    a.finish()?;
                }
                Key::Int(key::MANIFEST) => {
                    have_manifest = true;
                    let start = r.position();
                    env.manifest = r.bytes()?;
                    env.manifest_wrapped = &r.input()[start..r.position()];
                }
                Key::Int(key::DELEGATION) => return Ok(false),
                Key::Int(k) => match severable_index(k) {
                    Some(i) => {
                        let start = r.position();
                        r.bytes()?;
                        env.severed[i] = Some(&r.input()[start..r.position()]);
                    }
                    None => {
                        return Err(Error::UnknownField {
                            object: "SUIT envelope",
                            key: k,
                        });
                    }
                },
                Key::Text(name) => {
                    // Integrated payloads and dependencies (draft §7.5).
                    if env.n_integrated >= MAX_INTEGRATED {
                        return Err(Error::TooLarge {
                            what: "integrated payloads",
                            max: MAX_INTEGRATED,
                        });
                    }
                    env.integrated[env.n_integrated] = (name, r.bytes()?);
                    env.n_integrated += 1;
                }
                Key::Other(_) => return Err(Error::InvalidField("SUIT envelope key")),
            }
            Ok(true)
        })?;
        r.finish()?;
        if !have_auth {
            return Err(Error::MissingField("authentication-wrapper"));
        }
        if !have_manifest {
            return Err(Error::MissingField("manifest"));
        }
        Ok(env)
    }

    /// The integrated payload with this name, if the envelope carries it (unverified bytes).
    pub fn integrated(&self, name: &str) -> Option<&'a [u8]> {
        self.integrated[..self.n_integrated]
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
    }

    /// The digest the authentication wrapper states for the manifest (not yet checked).
    pub fn stated_manifest_digest(&self) -> Digest {
        self.stated_digest
    }

    /// Runs the checks listed in the module documentation with the originator's key.
    pub fn verify(&self, key: &PublicKey) -> Result<Verified<Manifest<'a>>> {
        self.verify_as_signer(key).map_err(SignerCheck::into_error)
    }

    /// [`Envelope::verify`] with the crypto of `verifier` (signature and every digest).
    pub fn verify_with(
        &self,
        verifier: &(impl Verifier + ?Sized),
        key: &PublicKey,
    ) -> Result<Verified<Manifest<'a>>> {
        self.verify_as_signer_with(verifier, key)
            .map_err(SignerCheck::into_error)
    }

    /// [`Envelope::verify`], telling apart "this key did not sign the envelope" from "this key
    /// signed it, and a later check failed". A verifier that tries several originator keys (the
    /// SUIT authentication block carries no key id) must name an originator only in the second
    /// case: until a signature verifies, nothing in the envelope says who made it.
    pub fn verify_as_signer(
        &self,
        key: &PublicKey,
    ) -> core::result::Result<Verified<Manifest<'a>>, SignerCheck> {
        self.verify_as_signer_with(&BUILTIN, key)
    }

    /// [`Envelope::verify_as_signer`] with the crypto of `verifier` (signature and every
    /// digest).
    pub fn verify_as_signer_with(
        &self,
        verifier: &(impl Verifier + ?Sized),
        key: &PublicKey,
    ) -> core::result::Result<Verified<Manifest<'a>>, SignerCheck> {
        let sha256 = |bytes: &[u8]| Digest(verifier.sha256(&[bytes]));
        // Step 1: authentication blocks (draft §8.3). Any block verifying under `key` will do;
        // the first failure is reported if none does.
        let mut first_err = None;
        let mut ok = false;
        for block in &self.auth[..self.n_auth] {
            let res = (|| {
                let mut r = Reader::new(block, &self.limits);
                let s = CoseSign1::read(&mut r)?;
                r.finish()?;
                if !s.tagged {
                    return Err(Error::MissingField("COSE_Sign1 tag"));
                }
                s.verify_with(verifier, key, &[], Some(self.suit_digest))
                    .map(|_| ())
            })();
            match res {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if !ok {
            return Err(SignerCheck::NotSigned(
                first_err.unwrap_or(Error::MissingField("authentication block")),
            ));
        }
        // Step 2: the manifest digest over the bstr-wrapped manifest.
        let md = sha256(self.manifest_wrapped);
        if md != self.stated_digest {
            return Err(SignerCheck::Invalid(Error::DigestMismatch("manifest")));
        }
        // Steps 3-5.
        let m = self
            .read_manifest(md, &sha256)
            .map_err(SignerCheck::Invalid)?;
        Ok(Verified::new(m))
    }

    /// Steps 3-5, hashing with `sha256`.
    fn read_manifest(
        &self,
        manifest_digest: Digest,
        sha256: &dyn Fn(&[u8]) -> Digest,
    ) -> Result<Manifest<'a>> {
        let lim = &self.limits;
        let mut r = Reader::new(self.manifest, lim);
        let mut m = Manifest {
            sequence: 0,
            vendor_id: None,
            class_id: None,
            image_digest: None,
            image_size: None,
            uri: None,
            reference_uri: None,
            name: None,
            version: None,
            precursor_digest: None,
            payload_digest: None,
            payload_size: None,
            payload: None,
            components: 0,
            manifest_digest,
        };
        let (mut version, mut seq) = (None, None);
        let mut common: Option<&'a [u8]> = None;
        let (mut validate, mut load, mut invoke): (Option<&'a [u8]>, _, _) = (None, None, None);
        // Install, payload-fetch and text bodies (inline or from the envelope), walked after.
        let mut bodies: [Option<&'a [u8]>; 4] = [None; 4];
        r.map(false, |r, k| {
            let k = match k {
                Key::Int(k) => k,
                _ => return Err(Error::InvalidField("SUIT manifest key")),
            };
            match k {
                key::VERSION => version = Some(r.u64()?),
                key::SEQUENCE => seq = Some(r.u64()?),
                key::COMMON => common = Some(r.bytes()?),
                key::REFERENCE_URI => m.reference_uri = Some(r.str()?),
                // The manifest's own component id only matters to a dependent manifest
                // (draft-ietf-suit-trust-domains); simfota processes no dependencies, so it is not read.
                key::MANIFEST_COMPONENT_ID => return Ok(false),
                // Unseverable sequences (draft §8.4.6): always inline.
                key::VALIDATE => validate = Some(r.bytes()?),
                key::LOAD => load = Some(r.bytes()?),
                key::INVOKE => invoke = Some(r.bytes()?),
                k => {
                    let i = severable_index(k).ok_or(Error::UnknownField {
                        object: "SUIT manifest",
                        key: k,
                    })?;
                    if r.datatype()? == minicbor::data::Type::Array {
                        // Severed: a digest; the envelope may carry the member (draft §8.4.11).
                        let d = read_digest(r)?;
                        if let Some(wrapped) = self.severed[i] {
                            if sha256(wrapped) != d {
                                return Err(Error::DigestMismatch("severable member"));
                            }
                            let mut er = Reader::new(wrapped, lim);
                            bodies[i] = Some(er.bytes()?);
                        }
                    } else {
                        if self.severed[i].is_some() {
                            return Err(Error::InvalidField(
                                "severable member both inline and in envelope",
                            ));
                        }
                        bodies[i] = Some(r.bytes()?);
                    }
                }
            }
            Ok(true)
        })?;
        r.finish()?;
        // A member in the envelope that the manifest does not list by digest is not signed.
        for (i, s) in self.severed.iter().enumerate() {
            if s.is_some() && bodies[i].is_none() {
                return Err(Error::InvalidField("unsigned severable member"));
            }
        }
        match version {
            Some(1) => {}
            Some(v) => return Err(Error::UnsupportedVersion(v)),
            None => return Err(Error::MissingField("manifest-version")),
        }
        m.sequence = seq.ok_or(Error::MissingField("manifest-sequence-number"))?;
        let common = common.ok_or(Error::MissingField("common"))?;

        let mut cr = Reader::new(common, lim);
        let mut shared: Option<&'a [u8]> = None;
        cr.map(false, |r, k| {
            match k {
                Key::Int(key::COMPONENTS) => {
                    let n = r.array()?;
                    if n == 0 {
                        return Err(Error::InvalidField("components"));
                    }
                    if n > MAX_COMPONENTS {
                        return Err(Error::TooLarge {
                            what: "SUIT components",
                            max: MAX_COMPONENTS,
                        });
                    }
                    m.components = n;
                    // SUIT_Component_Identifier = [* bstr] (draft §8.4.5.1).
                    for _ in 0..n {
                        let parts = r.array()?;
                        for _ in 0..parts {
                            r.bytes()?;
                        }
                    }
                }
                Key::Int(key::SHARED_SEQUENCE) => shared = Some(r.bytes()?),
                // Dependencies (draft-ietf-suit-trust-domains) let another manifest's
                // sequences run as part of this one: simfota authorizes one manifest, so a
                // manifest that needs others is not processed (draft §8.4.6: a manifest using
                // what the processor does not implement must not be processed).
                Key::Int(key::DEPENDENCIES) => {
                    return Err(Error::UnsupportedSuit {
                        what: "common member",
                        code: key::DEPENDENCIES,
                    });
                }
                Key::Int(k) => {
                    return Err(Error::UnknownField {
                        object: "SUIT common",
                        key: k,
                    });
                }
                _ => return Err(Error::InvalidField("SUIT common key")),
            }
            Ok(true)
        })?;
        cr.finish()?;

        let n_components = m.components;
        let process = process(
            lim,
            n_components,
            shared,
            [bodies[0], bodies[1], bodies[2], validate, load, invoke],
        )?;
        let r = process.reported;
        m.vendor_id = r.vendor_id;
        m.class_id = r.class_id;
        m.image_digest = r.image_digest;
        m.image_size = r.image_size;
        m.uri = process.uri;
        m.precursor_digest = r.precursor_digest;
        m.payload_digest = r.payload_digest;
        m.payload_size = r.payload_size;
        if let Some(text) = bodies[3] {
            let mut tr = Reader::new(text, lim);
            read_text(&mut tr, &mut m)?;
            tr.finish()?;
        }
        // Step 5: an integrated payload named by the uri must match the signed digest/size: the
        // payload's own when the manifest gives one (a delta), else the image's.
        let integrated = m
            .uri
            .filter(|u| u.starts_with('#'))
            .and_then(|n| self.integrated(n));
        {
            if let Some(p) = integrated {
                let (want, size) = match m.payload_digest {
                    Some(d) => (d, m.payload_size),
                    None => (
                        m.image_digest.ok_or(Error::MissingField("image-digest"))?,
                        m.image_size,
                    ),
                };
                if sha256(p) != want {
                    return Err(Error::DigestMismatch("integrated payload"));
                }
                if size.is_some_and(|s| s != p.len() as u64) {
                    return Err(Error::SizeMismatch("integrated payload"));
                }
                m.payload = Some(p);
            }
        }
        Ok(m)
    }
}

/// Most components a manifest may declare (draft §8.4.5.1): the parameters of each are kept
/// on the stack (no heap on the card) while the sequences are processed.
const MAX_COMPONENTS: usize = 4;
/// Deepest nesting of try-each / run-sequence arguments (draft §8.4.10.2, §8.4.10.9).
const MAX_NESTING: u8 = 3;
/// Distinct image-match checks remembered for the consistency check after processing.
const MAX_IMAGE_CHECKS: usize = 8;

/// A processing refusal: the manifest uses something this processor does not implement, or
/// something simfota cannot represent as one authorized image (draft §8.4.6: such a manifest
/// must not be processed; RFC 9124 REQ.SEC.AUTHENTIC: nothing unauthenticated is guessed).
fn refuse(what: &'static str, code: i64) -> Error {
    Error::UnsupportedSuit { what, code }
}

/// The parameters of one component (draft §8.4.8) this processor implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Params<'a> {
    vendor_id: Option<Uuid>,
    class_id: Option<Uuid>,
    image_digest: Option<Digest>,
    image_size: Option<u64>,
    uri: Option<&'a str>,
    source_component: Option<usize>,
    precursor_digest: Option<Digest>,
    payload_digest: Option<Digest>,
    payload_size: Option<u64>,
}

/// Which command sequence is running (draft §8.4.6 names them; §6.4 orders them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Shared,
    DependencyResolution,
    PayloadFetch,
    Install,
    Validate,
    Load,
    Invoke,
}

/// The sequences after the shared one, in the order draft §6.4 runs them: the update
/// procedure (dependency resolution, payload fetch, install), then the invocation procedure
/// (validate, load, invoke).
const ORDER: [Phase; 6] = [
    Phase::DependencyResolution,
    Phase::PayloadFetch,
    Phase::Install,
    Phase::Validate,
    Phase::Load,
    Phase::Invoke,
];

/// What processing the manifest yields: the parameters of the installed component as they
/// were when the install directive ran, and where its payload comes from.
struct Processed<'a> {
    reported: Params<'a>,
    uri: Option<&'a str>,
}

/// The abstract machine of draft §6.4, run at authorization time: parameters per component,
/// a current component index, and what the card must remember to decide on the manifest.
struct Machine<'a> {
    components: usize,
    params: [Params<'a>; MAX_COMPONENTS],
    index: usize,
    phase: Phase,
    /// The component the install sequence writes (fetch or copy) and its parameters then.
    installed: Option<(usize, Params<'a>)>,
    /// Where the installed payload comes from: the uri of the fetch that brought it.
    installed_uri: Option<&'a str>,
    /// Parameters of each component at its fetch in the payload-fetch sequence.
    fetched: [Option<Params<'a>>; MAX_COMPONENTS],
    vendor_checked: Option<Uuid>,
    class_checked: Option<Uuid>,
    /// (component, before any install directive, digest) of each image-match condition.
    image_checks: [(usize, bool, Digest); MAX_IMAGE_CHECKS],
    n_image_checks: usize,
}

/// Processes the command sequences of a verified manifest (draft §6, §8.4.6-§8.4.10).
/// `sequences` are the dependency-resolution, payload-fetch, install, validate, load and
/// invoke bodies the envelope carries (a member severed away is `None`).
fn process<'a>(
    lim: &Limits,
    components: usize,
    shared: Option<&'a [u8]>,
    sequences: [Option<&'a [u8]>; 6],
) -> Result<Processed<'a>> {
    if components == 0 {
        return Err(Error::MissingField("components"));
    }
    let mut m = Machine {
        components,
        params: [Params::default(); MAX_COMPONENTS],
        index: 0,
        phase: Phase::Shared,
        installed: None,
        installed_uri: None,
        fetched: [None; MAX_COMPONENTS],
        vendor_checked: None,
        class_checked: None,
        image_checks: [(0, false, Digest::default()); MAX_IMAGE_CHECKS],
        n_image_checks: 0,
    };
    // The shared sequence on its own: what holds for a manifest without an install sequence
    // (secure boot, or install severed away), and it is checked even when nothing follows.
    m.run(lim, Phase::Shared, shared, None)?;
    let after_shared = m.params;
    for (phase, seq) in ORDER.into_iter().zip(sequences) {
        if let Some(seq) = seq {
            m.run(lim, phase, shared, Some(seq))?;
        }
    }
    m.finish(&after_shared)
}

impl<'a> Machine<'a> {
    /// Runs one sequence, preceded by the shared sequence (draft §8.4.5: the shared sequence
    /// runs before each other sequence). Each sequence starts from component index 0 and
    /// from unset parameters: a sequence relying on a value another sequence left behind
    /// (rather than on the shared sequence or itself) fails its conditions and is refused,
    /// the fail-closed reading of draft §6.4.
    fn run(
        &mut self,
        lim: &Limits,
        phase: Phase,
        shared: Option<&'a [u8]>,
        seq: Option<&'a [u8]>,
    ) -> Result<()> {
        self.params = [Params::default(); MAX_COMPONENTS];
        self.index = 0;
        self.phase = Phase::Shared;
        if let Some(s) = shared {
            self.walk(lim, s, 0, false, false)?;
        }
        self.phase = phase;
        if let Some(s) = seq {
            self.walk(lim, s, 0, false, false)?;
        }
        Ok(())
    }

    /// Walks a SUIT_Command_Sequence (draft §8.4.6): `[+ (command, argument)]`. Every command
    /// must be one this processor implements (draft §8.4.6, §8.4.9.6: custom commands are
    /// not). `in_try`: inside a try-each option; `dry`: an option that never takes effect,
    /// checked only.
    fn walk(
        &mut self,
        lim: &Limits,
        seq: &'a [u8],
        depth: u8,
        in_try: bool,
        dry: bool,
    ) -> Result<()> {
        if depth > MAX_NESTING {
            return Err(Error::TooDeep);
        }
        let mut r = Reader::new(seq, lim);
        let n = r.array()?;
        if n == 0 || n % 2 != 0 {
            return Err(Error::InvalidField("command sequence"));
        }
        for _ in 0..n / 2 {
            let code = r.i64()?;
            self.command(&mut r, lim, code, depth, in_try, dry)?;
        }
        r.finish()
    }

    fn command(
        &mut self,
        r: &mut Reader<'a, '_>,
        lim: &Limits,
        code: i64,
        depth: u8,
        in_try: bool,
        dry: bool,
    ) -> Result<()> {
        match code {
            key::COND_VENDOR | key::COND_CLASS | key::COND_IMAGE_MATCH => {
                reporting_policy(r, code)?;
                // A condition inside try-each selects an option by the device's state, which
                // the card does not see at authorization time: the outcome would be a guess.
                if in_try {
                    return Err(refuse("condition inside try-each", code));
                }
                self.condition(code)
            }
            key::DIR_SET_COMPONENT => {
                // Draft §8.4.10.1: IndexArg = uint / true / [+ uint]; only one component at a
                // time is implemented here.
                if !is_uint(r)? {
                    return Err(refuse("component index form", code));
                }
                let i = r.u64()?;
                if i >= self.components as u64 {
                    return Err(refuse("component index out of range", code));
                }
                if !dry {
                    self.index = i as usize;
                }
                Ok(())
            }
            key::DIR_OVERRIDE_PARAMETERS => self.override_parameters(r, dry),
            key::DIR_TRY_EACH => {
                // Draft §8.4.10.2: [2* bstr .cbor SUIT_Command_Sequence, ? nil]. Options run
                // in order until one succeeds. No condition or fallible directive may appear
                // in an option (see above and below), so the first always succeeds: it is the
                // one that takes effect; the others are checked but never run.
                let k = r.array()?;
                if k < 2 {
                    return Err(refuse("try-each argument", code));
                }
                for i in 0..k {
                    if r.is_null()? {
                        if i + 1 != k || i < 2 {
                            return Err(refuse("try-each argument", code));
                        }
                        r.null()?;
                    } else {
                        let seq = r.bytes()?;
                        self.walk(lim, seq, depth + 1, true, dry || i > 0)?;
                    }
                }
                Ok(())
            }
            key::DIR_RUN_SEQUENCE => {
                // Draft §8.4.10.9: bstr .cbor SUIT_Command_Sequence, run in place.
                let seq = r.bytes()?;
                self.walk(lim, seq, depth + 1, in_try, dry)
            }
            key::DIR_FETCH | key::DIR_COPY | key::DIR_INVOKE => {
                reporting_policy(r, code)?;
                // These can fail on the device (network, storage), moving try-each on to an
                // option the card did not authorize.
                if in_try {
                    return Err(refuse("fallible directive inside try-each", code));
                }
                self.directive(code)
            }
            c if c < 0 => Err(refuse("custom command", c)),
            // Write, swap, abort, component-slot, check-content, device-identifier, the
            // dependency and update-management extensions, and draft -37's unassigned numbers
            // (19 was set-parameters in earlier drafts; -37 has override-parameters only).
            c => Err(refuse("command", c)),
        }
    }

    /// Conditions (draft §8.4.9). A condition whose parameter is unset fails (§8.4.9.1,
    /// §8.4.9.2): refused. What the card cannot evaluate now is recorded and checked for
    /// consistency with what it will enforce later (see [`Machine::finish`]).
    fn condition(&mut self, code: i64) -> Result<()> {
        let p = self.params[self.index];
        let unset = || refuse("condition on an unset parameter", code);
        match code {
            key::COND_VENDOR => {
                // RFC 9124 REQ.SEC.COMPATIBLE (THREAT.IMG.INCOMPATIBLE): the card compares
                // the reported vendor id with its policy; every vendor condition must name
                // that one id, or no device could pass them all.
                let v = p.vendor_id.ok_or_else(unset)?;
                if *self.vendor_checked.get_or_insert(v) != v {
                    return Err(refuse("conflicting identifier conditions", code));
                }
            }
            key::COND_CLASS => {
                let v = p.class_id.ok_or_else(unset)?;
                if *self.class_checked.get_or_insert(v) != v {
                    return Err(refuse("conflicting identifier conditions", code));
                }
            }
            _ => {
                // Image match (draft §8.4.9.2) compares a component's content with its
                // image-digest. On the installed component after the install directive this
                // is the integrity check the card performs itself against the signed digest
                // (device digest or streamed payload), so the digest must be that one.
                let d = p.image_digest.ok_or_else(unset)?;
                let entry = (self.index, self.installed.is_none(), d);
                let seen = &self.image_checks[..self.n_image_checks];
                if !seen.contains(&entry) {
                    if self.n_image_checks == MAX_IMAGE_CHECKS {
                        return Err(Error::TooLarge {
                            what: "image-match conditions",
                            max: MAX_IMAGE_CHECKS,
                        });
                    }
                    self.image_checks[self.n_image_checks] = entry;
                    self.n_image_checks += 1;
                }
            }
        }
        Ok(())
    }

    /// Fetch, copy and invoke (draft §8.4.10.5, §8.4.10.6, §8.4.10.8).
    fn directive(&mut self, code: i64) -> Result<()> {
        let c = self.index;
        let p = self.params[c];
        match (code, self.phase) {
            // The shared sequence holds conditions and parameter directives only (draft
            // §8.4.5, SUIT_Shared_Sequence).
            (_, Phase::Shared) => Err(refuse("directive in the shared sequence", code)),
            // Invoking installed code is the device's business after the update.
            (key::DIR_INVOKE, _) => Ok(()),
            (key::DIR_FETCH, Phase::PayloadFetch | Phase::Install) => {
                let uri = p.uri.ok_or_else(|| refuse("fetch without uri", code))?;
                if self.phase == Phase::PayloadFetch {
                    self.fetched[c] = Some(p);
                    Ok(())
                } else {
                    self.install(c, p, Some(uri), code)
                }
            }
            (key::DIR_COPY, Phase::Install | Phase::Load) => {
                let s = p
                    .source_component
                    .ok_or_else(|| refuse("copy without source-component", code))?;
                if s == c {
                    return Err(refuse("copy onto its source", code));
                }
                if self.phase == Phase::Load {
                    // A load-time copy (e.g. into RAM) must not rewrite the installed image.
                    if self.installed.is_some_and(|(t, _)| t == c) {
                        return Err(refuse("copy onto the installed component", code));
                    }
                    return Ok(());
                }
                // The payload is what payload-fetch brought into the source component; a copy
                // does not transform it, so a different signed digest there cannot both hold.
                let src = self.fetched[s];
                if src.is_some_and(|f| f.image_digest.is_some() && f.image_digest != p.image_digest)
                {
                    return Err(refuse("copy source digest differs from the image", code));
                }
                self.install(c, p, src.and_then(|f| f.uri), code)
            }
            // Dependency resolution fetches manifests (not processed here); validate and
            // invoke only check and start images.
            _ => Err(refuse("directive in this sequence", code)),
        }
    }

    /// Records the install directive: simfota authorizes one image per manifest, so a second
    /// one (several components, or one written twice) is refused rather than choosing.
    fn install(&mut self, c: usize, p: Params<'a>, uri: Option<&'a str>, code: i64) -> Result<()> {
        if self.installed.is_some() {
            return Err(refuse("second install directive", code));
        }
        self.installed = Some((c, p));
        self.installed_uri = uri;
        Ok(())
    }

    /// Override parameters (draft §8.4.10.4): each given value replaces the current one of
    /// the current component. Every parameter must be one this processor implements (draft
    /// §8.4.8); negative numbers are custom parameters (§8.4.8.14) and only simfota's own
    /// are understood.
    fn override_parameters(&mut self, r: &mut Reader<'a, '_>, dry: bool) -> Result<()> {
        const CODE: i64 = key::DIR_OVERRIDE_PARAMETERS;
        if r.datatype()? != minicbor::data::Type::Map {
            return Err(refuse("override-parameters argument", CODE));
        }
        let components = self.components;
        let mut p = self.params[self.index];
        let mut any = false;
        r.map(false, |r, k| {
            any = true;
            let Key::Int(k) = k else {
                return Err(refuse("parameter key", CODE));
            };
            let bad = |_: Error| refuse("parameter value", k);
            match k {
                key::P_VENDOR_ID => p.vendor_id = Some(r.bytes_n::<16>("vendor-id").map_err(bad)?),
                key::P_CLASS_ID => p.class_id = Some(r.bytes_n::<16>("class-id").map_err(bad)?),
                key::P_IMAGE_DIGEST => p.image_digest = Some(read_wrapped_digest(r).map_err(bad)?),
                key::P_IMAGE_SIZE => p.image_size = Some(uint_value(r, k)?),
                key::P_URI => p.uri = Some(r.str().map_err(bad)?),
                key::P_SOURCE_COMPONENT => {
                    let s = uint_value(r, k)?;
                    if s >= components as u64 {
                        return Err(refuse("source-component out of range", k));
                    }
                    p.source_component = Some(s as usize);
                }
                PARAM_PRECURSOR_DIGEST => {
                    p.precursor_digest = Some(read_wrapped_digest(r).map_err(bad)?);
                }
                PARAM_PAYLOAD_DIGEST => {
                    p.payload_digest = Some(read_wrapped_digest(r).map_err(bad)?)
                }
                PARAM_PAYLOAD_SIZE => p.payload_size = Some(uint_value(r, k)?),
                k if k < 0 => return Err(refuse("custom parameter", k)),
                k => return Err(refuse("parameter", k)),
            }
            Ok(true)
        })?;
        // {+ SUIT_Parameters}: at least one.
        if !any {
            return Err(refuse("override-parameters argument", CODE));
        }
        if !dry {
            self.params[self.index] = p;
        }
        Ok(())
    }

    /// Decides which component's values the manifest reports and checks that the conditions
    /// the card could not evaluate agree with what it will enforce.
    fn finish(self, after_shared: &[Params<'a>; MAX_COMPONENTS]) -> Result<Processed<'a>> {
        // The reported component is the one the install sequence writes. Without an install
        // directive (secure boot, install severed), only a one-component manifest says which
        // image it describes.
        let (target, reported, uri, installs) = match self.installed {
            Some((c, p)) => (c, p, self.installed_uri, true),
            None if self.components == 1 => (0, after_shared[0], None, false),
            None => {
                return Err(refuse(
                    "components without an install directive",
                    self.components as i64,
                ));
            }
        };
        for &(c, before, d) in &self.image_checks[..self.n_image_checks] {
            if c != target {
                // Staging or load-time copies: checked by the device on content the card
                // never sees; their parameter was set (checked above).
                continue;
            }
            // Before the install directive it would test the image being replaced: device
            // state the card cannot see (simfota states it with PARAM_PRECURSOR_DIGEST,
            // RFC 9124 REQ.SEC.AUTH.PRECURSOR).
            if installs && before {
                return Err(refuse(
                    "image-match on the installed component before install",
                    key::COND_IMAGE_MATCH,
                ));
            }
            if Some(d) != reported.image_digest {
                return Err(refuse(
                    "image-match against another image",
                    key::COND_IMAGE_MATCH,
                ));
            }
        }
        if self.vendor_checked.is_some() && self.vendor_checked != reported.vendor_id {
            return Err(refuse(
                "conflicting identifier conditions",
                key::COND_VENDOR,
            ));
        }
        if self.class_checked.is_some() && self.class_checked != reported.class_id {
            return Err(refuse("conflicting identifier conditions", key::COND_CLASS));
        }
        Ok(Processed { reported, uri })
    }
}

fn is_uint(r: &Reader<'_, '_>) -> Result<bool> {
    use minicbor::data::Type;
    Ok(matches!(
        r.datatype()?,
        Type::U8 | Type::U16 | Type::U32 | Type::U64
    ))
}

/// An unsigned integer, or `None` (nothing consumed) for any other type.
fn uint(r: &mut Reader<'_, '_>) -> Option<Result<u64>> {
    match is_uint(r) {
        Ok(true) => Some(r.u64()),
        Ok(false) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A parameter's uint value (image-size, source-component, payload-size).
fn uint_value(r: &mut Reader<'_, '_>, k: i64) -> Result<u64> {
    match uint(r) {
        Some(v) => v,
        None => Err(refuse("parameter value", k)),
    }
}

/// SUIT_Rep_Policy = uint .bits suit-reporting-bits (draft §8.4.7): bits 0-3 only.
fn reporting_policy(r: &mut Reader<'_, '_>, code: i64) -> Result<()> {
    match uint(r) {
        Some(Ok(v)) if v <= 0x0f => Ok(()),
        Some(Err(e)) => Err(e),
        _ => Err(refuse("reporting policy", code)),
    }
}

/// SUIT_Text_Map (draft §8.4.4): `{ lang => { int => tstr, component-id => { int => tstr } } }`.
/// The first language's values are used.
fn read_text<'a>(r: &mut Reader<'a, '_>, m: &mut Manifest<'a>) -> Result<()> {
    let mut first_lang = true;
    r.map(false, |r, k| {
        if !matches!(k, Key::Text(_)) {
            return Err(Error::InvalidField("SUIT text language"));
        }
        let take = core::mem::replace(&mut first_lang, false);
        r.map(true, |r, k| match k {
            Key::Int(key::T_MANIFEST_DESCRIPTION) => {
                let s = r.str()?;
                if take {
                    m.name.get_or_insert(s);
                }
                Ok(true)
            }
            Key::Int(_) => {
                r.str()?;
                Ok(true)
            }
            Key::Other(_) => {
                r.map(false, |r, k| {
                    let s = r.str()?;
                    if take && k == Key::Int(key::T_COMPONENT_VERSION) {
                        m.version.get_or_insert(s);
                    }
                    Ok(true)
                })?;
                Ok(true)
            }
            Key::Text(_) => Err(Error::InvalidField("SUIT text key")),
        })?;
        Ok(true)
    })
}

#[cfg(feature = "std")]
pub use build::{BuildParams, ImageSource, build, build_delta, sever};

#[cfg(feature = "std")]
mod build {
    use std::vec::Vec;

    use p256::ecdsa::SigningKey;

    use super::*;
    use crate::cbor::Writer;
    use crate::cose::sign1_detached_into;
    use crate::hash::sha256;

    /// The image a package describes.
    #[derive(Debug, Clone, Copy)]
    pub enum ImageSource<'a> {
        /// The image bytes (hashed here; needed to integrate the payload).
        Bytes(&'a [u8]),
        /// Digest and size computed elsewhere (e.g. streamed with `Sha256Stream`).
        Digest {
            /// SHA-256 of the image.
            digest: Digest,
            /// Size in bytes.
            size: u64,
        },
    }

    /// Everything a simfota package manifest states.
    #[derive(Debug, Clone, Copy)]
    pub struct BuildParams<'a> {
        /// Vendor id (UUID bytes).
        pub vendor_id: Uuid,
        /// Class id (UUID bytes).
        pub class_id: Uuid,
        /// Anti-rollback sequence number.
        pub sequence: u64,
        /// The image.
        pub image: ImageSource<'a>,
        /// Release name (text `manifest-description`).
        pub name: Option<&'a str>,
        /// Release version (text `component-version`).
        pub version: Option<&'a str>,
        /// Payload URI (install: fetch from it).
        pub uri: Option<&'a str>,
        /// Carry the image inside the envelope as `"#image"` (needs `ImageSource::Bytes`).
        pub integrate: bool,
        /// For a delta: SHA-256 of the image the delta applies to.
        pub precursor_digest: Option<Digest>,
    }

    fn wrapped_digest(w: &mut Writer<'_>, d: &Digest) -> Result<()> {
        w.bytes_head(1 + 1 + 2 + 32)?
            .array(2)?
            .i64(DIGEST_SHA256)?
            .bytes(&d.0)?;
        Ok(())
    }

    fn encode(cap: usize, f: impl FnOnce(&mut Writer<'_>) -> Result<()>) -> Result<Vec<u8>> {
        let mut buf = std::vec![0u8; cap];
        let n = {
            let mut w = Writer::new(&mut buf);
            f(&mut w)?;
            w.len()
        };
        buf.truncate(n);
        Ok(buf)
    }

    fn bstr(w: &mut Writer<'_>, inner: &[u8]) -> Result<()> {
        w.bytes(inner)?;
        Ok(())
    }

    /// Builds and signs an envelope (COSE_Sign1 ES256, RFC 6979) with the originator key.
    pub fn build(p: &BuildParams<'_>, key: &SigningKey) -> Result<Vec<u8>> {
        build_inner(p, None, key)
    }

    /// Builds a delta package: `p.image` describes the image the delta produces (its digest
    /// and size are what the device checks after patching), `p.precursor_digest` (required)
    /// the image it applies to, and `delta` is the transported payload, whose digest and size
    /// are signed too ([`PARAM_PAYLOAD_DIGEST`], [`PARAM_PAYLOAD_SIZE`]). With
    /// `p.integrate` the delta travels in the envelope as [`DELTA_NAME`]; otherwise `p.uri`
    /// says where to fetch it.
    pub fn build_delta(p: &BuildParams<'_>, delta: &[u8], key: &SigningKey) -> Result<Vec<u8>> {
        if p.precursor_digest.is_none() {
            return Err(Error::MissingField("precursor digest of a delta"));
        }
        build_inner(p, Some(delta), key)
    }

    fn build_inner(p: &BuildParams<'_>, delta: Option<&[u8]>, key: &SigningKey) -> Result<Vec<u8>> {
        let (digest, size, bytes) = match p.image {
            ImageSource::Bytes(b) => (sha256(b), b.len() as u64, Some(b)),
            ImageSource::Digest { digest, size } => (digest, size, None),
        };
        let transported = match delta {
            Some(d) => Some(d),
            None => bytes,
        };
        let payload = match (p.integrate, transported) {
            (false, _) => None,
            (true, Some(b)) => Some(b),
            (true, None) => return Err(Error::MissingField("image bytes to integrate")),
        };
        if payload.is_some() && p.uri.is_some() {
            return Err(Error::InvalidField("uri given for an integrated payload"));
        }
        let name = if delta.is_some() {
            DELTA_NAME
        } else {
            INTEGRATED_NAME
        };
        let uri = if payload.is_some() { Some(name) } else { p.uri };
        for t in [p.name, p.version, p.uri].into_iter().flatten() {
            if t.is_empty() || t.len() > 1024 {
                return Err(Error::InvalidField("text or uri length"));
            }
        }

        let shared = encode(512, |w| {
            w.array(6)?.u64(key::DIR_OVERRIDE_PARAMETERS as u64)?;
            w.map(
                4 + usize::from(p.precursor_digest.is_some()) + 2 * usize::from(delta.is_some()),
            )?;
            w.u64(key::P_VENDOR_ID as u64)?.bytes(&p.vendor_id)?;
            w.u64(key::P_CLASS_ID as u64)?.bytes(&p.class_id)?;
            w.u64(key::P_IMAGE_DIGEST as u64)?;
            wrapped_digest(w, &digest)?;
            w.u64(key::P_IMAGE_SIZE as u64)?.u64(size)?;
            // Negative keys after the positive ones, -257 < -258 < -259 by encoding
            // (RFC 8949 §4.2.1).
            if let Some(pd) = &p.precursor_digest {
                w.i64(PARAM_PRECURSOR_DIGEST)?;
                wrapped_digest(w, pd)?;
            }
            if let Some(d) = delta {
                w.i64(PARAM_PAYLOAD_DIGEST)?;
                wrapped_digest(w, &sha256(d))?;
                w.i64(PARAM_PAYLOAD_SIZE)?.u64(d.len() as u64)?;
            }
            w.u64(key::COND_VENDOR as u64)?.u64(15)?;
            w.u64(key::COND_CLASS as u64)?.u64(15)?;
            Ok(())
        })?;
        let common = encode(shared.len() + 16, |w| {
            w.map(2)?
                .u64(key::COMPONENTS as u64)?
                .array(1)?
                .array(1)?
                .bytes(&[0])?;
            w.u64(key::SHARED_SEQUENCE as u64)?;
            bstr(w, &shared)
        })?;
        let install = match uri {
            Some(u) => Some(encode(u.len() + 32, |w| {
                w.array(6)?.u64(key::DIR_OVERRIDE_PARAMETERS as u64)?;
                w.map(1)?.u64(key::P_URI as u64)?.str(u)?;
                w.u64(key::DIR_FETCH as u64)?.u64(2)?;
                w.u64(key::COND_IMAGE_MATCH as u64)?.u64(15)?;
                Ok(())
            })?),
            None => None,
        };
        let text = if p.name.is_some() || p.version.is_some() {
            Some(encode(2200, |w| {
                w.map(1)?.str("en")?;
                w.map(usize::from(p.name.is_some()) + usize::from(p.version.is_some()))?;
                if let Some(n) = p.name {
                    w.u64(key::T_MANIFEST_DESCRIPTION as u64)?.str(n)?;
                }
                if let Some(v) = p.version {
                    w.array(1)?
                        .bytes(&[0])?
                        .map(1)?
                        .u64(key::T_COMPONENT_VERSION as u64)?
                        .str(v)?;
                }
                Ok(())
            })?)
        } else {
            None
        };
        let cap = common.len()
            + 64
            + install.as_ref().map_or(0, Vec::len)
            + text.as_ref().map_or(0, Vec::len);
        let manifest = encode(cap, |w| {
            let n = 4 + usize::from(install.is_some()) + usize::from(text.is_some());
            w.map(n)?;
            w.u64(key::VERSION as u64)?.u64(1)?;
            w.u64(key::SEQUENCE as u64)?.u64(p.sequence)?;
            w.u64(key::COMMON as u64)?;
            bstr(w, &common)?;
            w.u64(key::VALIDATE as u64)?.bytes(&[0x82, 0x03, 0x0f])?;
            if let Some(i) = &install {
                w.u64(key::INSTALL as u64)?;
                bstr(w, i)?;
            }
            if let Some(t) = &text {
                w.u64(key::TEXT as u64)?;
                bstr(w, t)?;
            }
            Ok(())
        })?;
        let manifest_wrapped = encode(manifest.len() + 9, |w| bstr(w, &manifest))?;
        let md = sha256(&manifest_wrapped);
        let suit_digest = encode(40, |w| {
            w.array(2)?.i64(DIGEST_SHA256)?.bytes(&md.0)?;
            Ok(())
        })?;
        let mut sig = [0u8; 128];
        let sn = sign1_detached_into(&mut sig, key, &[], &suit_digest)?;
        let auth = encode(256, |w| {
            w.array(2)?;
            bstr(w, &suit_digest)?;
            bstr(w, &sig[..sn])
        })?;
        let cap = auth.len() + manifest_wrapped.len() + 32 + payload.map_or(0, <[u8]>::len);
        encode(cap, |w| {
            w.tag(TAG_ENVELOPE)?
                .map(2 + usize::from(payload.is_some()))?;
            w.u64(key::AUTHENTICATION as u64)?;
            bstr(w, &auth)?;
            w.u64(key::MANIFEST as u64)?.raw(&manifest_wrapped)?;
            if let Some(b) = payload {
                w.str(name)?.bytes(b)?;
            }
            Ok(())
        })
    }

    /// Removes the integrated payloads from an envelope (what the card receives), keeping
    /// authentication, manifest and severable members byte for byte. The envelope is decoded
    /// (not verified) first, so malformed input is refused.
    pub fn sever(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>> {
        Envelope::decode(bytes, limits)?;
        let mut r = Reader::new(bytes, limits);
        let tagged = r.opt_tag()?.is_some();
        let mut kept: Vec<(i64, &[u8])> = Vec::new();
        r.map(false, |r, k| {
            let Key::Int(k) = k else {
                // Text keys are the integrated payloads: leave them out.
                return Ok(false);
            };
            let start = r.position();
            r.skip()?;
            kept.push((k, &r.input()[start..r.position()]));
            Ok(true)
        })?;
        let total: usize = kept.iter().map(|(_, v)| v.len() + 9).sum::<usize>() + 16;
        encode(total, |w| {
            if tagged {
                w.tag(TAG_ENVELOPE)?;
            }
            w.map(kept.len())?;
            for (k, v) in &kept {
                w.i64(*k)?.raw(v)?;
            }
            Ok(())
        })
    }
}
