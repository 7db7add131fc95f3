// A p2pdns node on js-libp2p, from docs/PROTOCOL.md section 8: TCP + Noise + Yamux, identify,
// ping and the stock Kademlia DHT (@libp2p/kad-dht) under the protocol id /p2pdns/kad/1.0.0,
// with a validator and a selector for the key namespace `p2pdns` (section 2).
//
// The stock DHT's validator sees only (key, value), on the PUT path and on every GET path alike,
// so it does checks 1 to 6 of section 5 (the storage node's form of check 6: the key is its
// name's key). Checks 7 and 8 (comparing with the record held for the key) are made by the
// datastore the DHT writes into: a refused record is not written, and the PUT is still echoed
// (section 5, "Refusals are silent"). Check 9 (the PUT rate per peer) needs the sending peer,
// which neither hook is given; check 10 (records per owner key) could be made by the datastore;
// this test peer makes neither.

import './node20.js'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, Record as DhtRecord } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryDatastore } from 'datastore-core/memory'
import { createLibp2p } from 'libp2p'
import {
  compareBytes, decodeRecord, equalBytes, keyName, selectReplica, validateRecord, Verdict
} from './protocol.js'

export const KAD_PROTOCOL = '/p2pdns/kad/1.0.0'
const KEY_PREFIX = new TextEncoder().encode('/p2pdns/')

const nowSecs = () => Math.floor(Date.now() / 1000)

/** Section 5 checks 1 to 6 for a record stored under `key`; throws with the verdict. */
export async function p2pdnsValidator (key, value) {
  if (key.length !== 40 || !equalBytes(key.subarray(0, 8), KEY_PREFIX)) {
    throw new Verdict('other-name', 'not a p2pdns key')
  }
  validateRecord(value, { key, now: nowSecs() })
}

/** Section 6 (no pins): the index of the replica to use among valid ones. */
export function p2pdnsSelector (key, values) {
  const decoded = values.map((v) => {
    try {
      return validateRecord(v, { key, now: nowSecs() })
    } catch {
      return null
    }
  })
  const valid = decoded.map((d, i) => [d, i]).filter(([d]) => d !== null)
  if (valid.length === 0) return 0
  return valid[selectReplica(valid.map(([d]) => d))][1]
}

class NotFound extends Error {
  constructor () {
    super('not found')
    this.name = 'NotFoundError'
  }
}

/**
 * The DHT's record store with section 5 checks 7 and 8, and expiry: a record held past its
 * `expires` is dropped when read (section 8.1, "record lifetime").
 */
export class RecordStore extends MemoryDatastore {
  constructor (log = () => {}) {
    super()
    this.log = log
    this.refused = []
  }

  heldRecord (key) {
    if (!key.toString().startsWith('/dht/record/')) return null
    const raw = super.has(key) ? super.get(key) : null
    if (raw === null) return null
    try {
      const held = DhtRecord.deserialize(raw)
      if (!equalBytes(held.key.subarray(0, 8), KEY_PREFIX)) return null
      return { dhtKey: held.key, rec: decodeRecord(held.value) }
    } catch {
      return null
    }
  }

  put (key, val, options) {
    if (!key.toString().startsWith('/dht/record/')) return super.put(key, val, options)
    let incoming
    try {
      const dht = DhtRecord.deserialize(val)
      if (!equalBytes(dht.key.subarray(0, 8), KEY_PREFIX)) return super.put(key, val, options)
      // Checks 1 to 6: the stock DHT stores its own puts and corrections without its validator.
      incoming = validateRecord(dht.value, { key: dht.key, now: nowSecs() })
    } catch (e) {
      this.refused.push({ why: e.message })
      this.log(`refused a record: ${e.message}`)
      return key
    }
    const held = this.heldRecord(key)
    if (held !== null && BigInt(nowSecs()) < held.rec.expires) {
      const sameOwner = equalBytes(incoming.owner, held.rec.owner)
      if (!sameOwner) { // 7
        this.refused.push({ why: 'another owner holds it', rec: incoming })
        this.log(`refused ${incoming.name}: another owner's record is held`)
        return key
      }
      if (equalBytes(incoming.bytes, held.rec.bytes)) return key // 8: identical, a no-op
      if (incoming.seq <= held.rec.seq) { // 8
        this.refused.push({ why: 'seq not higher', rec: incoming })
        this.log(`refused ${incoming.name}: seq ${incoming.seq} not above ${held.rec.seq}`)
        return key
      }
    }
    return super.put(key, val, options)
  }

  get (key, options) {
    const held = this.heldRecord(key)
    if (held !== null && BigInt(nowSecs()) >= held.rec.expires) {
      super.delete(key)
      throw new NotFound()
    }
    return super.get(key, options)
  }

  /** The p2pdns records this node holds: { name, seq, owner, bytes }. */
  records () {
    const out = []
    for (const k of this.data.keys()) {
      const held = this.heldRecord(k)
      if (held !== null) out.push(held.rec)
    }
    return out
  }
}

/**
 * Starts a p2pdns node with the Ed25519 `seed` as its identity (section 8.1: its peer id and
 * its key name name the same key), listening on 127.0.0.1, Kademlia in server mode.
 */
export async function startNode ({ seed, listen = ['/ip4/127.0.0.1/tcp/0'], log = () => {} }) {
  const privateKey = await generateKeyPairFromSeed('Ed25519', seed)
  const store = new RecordStore(log)
  const node = await createLibp2p({
    privateKey,
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    datastore: store,
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: KAD_PROTOCOL,
        clientMode: false,
        kBucketSize: 20, // section 8.1
        alpha: 3,
        validators: { p2pdns: p2pdnsValidator },
        selectors: { p2pdns: p2pdnsSelector },
        // Loopback addresses are real here; the default mapper drops private ones.
        peerInfoMapper: passthroughMapper,
        allowQueryWithZeroPeers: false
      })
    }
  })
  await node.services.dht.setMode('server')
  const publicKey = privateKey.publicKey.raw
  return { node, store, publicKey, keyName: keyName(publicKey) }
}

export async function dial (node, addr, signal) {
  return node.dial(multiaddr(addr), { signal })
}

/** Waits until the DHT's routing table holds `n` peers. */
export async function waitForRoutingTable (node, n, signal) {
  for (;;) {
    if (node.services.dht.routingTable.size >= n) return
    signal?.throwIfAborted()
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/**
 * Looks up this node's own id in the DHT (FIND_NODE) until `peerId` is in its routing table:
 * how a node learns the peers its bootstrap peer knows.
 */
export async function discover (node, peerId, signal) {
  const dht = node.services.dht
  for (;;) {
    if (await dht.routingTable.find(peerId)) return
    signal?.throwIfAborted()
    try {
      const each = AbortSignal.any([signal, AbortSignal.timeout(5000)].filter(Boolean))
      for await (const ev of dht.getClosestPeers(node.peerId.toMultihash().bytes, { signal: each })) void ev
    } catch (e) {
      signal?.throwIfAborted()
    }
    if (await dht.routingTable.find(peerId)) return
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
}

/**
 * GET_VALUE through the DHT (a whole Kademlia lookup). Returns every replica a peer answered
 * with (the stock DHT has already dropped, as QUERY_ERROR, those its validator refused) and the
 * one its selector chose.
 */
export async function dhtGet (node, key, signal) {
  const replicas = []
  const errors = []
  let selected = null
  try {
    for await (const ev of node.services.dht.get(key, { signal })) {
      if (ev.name === 'PEER_RESPONSE' && ev.record != null) {
        replicas.push({ from: ev.from.toString(), value: ev.record.value })
      } else if (ev.name === 'VALUE') {
        selected = ev.value
      } else if (ev.name === 'QUERY_ERROR') {
        errors.push({ from: ev.from?.toString(), error: ev.error?.message })
      }
    }
  } catch (e) {
    if (e.name !== 'NotFoundError') throw e
  }
  return { replicas, errors, selected }
}

/** PUT_VALUE to the closest peers; returns the peers that echoed the record. */
export async function dhtPut (node, key, value, signal) {
  const echoed = []
  const errors = []
  for await (const ev of node.services.dht.put(key, value, { signal })) {
    if (ev.name === 'PEER_RESPONSE' && ev.messageName === 'PUT_VALUE') {
      if (ev.record && compareBytes(ev.record.value, value) === 0) echoed.push(ev.from.toString())
    } else if (ev.name === 'QUERY_ERROR') {
      errors.push({ from: ev.from?.toString(), error: ev.error?.message })
    }
  }
  return { echoed, errors }
}

// --- one GET_VALUE to one peer, by hand ----------------------------------------------------------
// The libp2p kad-dht wire format: a varint length, then a protobuf Message { type = 1,
// key = 2, record = 3 (Record { key = 1, value = 2, timeReceived = 5 }), closerPeers = 8 }.

function varint (n) {
  const out = []
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80)
    n >>>= 7
  }
  out.push(n)
  return out
}

function pbFields (buf) {
  const fields = []
  let i = 0
  const readVarint = () => {
    let v = 0
    let shift = 0
    for (;;) {
      const b = buf[i++]
      if (b === undefined) throw new Error('truncated protobuf')
      v += (b & 0x7f) * 2 ** shift
      if (b < 0x80) return v
      shift += 7
    }
  }
  while (i < buf.length) {
    const tag = readVarint()
    const field = Math.floor(tag / 8)
    const wire = tag & 7
    if (wire === 0) fields.push({ field, value: readVarint() })
    else if (wire === 2) {
      const len = readVarint()
      fields.push({ field, bytes: buf.subarray(i, i + len) })
      i += len
    } else if (wire === 1) i += 8
    else if (wire === 5) i += 4
    else throw new Error(`protobuf wire type ${wire}`)
  }
  return fields
}

/**
 * Sends one GET_VALUE for `key` to the connected peer `peerId` on /p2pdns/kad/1.0.0 and returns
 * the value of the record it answers with (null when it holds none).
 */
export async function getValueFrom (node, peerId, key, signal) {
  const stream = await node.dialProtocol(peerId, KAD_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: 16 * 1024 })
    const msg = Uint8Array.from([0x08, 1, 0x12, ...varint(key.length), ...key]) // GET_VALUE = 1
    await lp.write(msg, { signal })
    const reply = (await lp.read({ signal })).subarray()
    const record = pbFields(reply).find((f) => f.field === 3)
    if (record === undefined) return null
    const fields = pbFields(record.bytes)
    const rkey = fields.find((f) => f.field === 1)?.bytes
    if (rkey === undefined || !equalBytes(rkey, key)) throw new Error('the answer is for another key')
    return fields.find((f) => f.field === 2)?.bytes ?? null
  } finally {
    await stream.close().catch(() => {})
  }
}

/**
 * Sends one PUT_VALUE of `value` under `key` to the connected peer `peerId` and returns the
 * value of the record it echoes (section 5: every PUT_VALUE is echoed, stored or not).
 */
export async function putValueTo (node, peerId, key, value, signal) {
  const stream = await node.dialProtocol(peerId, KAD_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: 16 * 1024 })
    const record = [0x0a, ...varint(key.length), ...key, 0x12, ...varint(value.length), ...value]
    const msg = Uint8Array.from([0x08, 0, 0x12, ...varint(key.length), ...key, 0x1a, ...varint(record.length), ...record])
    await lp.write(msg, { signal })
    const reply = (await lp.read({ signal })).subarray()
    const echoed = pbFields(reply).find((f) => f.field === 3)
    if (echoed === undefined) return null
    return pbFields(echoed.bytes).find((f) => f.field === 2)?.bytes ?? null
  } finally {
    await stream.close().catch(() => {})
  }
}
