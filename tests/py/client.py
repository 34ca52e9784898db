"""A pycapnp client of a vat kernel: bootstrap, restore a sturdy ref, call,
pipeline, and pass a callback the kernel calls back.

Usage: client.py SCHEMA_DIR STURDY_REF SCENARIO
Prints one JSON line per step; exits non-zero with the error on failure.
"""
import asyncio
import json
import sys

import capnp

schema_dir, uri, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
exo = capnp.load(f"{schema_dir}/exo.capnp")


def address_and_swiss(uri):
    rest = uri[len("captp://"):]
    _did, rest = rest.split("@", 1)
    address, swiss = rest.rsplit("/", 1)
    return address, swiss


def out(**kw):
    print(json.dumps(kw), flush=True)


class Callback(exo.Exo.Server):
    """An object of ours the kernel can call: records what it was told."""

    def __init__(self):
        self.calls = []

    async def call(self, method, args, _context, **kwargs):
        self.calls.append([method, args.body])
        _context.results.result.body = "#" + str(len(self.calls))


async def main():
    address, swiss = address_and_swiss(uri)
    host, port = address.rsplit(":", 1)
    connection = await capnp.AsyncIoStream.create_connection(host=host, port=int(port))
    client = capnp.TwoPartyClient(connection)
    gate = client.bootstrap().cast_as(exo.Gate)

    if scenario == "counter":
        counter = gate.restore(swiss).object  # pipelined on restore
        first = await counter.call("increment", {"body": "#[]"})
        second = await counter.call("increment", {"body": "#[]"})
        out(step="increment", results=[first.result.body, second.result.body])
        bad = None
        try:
            await counter.call("noSuchMethod", {"body": "#[]"})
        except Exception as e:  # the kernel's rejection, as an exception
            bad = str(e)
        out(step="unknown method", error=bad)
        try:
            await gate.restore("notTheSwissNumber").object.call("increment", {"body": "#[]"})
            out(step="guess", error=None)
        except Exception as e:
            out(step="guess", error=str(e))
    elif scenario == "mint":
        # mint.makePurse() returns a reference: pipeline a call on it
        # before the first answer arrives.
        mint = gate.restore(swiss).object
        purse = mint.call("makePurse", {"body": '#["py"]'}).object
        balance = await purse.call("getBalance", {"body": "#[]"})
        out(step="pipelined", result=balance.result.body)
        # As the C++ client does: an answer's `object` passed, unresolved
        # here, as the argument of a call; by delivery it is the purse.
        other = mint.call("makePurse", {"body": '#["py2"]'}).object
        minted = await mint.call(
            "mintInto", {"body": '#["$0.Alleged: purse",5]', "caps": [other]}
        )
        again = await other.call("getBalance", {"body": "#[]"})
        out(step="pipelined argument", result=minted.result.body, balance=again.result.body)
    elif scenario == "callback":
        # A room that calls its members back: join with a local object
        # (under two names, so a post by one is told to the other).
        room = gate.restore(swiss).object
        me = Callback()
        joined = await room.call(
            "join", {"body": '#["py","$0.Alleged: member"]', "caps": [me]}
        )
        await room.call("join", {"body": '#["py2","$0.Alleged: member"]', "caps": [me]})
        posted = await room.call("post", {"body": '#["py2","hello from python"]'})
        for _ in range(100):
            if me.calls:
                break
            await asyncio.sleep(0.05)
        out(step="callback", joined=joined.result.body, posted=posted.result.body, calls=me.calls)
    elif scenario == "limits":
        # Three calls that break a limit each, on purpose; each must fail
        # alone, naming the limit, with the mint and its data intact.
        mint = gate.restore(swiss).object

        async def failure(method, body):
            try:
                reply = await mint.call(method, {"body": body})
                return "no error: " + reply.result.body[:80]
            except Exception as e:  # the kernel's rejection, cut to a readable size
                return str(e)[:1000]

        # A body of 600 KB of escaped quotes: under the frame limit, but
        # twice that once the kernel escapes it for the vat.
        quotes = '\\"' * 300_000
        # (`!` escapes a string that starts with a special character.)
        out(step="big body", error=await failure("makePurse", f'#["!{quotes}"]'))
        # 290 purses with 3,900-byte names: their list is over 1 MiB.
        for i in range(290):
            await mint.call("makePurse", {"body": f'#["{i:04}' + "n" * 3896 + '"]'})
        out(step="big result", error=await failure("purseNames", "#[]"))
        # A purse whose state is over STATE_BYTES_MAX.
        out(step="big state", error=await failure("makePurse", '#["' + "s" * 300_000 + '"]'))
        audit = await mint.call("audit", {"body": "#[]"})
        out(step="audit", result=audit.result.body)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


asyncio.run(capnp.run(main()))
