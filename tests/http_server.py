"""A local HTTP endpoint for the HTTP sink's test and benchmark: it answers each POST after --delay
seconds, fails a share of them (503, 429, or a dropped connection) and refuses for good (400) any
event with "poison": true. It prints its port on its first line; GET /count answers how many events
it accepted; on SIGTERM it writes every accepted event's "i" (repeats included) to --record.

    python tests/http_server.py --delay 0.02 --fail 0.2 --record accepted.json
"""

import argparse
import asyncio
import json
import random
import signal
import socket
import sys

from aiohttp import web


def make_app(delay, fail, accepted):
    async def events(request):
        body = await request.read()
        if delay:
            await asyncio.sleep(delay)
        event = json.loads(body)
        if isinstance(event, dict) and event.get("poison"):
            return web.Response(status=400, text="refused for good")
        roll = random.random()
        if roll < fail / 3:
            return web.Response(status=503, text="try again")
        if roll < 2 * fail / 3:
            return web.Response(status=429, text="slow down")
        if roll < fail:
            request.transport.close()  # (the client sees the connection dropped mid-request)
            return web.Response(status=500)
        accepted.append(event["i"] if isinstance(event, dict) else event)
        return web.Response(status=204)

    async def count(request):
        return web.json_response({"accepted": len(accepted)})

    app = web.Application()
    app.router.add_post("/events", events)
    app.router.add_get("/count", count)
    return app


async def serve(args):
    accepted = []
    runner = web.AppRunner(make_app(args.delay, args.fail, accepted), access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(4096)
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    print(sock.getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()
    if args.record:
        with open(args.record, "w") as f:
            json.dump(accepted, f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--fail", type=float, default=0.0, help="the share of requests that fail")
    ap.add_argument("--record", default=None)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
