"""Throughput of the built-in data set: frames rendered per second (params → pixels) and speech seconds per second.

    python bench/data.py --out DIR [--quick]   →   DIR/data.json: frames_per_s_128, frames_per_s_256, audio_s_per_s
"""

import os

from common import median_seconds, parse_args, write_json  # noqa: I001  (bench/ is on sys.path when run as a script)

import torch

from actorcast.models.data.face import render, sample_identities
from actorcast.models.data.performance import generate_performance


def main() -> None:
    args = parse_args("data", __doc__)
    repeats = 3 if args.quick else 7
    perf = generate_performance(seed=1, seconds=10.0)
    identities = sample_identities(list(range(64)))
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "batch": 64}
    for size in (128, 256):
        params = perf.params[:64]
        seconds = median_seconds(lambda: render(identities, params, size), repeats)
        result[f"frames_per_s_{size}"] = round(64 / seconds, 1)
    speech_seconds = 5.0 if args.quick else 20.0
    seconds = median_seconds(lambda: generate_performance(seed=2, seconds=speech_seconds), max(1, repeats // 2))
    result["audio_s_per_s"] = round(speech_seconds / seconds, 1)
    path = write_json(args.out, "data", result)
    print(f"{path}: {result}")


if __name__ == "__main__":
    main()
