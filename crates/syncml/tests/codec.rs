//! The XML and WBXML codecs against the message corpus (`tests/corpus/`), the liberal-reading
//! variants (`tests/liberal/`) and Debian's libwbxml tools as an independent oracle:
//! our WBXML must decode with `wbxml2xml` to the same model, and `xml2wbxml` output must
//! decode with ours to the same model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly

use simfota_syncml::element::{Element, tag};
use simfota_syncml::model::{Command, Message};
use simfota_syncml::wbxml::{DataForm, PublicIdForm, WbxmlOptions, WbxmlVersion};
use simfota_syncml::{DecodeError, Encoding, Limits, StatusCode, wbxml, xml};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicUsize, Ordering};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

fn files(name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    v.sort();
    v
}

fn corpus() -> Vec<(PathBuf, Message)> {
    files("corpus")
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let m = xml::decode(&bytes, &Limits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, m)
        })
        .collect()
}

fn names(cmds: &[Command], out: &mut BTreeSet<String>) {
    for c in cmds {
        out.insert(c.name().to_owned());
        if let Command::Atomic(k) | Command::Sequence(k) = c {
            names(&k.commands, out);
        }
    }
}

fn element_names(e: &Element, out: &mut BTreeSet<&'static str>) {
    out.insert(e.tag.name);
    for c in e.elements() {
        element_names(c, out);
    }
}

#[test]
fn corpus_has_twenty_messages_covering_every_command() {
    let c = corpus();
    assert!(c.len() >= 20, "{} messages", c.len());
    let mut cmds = BTreeSet::new();
    let mut elements = BTreeSet::new();
    for (_, m) in &c {
        names(&m.body, &mut cmds);
        element_names(&m.to_element(), &mut elements);
    }
    for want in [
        "Add", "Alert", "Atomic", "Copy", "Delete", "Exec", "Get", "Replace", "Sequence", "Status",
        "Results",
    ] {
        assert!(cmds.contains(want), "no {want} in the corpus");
    }
    for t in [
        tag::FINAL,
        tag::CORRELATOR,
        tag::MORE_DATA,
        tag::CHAL,
        tag::CRED,
        tag::RESP_URI,
        tag::NO_RESP,
        tag::LOC_NAME,
        tag::NEXT_NONCE,
        tag::MAX_MSG_SIZE,
        tag::MAX_OBJ_SIZE,
        tag::SIZE,
        tag::MARK,
        tag::EMI,
        tag::VERSION,
        tag::TARGET_REF,
        tag::SOURCE_REF,
    ] {
        assert!(elements.contains(t.name), "no <{}> in the corpus", t.name);
    }
}

#[test]
fn xml_and_wbxml_round_trip_the_corpus() {
    let limits = Limits::default();
    for (p, m) in corpus() {
        let x = xml::encode(&m).unwrap();
        assert_eq!(xml::decode(&x, &limits).unwrap(), m, "{}", p.display());
        for opts in wbxml_variants() {
            let w = wbxml::encode_with(&m, &opts).unwrap();
            assert_eq!(
                wbxml::decode(&w, &limits).unwrap(),
                m,
                "{} {opts:?}",
                p.display()
            );
            assert!(w.len() < x.len());
        }
    }
}

#[test]
fn liberal_variants_read_like_their_canonical_form() {
    let limits = Limits::default();
    for p in files("liberal") {
        let canonical = dir("corpus").join(p.file_name().unwrap());
        let want = xml::decode(&std::fs::read(&canonical).unwrap(), &limits).unwrap();
        let got = xml::decode(&std::fs::read(&p).unwrap(), &limits)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(got, want, "{}", p.display());
    }
    assert_eq!(
        Encoding::from_content_type("application/vnd.syncml+xml; charset=utf-8"),
        Some(Encoding::Xml)
    );
    assert_eq!(
        Encoding::from_content_type("application/vnd.syncml.dm+wbxml"),
        Some(Encoding::Wbxml)
    );
    assert_eq!(Encoding::from_content_type("text/html"), None);
}

fn wbxml_variants() -> Vec<WbxmlOptions> {
    vec![
        WbxmlOptions::default(),
        WbxmlOptions {
            public_id: PublicIdForm::StringTable,
            ..WbxmlOptions::default()
        },
        WbxmlOptions {
            data: DataForm::Opaque,
            version: WbxmlVersion::V1_3,
            ..WbxmlOptions::default()
        },
        WbxmlOptions {
            version: WbxmlVersion::V1_1,
            ..WbxmlOptions::default()
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The libwbxml oracle
// ---------------------------------------------------------------------------------------

/// Looks for a tool; missing is a failure, or a skip under SIMFOTA_SKIP_EXTERNAL=1.
fn have(tool: &str) -> bool {
    match Process::new(tool).arg("-h").output() {
        Ok(_) => true,
        Err(_) if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") => {
            panic!("{tool} missing: install the Debian package libwbxml2-utils")
        }
        Err(_) => {
            eprintln!("skipped: {tool} missing (Debian package libwbxml2-utils)");
            false
        }
    }
}

fn scratch(ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "simfota-syncml-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn run(tool: &str, args: &[&str]) {
    let out = Process::new(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn our_wbxml_decodes_with_wbxml2xml_to_the_same_model() {
    if !have("wbxml2xml") {
        return;
    }
    let limits = Limits::default();
    for (p, m) in corpus() {
        for opts in wbxml_variants() {
            let input = scratch("wbxml");
            let output = scratch("xml");
            std::fs::write(&input, wbxml::encode_with(&m, &opts).unwrap()).unwrap();
            run(
                "wbxml2xml",
                &["-o", output.to_str().unwrap(), input.to_str().unwrap()],
            );
            let back = std::fs::read(&output).unwrap();
            let got = xml::decode(&back, &limits).unwrap_or_else(|e| {
                panic!(
                    "{} {opts:?}: {e}\n{}",
                    p.display(),
                    String::from_utf8_lossy(&back)
                )
            });
            assert_eq!(got, m, "{} {opts:?}", p.display());
            let _ = std::fs::remove_file(input);
            let _ = std::fs::remove_file(output);
        }
    }
}

#[test]
fn xml2wbxml_output_decodes_with_ours_to_the_same_model() {
    if !have("xml2wbxml") {
        return;
    }
    let limits = Limits::default();
    for (p, m) in corpus() {
        // Default (WBXML 1.3, string table on), no string table, and WBXML 1.1 / 1.2.
        for extra in [&[][..], &["-n"][..], &["-v", "1.1"][..], &["-v", "1.2"][..]] {
            let output = scratch("wbxml");
            let mut args: Vec<&str> = extra.to_vec();
            let out = output.to_str().unwrap().to_owned();
            args.extend(["-o", &out, p.to_str().unwrap()]);
            run("xml2wbxml", &args);
            let bytes = std::fs::read(&output).unwrap();
            let got = wbxml::decode(&bytes, &limits)
                .unwrap_or_else(|e| panic!("{} {extra:?}: {e}", p.display()));
            assert_eq!(got, m, "{} {extra:?}", p.display());
            let _ = std::fs::remove_file(output);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: the right error and SyncML status, never a panic
// ---------------------------------------------------------------------------------------

fn sample() -> Vec<u8> {
    std::fs::read(dir("corpus").join("05_pkg2_fumo_delivery.xml")).unwrap()
}

#[test]
fn malformed_xml_is_bad_request() {
    let limits = Limits::default();
    let text = String::from_utf8(sample()).unwrap();
    for broken in [
        text.replace("</Exec>", ""),
        text.replace("<CmdID>5</CmdID>", "<CmdID>5</CmdId>"),
        text[..text.len() / 2].to_owned(),
        text.replace("&amp;", "&bogus;"),
        "not xml at all".to_owned(),
        String::new(),
    ] {
        let e = xml::decode(broken.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
    }
    let e = xml::decode(&[0xFF, 0xFE, b'<'], &limits).unwrap_err();
    assert_eq!(e, DecodeError::InvalidUtf8);
}

#[test]
fn unknown_elements_and_misplaced_ones_are_refused() {
    let limits = Limits::default();
    let text = String::from_utf8(sample()).unwrap();
    let e = xml::decode(
        text.replace("<Final/>", "<Bogus/><Final/>").as_bytes(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(e, DecodeError::UnknownElement("Bogus".into()));
    let e = xml::decode(
        text.replace("<Final/>", "<LocURI>x</LocURI><Final/>")
            .as_bytes(),
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::UnexpectedElement {
                parent: "SyncBody",
                ..
            }
        ),
        "{e}"
    );
    let e = xml::decode(text.replace("<VerDTD>1.2</VerDTD>", "").as_bytes(), &limits).unwrap_err();
    assert_eq!(
        e,
        DecodeError::MissingElement {
            parent: "SyncHdr",
            child: "VerDTD"
        }
    );
    assert_eq!(e.status(), StatusCode::INCOMPLETE_COMMAND);
    let e = xml::decode(
        text.replace("<CmdID>5</CmdID>", "<CmdID>five</CmdID>")
            .as_bytes(),
        &limits,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        DecodeError::InvalidValue {
            element: "CmdID",
            ..
        }
    ));
    // DS commands decode, to be answered 406 by the sessions.
    let m = xml::decode(
        text.replace("<Final/>", "<Sync><CmdID>9</CmdID></Sync><Final/>")
            .as_bytes(),
        &limits,
    )
    .unwrap();
    assert!(matches!(m.body.last(), Some(Command::Unsupported { name, .. }) if name == "Sync"));
}

#[test]
fn duplicate_cmd_ids_are_refused() {
    let limits = Limits::default();
    let text = String::from_utf8(sample()).unwrap();
    let e = xml::decode(
        text.replace("<CmdID>5</CmdID>", "<CmdID>4</CmdID>")
            .as_bytes(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(e, DecodeError::DuplicateCmdId(4));
    let nested =
        std::fs::read_to_string(dir("corpus").join("12_sequence_nested_atomic.xml")).unwrap();
    let e = xml::decode(
        nested
            .replace("<CmdID>4</CmdID>", "<CmdID>2</CmdID>")
            .as_bytes(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(e, DecodeError::DuplicateCmdId(2));
    let m = xml::decode(text.as_bytes(), &limits).unwrap();
    let mut w = wbxml::encode(&m).unwrap();
    // Rewrite CmdID 5 as 4 in the WBXML: the decoder must see the duplicate as well.
    let at = w.windows(3).rposition(|s| s == [0x03, b'5', 0x00]).unwrap();
    w[at + 1] = b'4';
    assert_eq!(
        wbxml::decode(&w, &limits).unwrap_err(),
        DecodeError::DuplicateCmdId(4)
    );
}

#[test]
fn oversized_and_overdeep_messages_are_refused() {
    let text = sample();
    let small = Limits {
        max_message_bytes: 100,
        ..Limits::default()
    };
    let e = xml::decode(&text, &small).unwrap_err();
    assert_eq!(
        e,
        DecodeError::MessageTooLarge {
            size: text.len(),
            limit: 100
        }
    );
    assert_eq!(e.status(), StatusCode::REQUEST_ENTITY_TOO_LARGE);
    let m = xml::decode(&text, &Limits::default()).unwrap();
    let w = wbxml::encode(&m).unwrap();
    assert!(matches!(
        wbxml::decode(&w, &small),
        Err(DecodeError::MessageTooLarge { .. })
    ));
    let shallow = Limits {
        max_depth: 4,
        ..Limits::default()
    };
    assert_eq!(
        xml::decode(&text, &shallow).unwrap_err(),
        DecodeError::TooDeep(4)
    );
    assert_eq!(
        wbxml::decode(&w, &shallow).unwrap_err(),
        DecodeError::TooDeep(4)
    );
    let few = Limits {
        max_elements: 10,
        ..Limits::default()
    };
    assert_eq!(
        xml::decode(&text, &few).unwrap_err(),
        DecodeError::TooManyElements(10)
    );
    let short = Limits {
        max_text_bytes: 16,
        ..Limits::default()
    };
    assert!(matches!(
        xml::decode(&text, &short),
        Err(DecodeError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        wbxml::decode(&w, &short),
        Err(DecodeError::ValueTooLarge { .. })
    ));
    // A nesting bomb stops at the depth limit.
    let bomb = format!("<SyncML>{}", "<Atomic>".repeat(100_000));
    assert_eq!(
        xml::decode(
            bomb.as_bytes(),
            &Limits {
                max_message_bytes: 1 << 20,
                ..Limits::default()
            }
        )
        .unwrap_err(),
        DecodeError::TooDeep(32)
    );
}

#[test]
fn malformed_wbxml_is_refused_precisely() {
    let limits = Limits::default();
    let m = xml::decode(&sample(), &limits).unwrap();
    let w = wbxml::encode(&m).unwrap();
    for cut in [1, 2, 5, w.len() / 2, w.len() - 1] {
        let e = wbxml::decode(&w[..cut], &limits).unwrap_err();
        assert!(
            matches!(e, DecodeError::MalformedWbxml { .. }),
            "cut {cut}: {e}"
        );
    }
    let mut other = vec![w[0], 0x07]; // public id 7 (one byte instead of 0xA4 0x01): not SyncML
    other.extend_from_slice(&w[3..]);
    assert_eq!(
        wbxml::decode(&other, &limits).unwrap_err(),
        DecodeError::UnsupportedPublicId("0x7".into())
    );
    let mut latin1 = w.clone();
    latin1[3] = 0x04; // charset ISO-8859-1
    assert_eq!(
        wbxml::decode(&latin1, &limits).unwrap_err(),
        DecodeError::UnsupportedCharset(4)
    );
    assert_eq!(
        wbxml::decode(&latin1, &limits).unwrap_err().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let mut version = w.clone();
    version[0] = 0x09;
    assert_eq!(
        wbxml::decode(&version, &limits).unwrap_err(),
        DecodeError::UnsupportedWbxmlVersion(9)
    );
    let mut trailing = w.clone();
    trailing.push(0x01);
    assert!(matches!(
        wbxml::decode(&trailing, &limits),
        Err(DecodeError::MalformedWbxml {
            reason: "bytes after the root element",
            ..
        })
    ));
    // Attributes, literals, extensions and unknown tokens.
    let head = [0x02, 0xA4, 0x01, 0x6A, 0x00];
    for (body, want) in [
        (&[0xED][..], "attributes"),
        (&[0x6D, 0x04, 0x00][..], "literal"),
        (&[0x6D, 0xC0][..], "extension"),
        (&[0x6D, 0x7F][..], "unknown"),
        (&[0x6D, 0x00, 0x05][..], "code page"),
    ] {
        let mut doc = head.to_vec();
        doc.extend_from_slice(body);
        let e = wbxml::decode(&doc, &limits).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    // A string-table reference out of range.
    let doc = [0x02, 0xA4, 0x01, 0x6A, 0x00, 0x6D, 0x83, 0x05, 0x01];
    assert!(
        wbxml::decode(&doc, &limits)
            .unwrap_err()
            .to_string()
            .contains("string table")
    );
}

#[test]
fn wbxml_string_table_references_and_entities_decode() {
    // Hand-assembled: string table "1.2\0DM/1.2\0", VerDTD and VerProto by reference, an
    // ENTITY in the SessionID, Data opaque in an Alert.
    let mut doc = vec![0x03, 0xA4, 0x01, 0x6A, 0x0B];
    doc.extend_from_slice(b"1.2\0DM/1.2\0");
    doc.extend_from_slice(&[0x6D, 0x6C]);
    doc.extend_from_slice(&[0x71, 0x83, 0x00, 0x01]); // VerDTD = strtbl[0]
    doc.extend_from_slice(&[0x72, 0x83, 0x04, 0x01]); // VerProto = strtbl[4]
    doc.extend_from_slice(&[0x65, 0x03, b'4', 0x00, 0x02, 0x37, 0x01]); // SessionID "4" + '7'
    doc.extend_from_slice(&[0x5B, 0x03, b'1', 0x00, 0x01]);
    doc.extend_from_slice(&[0x6E, 0x57, 0x03, b'd', b'm', 0x00, 0x01, 0x01]);
    doc.extend_from_slice(&[0x67, 0x57, 0x03, b'd', b'v', 0x00, 0x01, 0x01]);
    doc.push(0x01); // end SyncHdr
    doc.extend_from_slice(&[0x6B, 0x46, 0x4B, 0x03, b'1', 0x00, 0x01, 0x4F, 0xC3, 0x04]);
    doc.extend_from_slice(b"1201");
    doc.extend_from_slice(&[0x01, 0x01, 0x12, 0x01, 0x01]);
    let m = wbxml::decode(&doc, &Limits::default()).unwrap();
    assert_eq!(m.header.ver_dtd, "1.2");
    assert_eq!(m.header.ver_proto, "DM/1.2");
    assert_eq!(m.header.session_id, "47");
    assert!(m.is_final);
    assert!(matches!(&m.body[0], Command::Alert(a) if a.code.0 == 1201));
}
