"""Real nats-py clients in the patterns connwatch must tell apart (tests/real_clients.rs).

Usage: leaks.py URL USER PASSWORD HELPER_USER HELPER_PASSWORD N

As USER, from this one process:
  - N connections made per publish: connect, publish once, never close   (name "per-publish")
  - N connections made per request: connect, one request, never close    (name "per-request")
  - N connections made per subscribe: connect, subscribe to a subject of
    their own, receive its one message, never unsubscribe nor close      (name "per-subscribe")
and healthy long-lived clients, one connection each:
  - three "quiet-subscriber"s: each receives a message every 0.3 s for 3 s, then nothing (a
    quiet subject): as quiet as the leaks now, but they were in use well after connecting
  - "ticker": publishes every 0.5 s for as long as it runs
  - "starter": one request when it starts (its configuration), then only listens
As HELPER_USER: "responder" answers the requests, "feeder" publishes what the subscribers get.

Prints one JSON line when every connection is made ({"ready": true}), then keeps them all
open until its standard input closes.
"""

import asyncio
import json
import sys

import nats


async def main() -> None:
    url, user, password, helper, helper_password, n = sys.argv[1:7]
    n = int(n)

    async def connect(name: str, as_helper: bool = False):
        u, p = (helper, helper_password) if as_helper else (user, password)
        return await nats.connect(url, user=u, password=p, name=name)

    keep = []
    responder = await connect("responder", as_helper=True)

    async def answer(msg):
        await msg.respond(b"ok")

    await responder.subscribe("svc.config", cb=answer)
    await responder.flush()
    feeder = await connect("feeder", as_helper=True)
    keep += [responder, feeder]

    for _ in range(n):
        nc = await connect("per-publish")
        await nc.publish("orders.created", b"{}")
        await nc.flush()
        keep.append(nc)
    for _ in range(n):
        nc = await connect("per-request")
        await nc.request("svc.config", b"?", timeout=5)
        keep.append(nc)
    for i in range(n):
        # Subscribe to the job's subject and wait for its one message (published again
        # should it have raced the subscription).
        nc = await connect("per-subscribe")
        sub = await nc.subscribe(f"jobs.{i}.done")
        await nc.flush()
        for _ in range(20):
            await feeder.publish(f"jobs.{i}.done", b"done")
            await feeder.flush()
            try:
                await sub.next_msg(timeout=0.25)
                break
            except nats.errors.TimeoutError:
                pass
        else:
            raise SystemExit(f"jobs.{i}.done never arrived")
        keep.append(nc)

    for _ in range(3):
        quiet = await connect("quiet-subscriber")
        await quiet.subscribe("events.quiet")
        await quiet.flush()
        keep.append(quiet)
    ticker = await connect("ticker")
    starter = await connect("starter")
    await starter.request("svc.config", b"?", timeout=5)
    await starter.subscribe("control.shutdown")
    keep += [ticker, starter]

    async def tick():
        while True:
            await ticker.publish("metrics.tick", b"1")
            await asyncio.sleep(0.5)

    async def quiet_feed():
        for _ in range(10):
            await feeder.publish("events.quiet", b"e")
            await asyncio.sleep(0.3)

    tasks = [asyncio.create_task(tick()), asyncio.create_task(quiet_feed())]
    print(json.dumps({"ready": True, "connections": len(keep)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
