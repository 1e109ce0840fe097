"""singyeong-py 1.0.1, unchanged, against our server.

Two clients (one json, one msgpack) identify, set typed metadata (including
a version), route SENDs to each other by metadata queries and receive a
BROADCAST. Exits 0 when every step is seen, 1 with a reason otherwise.
Every wait is bounded.
"""

import asyncio
import os
import sys

import singyeong
from singyeong.query import Equal, GreaterThan, Target
from singyeong.types import VersionType

PORT = int(os.environ["SG_PORT"])
STEP_TIMEOUT = 5.0


async def main():
    loop = asyncio.get_running_loop()
    inbox = {"a": asyncio.Queue(), "b": asyncio.Queue()}

    a = singyeong.Client(f"singyeong://py-a@localhost:{PORT}", loop=loop)
    b = singyeong.Client(f"singyeong://py-b@localhost:{PORT}/?encoding=msgpack", loop=loop)

    async def on_a(message):
        await inbox["a"].put(message)

    async def on_b(message):
        await inbox["b"].put(message)

    a.on_raw_packet = on_a
    b.on_raw_packet = on_b
    tasks = [loop.create_task(a.connect()), loop.create_task(b.connect())]
    try:
        await asyncio.wait_for(a.update_metadata({"role": "pinger", "n": 1}), STEP_TIMEOUT)
        await asyncio.wait_for(
            b.update_metadata({"role": "ponger", "version": VersionType("2.1.0"), "tags": [1, 2, 3]}),
            STEP_TIMEOUT,
        )

        # b's metadata update travels on b's connection; retry a's SEND until
        # the server has applied it (bounded), then check the payload.
        to_b = Target(
            application="py-b",
            droppable=True,
            operators=[Equal("/role", "ponger"), GreaterThan("/version", VersionType("2.0.0"))],
        )
        got = None
        for attempt in range(50):
            await a.send(to_b, {"hello": "b", "attempt": attempt}, nonce="n-1")
            try:
                got = await asyncio.wait_for(inbox["b"].get(), 0.1)
                break
            except asyncio.TimeoutError:
                continue
        check(got is not None, "b never received a SEND routed by its metadata")
        check(got.event_name == "SEND", f"b got event {got.event_name}")
        check(got.nonce == "n-1", f"b got nonce {got.nonce!r}")
        check(got.payload.get("hello") == "b", f"b got payload {got.payload!r}")

        # A query that must not match (version too low) is dropped, not delivered.
        await a.send(
            Target(application="py-b", droppable=True, operators=[GreaterThan("/version", VersionType("3.0.0"))]),
            {"never": True},
        )

        # b answers a, found by its metadata.
        await b.send(Target(application="py-a", operators=[Equal("/role", "pinger")]), {"hello": "a"}, nonce=7)
        got = await asyncio.wait_for(inbox["a"].get(), STEP_TIMEOUT)
        check(got.event_name == "SEND" and got.payload == {"hello": "a"} and got.nonce == 7, f"a got {got!r}")

        await a.broadcast(Target(application="py-b"), "to everyone in py-b")
        got = await asyncio.wait_for(inbox["b"].get(), STEP_TIMEOUT)
        check(got.event_name == "BROADCAST" and got.payload == "to everyone in py-b", f"b got {got!r}")
        check(inbox["b"].empty(), "b received the message that matched nothing")
    finally:
        await a._close()
        await b._close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print("interop ok")


def check(cond, why):
    if not cond:
        raise AssertionError(why)


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    except Exception as e:  # report any failure as one line for the Rust test
        print(f"interop failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
