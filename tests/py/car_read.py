"""Reads a receipts CAR with libipld (a second, independent reader): every
block re-encoded as DAG-CBOR and re-hashed against its CID, and each root
decoded as a UCAN envelope. Prints one JSON line:
{"roots": N, "blocks": N, "rehashed": N, "receipts": [{"ran": CID, "out": ...}]}.

    python car_read.py FILE.car
"""
import hashlib
import json
import sys

import libipld

SHA2_256 = 0x12


def main(path):
    with open(path, "rb") as f:
        header, blocks = libipld.decode_car(f.read())
    # libipld gives CIDs as their bytes; name them as text.
    blocks = {libipld.encode_cid(cid): value for cid, value in blocks.items()}
    rehashed = 0
    for cid, value in blocks.items():
        decoded = libipld.decode_cid(cid)
        digest = decoded["hash"]
        if digest["code"] != SHA2_256:
            raise SystemExit(f"block {cid} is not hashed with sha2-256")
        if hashlib.sha256(libipld.encode_dag_cbor(value)).digest() != digest["digest"]:
            raise SystemExit(f"block {cid} does not hash to its CID")
        rehashed += 1
    receipts = []
    for root in header["roots"]:
        root = libipld.encode_cid(root)
        signature, signed = blocks[root]
        tag = next(key for key in signed if key != "h")
        payload = signed[tag]
        if payload["cmd"] != "/ucan/assert/receipt" or len(signature) != 64:
            raise SystemExit(f"root {root} is not a signed receipt")
        ran = libipld.encode_cid(payload["args"]["ran"])
        receipts.append({"ran": ran, "out": payload["args"]["out"]})
    print(json.dumps({"roots": len(header["roots"]), "blocks": len(blocks), "rehashed": rehashed, "receipts": receipts}))


if __name__ == "__main__":
    main(sys.argv[1])
