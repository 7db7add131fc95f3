//! Records back to master-file text, as [`super::parse_record`] and `dig` read them.

use std::fmt::Write as _;

use hickory_proto::{
    rr::{Name, RData, Record},
    serialize::binary::{BinEncodable, BinEncoder, NameEncoding},
};

use super::rdata::type_name;

/// A record in zone-file presentation format, `NAME TTL CLASS TYPE RDATA`, as `dig` and
/// [`super::parse_record`] read it: names in ASCII (`xn--` labels, `\.` and `\DDD` escapes),
/// character-strings (TXT, HINFO) each in double quotes with `"` and `\` escaped (RFC 1035
/// section 5.1), a type hickory does not know as `TYPEnnn` with its RDATA in the generic form
/// `\# LENGTH HEX` (RFC 3597 section 5), other types as hickory prints them, unless that text
/// does not read back as the same record (hickory prints some CERT, CAA and NAPTR values and
/// names in RDATA in forms its parser does not read): then in the generic form too. hickory's
/// own `Display` runs a TXT record's strings together unquoted, so `"hello" "world"` would
/// show as `helloworld`, and prints unknown types as `Unknown`.
pub fn presentation(record: &Record) -> String {
    let mut out = format!(
        "{} {} {} {} ",
        record.name.to_ascii(),
        record.ttl,
        record.dns_class,
        type_name(record.record_type())
    );
    match &record.data {
        RData::TXT(txt) => {
            for (i, string) in txt.txt_data.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                push_character_string(&mut out, string);
            }
        }
        RData::HINFO(hinfo) => {
            push_character_string(&mut out, &hinfo.cpu);
            out.push(' ');
            push_character_string(&mut out, &hinfo.os);
        }
        RData::Unknown { rdata: data, .. } | RData::NULL(data) => {
            push_generic(&mut out, &data.anything);
        }
        // A record of zero length read from the wire.
        RData::Update0(_) => push_generic(&mut out, &[]),
        data => {
            let head = out.len();
            let _ = write!(out, "{data}");
            if !reads_back(&out, record) {
                out.truncate(head);
                let mut wire = Vec::new();
                let mut encoder = BinEncoder::new(&mut wire);
                let _ = data.emit(&mut encoder.with_name_encoding(NameEncoding::Uncompressed));
                push_generic(&mut out, &wire);
            }
        }
    }
    out
}

/// Does `text` read back (as a zone file's line) as `record`?
fn reads_back(text: &str, record: &Record) -> bool {
    super::parse_zone(&Name::root(), text, 0)
        .is_ok_and(|again| again.len() == 1 && again[0] == *record && again[0].ttl == record.ttl)
}

/// Appends `\# LENGTH HEX` (RFC 3597 section 5); `\# 0` for empty RDATA.
fn push_generic(out: &mut String, bytes: &[u8]) {
    let _ = write!(out, "\\# {}", bytes.len());
    if !bytes.is_empty() {
        out.push(' ');
        for byte in bytes {
            let _ = write!(out, "{byte:02x}");
        }
    }
}

/// Appends `bytes` as a quoted character-string. Valid UTF-8 stays readable; control
/// characters and bytes that are not UTF-8 become `\DDD` (decimal, one per byte), so the line
/// stays one line and says exactly which bytes the string holds.
fn push_character_string(out: &mut String, bytes: &[u8]) {
    let decimal = |out: &mut String, byte: u8| {
        let _ = write!(out, "\\{byte:03}");
    };
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(ch);
                }
                ch if ch.is_control() => {
                    let mut buf = [0; 4];
                    for byte in ch.encode_utf8(&mut buf).bytes() {
                        decimal(out, byte);
                    }
                }
                ch => out.push(ch),
            }
        }
        for &byte in chunk.invalid() {
            decimal(out, byte);
        }
    }
    out.push('"');
}
