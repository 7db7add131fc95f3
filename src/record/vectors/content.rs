//! The invalid vectors that break a rule of content (section 5, checks 2 to 8), beside the
//! rules of form in the parent module.

use super::*;

// A table of vectors, one entry each: long by nature, not by logic.
#[allow(clippy::too_many_lines)]
pub(super) fn bad_content() -> Vec<Value> {
    let key = test_key();
    let bad =
        |id, raw: Raw, verdict, note| invalid(id, "site.p2p.", &raw.signed(&key), verdict, note);
    let site = |records| Raw::new("site.p2p.", records);
    let stolen = key_name(&other_key().public().to_bytes()).to_ascii();
    let own = key_name(&key.public().to_bytes()).to_ascii();
    // The same label with its last character's spare bits set ('y' is 0, 'n' is 2).
    let lookalike = own.replacen("y.p2p.", "n.p2p.", 1);
    assert_ne!(own, lookalike, "the test key's name ends in y");
    let mut out = vec![
        invalid(
            "two-labels",
            "www.site.p2p.",
            &Raw::new("www.site.p2p.", vec![]).signed(&key),
            "bad-name",
            "a name two labels under p2p",
        ),
        invalid(
            "root-name",
            ".",
            &Raw {
                name: vec![0],
                ..site(vec![])
            }
            .signed(&key),
            "bad-name",
            "the root as the record's name",
        ),
        invalid(
            "key-lookalike",
            &lookalike,
            &Raw::new(&lookalike, vec![]).signed(&key),
            "bad-name",
            "52 characters that are no key's z-base-32 (spare bits set)",
        ),
        invalid(
            "underscore",
            "x_y.p2p.",
            &Raw::new("x_y.p2p.", vec![]).signed(&key),
            "bad-name",
            "a label that is not LDH",
        ),
        invalid(
            "stolen-key-name",
            &stolen,
            &Raw::new(&stolen, vec![]).signed(&key),
            "wrong-key",
            "another key's key name signed by the test key",
        ),
        bad(
            "ns",
            site(vec![rr("site.p2p.", 2, 1, 300, &wire("ns.site.p2p."))]),
            "bad-rr",
            "NS is refused",
        ),
        bad(
            "a6",
            site(vec![rr("site.p2p.", 38, 1, 300, &[128])]),
            "bad-rr",
            "A6 is refused",
        ),
        bad(
            "meta-type",
            site(vec![rr("site.p2p.", 200, 1, 300, &[])]),
            "bad-rr",
            "type 200 is a meta-type range (RFC 6895)",
        ),
        bad(
            "class-ch",
            site(vec![rr("site.p2p.", 1, 3, 300, &[192, 0, 2, 1])]),
            "bad-rr",
            "class CH",
        ),
        bad(
            "ttl-86401",
            site(vec![rr("site.p2p.", 1, 1, 86_401, &[192, 0, 2, 1])]),
            "bad-rr",
            "TTL over 86400",
        ),
        bad(
            "outside",
            site(vec![a("site.example.", [192, 0, 2, 1])]),
            "bad-rr",
            "owner outside the record's name",
        ),
        bad(
            "expired",
            Raw {
                expires: NOW,
                ..site(vec![])
            },
            "expired",
            "expires = now",
        ),
        bad(
            "too-long",
            Raw {
                expires: NOW + 7 * 86_400 + 3_600 + 1,
                ..site(vec![])
            },
            "too-long",
            "expires one second past now + 7 days + 1 hour",
        ),
        bad(
            "expires-2-63",
            Raw {
                expires: 1 << 63,
                ..site(vec![])
            },
            "too-long",
            "expires = 2^63: unsigned, far in the future, never negative",
        ),
        bad(
            "other-owner",
            Raw {
                owner: other_key().public().to_bytes(),
                ..site(vec![])
            },
            "bad-signature",
            "signed by the test key, another key in owner",
        ),
    ];
    out.extend(weak_keys());
    let mut flipped = site(vec![]).signed(&key);
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    out.push(invalid(
        "flipped-signature",
        "site.p2p.",
        &flipped,
        "bad-signature",
        "last signature octet changed",
    ));
    let other = Raw::new("other.p2p.", vec![]).signed(&key);
    out.push(invalid(
        "other-name",
        "site.p2p.",
        &other,
        "other-name",
        "a valid record for other.p2p. where site.p2p. was looked up",
    ));
    out
}
