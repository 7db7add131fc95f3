// End to end against the real daemon, on 127.0.0.1 only: a p2pdns introduction server and a
// p2pdns resolver daemon from $P2PDNS_BIN, and this JavaScript node in the same DHT.
//
//   1. the daemon publishes a name (`p2pdns publish`); this node fetches it with GET_VALUE,
//      checks it by section 5 and checks its values;
//   2. this node signs its own records (a human name, and its key name) and puts them with
//      PUT_VALUE; both p2pdns nodes hold them (read back with GET_VALUE, section 5);
//   3. `dig` on the daemon's DNS port answers them;
//   4. records a storage node must refuse (section 5, rules 5, 7, 8) are echoed and not kept.
//
// Bounded: everything ends within E2E_TIMEOUT_MS (120 s); every process started here is killed
// and the temporary directory removed, on success, failure, timeout or signal.

import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createSocket } from 'node:dgram'
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { peerIdFromString } from '@libp2p/peer-id'
import { dhtGet, dhtPut, dial, discover, getValueFrom, putValueTo, startNode, waitForRoutingTable } from './node.js'
import {
  dhtKey, equalBytes, hex, keyOfLabel, nextSeq, rdata, signRecord, TYPES, validateRecord, zbase32Encode
} from './protocol.js'

const here = dirname(fileURLToPath(import.meta.url))
const repo = resolve(here, '..', '..')
const BIN = resolve(repo, process.env.P2PDNS_BIN ?? 'target/debug/p2pdns')
const TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS ?? 120000)
const started = Date.now()
const dir = mkdtempSync(join(tmpdir(), 'p2pdns-foreign-'))
const children = []
let node = null
const step = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${msg}`)

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg) }
const assert = (ok, msg) => { if (!ok) fail(msg) }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// --- cleanup, whatever happens --------------------------------------------------------------------

let cleaned = false
const alive = (c) => c.exitCode === null && c.signalCode === null
async function cleanup () {
  if (cleaned) return
  cleaned = true
  const stopping = node?.node.stop().catch(() => {})
  for (const c of children) {
    if (alive(c)) c.kill('SIGTERM')
  }
  const deadline = Date.now() + 5000
  while (children.some(alive) && Date.now() < deadline) await sleep(50)
  for (const c of children) {
    if (alive(c)) {
      console.error(`${c.label} (pid ${c.pid}) did not stop within 5 s of SIGTERM: SIGKILL`)
      c.kill('SIGKILL')
    }
  }
  await Promise.race([stopping, sleep(2000)])
  try {
    if (process.env.E2E_KEEP_DIR) return console.error(`kept ${dir}`)
    rmSync(dir, { recursive: true, force: true })
  } catch (e) {
    console.error(`cannot remove ${dir}: ${e.message}`)
  }
}

function logs () {
  for (const c of children) {
    let text = ''
    try { text = readFileSync(c.logFile, 'utf8') } catch {}
    const lines = text.trimEnd().split('\n')
    console.error(`--- ${c.label} (pid ${c.pid}), last ${Math.min(lines.length, 40)} lines of its log:`)
    console.error(lines.slice(-40).join('\n'))
  }
}

let finishing = false
async function finish (code, message) {
  if (finishing) return
  finishing = true
  if (message) {
    console.error(`FAIL: ${message}`)
    try { logs() } catch {}
  }
  try {
    await cleanup()
  } catch (e) {
    console.error(`cleanup: ${e?.stack ?? e}`)
    code = 1
  }
  process.exit(code)
}

const timer = setTimeout(() => finish(1, `timed out after ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => finish(1, `stopped by ${sig}`))
process.on('unhandledRejection', (e) => finish(1, `unhandled rejection: ${e?.stack ?? e}`))

// --- the p2pdns processes ---------------------------------------------------------------------------

const env = { ...process.env, HOME: join(dir, 'home'), NO_COLOR: '1' }
for (const k of ['P2PDNS_CONFIG', 'P2PDNS_DATA_DIR', 'RUST_LOG', 'XDG_CONFIG_HOME', 'XDG_DATA_HOME']) delete env[k]
if (process.env.E2E_RUST_LOG) env.RUST_LOG = process.env.E2E_RUST_LOG // for debugging: the daemons' log filter
mkdirSync(env.HOME)

function startProcess (label, args) {
  const logFile = join(dir, `${label}.log`)
  const out = []
  const child = spawn(BIN, args, { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
  Object.assign(child, { label, logFile, text: () => out.join('') })
  const keep = (d) => {
    out.push(d.toString())
    writeFileSync(logFile, out.join(''))
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  child.on('error', (e) => out.push(`spawn error: ${e.message}\n`))
  children.push(child)
  // For run.sh, which kills what is left should this process itself be killed.
  if (process.env.E2E_PID_FILE && child.pid) appendFileSync(process.env.E2E_PID_FILE, `${child.pid} ${dir}\n`)
  return child
}

async function waitForLog (child, what, pattern, ms) {
  const deadline = Date.now() + ms
  for (;;) {
    const m = child.text().match(pattern)
    if (m) return m
    if (child.exitCode !== null || child.signalCode !== null) {
      fail(`${child.label} exited (${child.exitCode ?? child.signalCode}) before it logged ${what}`)
    }
    if (Date.now() > deadline) fail(`${child.label} did not log ${what} within ${ms / 1000} s`)
    await sleep(50)
  }
}

function cli (config, data, args) {
  const r = spawnSync(BIN, ['--config', config, '--data-dir', data, ...args], { env, cwd: dir, encoding: 'utf8', timeout: 20000 })
  if (r.status !== 0) fail(`p2pdns ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}${r.stdout}`)
  return r.stdout
}

/** A port free on 127.0.0.1 for both UDP and TCP right now. */
async function freeDnsPort () {
  for (let i = 0; i < 20; i++) {
    const tcp = createServer()
    await new Promise((resolve, reject) => tcp.once('error', reject).listen(0, '127.0.0.1', resolve))
    const port = tcp.address().port
    const udp = createSocket('udp4')
    const ok = await new Promise((resolve) => {
      udp.once('error', () => resolve(false))
      udp.bind(port, '127.0.0.1', () => resolve(true))
    })
    await new Promise((resolve) => tcp.close(resolve))
    if (ok) {
      await new Promise((resolve) => udp.close(resolve))
      return port
    }
    udp.close()
  }
  fail('no free loopback port for DNS')
}

// --- dig ----------------------------------------------------------------------------------------------

const digTool = ['dig', 'kdig'].find((t) => spawnSync(t, ['-v'], { encoding: 'utf8' }).error === undefined)

function dig (port, name, type) {
  const args = digTool === 'dig'
    ? ['@127.0.0.1', '-p', String(port), name, type, '+short', '+time=5', '+tries=1']
    : ['@127.0.0.1', '-p', String(port), name, type, '+short', '+time=5', '+retry=0']
  const r = spawnSync(digTool, args, { encoding: 'utf8', timeout: 10000 })
  return (r.stdout ?? '').trim().split('\n').filter((l) => l !== '' && !l.startsWith(';'))
}

/** A full answer from dig: status, flags, EDE and the three sections. */
function digFull (port, name, type) {
  assert(digTool === 'dig', 'the section 10 checks read dig\'s output; install dig (bind9-dnsutils)')
  const r = spawnSync('dig', ['@127.0.0.1', '-p', String(port), name, type, '+noall', '+comments', '+answer',
    '+authority', '+additional', '+time=5', '+tries=1'], { encoding: 'utf8', timeout: 10000 })
  const out = r.stdout ?? ''
  const res = {
    status: out.match(/status: ([A-Z]+)/)?.[1],
    flags: (out.match(/;; flags: ([a-z ]+);/)?.[1] ?? '').trim().split(/\s+/),
    ede: out.match(/; EDE: (\d+)/) ? Number(out.match(/; EDE: (\d+)/)[1]) : undefined,
    answer: [],
    authority: [],
    additional: []
  }
  let section = null
  for (const line of out.split('\n')) {
    const head = line.match(/^;; (ANSWER|AUTHORITY|ADDITIONAL) SECTION:/)
    if (head) section = head[1].toLowerCase()
    if (line.startsWith(';') || line.trim() === '' || section === null) continue
    const [rname, ttl, klass, rtype, ...data] = line.trim().split(/\s+/)
    res[section].push({ name: rname, ttl: Number(ttl), class: klass, type: rtype, data: data.join(' ') })
  }
  return res
}

async function digUntil (port, name, type, want, ms) {
  const deadline = Date.now() + ms
  let got = []
  for (let tries = 1; Date.now() < deadline; tries++) {
    const t0 = Date.now()
    got = dig(port, name, type)
    if (JSON.stringify(got.slice().sort()) === JSON.stringify(want.slice().sort())) {
      step(`dig ${name} ${type}: ${got.join(' ')} (try ${tries}, ${Date.now() - t0} ms)`)
      return got
    }
    await sleep(250)
  }
  fail(`dig @127.0.0.1 -p ${port} ${name} ${type} +short gave ${JSON.stringify(got)}, want ${JSON.stringify(want)}`)
}

// --- helpers on records ---------------------------------------------------------------------------

const txt = (rr) => {
  const strings = []
  for (let i = 0; i < rr.rdata.length; i += 1 + rr.rdata[i]) {
    strings.push(Buffer.from(rr.rdata.subarray(i + 1, i + 1 + rr.rdata[i])).toString('utf8'))
  }
  return strings
}
const describe = (rec) => rec.rrs.map((rr) => `${rr.owner} ${rr.ttl} ${rr.type} ${hex(rr.rdata)}`).join('; ')

/** Polls a GET_VALUE to one peer until `ok(value)`; returns the last value. */
async function readBack (peer, key, ok, ms) {
  const deadline = Date.now() + ms
  let value = null
  while (Date.now() < deadline) {
    value = await getValueFrom(node.node, peer, key, AbortSignal.timeout(5000)).catch(() => null)
    if (ok(value)) return value
    await sleep(200)
  }
  return value
}

// --- the test ------------------------------------------------------------------------------------------

async function main () {
  assert(digTool !== undefined, 'neither dig nor kdig is installed (tests/run.sh installs both)')
  const version = spawnSync(BIN, ['--version'], { encoding: 'utf8' })
  assert(version.status === 0, `cannot run P2PDNS_BIN=${BIN}: ${version.error?.message ?? version.stderr}`)
  step(`${version.stdout.trim()} at ${BIN}; ${digTool}; temp dir ${dir}`)

  // An introduction server on a loopback port of its choosing.
  writeFileSync(join(dir, 'intro.toml'), '[p2p]\nmdns = false\nupnp = false\nstun = false\n')
  const intro = startProcess('intro', ['--config', join(dir, 'intro.toml'), '--data-dir', join(dir, 'intro'),
    'intro', '--p2p-listen', '/ip4/127.0.0.1/tcp/0', '--stun-listen', 'none'])
  const bootstrap = (await waitForLog(intro, 'its --bootstrap address', /nodes join with --bootstrap addr=(\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\w+)/, 15000))[1]
  const introPeer = peerIdFromString(bootstrap.split('/p2p/')[1])
  step(`introduction server ${bootstrap}`)

  // The resolver daemon: DNS on a free high port, the DHT in server mode (it stores records),
  // no multicast (mDNS, UPnP), no STUN, no upstream.
  writeFileSync(join(dir, 'resolv.conf'), '')
  const config = join(dir, 'daemon.toml')
  writeFileSync(config, [
    '[upstream]', 'servers = []', `resolv_conf = ${JSON.stringify(join(dir, 'resolv.conf'))}`,
    '[p2p]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', 'mdns = false', 'upnp = false', 'stun = false',
    'dht_mode = "server"', `bootstrap = [${JSON.stringify(bootstrap)}]`, ''
  ].join('\n'))
  // The daemon publishes only once it is connected to the introduction server: a name published
  // before reaches the network only when it is pushed again. (Its routing table is no sign: a
  // bootstrap peer is in it before any connection, section 8.1.) A daemon whose first dial of the
  // introduction server fails (seen on a loaded machine: "Address already in use (os error 98)")
  // retries only every 30 s, and its retry can fail the same way; such a daemon is replaced, at
  // most twice, and the run says so.
  const connectedPeers = (data) => Number(cli(config, data, ['status']).match(/^peers:\s+(\d+) connected/m)?.[1] ?? 0)
  let daemon
  let dnsPort
  let data
  for (let attempt = 1; ; attempt++) {
    dnsPort = await freeDnsPort()
    data = join(dir, `daemon-${attempt}`)
    daemon = startProcess(`daemon-${attempt}`, ['--config', config, '--data-dir', data, 'run', '--dns-listen', `127.0.0.1:${dnsPort}`])
    try {
      await waitForLog(daemon, '"ready"', / ready\b/, 20000)
    } catch (e) {
      if (attempt < 3 && /in use/i.test(daemon.text())) continue // the DNS port was taken meanwhile
      throw e
    }
    const t0 = Date.now()
    while (connectedPeers(data) < 1 && Date.now() - t0 < 10000) await sleep(200)
    if (connectedPeers(data) >= 1) break
    const why = daemon.text().split('\n').find((l) => /bootstrap/.test(l) && /WARN|ERROR/.test(l)) ?? '(nothing in its log)'
    console.error(`WARNING: daemon-${attempt} did not connect to the introduction server within 10 s: ${why.trim()}`)
    if (attempt >= 3) fail('the daemon did not connect to the introduction server (3 daemons, 10 s each)')
    daemon.kill('SIGTERM')
  }
  const daemonPeer = peerIdFromString(daemon.text().match(/peer_id=(\w+)/)[1])
  const status = cli(config, data, ['status'])
  const daemonKeyName = status.match(/^key name:\s+(\S+)/m)?.[1]
  assert(daemonKeyName, `p2pdns status shows no key name:\n${status}`)
  const daemonKey = keyOfLabel(daemonKeyName.split('.')[0])
  assert(daemonKey !== null, `the daemon's key name ${daemonKeyName} is not a z-base-32 Ed25519 key (section 1)`)
  step(`daemon ${daemonPeer} (key name ${daemonKeyName}), DNS on 127.0.0.1:${dnsPort}, connected to the introduction server`)
  // Section 8.1: a node's peer id is the identity multihash of its Ed25519 owner key.
  assert(equalBytes(daemonPeer.publicKey.raw, daemonKey), `the daemon's peer id ${daemonPeer} is not its key name's key ${daemonKeyName}`)

  const beforePublish = Math.floor(Date.now() / 1000)
  cli(config, data, ['publish', 'rustsite', 'A', '192.0.2.44'])
  cli(config, data, ['publish', 'rustsite', 'TXT', '"hello from p2pdns"', '--ttl', '120'])
  step('the daemon published rustsite.p2p. (A 192.0.2.44, TXT "hello from p2pdns")')

  // This node joins through the introduction server.
  const seed = randomBytes(32)
  node = await startNode({ seed, log: (m) => step(`js store: ${m}`) })
  assert(equalBytes(node.node.peerId.publicKey.raw, node.publicKey), 'this node\'s peer id is not its owner key (section 8.1)')
  step(`js node ${node.node.peerId} (key name ${node.keyName}) at ${node.node.getMultiaddrs().join(' ')}`)
  await dial(node.node, bootstrap, AbortSignal.timeout(10000))
  await waitForRoutingTable(node.node, 1, AbortSignal.timeout(10000))
  const protocols = (await node.node.peerStore.get(introPeer)).protocols
  assert(protocols.includes('/p2pdns/kad/1.0.0'), `the introduction server does not list /p2pdns/kad/1.0.0 in identify: ${protocols}`)
  assert(!protocols.includes('/ipfs/kad/1.0.0'), 'the introduction server speaks the IPFS DHT id')
  const rtt = await node.node.services.ping.ping(introPeer, { signal: AbortSignal.timeout(5000) })
  // FIND_NODE through the introduction server finds the daemon (it answers with closer peers).
  await discover(node.node, daemonPeer, AbortSignal.timeout(20000)).catch(() => {
    fail('FIND_NODE through the introduction server did not bring the daemon into this node\'s routing table within 20 s')
  })
  step(`in the DHT: routing table ${node.node.services.dht.routingTable.size} (the introduction server and the daemon), ping to the introduction server ${rtt} ms`)

  // 1. GET_VALUE of the daemon's name, checked by section 5.
  const rustKey = dhtKey('rustsite.p2p.')
  let got
  for (let i = 0; ; i++) {
    got = await dhtGet(node.node, rustKey, AbortSignal.timeout(10000))
    if (got.selected !== null) {
      const rec = validateRecord(got.selected, { lookup: 'rustsite.p2p.' })
      if (rec.rrs.length === 2) break // the second publish has arrived
    }
    if (i >= 20) fail(`GET_VALUE found no record with both RRs for rustsite.p2p. (errors: ${JSON.stringify(got.errors)})`)
    await sleep(250)
  }
  const rustRec = validateRecord(got.selected, { lookup: 'rustsite.p2p.' })
  step(`GET_VALUE: ${got.replicas.length} replicas from ${[...new Set(got.replicas.map((r) => r.from))].join(', ')}; ` +
    `selected seq ${rustRec.seq}, ${got.selected.length} bytes: ${describe(rustRec)}`)
  for (const r of got.replicas) {
    validateRecord(r.value, { lookup: 'rustsite.p2p.' }) // every replica passes section 5
  }
  assert(equalBytes(rustRec.owner, daemonKey), `the record's owner ${hex(rustRec.owner)} is not the daemon's key ${hex(daemonKey)}`)
  assert(rustRec.name === 'rustsite.p2p.', `record name ${rustRec.name}`)
  const [a, t] = rustRec.rrs
  assert(rustRec.rrs.length === 2 && a.type === TYPES.A && t.type === TYPES.TXT, `RRs: ${describe(rustRec)}`)
  assert(a.owner === 'rustsite.p2p.' && t.owner === 'rustsite.p2p.', `owners: ${describe(rustRec)}`)
  assert(a.rdata.join('.') === '192.0.2.44', `A ${a.rdata.join('.')}`)
  assert(a.ttl === 300 && t.ttl === 120, `TTLs ${a.ttl} and ${t.ttl}`)
  assert(JSON.stringify(txt(t)) === JSON.stringify(['hello from p2pdns']), `TXT ${JSON.stringify(txt(t))}`)
  // Section 3: seq = max(previous + 1, now); the second version is above the first's time.
  assert(rustRec.seq > BigInt(beforePublish), `seq ${rustRec.seq} is not above the publish time ${beforePublish}`)
  assert(rustRec.seq <= BigInt(Math.floor(Date.now() / 1000)) + 2n, `seq ${rustRec.seq} is ahead of now`)
  const fromIntro = await getValueFrom(node.node, introPeer, rustKey, AbortSignal.timeout(5000))
  assert(fromIntro !== null, 'the introduction server holds no record for rustsite.p2p.')
  validateRecord(fromIntro, { lookup: 'rustsite.p2p.' })
  step('(1) the daemon\'s record verifies by section 5 and holds its values')

  // 2. This node signs and puts its own records.
  const now = Math.floor(Date.now() / 1000)
  const human = `js-${hex(randomBytes(3))}.p2p.`
  const expires = now + 2 * 86400
  const humanRecord = signRecord({
    name: human,
    seed,
    seq: nextSeq(undefined, now),
    expires,
    rrs: [ // given out of order and in mixed case: the signer lower-cases and sorts (section 3.1)
      { name: `WWW.${human}`, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.57') },
      { name: human, type: TYPES.TXT, ttl: 60, rdata: rdata.TXT('hello from js') },
      { name: human.toUpperCase(), type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.55') },
      { name: human, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.55') }, // a duplicate, dropped
      // For the answers of section 10.2: a wildcard, an alias, a mail exchanger, a private address.
      { name: `*.wild.${human}`, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.58') },
      { name: `alias.${human}`, type: TYPES.CNAME, ttl: 60, rdata: rdata.name(`WWW.${human}`) },
      { name: human, type: TYPES.MX, ttl: 60, rdata: rdata.MX(10, `www.${human}`) },
      { name: `lan.${human}`, type: TYPES.A, ttl: 60, rdata: rdata.A('10.1.2.3') }
    ]
  })
  // A record with a short life and a long TTL (section 10.2: TTLs never exceed what is left).
  const brief = `brief-${hex(randomBytes(3))}.p2p.`
  const briefRecord = signRecord({
    name: brief,
    seed,
    seq: nextSeq(undefined, now),
    expires: now + 90,
    rrs: [{ name: brief, type: TYPES.A, ttl: 3600, rdata: rdata.A('192.0.2.59') }]
  })
  const keyRecord = signRecord({
    name: node.keyName,
    seed,
    seq: nextSeq(undefined, now),
    expires,
    rrs: [{ name: node.keyName, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.56') }]
  })
  for (const [name, bytes] of [[human, humanRecord], [node.keyName, keyRecord], [brief, briefRecord]]) {
    const rec = validateRecord(bytes, { lookup: name })
    const put = await dhtPut(node.node, dhtKey(name), bytes, AbortSignal.timeout(15000))
    step(`PUT_VALUE ${name} (${bytes.length} bytes, ${rec.rrs.length} RRs): echoed by ${put.echoed.join(', ') || 'nobody'}`)
    for (const [label, peer] of [['introduction server', introPeer], ['daemon', daemonPeer]]) {
      const held = await readBack(peer, dhtKey(name), (v) => v !== null && equalBytes(v, bytes), 10000)
      assert(held !== null && equalBytes(held, bytes), `the ${label} does not hold ${name} after PUT_VALUE (it holds ${held ? hex(held) : 'nothing'})`)
    }
  }
  step(`(2) the introduction server and the daemon both store ${human} and ${node.keyName}`)

  // 3. The daemon answers them over DNS.
  await digUntil(dnsPort, human, 'A', ['192.0.2.55'], 15000)
  await digUntil(dnsPort, human, 'TXT', ['"hello from js"'], 5000)
  await digUntil(dnsPort, `www.${human}`, 'A', ['192.0.2.57'], 5000)
  await digUntil(dnsPort, node.keyName.toUpperCase(), 'A', ['192.0.2.56'], 15000)
  await digUntil(dnsPort, 'rustsite.p2p.', 'A', ['192.0.2.44'], 5000)
  step(`(3) dig @127.0.0.1 -p ${dnsPort}: ${human} A 192.0.2.55, TXT "hello from js", www A 192.0.2.57; ${node.keyName} A 192.0.2.56`)

  // Section 10: the daemon answers as an authoritative server for p2p. holding these RRs would.
  const soa = 'p2p. 10 IN SOA localhost. nobody.invalid. 1 3600 600 86400 10'
  const expect = (q, r, want) => {
    const where = `dig ${q}: ${JSON.stringify(r)}`
    if (want.status) assert(r.status === want.status, `status ${r.status}, want ${want.status}; ${where}`)
    for (const f of want.flags ?? []) assert(r.flags.includes(f), `flag ${f} missing; ${where}`)
    for (const sec of ['answer', 'authority', 'additional']) {
      if (want[sec] === undefined) continue
      const got = r[sec].map((rr) => [rr.name, rr.type, rr.data].join(' '))
      assert(JSON.stringify(got) === JSON.stringify(want[sec]), `${sec} ${JSON.stringify(got)}, want ${JSON.stringify(want[sec])}; ${where}`)
    }
    if (want.ede !== undefined) assert(r.ede === want.ede, `EDE ${r.ede}, want ${want.ede}; ${where}`)
    return r
  }
  const ask = (name, type) => digFull(dnsPort, name, type)
  const noSoaTtl = (r) => r.authority.map((rr) => `${rr.name} ${rr.ttl} IN ${rr.type} ${rr.data}`)
  let r = expect(`${human} AAAA`, ask(human, 'AAAA'), { status: 'NOERROR', flags: ['aa', 'ra'], answer: [] })
  assert(JSON.stringify(noSoaTtl(r)) === JSON.stringify([soa]), `NODATA authority ${noSoaTtl(r)}, want ${soa}`)
  r = expect(`nope.${human} A`, ask(`nope.${human}`, 'A'), { status: 'NXDOMAIN', flags: ['aa'], answer: [] })
  assert(JSON.stringify(noSoaTtl(r)) === JSON.stringify([soa]), `NXDOMAIN authority ${noSoaTtl(r)}, want ${soa}`)
  expect(`x.wild.${human} A`, ask(`X.wild.${human}`, 'A'), { status: 'NOERROR', answer: [`X.wild.${human} A 192.0.2.58`] })
  expect(`wild.${human} A`, ask(`wild.${human}`, 'A'), { status: 'NOERROR', answer: [], authority: [`p2p. SOA ${soa.split(' SOA ')[1]}`] })
  expect(`alias.${human} A`, ask(`alias.${human}`, 'A'), {
    status: 'NOERROR', flags: ['aa'], answer: [`alias.${human} CNAME www.${human}`, `www.${human} A 192.0.2.57`]
  })
  expect(`${human} MX`, ask(human, 'MX'), {
    status: 'NOERROR', answer: [`${human} MX 10 www.${human}`], additional: [`www.${human} A 192.0.2.57`]
  })
  expect(`${human.toUpperCase()} A`, ask(human.toUpperCase(), 'A'), { status: 'NOERROR', answer: [`${human.toUpperCase()} A 192.0.2.55`] })
  expect(`lan.${human} A`, ask(`lan.${human}`, 'A'), { status: 'NOERROR', answer: [], authority: [`p2p. SOA ${soa.split(' SOA ')[1]}`], ede: 17 })
  r = expect(`${brief} A`, ask(brief, 'A'), { status: 'NOERROR', answer: [`${brief} A 192.0.2.59`] })
  const left = now + 90 - Math.floor(Date.now() / 1000)
  const capped = r.answer[0].ttl
  assert(capped <= left + 1 && capped > 0, `TTL ${capped} of a record with ${left} s left (its RR says 3600)`)
  r = expect('check.p2pdns.p2p. A', ask('check.p2pdns.p2p.', 'A'), { status: 'NOERROR', answer: ['check.p2pdns.p2p. A 127.0.0.1'] })
  assert(r.answer[0].ttl === 0, `check.p2pdns.p2p. A has TTL ${r.answer[0].ttl}, section 1 says 0`)
  expect('check.p2pdns.p2p. AAAA', ask('check.p2pdns.p2p.', 'AAAA'), { status: 'NOERROR', answer: ['check.p2pdns.p2p. AAAA ::1'] })
  expect('check.p2pdns.p2p. TXT', ask('check.p2pdns.p2p.', 'TXT'), { status: 'NOERROR', answer: [] })
  expect('p2p. SOA', ask('p2p.', 'SOA'), { status: 'NOERROR', answer: [`p2p. SOA ${soa.split(' SOA ')[1]}`] })
  step('(3) section 10 answers: NODATA and NXDOMAIN with the apex SOA, a wildcard, an empty non-terminal, a CNAME, ' +
    `MX with additional data, the question's case, a private address filtered (EDE 17), a TTL capped at ${capped} s, the reserved names`)

  // 4. Records a storage node must refuse, each echoed (refusals are silent) and not kept.
  const other = randomBytes(32)
  const otherOwner = signRecord({ // rule 7: another owner while the held record is unexpired
    name: human, seed: other, seq: nextSeq(undefined, now) + 100n, expires, rrs: [{ name: human, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.66') }]
  })
  const lowerSeq = signRecord({ // rule 8: the same owner with a lower seq
    name: human, seed, seq: nextSeq(undefined, now) - 1n, expires, rrs: [{ name: human, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.67') }]
  })
  const forgedName = `forged-${hex(randomBytes(3))}.p2p.`
  const forged = signRecord({ // rule 5: a bad signature
    name: forgedName, seed, seq: BigInt(now), expires, rrs: [{ name: forgedName, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.68') }]
  })
  forged[forged.length - 1] ^= 1
  const otherKey = `${zbase32Encode(randomBytes(32))}.p2p.`
  const wrongKey = signRecord({ // rule 2: another key's key name
    name: otherKey, seed, seq: BigInt(now), expires, rrs: [{ name: otherKey, type: TYPES.A, ttl: 60, rdata: rdata.A('192.0.2.69') }]
  })
  const elsewhere = `elsewhere-${hex(randomBytes(3))}.p2p.`
  const cases = [
    ['another owner for a held human name', human, otherOwner, humanRecord],
    ['a valid record under another name\'s key', elsewhere, humanRecord, null], // rule 6
    ['a lower seq from the owner', human, lowerSeq, humanRecord],
    ['a bad signature', forgedName, forged, null],
    ['another key\'s key name', otherKey, wrongKey, null]
  ]
  for (const [what, name, bytes, keep] of cases) {
    const key = dhtKey(name)
    for (const [label, peer] of [['introduction server', introPeer], ['daemon', daemonPeer]]) {
      const echo = await putValueTo(node.node, peer, key, bytes, AbortSignal.timeout(5000))
      assert(echo !== null && equalBytes(echo, bytes), `the ${label} did not echo the PUT_VALUE of ${what} (section 5: refusals are silent)`)
      await sleep(100)
      const held = await getValueFrom(node.node, peer, key, AbortSignal.timeout(5000))
      assert(keep === null ? held === null : (held !== null && equalBytes(held, keep)),
        `after a PUT_VALUE of ${what} the ${label} holds ${held === null ? 'nothing' : hex(held)}, want ${keep === null ? 'nothing' : 'the first record'}`)
    }
    // This node's own store refuses it too.
    const before = node.store.refused.length
    const put = node.node.services.dht.put(key, bytes, { signal: AbortSignal.timeout(2000) })
    await put.next().catch(() => {}) // the stock DHT stores locally before it asks any peer
    await put.return().catch(() => {})
    assert(node.store.refused.length > before, `this node stored ${what}`)
  }
  await digUntil(dnsPort, human, 'A', ['192.0.2.55'], 5000)
  step('(4) refused as section 5 says, by both p2pdns nodes and by this node: ' + cases.map((c) => c[0]).join('; '))
}

try {
  await main()
  clearTimeout(timer)
  console.log(`e2e: 1 passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s)`)
  await finish(0)
} catch (e) {
  clearTimeout(timer)
  await finish(1, e instanceof Failure ? e.message : (e?.stack ?? String(e)))
}
