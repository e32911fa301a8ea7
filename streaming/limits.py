"""What one request and one call may cost the live server; each limit is defined here once (no heavy imports, so
`actorcast serve --help` can state them).

Past a limit the server refuses with a 4xx JSON error (413 for sizes and lengths) or closes what holds a slot.
"""

MAX_BODY = 16 * 2**20  # bytes per request body: portraits (base64 in an offer) and speech uploads
MAX_QUEUED_SPEECH_S = 120.0  # agent mode: speech waiting to be spoken, per call (48 kHz int16: 11 MB)
# An answered offer whose connection is not up by then is closed and its slot freed: on loopback a call connects
# in a fraction of a second and through STUN in a few, so this only ends offers that will never connect (a caller
# that never applies the answer, or cannot reach any candidate); ICE alone would take most of a minute to give up.
CONNECT_TIMEOUT_S = 10.0
HEADER_TIMEOUT_S = 15.0  # a connection that has not sent a whole request (its headers) by then is closed
BODY_TIMEOUT_S = 30.0  # a request body still arriving after this long is refused (408)
