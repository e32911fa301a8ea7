"""The one time base of actorcast (docs/ARCHITECTURE.md "Time base").

Video runs at 25 fps; audio inside the models is 16 kHz mono float32, so one video frame is exactly
640 audio samples. Every tensor that crosses a stage boundary carries its first frame index.
"""

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
assert SAMPLES_PER_FRAME * FPS == SAMPLE_RATE
