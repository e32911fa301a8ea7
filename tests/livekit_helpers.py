"""What the LiveKit avatar's test files share: an engine of untrained weights at a small size, and a stand-in room."""

from pathlib import Path

from livekit import rtc

from actorcast.actors.engine import Engine
from tests.untrained import write_untrained_weights

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # the untrained decoder's own size: cheap on a busy 2-core machine


def untrained_engine(tmp_path_factory):
    """An in-process Engine of untrained weights at SIZE (yields it: a module fixture's body)."""
    weights = write_untrained_weights(tmp_path_factory.mktemp("livekit") / "weights", resolution=SIZE)
    with Engine(weights=weights, size=SIZE, stage_threads=1) as e:
        yield e


class LoopbackRoom(rtc.EventEmitter):
    """Stands in for a connected rtc.Room where AvatarRunner publishes: it records the tracks and goes nowhere."""

    name = "loopback"

    class Participant:
        identity = "agent"

        def __init__(self):
            self.tracks = []

        async def publish_track(self, track, options):
            self.tracks.append(track)

            class Publication:
                async def wait_for_subscription(self):
                    return None

            return Publication()

    def __init__(self):
        super().__init__()
        self.local_participant = self.Participant()
        self.remote_participants = {}

    def isconnected(self) -> bool:
        return True
