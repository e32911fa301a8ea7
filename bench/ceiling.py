"""Watch a decoder learn to talk: the true motion of held-out clips through a decoder, read by the meter.

    python bench/ceiling.py RUN_OR_WEIGHTS --out DIR [--clips 3] [--seconds 8] [--size 256]
        → DIR/ceiling.json and DIR/ceiling.png

RUN_OR_WEIGHTS is an export folder (decoder.safetensors + motion_encoder.safetensors) or a decoder-stage run folder
still training (its latest Ray Train checkpoint is read). For each held-out clip the decoder renders the clip's
true motion (its own latent: the normalised parameters, or the motion encoder's reading of the frames for a
decoder trained on encoder latents) and the motion encoder's reading of the frames; both are resized to `size`
and read by the meter. The JSON holds the decoder's ceiling r (meter mouth opening against the true jaw), the
mouth-opening span p95 − p5 beside the ground truth's, the same through the encoder, and PSNR. The PNG shows mouth
crops sorted by true jaw opening: ground truth above, the decoder below. It costs about a minute on 2 cores, so it
can be run at each checkpoint of a training run (it reads, never writes, the run).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import write_json  # noqa: E402
from actorcast.models.data.dataset import HELDOUT_START, make_clip  # noqa: E402
from actorcast.models.data.images import resize_images  # noqa: E402
from actorcast.models.data.params import PARAM_INDEX  # noqa: E402
from actorcast.models.errors import ActorcastError  # noqa: E402
from actorcast.models.decoder import param_latent  # noqa: E402
from actorcast.models.training.decoder_stage import DecoderTrainer  # noqa: E402
from actorcast.models.training.evaluate import CLIP_STRIDE, pearson, span  # noqa: E402
from actorcast.models.training.meter import FaceMeter  # noqa: E402
from actorcast.models.training.train import TrainConfig  # noqa: E402

JAW = PARAM_INDEX["jaw_open"]
BATCH = 25
CROPS = 10  # mouth crops per clip in the picture


def load(path: Path) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(motion encoder, decoder, latent kind) from an export folder or the latest checkpoint of a run folder."""
    from actorcast.actors.loading import load_model
    from actorcast.models.training.motion_stage import encoder_latent_kind

    export = path / "decoder.safetensors"
    checkpoints = sorted((path / "ray").rglob("mp_rank_00_model_states.pt"), key=lambda p: p.stat().st_mtime)
    # A run resumed after it finished holds its last export beside newer checkpoints: read the newest.
    if export.is_file() and (not checkpoints or export.stat().st_mtime >= checkpoints[-1].stat().st_mtime):
        return load_model("motion_encoder", path), load_model("decoder", path), encoder_latent_kind(str(path))
    if not checkpoints:
        raise ActorcastError(f"{path} holds neither decoder.safetensors nor a decoder-stage checkpoint under ray/")
    state_file = checkpoints[-1].parents[1] / "actorcast_state.json"  # checkpoint_*/ds/mp_rank_00_model_states.pt
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    cfg = TrainConfig(**state["config"]) if state else TrainConfig(stage="decoder")
    latent = cfg.resolved_latent()
    trainer = DecoderTrainer(cfg.preset, cfg.size, latent)
    trainer.load_state_dict(torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["module"])
    print(f"checkpoint {checkpoints[-1].parents[1]} (step {state.get('step', '?')})", file=sys.stderr)
    return trainer.encoder.eval(), trainer.decoder.eval(), latent


@torch.no_grad()
def measure(encoder, decoder, latent: str, clips: int, seconds: float, size: int) -> tuple[dict, np.ndarray]:
    """The figures, and a picture (H, W, 3) uint8 of mouth crops sorted by jaw: truth above, decoder below."""
    meter, res = FaceMeter(), decoder.config.resolution
    truth, read, rows, psnr = [], {"ground_truth": [], "ceiling": [], "encoded": []}, [], []
    for i in range(clips):
        clip = make_clip(HELDOUT_START + CLIP_STRIDE * i, seconds, size=size)
        identity = decoder.encode_reference(resize_images(clip.reference[None], res))

        def decode(z: torch.Tensor) -> torch.Tensor:
            return torch.cat([resize_images(decoder(identity, z[j:j + BATCH]), size)
                              for j in range(0, len(z), BATCH)]).clamp(0, 1)

        encoded_z = torch.cat([encoder(resize_images(clip.frames[j:j + BATCH], encoder.config.input_size))
                               for j in range(0, len(clip.frames), BATCH)])
        ceiling = decode(param_latent(clip.params, decoder.config.d_motion) if latent == "params" else encoded_z)
        psnr.append(float(-10 * torch.log10((ceiling - clip.frames).square().mean().clamp_min(1e-10))))
        truth.append(clip.params[:, JAW].numpy())
        read["ground_truth"].append(meter.read(clip.frames).mouth_open)
        read["ceiling"].append(meter.read(ceiling).mouth_open)
        read["encoded"].append(meter.read(decode(encoded_z)).mouth_open)
        order = clip.params[:, JAW].argsort()[torch.linspace(0, len(clip.params) - 1, CROPS).long()]
        box = (order, slice(None), slice(size * 130 // 256, size * 200 // 256), slice(size * 88 // 256, size * 168 // 256))
        rows.append(torch.cat([torch.cat(list(clip.frames[box]), 2), torch.cat(list(ceiling[box]), 2)], 1))
    t = np.concatenate(truth)
    mouth = {name: np.concatenate(v) for name, v in read.items()}
    result = {"latent": latent, "clips": clips, "seconds": seconds, "size": size, "decoder_resolution": res,
              "meter_r_ground_truth": pearson(t, mouth["ground_truth"]), "ceiling_r": pearson(t, mouth["ceiling"]),
              "encoded_r": pearson(t, mouth["encoded"]),
              "mouth_open_span": {name: span(v) for name, v in mouth.items()},
              "meter_missing": {name: int(np.isnan(v).sum()) for name, v in mouth.items()},
              "psnr_db": float(np.mean(psnr))}
    picture = (torch.cat(rows, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return result, picture


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/ceiling.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, help="export folder, or a decoder-stage run folder (latest checkpoint)")
    parser.add_argument("--out", required=True, type=Path, help="directory for ceiling.json and ceiling.png")
    parser.add_argument("--clips", type=int, default=3, help="held-out clips (default 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per clip (default 8)")
    parser.add_argument("--size", type=int, default=256, help="size the frames are read at (default 256)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # beside a training run: take one core, not both
    try:
        encoder, decoder, latent = load(args.weights)
        result, picture = measure(encoder, decoder, latent, args.clips, args.seconds, args.size)
    except ActorcastError as e:
        print(f"bench/ceiling.py: error: {e}", file=sys.stderr)
        return 2
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".ceiling.png.part"
    Image.fromarray(picture).save(tmp, format="PNG")
    tmp.replace(args.out / "ceiling.png")
    write_json(args.out, "ceiling", {**result, "weights": str(args.weights.resolve())})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
