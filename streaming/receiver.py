"""Two settings of aiortc's inbound audio that aiortc 1.16 keeps private, set per connection.

- `rtp_origin`: aiortc numbers decoded frames from its first packet (pts = RTP timestamp - origin); the origin
  lets the server report the caller's own RTP timestamps, which a browser maps to its capture times.
- `set_audio_prefetch`: aiortc holds each inbound audio frame until 4 more have arrived (80 ms at 20 ms per
  frame) to absorb network jitter. On loopback that is pure delay: `audio_prefetch_for` keeps 1 there (the
  same rule as ICE candidates: loopback peers are treated as loopback) and aiortc's 4 elsewhere;
  `serve --audio-prefetch N` overrides it.

Both read or replace name-mangled attributes of `RTCRtpReceiver` (pinned aiortc version); if a release renames
them, they log once and leave aiortc as it is (the browser latency is then not reported / the default buffer).
"""

import logging
from typing import Callable

from aiortc.jitterbuffer import JitterBuffer

from actorcast.streaming.ice import is_loopback

log = logging.getLogger(__name__)

AUDIO_CAPACITY = 16  # aiortc's own capacity for audio (packets)
DEFAULT_PREFETCH = 4  # aiortc's own
LOOPBACK_PREFETCH = 1


def receiver_of(pc, track):
    """The RTCRtpReceiver of `pc` that delivers `track` (None if none does)."""
    return next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)


def audio_prefetch_for(address: str) -> int:
    """Inbound audio frames to hold for a peer bound to / calling `address`."""
    return LOOPBACK_PREFETCH if is_loopback(address) else DEFAULT_PREFETCH


def rtp_origin(receiver) -> Callable[[], int | None]:
    """A function returning the RTP timestamp aiortc's decoded pts count from (None before the first packet)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    if mapper is None:
        log.warning("this aiortc has no timestamp mapper to read; browser latency will not be reported")
        return lambda: None
    return lambda: getattr(mapper, "_origin", None)


def set_audio_prefetch(receiver, frames: int) -> None:
    """Release each inbound audio frame once `frames` later frames have arrived (aiortc's default is 4)."""
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
        log.warning("this aiortc has no audio jitter buffer to set; keeping its default")
        return
    receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=AUDIO_CAPACITY, prefetch=frames)
