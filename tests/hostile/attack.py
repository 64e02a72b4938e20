"""A rapid-reset attacker in a process of its own (so it does not share the server's CPU).

    python -m tests.hostile.attack PORT CA_FILE STREAMS

Opens calls and resets each at once, as fast as stream credit allows, until
STREAMS streams were reset; when the server closes the connection it
reconnects and goes on (an attacker does). Prints one JSON line: streams
reset, connections used, their close codes and reasons, seconds taken.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from echo.echo_pb2 import EchoRequest

from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

from .peer import HostilePeer

CALL = encode_frame(
    FrameType.HEADERS, pb.CallHeaders(method="/echo.Echo/Say").SerializeToString()
) + encode_frame(FrameType.DATA, EchoRequest(text="r").SerializeToString())


async def attack(port: int, ca_file: str, streams: int) -> dict[str, object]:
    """Reset ``streams`` calls in all, reconnecting whenever the server closes us."""
    sent = 0
    connects = 0
    closes: list[tuple[int | None, str]] = []
    t0 = time.monotonic()
    while sent < streams:
        peer = HostilePeer("127.0.0.1", port, ca_file)
        await peer.connect()
        connects += 1
        await peer.hello("resetter")
        while sent < streams and not peer.closed:
            if not peer.can_open_stream():
                try:
                    await peer.wait_stream_credit()
                except TimeoutError:
                    break
                continue
            sid = peer.open_stream()
            peer.quic.send_stream_data(sid, CALL)
            peer.quic.reset_stream(sid, ErrorCode.CANCELLED)
            sent += 1
            if sent % 32 == 0:
                peer.flush()
                await asyncio.sleep(0)
        peer.flush()
        if peer.closed:
            closes.append((peer.close_code, peer.close_reason))
        await peer.aclose()
    return {
        "streams": sent,
        "connections": connects,
        "closes": closes[:3],
        "closed": len(closes),
        "seconds": time.monotonic() - t0,
    }


def main() -> None:
    port, ca_file, streams = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print(json.dumps(asyncio.run(attack(port, ca_file, streams))), flush=True)


if __name__ == "__main__":
    main()
