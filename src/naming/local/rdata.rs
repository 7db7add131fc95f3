//! One resource record from the words of its entry: `[TTL] [CLASS] TYPE RDATA`, the TTL and the
//! class in either order (RFC 1035 section 5.1), `TYPEnnn` and `CLASSnnn` and the generic RDATA
//! `\# LENGTH HEX` of RFC 3597 section 5. Whatever hickory's parser of a type would ignore
//! (words after the RDATA) is refused, and so are what cannot be data: a class other than IN, a
//! TTL above 2^31 - 1 (RFC 2181 section 8), meta-types and DNSSEC records.

use hickory_proto::{
    rr::{
        DNSClass, Name, RData, RecordType,
        rdata::{HINFO, TXT},
    },
    serialize::{
        binary::{BinDecoder, BinEncodable, BinEncoder, DecodeError, NameEncoding, Restrict},
        txt::{ParseError, Parser, parse_ttl},
    },
};

use super::syntax::{Token, character_string};

/// The largest TTL, in seconds: RFC 2181 section 8 keeps the top bit clear (2^31 - 1).
pub(super) const MAX_TTL: u32 = 0x7fff_ffff;

/// Why the text of a record (or a line of a zone file) is refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Nothing but a TTL or a class: no type.
    #[error("no record type")]
    NoType,
    /// A record given to [`super::parse_record`] spans several lines.
    #[error("a record is a single line")]
    Lines,
    /// A `$` directive where a record was expected, or one that is not allowed or unknown.
    #[error("{0} is not allowed here (a record is \"[TTL] [IN] TYPE RDATA\")")]
    Directive(String),
    /// A `"` without its closing `"`.
    #[error("a quoted string is not closed")]
    UnclosedQuote,
    /// A `(` without its `)`.
    #[error("a ( is not closed")]
    UnclosedParenthesis,
    /// A `(` inside another.
    #[error("a ( inside another")]
    NestedParenthesis,
    /// A `)` without a `(`.
    #[error("a ) without a (")]
    UnopenedParenthesis,
    /// A word where the TTL stands that is not a number of seconds.
    #[error("TTL {0:?} is not a number of seconds (units s, m, h, d, w allowed: 1h30m)")]
    BadTtl(String),
    /// A TTL above 2^31 - 1 seconds (RFC 2181 section 8).
    #[error(
        "TTL {0} is above 2147483647 seconds (2^31 - 1), the largest RFC 2181 section 8 allows"
    )]
    TtlTooLarge(u64),
    /// Two TTLs, or two classes, before the type.
    #[error("{0} is given twice")]
    Twice(&'static str),
    /// A class other than IN.
    #[error("class {0} is not served: records here are of class IN only")]
    Class(String),
    /// The word where the type stands is no type hickory knows, nor `TYPEnnn`.
    #[error(
        "{0:?} is not a record type (a mnemonic such as A or TXT, or TYPEnnn with nnn up to 65535)"
    )]
    UnknownType(String),
    /// A type that cannot be data in a zone.
    #[error("{rtype} records cannot be given here: {why}")]
    NotData {
        /// The type, as a mnemonic or `TYPEnnn`.
        rtype: String,
        /// Why (meta-type, DNSSEC...).
        why: &'static str,
    },
    /// A type hickory has no text form for, without the generic form.
    #[error(
        "{rtype} has no text form here: write its RDATA as \\# LENGTH HEX (RFC 3597 section 5)"
    )]
    NoTextForm {
        /// The type, `TYPEnnn`.
        rtype: String,
    },
    /// The type's own parser refused the RDATA.
    #[error("the {rtype} RDATA does not parse")]
    Rdata {
        /// The type.
        rtype: RecordType,
        /// hickory's reason.
        #[source]
        source: ParseError,
    },
    /// Words after the RDATA that the type's parser would have ignored.
    #[error("{text:?} after the {rtype} RDATA is not part of it (one record per line)")]
    Trailing {
        /// The type.
        rtype: RecordType,
        /// The words left over, as written.
        text: String,
    },
    /// The number of character-strings does not fit the type.
    #[error("{rtype} takes {wanted}")]
    Strings {
        /// TXT or HINFO.
        rtype: RecordType,
        /// How many it takes, in words.
        wanted: &'static str,
    },
    /// A `\` escape that is not `\X` (X not a digit) or `\DDD` (000 to 255).
    #[error("{escape} is not an escape (\\X, or \\DDD from 000 to 255)")]
    Escape {
        /// The escape as written (at most its first three characters after `\`).
        escape: String,
    },
    /// A character-string of more than 255 bytes.
    #[error("a character-string holds at most 255 bytes, this one {len} (split it in several)")]
    LongString {
        /// Its length, in bytes.
        len: usize,
    },
    /// A quoted string for a type other than TXT or HINFO that is not UTF-8 once its escapes
    /// are decoded.
    #[error("{0} is not UTF-8 once its escapes are decoded, which only TXT and HINFO allow")]
    NotUtf8(String),
    /// The length of `\# LENGTH HEX` is not a number from 0 to 65535.
    #[error("\\# needs the RDATA length in bytes (0 to 65535), not {0:?}")]
    GenericLength(String),
    /// The data of `\# LENGTH HEX` is not hexadecimal, or has an odd number of digits.
    #[error("\\# data {0:?} is not an even number of hexadecimal digits")]
    GenericHex(String),
    /// `\# LENGTH HEX` with another number of bytes than LENGTH.
    #[error("\\# {declared} announces {declared} bytes, the data holds {found}")]
    GenericSize {
        /// LENGTH.
        declared: u16,
        /// The bytes of HEX.
        found: usize,
    },
    /// `\# LENGTH HEX` for a known type that does not decode as that type's RDATA (RFC 3597
    /// section 5).
    #[error("the \\# data is not {rtype} RDATA")]
    GenericDecode {
        /// The type.
        rtype: RecordType,
        /// Why it does not decode.
        #[source]
        source: DecodeError,
    },
    /// `\# LENGTH HEX` for a known type that decodes but does not encode back to the same
    /// bytes (a compressed name, a form hickory would change): it would not be served as given.
    #[error(
        "the \\# data is not {rtype} RDATA as the wire carries it and docs/PROTOCOL.md section \
         3.1 gives its form (a field cut short, a compressed or upper-case name?)"
    )]
    GenericForm {
        /// The type.
        rtype: RecordType,
    },
    /// RDATA that hickory's text parser of the type accepts but that cannot go on the wire as
    /// written: hickory cannot encode it (an SVCB `alpn` without a protocol) or reads the
    /// encoding back as other RDATA. It could be neither served nor published as written.
    #[error(
        "the {rtype} RDATA cannot be sent as written (hickory cannot encode it, or reads it back otherwise)"
    )]
    WireForm {
        /// The type.
        rtype: RecordType,
        /// hickory's reason, when it refused to encode.
        #[source]
        source: Option<hickory_proto::ProtoError>,
    },
    /// A record's owner name (in a zone file) does not parse.
    #[error("{name:?} is not a domain name")]
    Owner {
        /// The owner as written.
        name: String,
        /// Why.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// An entry of a zone file without an owner before any entry that had one.
    #[error("the first record has no owner name")]
    NoOwner,
}

/// The TTL (`None`: not given), class and type at the head of `tokens`, and the RDATA words.
pub(super) fn head<'t, 'a>(
    tokens: &'t [Token<'a>],
) -> Result<(Option<u32>, RecordType, &'t [Token<'a>]), RecordError> {
    let (mut given_ttl, mut given_class) = (None, None);
    for (i, token) in tokens.iter().enumerate() {
        let word = token.raw.to_ascii_uppercase();
        if token.quoted {
            return Err(RecordError::UnknownType(token.raw.to_owned()));
        } else if word.starts_with(|c: char| c.is_ascii_digit()) {
            if given_ttl.replace(ttl(token.raw)?).is_some() {
                return Err(RecordError::Twice("the TTL"));
            }
        } else if let Some(parsed) = class(&word) {
            if parsed != DNSClass::IN {
                return Err(RecordError::Class(token.raw.to_owned()));
            }
            if given_class.replace(parsed).is_some() {
                return Err(RecordError::Twice("the class"));
            }
        } else {
            let rtype = record_type(&word)?;
            check_data_type(rtype)?;
            return Ok((given_ttl, rtype, &tokens[i + 1..]));
        }
    }
    Err(RecordError::NoType)
}

/// A TTL word (`3600`, `1h`), at most [`MAX_TTL`].
pub(super) fn ttl(word: &str) -> Result<u32, RecordError> {
    match parse_ttl(word) {
        Ok(ttl) if ttl <= MAX_TTL => Ok(ttl),
        Ok(ttl) => Err(RecordError::TtlTooLarge(ttl.into())),
        // A plain number too large for 32 bits still deserves the message about the limit.
        Err(_) => match word.parse::<u64>() {
            Ok(ttl) => Err(RecordError::TtlTooLarge(ttl)),
            Err(_) => Err(RecordError::BadTtl(word.to_owned())),
        },
    }
}

/// The class named by an upper-case word: a mnemonic or `CLASSnnn` (RFC 3597 section 5).
fn class(word: &str) -> Option<DNSClass> {
    match word.strip_prefix("CLASS") {
        Some(number) => number_of(number).map(DNSClass::from),
        None => word.parse().ok(),
    }
}

/// The type named by an upper-case word: a mnemonic or `TYPEnnn` (RFC 3597 section 5).
fn record_type(word: &str) -> Result<RecordType, RecordError> {
    let unknown = || RecordError::UnknownType(word.to_owned());
    match word.strip_prefix("TYPE") {
        Some(number) => number_of(number).map(RecordType::from).ok_or_else(unknown),
        None => word.parse().map_err(|_| unknown()),
    }
}

/// The decimal number of `TYPEnnn` or `CLASSnnn`: digits only, up to 65535.
fn number_of(digits: &str) -> Option<u16> {
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

/// `TYPE65280` for a type hickory has no mnemonic for, else the mnemonic.
pub(super) fn type_name(rtype: RecordType) -> String {
    match rtype {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => known.to_string(),
    }
}

/// Refuses the types that cannot be data in a zone, in any form.
fn check_data_type(rtype: RecordType) -> Result<(), RecordError> {
    let code = u16::from(rtype);
    let why = if code == 0 {
        "type 0 is reserved (RFC 6895 section 3.1)"
    } else if rtype == RecordType::OPT || (128..=255).contains(&code) {
        "a meta-type or a query type, not data (RFC 6895 section 3.1)"
    } else if rtype == RecordType::NULL {
        "NULL records are not allowed in master files (RFC 1035 section 3.3.10)"
    } else if rtype.is_dnssec() {
        "a DNSSEC record: local and published names are not signed with DNSSEC"
    } else if rtype == RecordType::DNAME {
        "names below a DNAME are not rewritten here (docs/PROTOCOL.md section 10.2); give the \
         names a CNAME each"
    } else {
        return Ok(());
    };
    Err(RecordError::NotData {
        rtype: type_name(rtype),
        why,
    })
}

/// The RDATA of `rtype` from its words; relative names are relative to `origin`.
pub(super) fn rdata(
    rtype: RecordType,
    words: &[Token<'_>],
    origin: &Name,
) -> Result<RData, RecordError> {
    if let Some((first, rest)) = words.split_first()
        && first.is("\\#")
    {
        return generic(rtype, rest);
    }
    match rtype {
        RecordType::TXT => {
            let strings = words
                .iter()
                .map(character_string)
                .collect::<Result<Vec<_>, _>>()?;
            if strings.is_empty() {
                return Err(no_strings());
            }
            Ok(RData::TXT(TXT::from_bytes(
                strings.iter().map(Vec::as_slice).collect(),
            )))
        }
        RecordType::HINFO => hinfo(words),
        RecordType::Unknown(_) => Err(RecordError::NoTextForm {
            rtype: type_name(rtype),
        }),
        _ => typed(rtype, words, origin),
    }
}

/// HINFO: two character-strings, CPU and OS (RFC 1035 section 3.3.2).
fn hinfo(words: &[Token<'_>]) -> Result<RData, RecordError> {
    let rtype = RecordType::HINFO;
    match words {
        [cpu, os] => Ok(RData::HINFO(HINFO::from_bytes(
            character_string(cpu)?.into(),
            character_string(os)?.into(),
        ))),
        [_, _, rest @ ..] => Err(trailing(rtype, rest)),
        _ => Err(RecordError::Strings {
            rtype,
            wanted: "two character-strings, CPU and OS (RFC 1035 section 3.3.2)",
        }),
    }
}

/// A TXT record without strings.
fn no_strings() -> RecordError {
    RecordError::Strings {
        rtype: RecordType::TXT,
        wanted: "one or more character-strings (RFC 1035 section 3.3.14)",
    }
}

/// The words `rest`, left over after the RDATA of `rtype`.
fn trailing(rtype: RecordType, rest: &[Token<'_>]) -> RecordError {
    let text: Vec<&str> = rest.iter().map(|t| t.raw).collect();
    RecordError::Trailing {
        rtype,
        text: text.join(" "),
    }
}

/// RDATA through hickory's parser of `rtype`, refusing words it leaves unused.
fn typed(rtype: RecordType, tokens: &[Token<'_>], origin: &Name) -> Result<RData, RecordError> {
    let words = tokens
        .iter()
        .map(|w| hickory_word(w, origin))
        .collect::<Result<Vec<String>, _>>()?;
    let parse = |words: &[String]| -> Result<RData, ParseError> {
        let line = format!("@ 0 IN {rtype} {}\n", words.join(" "));
        let (_, sets) = Parser::new(line, None, Some(origin.clone())).parse()?;
        sets.into_values()
            .find_map(|set| set.records_without_rrsigs().next().map(|r| r.data.clone()))
            .ok_or_else(|| ParseError::from("no record"))
    };
    let data = parse(&words).map_err(|source| RecordError::Rdata { rtype, source })?;
    // hickory's parsers stop at what they need: a word whose removal changes nothing was
    // ignored, and so was everything after it.
    let mut used = words.len();
    while used > 0 && parse(&words[..used - 1]).is_ok_and(|fewer| fewer == data) {
        used -= 1;
    }
    if used < words.len() {
        return Err(trailing(rtype, &tokens[used..]));
    }
    Ok(data)
}

/// A word as hickory's lexer must see it to read what RFC 1035 means: a quoted string with its
/// escapes decoded and only `"` and `\` escaped again (hickory reads `\DDD` wrongly); `@` as
/// the origin, which hickory's lexer does not take inside RDATA; other words as written.
fn hickory_word(word: &Token<'_>, origin: &Name) -> Result<String, RecordError> {
    if word.is("@") {
        return Ok(origin.to_ascii());
    }
    if !word.quoted {
        return Ok(word.raw.to_owned());
    }
    let text = String::from_utf8(character_string(word)?)
        .map_err(|_| RecordError::NotUtf8(word.raw.to_owned()))?;
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Ok(quoted)
}

/// The generic RDATA `\# LENGTH HEX...` (RFC 3597 section 5): any bytes for an unknown type;
/// for a known type, bytes that decode as its RDATA and encode back unchanged.
fn generic(rtype: RecordType, words: &[Token<'_>]) -> Result<RData, RecordError> {
    let (length, hex) = words
        .split_first()
        .ok_or_else(|| RecordError::GenericLength(String::new()))?;
    let declared = number_of(length.raw)
        .filter(|_| !length.quoted)
        .ok_or_else(|| RecordError::GenericLength(length.raw.to_owned()))?;
    let digits: String = hex.iter().map(|t| t.raw).collect();
    let bad_hex = || RecordError::GenericHex(digits.clone());
    if hex.iter().any(|t| t.quoted) || !digits.len().is_multiple_of(2) {
        return Err(bad_hex());
    }
    let bytes = (0..digits.len())
        .step_by(2)
        .map(|at| {
            digits
                .get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad_hex)?;
    if bytes.len() != usize::from(declared) {
        return Err(RecordError::GenericSize {
            declared,
            found: bytes.len(),
        });
    }
    let mut decoder = BinDecoder::new(&bytes);
    let data = RData::read(&mut decoder, rtype, Restrict::new(declared))
        .map_err(|source| RecordError::GenericDecode { rtype, source })?;
    let mut back = Vec::with_capacity(bytes.len());
    let mut encoder = BinEncoder::new(&mut back);
    let encoded = data.emit(&mut encoder.with_name_encoding(NameEncoding::Uncompressed));
    if encoded.is_err() || back != bytes {
        return Err(RecordError::GenericForm { rtype });
    }
    if matches!(&data, RData::TXT(txt) if txt.txt_data.is_empty()) {
        return Err(no_strings());
    }
    // Of the form docs/PROTOCOL.md section 3.1 gives the type, too: hickory reads KX, PX and
    // others it does not know as opaque bytes (the fuzzer found a KX of 3 bytes that parsed
    // and then failed to sign).
    if crate::record::rdata::check_form(rtype, &bytes).is_err() {
        return Err(RecordError::GenericForm { rtype });
    }
    Ok(data)
}

/// Refuses `data` unless it encodes (at most 65535 bytes) and reads back as itself: a record
/// that does not would fail every reply that carries it, or be read by peers as other data
/// than its publisher signed.
pub(super) fn check_wire(rtype: RecordType, data: &RData) -> Result<(), RecordError> {
    let mut wire = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut wire);
    data.emit(&mut encoder.with_name_encoding(NameEncoding::Uncompressed))
        .map_err(|source| RecordError::WireForm {
            rtype,
            source: Some(source),
        })?;
    let refused = || RecordError::WireForm {
        rtype,
        source: None,
    };
    let length = u16::try_from(wire.len()).map_err(|_| refused())?;
    match RData::read(&mut BinDecoder::new(&wire), rtype, Restrict::new(length)) {
        Ok(back) if back == *data => Ok(()),
        _ => Err(refused()),
    }
}
