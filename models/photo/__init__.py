"""A user's photo, from picture to animated frames (docs/ARCHITECTURE.md "Photo rig"): the reference portrait
(`reference.py`: a photo decoded upright and checked, or a built-in identity), its face framed (`framing.py`, with
MediaPipe Face Mesh run by `face_worker.py` in the MediaPipe venv), the rig that animates it (`rig.py`, built from
`geometry.py`, `eyes.py`, `mouth.py` and `pose.py`), and the animated square pasted back into the whole picture
(`paste.py`)."""
