use super::*;
use hickory_proto::rr::{RData, RecordType};

fn tlds() -> Vec<LowerName> {
    vec![LowerName::new(&Name::from_ascii("p2p.").unwrap())]
}

#[test]
fn parses_common_types() {
    let owner = parse_owner("site.p2p").unwrap();
    for (text, rtype) in [
        ("A 192.0.2.1", RecordType::A),
        ("AAAA 2001:db8::1", RecordType::AAAA),
        ("CNAME other.p2p.", RecordType::CNAME),
        ("TXT \"hello world\" \"two\"", RecordType::TXT),
        ("MX 10 mail", RecordType::MX),
        ("SRV 0 5 443 web.site.p2p.", RecordType::SRV),
        ("CAA 0 issue \"letsencrypt.org\"", RecordType::CAA),
        ("HTTPS 1 . alpn=h2", RecordType::HTTPS),
        ("60 IN A 192.0.2.9", RecordType::A),
    ] {
        let records = parse_record(&owner, text, 300).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(records[0].record_type(), rtype, "{text}");
    }
    let mx = parse_record(&owner, "MX 10 mail", 300).unwrap();
    let RData::MX(mx) = &mx[0].data else { panic!() };
    assert_eq!(mx.exchange, Name::from_ascii("mail.site.p2p.").unwrap());
    let ttl = parse_record(&owner, "60 A 192.0.2.9", 300).unwrap();
    assert_eq!(ttl[0].ttl, 60);
}

#[test]
fn rejects_bad_records() {
    let mut zone = LocalZone::default();
    for bad in [
        "A 999.1.1.1",
        "BOGUS x",
        "",
        "A 192.0.2.1\n$INCLUDE /etc/passwd",
    ] {
        assert!(
            zone.add("x.p2p", &[bad.to_owned()], 300, &tlds()).is_err(),
            "{bad:?} was accepted"
        );
    }
    let err = zone
        .add(
            "c.p2p",
            &["CNAME a.p2p.".to_owned(), "A 192.0.2.1".to_owned()],
            300,
            &tlds(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ZoneError::Content(crate::record::ContentError::CnameAndOther { .. })
        ),
        "{err}"
    );
    assert!(
        zone.add("p2p", &["A 192.0.2.1".to_owned()], 300, &tlds())
            .is_err()
    );
    assert!(zone.is_empty());
}

#[test]
fn presentation_quotes_character_strings() {
    let owner = parse_owner("site.p2p").unwrap();
    let shown = |text: &str| {
        let records = parse_record(&owner, text, 300).unwrap_or_else(|e| panic!("{text}: {e}"));
        presentation(&records[0])
    };
    for (text, expected) in [
        (
            r#"TXT "hello world" "second""#,
            r#"site.p2p. 300 IN TXT "hello world" "second""#,
        ),
        ("TXT hello world", r#"site.p2p. 300 IN TXT "hello" "world""#),
        (
            r#"TXT "say \"hi\" \\ bye""#,
            r#"site.p2p. 300 IN TXT "say \"hi\" \\ bye""#,
        ),
        (r#"TXT """#, r#"site.p2p. 300 IN TXT """#),
        ("TXT café", r#"site.p2p. 300 IN TXT "café""#),
        (
            r#"HINFO "Intel x86" Linux"#,
            r#"site.p2p. 300 IN HINFO "Intel x86" "Linux""#,
        ),
        ("60 A 192.0.2.1", "site.p2p. 60 IN A 192.0.2.1"),
        ("MX 10 mail", "site.p2p. 300 IN MX 10 mail.site.p2p."),
    ] {
        assert_eq!(shown(text), expected, "{text}");
    }
}

#[test]
fn presentation_escapes_bytes_that_are_not_text() {
    let name = Name::from_ascii("site.p2p.").unwrap();
    let txt = hickory_proto::rr::rdata::TXT::from_bytes(vec![b"a\tb\n", b"\xff\x00z"]);
    let record = Record::from_rdata(name, 60, RData::TXT(txt));
    assert_eq!(
        presentation(&record),
        r#"site.p2p. 60 IN TXT "a\009b\010" "\255\000z""#
    );
}

#[test]
fn presentation_parses_back_to_the_same_record() {
    let owner = parse_owner("site.p2p").unwrap();
    for text in [
        "A 192.0.2.1",
        "AAAA 2001:db8::1",
        "CNAME other.p2p.",
        r#"TXT "hello world" "two" "quote \" and \\ backslash""#,
        r#"HINFO "Intel x86" Linux"#,
        "MX 10 mail",
        "SRV 0 5 443 web.site.p2p.",
        r#"CAA 0 issue "letsencrypt.org""#,
    ] {
        let record = parse_record(&owner, text, 300).unwrap().remove(0);
        let shown = presentation(&record);
        let (_, rest) = shown.split_once(' ').unwrap();
        let again = parse_record(&owner, rest, 1).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(again.len(), 1, "{shown}");
        assert_eq!(again[0], record, "{text} shown as {shown}");
        assert_eq!(again[0].ttl, record.ttl, "{shown}");
    }
}

fn site() -> Name {
    parse_owner("site.p2p").unwrap()
}

/// The reason `text` is refused as a record of `site.p2p`, with the record text checked.
fn refusal(text: &str) -> RecordError {
    match parse_record(&site(), text, 300) {
        Ok(records) => panic!("{text:?} was accepted as {records:?}"),
        Err(ZoneError::Record { record, source }) => {
            assert_eq!(record, text);
            *source
        }
        Err(other) => panic!("{text:?}: {other}"),
    }
}

fn one(text: &str) -> Record {
    let mut records = parse_record(&site(), text, 300)
        .unwrap_or_else(|e| panic!("{text}: {}", crate::error::one_line(&e)));
    assert_eq!(records.len(), 1, "{text}");
    records.remove(0)
}

#[test]
fn words_after_the_rdata_are_refused() {
    for (text, left) in [
        ("A 192.0.2.1 junk", "junk"),
        ("A 192.0.2.1 192.0.2.2", "192.0.2.2"),
        ("A 192.0.2.1 \"junk\"", "\"junk\""),
        ("A 192.0.2.1 junk more", "junk more"),
        ("AAAA 2001:db8::1 x", "x"),
        ("CNAME a.p2p. b.p2p.", "b.p2p."),
        ("PTR a.p2p. b", "b"),
        ("NS ns1 ns2", "ns2"),
        ("MX 10 mail junk", "junk"),
        ("SRV 0 5 443 web junk", "junk"),
        ("CAA 0 issue \"ca.example\" junk", "junk"),
        ("HINFO a b c", "c"),
        ("SOA ns host 1 2 3 4 5 6", "6"),
        ("A ( 192.0.2.1 junk )", "junk"),
        ("IN A 192.0.2.1 junk ; a comment", "junk"),
    ] {
        match refusal(text) {
            RecordError::Trailing { text: found, .. } => assert_eq!(found, left, "{text}"),
            other => panic!("{text}: {other}"),
        }
    }
    // What hickory's parsers refuse themselves stays refused.
    for text in [
        "SSHFP 1 1 dead beef",
        "OPENPGPKEY AAAA BBBB",
        "HTTPS 1 . alpn=h2 junk",
    ] {
        assert!(matches!(refusal(text), RecordError::Rdata { .. }), "{text}");
    }
    // A comment is not RDATA; TLSA's hex and TXT's strings take every word.
    for text in [
        "A 192.0.2.1 ; the web server",
        "TLSA 3 1 1 dead beef",
        "TXT one two three",
        "SOA ns host ( 1 2 3 4 5 )",
    ] {
        one(text);
    }
}

#[test]
fn class_in_is_accepted_and_no_other() {
    for text in [
        "IN A 192.0.2.1",
        "in a 192.0.2.1",
        "60 IN A 192.0.2.1",
        "IN 60 A 192.0.2.1",
        "CLASS1 A 192.0.2.1",
    ] {
        assert_eq!(
            one(text).dns_class,
            hickory_proto::rr::DNSClass::IN,
            "{text}"
        );
    }
    for (text, class) in [
        ("CH A 192.0.2.1", "CH"),
        ("60 HS A 192.0.2.1", "HS"),
        ("NONE A 192.0.2.1", "NONE"),
        ("ANY A 192.0.2.1", "ANY"),
        ("CLASS3 A 192.0.2.1", "CLASS3"),
        ("class255 A 192.0.2.1", "class255"),
    ] {
        let error = refusal(text);
        assert!(
            matches!(&error, RecordError::Class(c) if c == class),
            "{text}: {error}"
        );
        assert!(error.to_string().contains("class IN only"), "{error}");
    }
    for text in [
        "IN IN A 192.0.2.1",
        "60 60 A 192.0.2.1",
        "IN 60 CLASS1 A 192.0.2.1",
    ] {
        assert!(matches!(refusal(text), RecordError::Twice(_)), "{text}");
    }
}

#[test]
fn ttls_above_2_31_are_refused_naming_the_value() {
    assert_eq!(one("2147483647 A 192.0.2.1").ttl, MAX_TTL);
    assert_eq!(one("1h30m A 192.0.2.1").ttl, 5400);
    assert_eq!(one("3550w A 192.0.2.1").ttl, 3550 * 604_800);
    for (text, value) in [
        ("2147483648 A 192.0.2.1", "2147483648"),
        ("4294967295 A 192.0.2.1", "4294967295"),
        ("4294967296 A 192.0.2.1", "4294967296"),
        ("IN 99999999999 A 192.0.2.1", "99999999999"),
        ("3551w A 192.0.2.1", "2147644800"),
    ] {
        let error = refusal(text);
        assert!(
            matches!(error, RecordError::TtlTooLarge(_)),
            "{text}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(value) && message.contains("RFC 2181"),
            "{message}"
        );
    }
    assert!(matches!(refusal("1x A 192.0.2.1"), RecordError::BadTtl(_)));
    // A default above the bound is refused too, where a record relies on it.
    let error = parse_record(&site(), "A 192.0.2.1", MAX_TTL + 1).unwrap_err();
    assert!(
        crate::error::one_line(&error).contains("2147483648"),
        "{error}"
    );
}

#[test]
fn generic_rdata_for_unknown_types() {
    let unknown = |record: &Record| match &record.data {
        RData::Unknown { code, rdata } => (u16::from(*code), rdata.anything.clone()),
        other => panic!("{other:?}"),
    };
    for text in [
        r"TYPE65534 \# 3 abcdef",
        r"type65534 \# 3 ABCDEF",
        r"TYPE65534 \# 3 ab cd ef",
        r"TYPE65534 \# 3 ( abcd ef )",
        r"TYPE65534 \# 3 a bcdef",
        r"60 IN TYPE65534 \# 3 abcdef",
    ] {
        assert_eq!(
            unknown(&one(text)),
            (65534, vec![0xab, 0xcd, 0xef]),
            "{text}"
        );
    }
    assert_eq!(unknown(&one(r"TYPE65280 \# 0")), (65280, vec![]));
    assert_eq!(unknown(&one(r"TYPE260 \# 2 0000")), (260, vec![0, 0]));
    for (text, expected) in [
        (r"TYPE65534 abcdef", "TYPE65534 has no text form"),
        (
            r"TYPE65534 \# 2 abcdef",
            "announces 2 bytes, the data holds 3",
        ),
        (r"TYPE65534 \# 4 abcdef", "announces 4 bytes"),
        (r"TYPE65534 \# 1", "announces 1 bytes, the data holds 0"),
        (r"TYPE65534 \# 0 00", "the data holds 1"),
        (r"TYPE65534 \# 2 abc", "hexadecimal"),
        (r"TYPE65534 \# 2 zz00", "hexadecimal"),
        (r"TYPE65534 \# x", "length"),
        (r"TYPE65534 \# 70000", "length"),
        (r"TYPE65534 \#", "length"),
        (r#"TYPE65534 \# "1" 00"#, "length"),
        (r"TYPE65536 \# 0", "not a record type"),
        (r"TYPE \# 0", "not a record type"),
        (r"TYPE+1 \# 0", "not a record type"),
        (r"BOGUS \# 0", "not a record type"),
    ] {
        let message = refusal(text).to_string();
        assert!(message.contains(expected), "{text}: {message}");
    }
}

#[test]
fn generic_rdata_of_known_types_must_be_their_rdata() {
    for (generic, specific) in [
        (r"A \# 4 c0000201", "A 192.0.2.1"),
        (r"TYPE1 \# 4 c0000201", "A 192.0.2.1"),
        (r"type1 192.0.2.1", "A 192.0.2.1"),
        (r"TYPE28 2001:db8::1", "AAAA 2001:db8::1"),
        (
            r"AAAA \# 16 20010db8000000000000000000000001",
            "AAAA 2001:db8::1",
        ),
        (r"TXT \# 6 0568656c6c6f", "TXT hello"),
        (r"TXT \# 7 0568656c6c6f00", r#"TXT hello """#),
        (r"CNAME \# 7 01610370327000", "CNAME a.p2p."),
        (r"MX \# 8 000a046d61696c00", "MX 10 mail."),
        (
            r"SOA \# 26 0161000162000000000100000002000000030000000400000005",
            "SOA a. b. 1 2 3 4 5",
        ),
    ] {
        assert_eq!(one(generic), one(specific), "{generic}");
    }
    for (text, expected) in [
        (r"A \# 3 c00002", "not A RDATA"),
        (r"A \# 5 c000020101", "not A RDATA"),
        (r"AAAA \# 4 c0000201", "not AAAA RDATA"),
        (r"CNAME \# 2 0161", "not CNAME RDATA"),
        (r"TXT \# 2 0561", "not TXT RDATA"),
        (r"TXT \# 0", "one or more character-strings"),
        (r"MX \# 2 000a", "not MX RDATA"),
        // An SOA whose RNAME points back at its MNAME: a compressed name is no RDATA as
        // written (RFC 3597 section 4) and would not be served as given.
        (
            r"SOA \# 25 016100c0000000000100000002000000030000000400000005",
            "not SOA RDATA as the wire carries it",
        ),
    ] {
        let message = refusal(text).to_string();
        assert!(message.contains(expected), "{text}: {message}");
    }
}

#[test]
fn types_that_cannot_be_data_are_refused_in_every_form() {
    for text in [
        r"TYPE0 \# 0",
        r"TYPE41 \# 0",
        r"TYPE128 \# 0",
        r"TYPE249 \# 0",
        r"AXFR \# 0",
        r"TYPE252 \# 0",
        r"TYPE255 \# 0",
        r"NULL \# 1 00",
        r"TYPE10 \# 1 00",
        r"RRSIG \# 0",
        r"TYPE46 \# 0",
        r"NSEC \# 0",
        r"DNSKEY 256 3 15 AAAA",
        r"TYPE48 \# 4 01000300",
        r"DS 1 15 2 abcd",
        r"TSIG \# 0",
        "DNAME other.example.",
        r"TYPE39 \# 1 00",
    ] {
        let error = refusal(text);
        assert!(
            matches!(error, RecordError::NotData { .. }),
            "{text}: {error}"
        );
    }
}

#[test]
fn character_strings_decode_every_escape() {
    let txt = |text: &str| match one(text).data {
        RData::TXT(txt) => txt.txt_data.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(txt(r#"TXT "a\065b""#), [b"aAb".to_vec()]);
    assert_eq!(txt(r"TXT a\065b"), [b"aAb".to_vec()]);
    assert_eq!(
        txt(r#"TXT "a\"b" c\"d"#),
        [b"a\"b".to_vec(), b"c\"d".to_vec()]
    );
    assert_eq!(
        txt(r#"TXT "\255\000" "\\""#),
        [vec![255, 0], b"\\".to_vec()]
    );
    assert_eq!(txt(r#"TXT "a;b" ; c"#), [b"a;b".to_vec()]);
    assert_eq!(
        txt(r#"TXT "cost $5" "(x)""#),
        [b"cost $5".to_vec(), b"(x)".to_vec()]
    );
    assert_eq!(txt(r#"TXT """#), [Vec::<u8>::new()]);
    let long = "x".repeat(255);
    assert_eq!(txt(&format!("TXT {long}")), [long.into_bytes()]);
    for (text, expected) in [
        (r#"TXT "\256""#, "not an escape"),
        (r#"TXT "\12x""#, "not an escape"),
        (r"TXT a\", "not an escape"),
        (r#"TXT "unclosed"#, "not closed"),
        ("TXT", "one or more character-strings"),
        ("HINFO one", "two character-strings"),
        (
            &format!("TXT {}", "x".repeat(256)),
            "at most 255 bytes, this one 256",
        ),
        (r#"CAA 0 issue "\255""#, "not UTF-8"),
    ] {
        let message = refusal(text).to_string();
        assert!(message.contains(expected), "{text}: {message}");
    }
    // Other types read quoted strings with the same escapes (hickory alone reads \046 wrong).
    let RData::CAA(caa) = one(r#"CAA 0 issue "ca\046example""#).data else {
        panic!()
    };
    assert_eq!(caa.value, b"ca.example");
}

#[test]
fn at_sign_means_the_owner_in_rdata() {
    let RData::CNAME(cname) = one("CNAME @").data else {
        panic!()
    };
    assert_eq!(cname.0, site());
    let RData::MX(mx) = one("MX 10 @").data else {
        panic!()
    };
    assert_eq!(mx.exchange, site());
}

#[test]
fn a_record_is_one_line_without_directives() {
    for (text, expected) in [
        ("A 192.0.2.1\nA 192.0.2.2", "single line"),
        ("A 192.0.2.1\r", "single line"),
        ("$TTL 60", "$TTL is not allowed"),
        ("$INCLUDE /etc/passwd", "$INCLUDE is not allowed"),
        ("", "no record type"),
        ("; only a comment", "no record type"),
        ("60 IN", "no record type"),
        ("\"A\" 192.0.2.1", "not a record type"),
        ("A ( 192.0.2.1", "( is not closed"),
        ("A 192.0.2.1 )", ") without a ("),
        ("A ( ( 192.0.2.1 ) )", "( inside another"),
    ] {
        let message = refusal(text).to_string();
        assert!(message.contains(expected), "{text:?}: {message}");
    }
}

#[test]
fn presentation_of_generic_records_parses_back() {
    for (text, shown) in [
        (
            r"TYPE65534 \# 3 abcdef",
            r"site.p2p. 300 IN TYPE65534 \# 3 abcdef",
        ),
        (r"TYPE65280 \# 0", r"site.p2p. 300 IN TYPE65280 \# 0"),
        (
            r#"TXT "a\009b\010" "\255\000z""#,
            r#"site.p2p. 300 IN TXT "a\009b\010" "\255\000z""#,
        ),
    ] {
        let record = one(text);
        assert_eq!(presentation(&record), shown);
        let (_, rest) = shown.split_once(' ').unwrap();
        assert_eq!(one(rest), record, "{shown}");
    }
    // A record of zero length read from the wire is hickory's Update0.
    let empty = Record::from_rdata(site(), 60, RData::Update0(RecordType::Unknown(65280)));
    assert_eq!(presentation(&empty), r"site.p2p. 60 IN TYPE65280 \# 0");
}

#[test]
fn zone_files_follow_the_same_rules() {
    let zone = "$TTL 60\n\
                @ IN SOA ns hostmaster ( 1 ; serial\n\
                \t7200 3600 1209600 300 )\n\
                \tIN A 192.0.2.1 ; same owner\n\
                www 120 CNAME @\n\
                txt TXT ( \"a b\"\n\
                \t\"c;d\" )\n\
                gen TYPE65534 \\# 3 ( ab\n cd ef )\n\
                $ORIGIN sub.site.p2p.\n\
                x A 192.0.2.2\n";
    let records =
        parse_zone(&site(), zone, 300).unwrap_or_else(|e| panic!("{}", crate::error::one_line(&e)));
    let shown: Vec<String> = records.iter().map(presentation).collect();
    assert_eq!(
        shown,
        [
            "site.p2p. 60 IN SOA ns.site.p2p. hostmaster.site.p2p. 1 7200 3600 1209600 300",
            "site.p2p. 60 IN A 192.0.2.1",
            "www.site.p2p. 120 IN CNAME site.p2p.",
            r#"txt.site.p2p. 60 IN TXT "a b" "c;d""#,
            r"gen.site.p2p. 60 IN TYPE65534 \# 3 abcdef",
            "x.sub.site.p2p. 60 IN A 192.0.2.2",
        ]
    );
    assert!(
        parse_zone(&site(), "; nothing\n\n", 300)
            .unwrap()
            .is_empty()
    );
    for (zone, line, expected) in [
        (
            "a A 192.0.2.1\nb A 192.0.2.2 junk\n",
            2,
            "\"junk\" after the A RDATA",
        ),
        ("a CH A 192.0.2.1\n", 1, "class IN only"),
        ("$TTL 2147483648\na A 192.0.2.1\n", 1, "2147483648"),
        ("a 4294967295 A 192.0.2.1\n", 1, "4294967295"),
        ("$INCLUDE /etc/passwd\n", 1, "$INCLUDE is not allowed"),
        (
            "$GENERATE 1-2 a$ A 192.0.2.$\n",
            1,
            "$GENERATE is not allowed",
        ),
        ("$ORIGIN\n", 1, "$ORIGIN is not allowed"),
        (" A 192.0.2.1\n", 1, "no owner name"),
        ("a..b A 192.0.2.1\n", 1, "not a domain name"),
        ("a TYPE0 \\# 0\n", 1, "reserved"),
        // Found by the zone_text fuzz target: a KX (which hickory reads as opaque bytes) whose
        // exchange name is cut short parsed, then failed to sign.
        ("a TYPE36 \\# 3 d3d52d\n", 1, "section 3.1 gives its form"),
        (
            "a TYPE36 \\# 5 000a014100\n",
            1,
            "section 3.1 gives its form",
        ),
        ("a A 192.0.2.1\nb TXT \"open\n", 2, "not closed"),
        ("a A ( 192.0.2.1\n", 1, "( is not closed"),
    ] {
        let error = parse_zone(&site(), zone, 300).unwrap_err();
        let message = crate::error::one_line(&error);
        assert!(
            matches!(error, ZoneError::ZoneLine { line: l, .. } if l == line),
            "{zone:?}: {message}"
        );
        assert!(message.contains(expected), "{zone:?}: {message}");
    }
}

#[test]
fn a_config_table_names_the_record_refused() {
    let table = |owner: &str, records: &[&str]| {
        BTreeMap::from([(
            owner.to_owned(),
            records.iter().map(|r| (*r).to_owned()).collect(),
        )])
    };
    let zone = LocalZone::from_table(
        &table("site.p2p", &["IN A 192.0.2.1", r"TYPE65534 \# 0"]),
        300,
        &tlds(),
    )
    .unwrap();
    assert_eq!(zone.get(&LowerName::new(&site())).unwrap().len(), 2);
    for (owner, records, key, expected) in [
        (
            "site.p2p",
            &["A 192.0.2.1", "A 192.0.2.2 junk"][..],
            "naming.records.\"site.p2p\"[1]",
            "junk",
        ),
        (
            "site.p2p",
            &["CNAME a.p2p.", "A 192.0.2.1"][..],
            "naming.records.\"site.p2p\"[1]",
            "CNAME",
        ),
        (
            "x.com",
            &[][..],
            "naming.records.\"x.com\"",
            "not under one of the TLDs",
        ),
        (
            "a..p2p",
            &["A 192.0.2.1"][..],
            "naming.records.\"a..p2p\"[0]",
            "not a domain name",
        ),
    ] {
        let (found, error) =
            LocalZone::from_table(&table(owner, records), 300, &tlds()).unwrap_err();
        assert_eq!(found, key);
        let message = crate::error::one_line(&error);
        assert!(message.contains(expected), "{message}");
    }
}

/// Found by the `zone_text` fuzz target (issue 15, kind 6): RDATA that hickory's text parser of
/// HTTPS accepts but that does not go on the wire as written. It failed at `publish` with
/// "record is malformed" or was read by peers as other RDATA than was signed; as a local
/// record, every reply carrying it failed to encode.
#[test]
fn rdata_that_cannot_go_on_the_wire_as_written_is_refused() {
    for text in [
        "HTTPS 1 5 alpn=;,2ph3o rt1 5 alpn=[h,2ph3o rt=8443",
        "HTTPS 1 n3",
        "HTTPS 1 CLASS3",
        "HTTPS 1 pm",
    ] {
        let refused = refusal(text);
        assert!(
            matches!(refused, RecordError::WireForm { .. }),
            "{text}: {refused}"
        );
    }
    // What goes on the wire as written is still read.
    one("HTTPS 1 . alpn=h2,h3 port=8443");
    one("SVCB 1 svc.example. ipv4hint=192.0.2.1");
}

/// Found by the `zone_text` fuzz target (issue 15, kind 6): hickory prints some RDATA (CERT
/// algorithms, CAA values with quotes, names in RDATA with escaped dots) in forms that do not
/// read back as the record: `p2pdns names` and `resolve` showed records that could not be
/// published again as shown.
#[test]
fn presentation_reads_back_whatever_hickory_prints() {
    for text in [
        r#"CAA 0 isu el"estsencrypt./rg""#,
        "CERT 2 0 60 E0Pe",
        r"NS 55555\555d\.65\.\.35\x.65\.55",
        r"MX 0 \.\.uu",
    ] {
        let record = one(text);
        let shown = presentation(&record);
        let again = parse_zone(&Name::root(), &shown, 0)
            .unwrap_or_else(|e| panic!("{text} shown as {shown}: {e}"));
        assert_eq!(again, [record], "{text} shown as {shown}");
    }
}
