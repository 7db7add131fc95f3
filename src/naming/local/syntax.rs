//! The master-file syntax of RFC 1035 section 5.1, up to tokens: entries (one per line, or
//! several lines inside parentheses), their words and quoted strings, comments, and the escapes
//! of character-strings. hickory's own lexer is not public, decodes `\DDD` wrongly (`\065` is
//! not `A`) and ignores quotes inside parentheses, so the words are found here and only the
//! RDATA of each type is left to hickory's parsers ([`super::rdata`]).

use super::rdata::RecordError;

/// One word of an entry, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token<'a> {
    /// The text, quotes included for a quoted string, escapes not decoded.
    pub(super) raw: &'a str,
    /// A `"`-quoted string: never a keyword, a type or `\#`.
    pub(super) quoted: bool,
}

impl Token<'_> {
    /// The unquoted word `word` (ASCII case ignored)?
    pub(super) fn is(&self, word: &str) -> bool {
        !self.quoted && self.raw.eq_ignore_ascii_case(word)
    }
}

/// An entry of a master file: a directive or a resource record.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    /// The line the entry starts on, from 1.
    pub(super) line: usize,
    /// The entry began with a blank: it has no owner name and belongs to the previous owner.
    pub(super) blank_owner: bool,
    /// Its words, parentheses and comments left out.
    pub(super) tokens: Vec<Token<'a>>,
    /// Its text from the first word to the last, for messages.
    pub(super) text: &'a str,
}

/// Splits master-file `text` into entries, leaving out blank and comment-only lines.
///
/// # Errors
/// The line and the problem when a quoted string or a parenthesis is not closed, or a `)` has
/// no `(`.
pub(super) fn entries(text: &str) -> Result<Vec<Entry<'_>>, (usize, RecordError)> {
    let bytes = text.as_bytes();
    let mut found: Vec<Entry<'_>> = Vec::new();
    let (mut line, mut at, mut open) = (1, 0, None::<usize>);
    // The entry being read, and where its first word starts.
    let mut entry = Entry {
        line,
        blank_owner: false,
        tokens: Vec::new(),
        text: "",
    };
    let mut first = 0;
    while at < bytes.len() {
        if open.is_none() && (at == 0 || bytes[at - 1] == b'\n') {
            let next = Entry {
                line,
                blank_owner: matches!(bytes[at], b' ' | b'\t'),
                tokens: Vec::new(),
                text: "",
            };
            found.push(std::mem::replace(&mut entry, next));
        }
        let start = at;
        match bytes[at] {
            b'\n' => line += 1,
            b' ' | b'\t' | b'\r' => {}
            b';' => {
                while at + 1 < bytes.len() && bytes[at + 1] != b'\n' {
                    at += 1;
                }
            }
            b'(' if open.is_some() => return Err((line, RecordError::NestedParenthesis)),
            b'(' => open = Some(line),
            b')' if open.is_none() => return Err((line, RecordError::UnopenedParenthesis)),
            b')' => open = None,
            quote_or_word => {
                let quoted = quote_or_word == b'"';
                at = token_end(bytes, at, quoted).ok_or((line, RecordError::UnclosedQuote))?;
                line += bytes[start..at].iter().filter(|&&b| b == b'\n').count();
                if entry.tokens.is_empty() {
                    first = start;
                }
                entry.text = &text[first..at];
                entry.tokens.push(Token {
                    raw: &text[start..at],
                    quoted,
                });
                continue;
            }
        }
        at += 1;
    }
    if let Some(line) = open {
        return Err((line, RecordError::UnclosedParenthesis));
    }
    found.push(entry);
    found.retain(|e| !e.tokens.is_empty());
    Ok(found)
}

/// Where the word or quoted string starting at `start` ends (one past its last byte); `None`
/// for a quoted string without its closing quote. A backslash keeps the next byte in the word.
fn token_end(bytes: &[u8], start: usize, quoted: bool) -> Option<usize> {
    let mut at = if quoted { start + 1 } else { start };
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 1,
            b'"' if quoted => return Some(at + 1),
            b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' if !quoted => return Some(at),
            _ => {}
        }
        at += 1;
    }
    (!quoted).then_some(bytes.len())
}

/// The bytes of a character-string (RFC 1035 section 5.1): `\X` is X, `\DDD` the byte DDD
/// (decimal); quotes, if any, taken off. Each string holds at most 255 bytes (RFC 1035
/// section 3.3).
///
/// # Errors
/// [`RecordError::Escape`] for a `\DDD` above 255, a `\` followed by fewer than three digits or
/// by nothing; [`RecordError::LongString`] past 255 bytes.
pub(super) fn character_string(token: &Token<'_>) -> Result<Vec<u8>, RecordError> {
    let body = if token.quoted {
        &token.raw[1..token.raw.len() - 1]
    } else {
        token.raw
    };
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let escaped = &rest[at + 1..];
        let digits = escaped.bytes().take_while(u8::is_ascii_digit).count();
        let bad = || RecordError::Escape {
            escape: format!("\\{}", escaped.chars().take(3).collect::<String>()),
        };
        rest = match escaped.chars().next() {
            None => return Err(bad()),
            Some(c) if c.is_ascii_digit() => {
                let byte = (digits >= 3)
                    .then(|| escaped[..3].parse::<u8>().ok())
                    .flatten()
                    .ok_or_else(bad)?;
                out.push(byte);
                &escaped[3..]
            }
            Some(c) => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                &escaped[c.len_utf8()..]
            }
        };
    }
    out.extend_from_slice(rest.as_bytes());
    if out.len() > 255 {
        return Err(RecordError::LongString { len: out.len() });
    }
    Ok(out)
}
