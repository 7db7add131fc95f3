// The p2pdns protocol v1 record layer, written from docs/PROTOCOL.md only: names (section 1),
// DHT keys (section 2), the record format (sections 3 and 3.1), signatures (section 4),
// validation with the verdict names of section 5, the publisher's rules (section 10.1) and the
// choice among replicas (section 6). Node's own crypto does SHA-256 and Ed25519; nothing here
// depends on libp2p.

import { createHash, createPrivateKey, createPublicKey, sign } from 'node:crypto'
import { ed25519 } from '@noble/curves/ed25519.js'

export const MAX_RECORD_BYTES = 1024
export const MAX_TTL = 86400
export const MAX_LIFETIME_SECS = 7 * 86400 + 3600
const SIGNATURE_BYTES = 64
const OWNER_BYTES = 32
const enc = new TextEncoder()

// --- section 1: names -------------------------------------------------------------------------

export const ZBASE32 = 'ybndrfg8ejkmcpqxot1uwisza345h769'

/** z-base-32, most significant bit first, no padding characters, trailing pad bits zero. */
export function zbase32Encode (bytes) {
  let out = ''
  let acc = 0
  let bits = 0
  for (const b of bytes) {
    acc = (acc << 8) | b
    bits += 8
    while (bits >= 5) {
      out += ZBASE32[(acc >> (bits - 5)) & 31]
      bits -= 5
    }
    acc &= (1 << bits) - 1
  }
  if (bits > 0) out += ZBASE32[(acc << (5 - bits)) & 31]
  return out
}

/** The bytes a z-base-32 string encodes, or null when it is not a canonical encoding. */
export function zbase32Decode (text) {
  const out = []
  let acc = 0
  let bits = 0
  for (const ch of text) {
    const v = ZBASE32.indexOf(ch)
    if (v < 0) return null
    acc = (acc << 5) | v
    bits += 5
    if (bits >= 8) {
      out.push((acc >> (bits - 8)) & 0xff)
      bits -= 8
    }
    acc &= (1 << bits) - 1
  }
  if (bits >= 5 || acc !== 0) return null // a whole spare character, or pad bits not zero
  return Uint8Array.from(out)
}

/** The 32-byte key a key-name label (52 characters) stands for, or null for a human name. */
export function keyOfLabel (label) {
  if (label.length !== 52) return null
  const key = zbase32Decode(label)
  return key !== null && key.length === 32 ? key : null
}

export function keyName (publicKey) {
  return `${zbase32Encode(publicKey)}.p2p.`
}

const LDH = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/

/** Whether `labels` (wire label byte strings, root excluded) name a DHT name: one LDH label under p2p. */
export function isDhtName (labels) {
  if (labels.length !== 2) return false
  if (Buffer.from(labels[1]).toString('latin1') !== 'p2p') return false
  const label = Buffer.from(labels[0]).toString('latin1')
  // Section 1: a 52-character label is a key name or no DHT name at all.
  return LDH.test(label) && (label.length !== 52 || keyOfLabel(label) !== null)
}

/** A presentation-form name ("site.p2p" or "site.p2p.") in lower-case wire format. */
export function nameToWire (text) {
  const trimmed = text.endsWith('.') ? text.slice(0, -1) : text
  const parts = trimmed === '' ? [] : trimmed.toLowerCase().split('.')
  const bytes = []
  for (const part of parts) {
    const label = enc.encode(part)
    if (label.length < 1 || label.length > 63) throw new Error(`bad label in ${JSON.stringify(text)}`)
    bytes.push(label.length, ...label)
  }
  bytes.push(0)
  if (bytes.length > 255) throw new Error(`name longer than 255 bytes: ${text}`)
  return Uint8Array.from(bytes)
}

export function labelsToText (labels) {
  return labels.map((l) => Buffer.from(l).toString('latin1')).join('.') + '.'
}

function wireToLabels (wire) {
  const labels = []
  let i = 0
  while (wire[i] !== 0) {
    labels.push(wire.subarray(i + 1, i + 1 + wire[i]))
    i += 1 + wire[i]
  }
  return labels
}

// --- section 2: DHT key -----------------------------------------------------------------------

export function sha256 (...parts) {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return new Uint8Array(h.digest())
}

const KEY_PREFIX = enc.encode('/p2pdns/')
const KEY_CONTEXT = Uint8Array.from([...enc.encode('p2pdns-name-v1'), 0])

/** "/p2pdns/" || SHA-256("p2pdns-name-v1" || 0x00 || wire(name)), 40 bytes. */
export function dhtKey (name) {
  const wire = typeof name === 'string' ? nameToWire(name) : lowerWire(name)
  return concat(KEY_PREFIX, sha256(KEY_CONTEXT, wire))
}

function lowerWire (wire) {
  return Uint8Array.from(wire, (b) => (b >= 0x41 && b <= 0x5a ? b + 32 : b))
}

// --- byte helpers -------------------------------------------------------------------------------

export function concat (...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let i = 0
  for (const p of parts) {
    out.set(p, i)
    i += p.length
  }
  return out
}

export function compareBytes (a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i]
  }
  return a.length - b.length
}

export function equalBytes (a, b) {
  return a.length === b.length && compareBytes(a, b) === 0
}

export const hex = (b) => Buffer.from(b).toString('hex')
export const fromHex = (s) => new Uint8Array(Buffer.from(s, 'hex'))

// --- section 3.1: names and RDATA forms -------------------------------------------------------

/** The verdict of the first failing check of section 5. */
export class Verdict extends Error {
  constructor (verdict, detail) {
    super(`${verdict}: ${detail}`)
    this.verdict = verdict
  }
}

const fail = (verdict, detail) => { throw new Verdict(verdict, detail) }

/**
 * Reads a domain name under rule 1 from buf[off..end): uncompressed, labels of 1..63 bytes,
 * ending with the root label, at most 255 bytes, no upper-case ASCII. Returns the offset after
 * it and its labels. A compression pointer or an upper-case letter is `not-canonical`; any other
 * fault (a label length of 64..191, running past `end`, over 255 bytes) is `malformed`.
 */
export function readName (buf, off, end, what) {
  const start = off
  const labels = []
  for (;;) {
    if (off >= end) fail('malformed', `${what}: name runs past its field`)
    const len = buf[off]
    if (len >= 0xc0) fail('not-canonical', `${what}: compressed name`)
    if (len > 63) fail('malformed', `${what}: label length ${len}`)
    if (off + 1 + len > end) fail('malformed', `${what}: label runs past its field`)
    const label = buf.subarray(off + 1, off + 1 + len)
    for (const b of label) {
      if (b >= 0x41 && b <= 0x5a) fail('not-canonical', `${what}: upper-case letter in a name`)
    }
    off += 1 + len
    if (off - start > 255) fail('malformed', `${what}: name over 255 bytes`)
    if (len === 0) return { end: off, labels, wire: buf.subarray(start, off) }
    labels.push(label)
  }
}

// RDATA forms of section 3.1 rule 2: N = name, C = character-string, a number = fixed bytes.
export const FORMS = new Map([
  [1, [4]], // A
  [28, [16]], // AAAA
  [16, ['C+']], // TXT
  ...[3, 4, 5, 7, 8, 9, 12, 39].map((t) => [t, ['N']]), // MD MF CNAME MB MG MR PTR DNAME
  [14, ['N', 'N']], [17, ['N', 'N']], // MINFO RP
  ...[15, 18, 21, 36].map((t) => [t, [2, 'N']]), // MX AFSDB RT KX
  [26, [2, 'N', 'N']], // PX
  [33, [6, 'N']], // SRV
  [35, [4, 'C', 'C', 'C', 'N']] // NAPTR
])

/** Checks RDATA of a type with a form (rule 2); calls onName(start, end) for each name in it. */
function checkForm (type, buf, start, end, what, onName) {
  const form = FORMS.get(type)
  if (form === undefined) return // rule 3: opaque
  let off = start
  for (const field of form) {
    if (typeof field === 'number') {
      if (off + field > end) fail('malformed', `${what}: RDATA too short for type ${type}`)
      off += field
    } else if (field === 'N') {
      const name = readName(buf, off, end, `${what} RDATA`)
      onName?.(off, name.end)
      off = name.end
    } else {
      const many = field === 'C+'
      if (many && off >= end) fail('malformed', `${what}: empty TXT RDATA`)
      do {
        if (off >= end) fail('malformed', `${what}: missing character-string`)
        const len = buf[off]
        if (off + 1 + len > end) fail('malformed', `${what}: character-string runs past RDATA`)
        off += 1 + len
      } while (many && off < end)
    }
  }
  if (off !== end) fail('malformed', `${what}: ${end - off} bytes after the fields of type ${type}`)
}

/** RFC 4034 section 6.1 canonical name order on label arrays (lower case already). */
export function compareNames (a, b) {
  for (let i = 1; ; i++) {
    const la = a[a.length - i]
    const lb = b[b.length - i]
    if (la === undefined) return lb === undefined ? 0 : -1
    if (lb === undefined) return 1
    const c = compareBytes(la, lb)
    if (c !== 0) return c
  }
}

/** Section 3.1 rule 5: owner name, then TYPE, then RDATA; CLASS and TTL take no part. */
export function compareRRs (a, b) {
  return compareNames(a.ownerLabels, b.ownerLabels) || a.type - b.type || compareBytes(a.rdata, b.rdata)
}

/** Section 3.1 rule 4. */
export function allowedType (type) {
  const dataType = (type >= 1 && type <= 127) || (type >= 256 && type <= 61439) || (type >= 65280 && type <= 65534)
  return dataType && ![2, 6, 24, 30, 38, 41, 46].includes(type)
}

function isAtOrBelow (labels, ancestor) {
  if (labels.length < ancestor.length) return false
  return compareNames(labels.slice(labels.length - ancestor.length), ancestor) === 0
}

// --- section 5: decoding and validation --------------------------------------------------------

const readU16 = (b, o) => (b[o] << 8) | b[o + 1]
const readU32 = (b, o) => ((b[o] << 24) >>> 0) + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3])
const readU64 = (b, o) => Buffer.from(b.buffer, b.byteOffset + o, 8).readBigUInt64BE(0)

/**
 * Decodes a record and checks rule 1 of section 5 (size, version, fields, forms, order).
 * Throws a Verdict; returns the decoded record.
 */
export function decodeRecord (bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes)
  if (buf.length > MAX_RECORD_BYTES) fail('too-large', `${buf.length} bytes`)
  if (buf.length < 1) fail('malformed', 'empty record')
  if (buf[0] !== 1) fail('version', `version ${buf[0]}`)
  // The signature is the last 64 bytes; every other field lies before it.
  const bodyEnd = buf.length - SIGNATURE_BYTES
  if (bodyEnd < 1) fail('malformed', 'no room for the signature')
  let off = 1
  const name = readName(buf, off, bodyEnd, 'record name')
  off = name.end
  if (off + OWNER_BYTES + 8 + 8 + 2 > bodyEnd) fail('malformed', 'fixed fields missing')
  const owner = buf.subarray(off, off + OWNER_BYTES)
  off += OWNER_BYTES
  const seq = readU64(buf, off)
  off += 8
  const expires = readU64(buf, off)
  off += 8
  const count = readU16(buf, off)
  off += 2
  const rrs = []
  for (let i = 0; i < count; i++) {
    const what = `RR ${i}`
    const ownerName = readName(buf, off, bodyEnd, `${what} owner`)
    off = ownerName.end
    if (off + 10 > bodyEnd) fail('malformed', `${what}: fixed fields missing`)
    const type = readU16(buf, off)
    const klass = readU16(buf, off + 2)
    const ttl = readU32(buf, off + 4)
    const rdlength = readU16(buf, off + 8)
    off += 10
    if (off + rdlength > bodyEnd) fail('malformed', `${what}: RDATA runs past the records`)
    checkForm(type, buf, off, off + rdlength, what)
    const rr = {
      owner: labelsToText(ownerName.labels),
      ownerLabels: ownerName.labels,
      ownerWire: ownerName.wire,
      type,
      class: klass,
      ttl,
      rdata: buf.subarray(off, off + rdlength)
    }
    off += rdlength
    if (rrs.length > 0) {
      const c = compareRRs(rrs[rrs.length - 1], rr)
      if (c === 0) fail('not-canonical', `${what}: duplicate of the previous RR`)
      if (c > 0) fail('not-canonical', `${what}: out of canonical order`)
    }
    rrs.push(rr)
  }
  if (off !== bodyEnd) fail('malformed', `${bodyEnd - off} bytes between the records and the signature`)
  return {
    bytes: buf,
    name: labelsToText(name.labels),
    nameLabels: name.labels,
    nameWire: name.wire,
    owner,
    seq,
    expires,
    rrs,
    signed: buf.subarray(0, bodyEnd),
    signature: buf.subarray(bodyEnd)
  }
}

const SIGNING_CONTEXT = Uint8Array.from([...enc.encode('p2pdns-record-v1'), 0])

export function publicKeyObject (raw) {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' })
}

// The order of the Ed25519 group (RFC 8032 section 5.1).
const GROUP_ORDER = 2n ** 252n + 27742317777372353535851937790883648493n

function littleEndian (bytes) {
  let n = 0n
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) + BigInt(bytes[i])
  return n
}

// Section 4's strict verification: A and R canonical encodings of points not of small order,
// S below the group order, and encode([S]B - [k]A) equal to R's bytes (cofactorless).
// Node's crypto (OpenSSL) accepts small-order keys, so the points are checked with noble.
export function verifySignature (owner, signed, signature) {
  try {
    const { Point } = ed25519
    const rBytes = signature.subarray(0, 32)
    const A = Point.fromBytes(owner, false)
    const R = Point.fromBytes(rBytes, false)
    const S = littleEndian(signature.subarray(32))
    if (S >= GROUP_ORDER || A.isSmallOrder() || R.isSmallOrder()) return false
    const digest = createHash('sha512').update(rBytes).update(owner)
      .update(concat(SIGNING_CONTEXT, signed)).digest()
    const k = littleEndian(digest) % GROUP_ORDER
    const expected = Point.BASE.multiplyUnsafe(S).subtract(A.multiplyUnsafe(k)).toBytes()
    return Buffer.from(expected).equals(Buffer.from(rBytes))
  } catch {
    return false
  }
}

/**
 * Section 5, checks 1 to 6, in order. `now` is Unix seconds; `lookup` is the name looked up (a
 * resolver) or `key` the DHT key the record is stored under (a storage node). Returns the
 * decoded record, or throws a Verdict.
 */
export function validateRecord (bytes, { now, lookup, key } = {}) {
  const rec = decodeRecord(bytes) // 1
  // 2
  if (!isDhtName(rec.nameLabels)) fail('bad-name', `${rec.name} is not a DHT name`)
  const named = keyOfLabel(Buffer.from(rec.nameLabels[0]).toString('latin1'))
  if (named !== null && !equalBytes(named, rec.owner)) fail('wrong-key', `${rec.name} is another key's name`)
  // 3
  for (const [i, rr] of rec.rrs.entries()) {
    if (!allowedType(rr.type)) fail('bad-rr', `RR ${i}: type ${rr.type} not allowed`)
    if (rr.class !== 1) fail('bad-rr', `RR ${i}: class ${rr.class}`)
    if (rr.ttl > MAX_TTL) fail('bad-rr', `RR ${i}: TTL ${rr.ttl}`)
    if (!isAtOrBelow(rr.ownerLabels, rec.nameLabels)) fail('bad-rr', `RR ${i}: owner ${rr.owner} outside ${rec.name}`)
  }
  // 4
  const t = BigInt(now ?? Math.floor(Date.now() / 1000))
  if (!(t < rec.expires)) fail('expired', `expires ${rec.expires} <= now ${t}`)
  if (rec.expires > t + BigInt(MAX_LIFETIME_SECS)) fail('too-long', `expires ${rec.expires} past now + 7 days + 1 hour`)
  // 5
  if (!verifySignature(rec.owner, rec.signed, rec.signature)) fail('bad-signature', 'signature does not verify')
  // 6
  if (lookup !== undefined && !equalBytes(nameToWire(lookup), rec.nameWire)) {
    fail('other-name', `record for ${rec.name}, looked up ${lookup}`)
  }
  if (key !== undefined && !equalBytes(dhtKey(rec.nameWire), key)) {
    fail('other-name', `record for ${rec.name} stored under another key`)
  }
  return rec
}

/** The verdict name for a record: 'valid' or the first failing check of section 5. */
export function verdictOf (bytes, opts) {
  try {
    validateRecord(bytes, opts)
    return 'valid'
  } catch (e) {
    if (e instanceof Verdict) return e.verdict
    throw e
  }
}

// --- section 6: choosing among replicas ---------------------------------------------------------

/**
 * Index of the replica a resolver picks among valid decoded records (no pin): the owner most
 * replicas agree on (ties: the highest seq, then the lower owner key bytes), then that owner's
 * highest seq. Not said by the document: two different records of one owner with the same seq
 * (here: the later `expires`, then the lower bytes).
 */
export function selectReplica (records, pinnedOwner) {
  const byOwner = new Map()
  for (const [i, r] of records.entries()) {
    const k = hex(r.owner)
    const g = byOwner.get(k) ?? { owner: r.owner, count: 0, maxSeq: -1n, members: [] }
    g.count++
    if (r.seq > g.maxSeq) g.maxSeq = r.seq
    g.members.push(i)
    byOwner.set(k, g)
  }
  let groups = [...byOwner.values()]
  if (pinnedOwner !== undefined) groups = groups.filter((g) => equalBytes(g.owner, pinnedOwner))
  if (groups.length === 0) return -1
  groups.sort((a, b) => b.count - a.count || (b.maxSeq > a.maxSeq ? 1 : b.maxSeq < a.maxSeq ? -1 : 0) || compareBytes(a.owner, b.owner))
  const members = groups[0].members.slice()
  members.sort((i, j) => {
    const a = records[i]
    const b = records[j]
    if (a.seq !== b.seq) return a.seq > b.seq ? -1 : 1
    if (a.expires !== b.expires) return a.expires > b.expires ? -1 : 1
    return compareBytes(a.bytes, b.bytes)
  })
  return members[0]
}

// --- sections 3, 4 and 10.1: building and signing ----------------------------------------------

export const TYPES = { A: 1, CNAME: 5, MX: 15, TXT: 16, AAAA: 28, SRV: 33, DNAME: 39 }

export const rdata = {
  A: (ip) => {
    const parts = ip.split('.').map(Number)
    if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`bad IPv4 ${ip}`)
    return Uint8Array.from(parts)
  },
  TXT: (...strings) => {
    if (strings.length === 0) throw new Error('TXT needs a string')
    return concat(...strings.map((s) => {
      const b = enc.encode(s)
      if (b.length > 255) throw new Error('TXT string over 255 bytes')
      return concat(Uint8Array.of(b.length), b)
    }))
  },
  name: (n) => nameToWire(n),
  MX: (pref, n) => concat(Uint8Array.of(pref >> 8, pref & 255), nameToWire(n))
}

/** Lower-cases the names inside the RDATA of the types with a form (section 3.1 rule 2). */
function lowerRdataNames (type, data) {
  const out = Uint8Array.from(data)
  checkForm(type, out, 0, out.length, 'publisher', (s, e) => out.set(lowerWire(out.subarray(s, e)), s))
  return out
}

function u64 (v) {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(v))
  return new Uint8Array(b)
}

/** A 32-byte Ed25519 seed as a Node key pair, with its raw public key. */
export function keyPairFromSeed (seed) {
  const privateKey = createPrivateKey({
    key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(seed)]),
    format: 'der',
    type: 'pkcs8'
  })
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' })
  return { privateKey, publicKey: new Uint8Array(Buffer.from(jwk.x, 'base64url')) }
}

/**
 * Builds and signs a record. `rrs` are { name, type, ttl, rdata } (type a number). Applies the
 * publisher's rules of section 10.1 (refuses CNAME conflicts, mixed TTLs in an RRset, DNAME;
 * drops exact duplicates, keeping the first) and the canonical order of section 3.1.
 */
export function signRecord ({ name, seed, seq, expires, rrs }) {
  const { privateKey, publicKey } = keyPairFromSeed(seed)
  const nameWire = nameToWire(name)
  const nameLabels = wireToLabels(nameWire)
  const items = []
  for (const rr of rrs) {
    const ownerWire = nameToWire(rr.name)
    const item = {
      ownerWire,
      ownerLabels: wireToLabels(ownerWire),
      type: rr.type,
      ttl: rr.ttl,
      rdata: lowerRdataNames(rr.type, rr.rdata)
    }
    if (item.type === TYPES.DNAME) throw new Error(`${rr.name}: a DNAME is refused (section 10.1 rule 3)`)
    const dup = items.find((o) => compareRRs(o, item) === 0)
    if (dup) {
      if (dup.ttl !== item.ttl) throw new Error(`${rr.name}: one RR with two TTLs (section 10.1 rule 2)`)
      continue
    }
    items.push(item)
  }
  items.sort(compareRRs)
  for (const a of items) {
    const sameName = items.filter((b) => compareNames(a.ownerLabels, b.ownerLabels) === 0)
    if (a.type === TYPES.CNAME && sameName.length > 1) {
      throw new Error(`${labelsToText(a.ownerLabels)}: a CNAME with other data (section 10.1 rule 1)`)
    }
    if (sameName.some((b) => b.type === a.type && b.ttl !== a.ttl)) {
      throw new Error(`${labelsToText(a.ownerLabels)}: an RRset with different TTLs (section 10.1 rule 2)`)
    }
  }
  const parts = [Uint8Array.of(1), nameWire, publicKey, u64(seq), u64(expires), Uint8Array.of(items.length >> 8, items.length & 255)]
  for (const it of items) {
    if (!isAtOrBelow(it.ownerLabels, nameLabels)) throw new Error(`${labelsToText(it.ownerLabels)} is not in ${name}`)
    const fixed = new Uint8Array(10)
    const v = new DataView(fixed.buffer)
    v.setUint16(0, it.type)
    v.setUint16(2, 1)
    v.setUint32(4, it.ttl)
    v.setUint16(8, it.rdata.length)
    parts.push(it.ownerWire, fixed, it.rdata)
  }
  const signed = concat(...parts)
  const signature = new Uint8Array(sign(null, concat(SIGNING_CONTEXT, signed), privateKey))
  const bytes = concat(signed, signature)
  if (bytes.length > MAX_RECORD_BYTES) throw new Error(`record of ${bytes.length} bytes is over ${MAX_RECORD_BYTES}`)
  return bytes
}

/** Section 3: seq = max(previous seq + 1, now). */
export function nextSeq (previous, now = Math.floor(Date.now() / 1000)) {
  const n = BigInt(now)
  return previous === undefined ? n : (BigInt(previous) + 1n > n ? BigInt(previous) + 1n : n)
}
