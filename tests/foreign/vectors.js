// Checks docs/protocol-vectors.json (docs/PROTOCOL.md section 11) against this implementation:
// every DHT key, every record verdict, and that the signer reproduces the valid vectors.
// Exits 1 on any mismatch; prints "N passed, N failed".

import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  decodeRecord, dhtKey, fromHex, hex, keyName, keyPairFromSeed, nameToWire, signRecord, verdictOf
} from './protocol.js'

const here = dirname(fileURLToPath(import.meta.url))
const file = process.argv[2] ?? join(here, '..', '..', 'docs', 'protocol-vectors.json')
const vectors = JSON.parse(readFileSync(file, 'utf8'))

let passed = 0
let failed = 0
function check (what, ok, detail) {
  if (ok) {
    passed++
  } else {
    failed++
    console.log(`FAIL ${what}: ${detail}`)
  }
}

// The test key (RFC 8032 section 7.1 TEST 1) and its key name.
const { publicKey } = keyPairFromSeed(fromHex(vectors.test_key.seed))
check('test key: public key from seed', hex(publicKey) === vectors.test_key.public, hex(publicKey))
check('test key: key name', keyName(publicKey) === vectors.test_key.key_name, keyName(publicKey))

check('dht_keys: some vectors', vectors.dht_keys.length > 0, 'none in the file')
for (const v of vectors.dht_keys) {
  const wire = hex(nameToWire(v.name))
  check(`dht_keys ${v.name}: wire`, wire === v.wire, `${wire} != ${v.wire}`)
  const key = hex(dhtKey(v.name))
  check(`dht_keys ${v.name}: key`, key === v.key, `${key} != ${v.key}`)
  // Names are hashed in lower case (section 1).
  const upper = hex(dhtKey(v.name.toUpperCase()))
  check(`dht_keys ${v.name}: key of the upper-case name`, upper === v.key, `${upper} != ${v.key}`)
}

const verdicts = new Set()
check('records: some vectors', vectors.records.length > 0, 'none in the file')
for (const v of vectors.records) {
  const bytes = fromHex(v.record)
  const got = verdictOf(bytes, { now: vectors.now, lookup: v.lookup })
  verdicts.add(v.verdict)
  check(`record ${v.id} (${v.note})`, got === v.verdict, `verdict ${got}, vector says ${v.verdict}`)
  if (v.verdict === 'valid') {
    // A storage node's form of check 6: the key of the record's name.
    const stored = verdictOf(bytes, { now: vectors.now, key: dhtKey(v.lookup) })
    check(`record ${v.id}: valid under its DHT key`, stored === 'valid', stored)
    // Re-signing the decoded content with the test key reproduces the record byte for byte
    // (Ed25519 is deterministic and the encoding is canonical, section 3.1).
    const rec = decodeRecord(bytes)
    if (hex(rec.owner) === vectors.test_key.public) {
      const again = signRecord({
        name: rec.name,
        seed: fromHex(vectors.test_key.seed),
        seq: rec.seq,
        expires: rec.expires,
        rrs: rec.rrs.slice().reverse().map((rr) => ({ name: rr.owner, type: rr.type, ttl: rr.ttl, rdata: rr.rdata }))
      })
      check(`record ${v.id}: re-signed from its RRs in reverse order`, hex(again) === v.record, 'bytes differ')
    }
  }
}
// Every verdict name of section 5 has at least one vector.
for (const name of ['valid', 'too-large', 'version', 'malformed', 'not-canonical', 'bad-name', 'wrong-key', 'bad-rr', 'expired', 'too-long', 'bad-signature', 'other-name']) {
  check(`records: a vector with verdict ${name}`, verdicts.has(name), 'none')
}

// Mutated and truncated vectors: every one gets a verdict (no exception other than a Verdict),
// and a changed byte never leaves a record valid under the same signature.
let seed = 1
const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
let mutations = 0
let crashes = 0
for (const v of vectors.records) {
  const orig = fromHex(v.record)
  for (let i = 0; i < 200; i++) {
    const b = Uint8Array.from(orig)
    const cut = rand(4) === 0
    const m = cut ? b.subarray(0, rand(b.length)) : b
    if (!cut) m[rand(m.length)] ^= 1 + rand(255)
    mutations++
    try {
      const got = verdictOf(m, { now: vectors.now, lookup: v.lookup })
      if (got === 'valid' && v.verdict === 'valid' && !cut) {
        crashes++
        console.log(`FAIL record ${v.id}: a changed byte left it valid: ${hex(m)}`)
      }
    } catch (e) {
      crashes++
      console.log(`FAIL record ${v.id}: ${e.stack} on ${hex(m)}`)
    }
  }
}
check(`${mutations} mutated records get a verdict`, crashes === 0, `${crashes} failures`)

console.log(`vectors: ${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
