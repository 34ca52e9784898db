// UCAN 1.0 and CARs written and read by outside tools (iso-ucan 0.5.0,
// @ipld/car 5.4.7, @ipld/dag-cbor 10.0.2, multiformats 14.0.5), for the
// kernel to be checked against:
//
//   node ucan.mjs chains OUTDIR
//       writes one CAR per case (the invocation as root, its proofs as
//       blocks): valid chains and mutated ones; prints one JSON line per
//       case, {name, car, iso: true|false, reason}: iso-ucan's verdict.
//   node ucan.mjs receipts FILE.car DID
//       reads a receipts CAR: re-hashes every block, decodes each root's
//       envelope and verifies its Ed25519 signature by DID; prints
//       {blocks, roots, verified, ran: [CID...]}.
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CarReader, CarWriter } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { DID } from 'iso-did'
import { EdDSASigner } from 'iso-signatures/signers/eddsa.js'
import { verifier } from 'iso-signatures/verifiers/eddsa.js'
import { Resolver } from 'iso-signatures/verifiers/resolver.js'
import { Delegation } from 'iso-ucan/delegation'
import * as Envelope from 'iso-ucan/envelope'
import { Invocation } from 'iso-ucan/invocation'

const verifierResolver = new Resolver(verifier)
const now = Math.floor(Date.now() / 1000)
const out = (value) => console.log(JSON.stringify(value))

const cidOf = async (bytes) => CID.create(1, dagCbor.code, await sha256.digest(bytes))

/** An invocation signed as iso-ucan signs, with no checks of its own. */
const invoke = async (signer, payload) => {
  const { signature, signaturePayload } = await Envelope.sign({ spec: 'inv', signer, payload })
  return Envelope.encode({ signature, signaturePayload })
}

const writeCar = async (path, root, blocks) => {
  const { writer, out: chunks } = CarWriter.create([root])
  const parts = []
  const collected = (async () => { for await (const chunk of chunks) parts.push(chunk) })()
  for (const [cid, bytes] of blocks) await writer.put({ cid, bytes })
  await writer.close()
  await collected
  await writeFile(path, Buffer.concat(parts))
}

/** iso-ucan's verdict on an invocation whose proofs are `blocks`. */
const judge = async (bytes, blocks) => {
  try {
    await Invocation.from({
      bytes,
      verifierResolver,
      resolveProof: async (cid) => {
        const proof = blocks.get(cid.toString())
        if (!proof) throw new Error(`proof ${cid} is not in the CAR`)
        return Delegation.from({ bytes: proof, verifierResolver })
      },
    })
    return { iso: true }
  } catch (e) {
    return { iso: false, reason: String(e?.message ?? e) }
  }
}

const flip = (bytes, at) => {
  const copy = Uint8Array.from(bytes)
  copy[at] ^= 1
  return copy
}

const chains = async (dir) => {
  const [owner, alice, bob, carol] = await Promise.all([1, 2, 3, 4].map(() => EdDSASigner.generate()))
  const send = '/msg/send'
  const delegate = (iss, aud, extra = {}) =>
    Delegation.create({ iss, aud: aud.did, sub: owner.did, cmd: '/msg', pol: [], exp: now + 3600, ...extra })
  const policy = [['<', '.size', 10], ['like', '.to', '*@example.com']]
  const args = { size: 3, to: 'carol@example.com' }
  const valid = [await delegate(owner, alice, { pol: policy }), await delegate(alice, bob)]
  const payload = (prf, extra = {}) => ({
    iss: bob.did, sub: owner.did, cmd: send, args, nonce: new Uint8Array([1, 2, 3]),
    exp: now + 600, prf: prf.map((d) => d.cid), ...extra,
  })
  const cases = [
    ['a valid chain of two, with a policy', valid, payload(valid)],
    ['a valid chain with a not-before in the past', [await delegate(owner, alice, { nbf: now - 60 }), valid[1]], null],
    ['a flipped signature byte in a proof', [{ ...valid[0], bytes: flip(valid[0].bytes, 5) }, valid[1]], null],
    ['a wrong audience', [valid[0], await delegate(alice, carol)], null],
    ['an expired proof', [await delegate(owner, alice, { exp: now - 60, now: now - 120 }), valid[1]], null],
    ['a policy breach', valid, payload(valid, { args: { size: 30, to: 'carol@example.com' } })],
    ['a command the chain does not grant', valid, payload(valid, { cmd: '/mail/send' })],
  ]
  for (const [index, [name, proofs, given]] of cases.entries()) {
    // A proof whose bytes changed is named by the CID of what it now is.
    const blocks = await Promise.all(proofs.map(async (p) => [await cidOf(p.bytes), p.bytes]))
    const inv = await invoke(bob, given ?? payload(blocks.map(([cid]) => ({ cid }))))
    const car = join(dir, `case-${index}.car`)
    const invCid = await cidOf(inv)
    await writeCar(car, invCid, [[invCid, inv], ...blocks])
    out({ name, car, ...(await judge(inv, new Map(blocks.map(([cid, b]) => [cid.toString(), b])))) })
  }
  // An invocation whose own signature byte is flipped.
  const inv = flip(await invoke(bob, payload(valid)), 5)
  const car = join(dir, `case-${cases.length}.car`)
  const invCid = await cidOf(inv)
  await writeCar(car, invCid, [[invCid, inv], ...valid.map((d) => [d.cid, d.bytes])])
  out({ name: 'a flipped signature byte in the invocation', car, ...(await judge(inv, new Map(valid.map((d) => [d.cid.toString(), d.bytes])))) })
}

const receipts = async (file, did) => {
  const reader = await CarReader.fromBytes(await readFile(file))
  const roots = await reader.getRoots()
  const issuer = await DID.fromString(did)
  let blocks = 0
  let verified = 0
  const ran = []
  for await (const { cid, bytes } of reader.blocks()) {
    const digest = await sha256.digest(bytes)
    if (cid.multihash.code !== sha256.code || !equal(digest.digest, cid.multihash.digest)) {
      throw new Error(`block ${cid} does not hash to its CID`)
    }
    blocks += 1
    if (!roots.some((root) => root.equals(cid))) continue
    const envelope = Envelope.decode({ envelope: bytes })
    const [, signed] = dagCbor.decode(bytes)
    if (envelope.payload.iss !== did) throw new Error(`receipt ${cid} is issued by ${envelope.payload.iss}`)
    if (!(await verifier.Ed25519({ signature: envelope.signature, message: dagCbor.encode(signed), did: issuer }))) {
      throw new Error(`receipt ${cid}: its signature does not verify`)
    }
    verified += 1
    ran.push(envelope.payload.args.ran.toString())
  }
  out({ blocks, roots: roots.length, verified, ran })
}

const equal = (a, b) => a.length === b.length && a.every((byte, i) => byte === b[i])

const [mode, ...rest] = process.argv.slice(2)
if (mode === 'chains') await chains(rest[0])
else if (mode === 'receipts') await receipts(rest[0], rest[1])
else {
  console.error('usage: node ucan.mjs chains OUTDIR | receipts FILE.car DID')
  process.exit(2)
}
process.exit(0)
