"""Streaming audio encoder: 16 kHz PCM -> log-mel (100 Hz) -> causal convs with a fixed lookahead -> 25 Hz.

Time alignment (docs/ARCHITECTURE.md "Time base": 640 samples = 1 video frame, 160 samples = 1 mel hop):
- mel frame k is computed with `center=False` on samples [160k - 352, 160k + 160) of the stream, left-padded
  with 352 zeros, so it *ends* exactly at the end of its hop and video frame f owns mel frames 4f .. 4f+3;
- the network is causal at both rates and its output at 25 Hz step g sees audio up to sample 640 (g + 1);
- the feature of video frame f is the output at step f + L (L = `lookahead`), so it sees audio up to the end of
  frame f + L and never beyond.
The offline path (`forward`) and the streaming path (`init_state` / `step` / `flush`) compute the same mel
frames and the same convolutions; the streaming one carries per-layer input buffers instead of zero padding.
"""

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from actorcast.models.errors import ConfigError, InputError
from actorcast.models.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

N_FFT = 512
HOP = 160  # 10 ms at 16 kHz -> 100 mel frames per second
MELS_PER_FRAME = SAMPLES_PER_FRAME // HOP  # 4 mel frames per video frame
LEFT_PAD = N_FFT - HOP  # 352 samples of history (zeros at stream start) before each hop


@dataclass(frozen=True)
class AudioConfig:
    """Sizes of the audio encoder; `lookahead` is in video frames (default 2 = 80 ms)."""

    d_audio: int = 64  # output width, one vector per video frame (= MotionConfig.d_audio)
    n_mels: int = 80
    channels_mel: int = 64  # conv width at 100 Hz
    channels_frame: int = 128  # conv width at 25 Hz
    n_blocks_mel: int = 2  # residual causal blocks at 100 Hz, dilations 1, 2, 4, ...
    n_blocks_frame: int = 3  # residual causal blocks at 25 Hz, dilations 1, 2, 4, ...
    kernel_size: int = 3
    lookahead: int = 2
    sample_rate: int = SAMPLE_RATE
    log_floor: float = 1e-5  # log-mel = log(max(mel power, floor))
    # Fixed normalisation of the log-mel power (never per utterance: those statistics can't stream).
    # Measured on the built-in synthetic speech (models.data.performance.generate_speech, seeds 0-5, 4 s each,
    # peak 0.7): log-mel mean -5.4, std 5.3, floor -11.5 in pauses, max +8.7; rounded to constants.
    norm_mean: float = -5.0
    norm_std: float = 5.0

    def __post_init__(self) -> None:
        for name in ("d_audio", "n_mels", "channels_mel", "channels_frame", "kernel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"AudioConfig.{name}={getattr(self, name)} must be a positive integer")
        for name in ("n_blocks_mel", "n_blocks_frame"):
            if not 0 <= getattr(self, name) <= 8:
                raise ConfigError(f"AudioConfig.{name}={getattr(self, name)} must be in 0..8")
        if not 0 <= self.lookahead <= 25:
            raise ConfigError(f"AudioConfig.lookahead={self.lookahead} must be 0..25 video frames (<= 1 s)")
        if self.sample_rate != SAMPLE_RATE:
            raise ConfigError(
                f"AudioConfig.sample_rate={self.sample_rate}: the models run at {SAMPLE_RATE} Hz; "
                "resample at the edge (torchaudio.functional.resample)"
            )
        if self.n_mels > N_FFT // 2 + 1:
            raise ConfigError(f"AudioConfig.n_mels={self.n_mels} must be <= {N_FFT // 2 + 1} for n_fft={N_FFT}")
        if not (self.log_floor > 0 and self.norm_std > 0):
            raise ConfigError("AudioConfig.log_floor and norm_std must be > 0")


# Cost per video frame (4 mel frames) of `tiny`, 2 x MAC (FlopCounterMode): in-conv 80->64 k3 0.13 MFLOP,
# 2 mel blocks 0.27, x4 downsample 64->128 0.07, 3 frame blocks 0.40, out 128->64 0.02, mel filterbank 0.17
# (+ the uncounted 512-point FFTs, ~0.1) ~= 1.1 MFLOP/frame: ~0.3 ms/frame on 2 cores, budget 1 ms.
AUDIO_PRESETS: dict[str, AudioConfig] = {
    "tiny": AudioConfig(),
    "base": AudioConfig(d_audio=256, channels_mel=128, channels_frame=256, n_blocks_mel=3, n_blocks_frame=4),
    "large": AudioConfig(d_audio=512, channels_mel=256, channels_frame=512, n_blocks_mel=4, n_blocks_frame=6),
}


class CausalConv1d(nn.Conv1d):
    """1-D convolution over the present and past only; streams with a buffer of its last inputs."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1):
        super().__init__(c_in, c_out, kernel_size, dilation=dilation)
        self.context = (kernel_size - 1) * dilation  # input steps of history each output needs

    def init_buffer(self, batch: int) -> torch.Tensor:
        """Zero history, exactly what `forward` pads with at the start of the stream."""
        return self.weight.new_zeros(batch, self.in_channels, self.context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) -> (B, C_out, T), zero history before t = 0."""
        return super().forward(F.pad(x, (self.context, 0)))

    def step(self, x: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, T) and the previous inputs (B, C_in, context) -> (B, C_out, T), new buffer."""
        xx = torch.cat([buf, x], dim=-1)
        return super().forward(xx), xx[..., xx.shape[-1] - self.context :]


class CausalBlock(nn.Module):
    """Residual block: dilated causal conv -> GELU -> 1x1 mix, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = CausalConv1d(channels, channels, kernel_size, dilation)
        self.mix = nn.Conv1d(channels, channels, 1)

    def init_buffer(self, batch: int) -> torch.Tensor:
        return self.conv.init_buffer(batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        return x + self.mix(F.gelu(self.conv(x)))

    def step(self, x: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, buf = self.conv.step(x, buf)
        return x + self.mix(F.gelu(y)), buf


class Stateless(nn.Module):
    """Wraps a layer that needs no history (stride-aligned downsample, 1x1 conv) in the streaming protocol."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def init_buffer(self, batch: int) -> torch.Tensor:
        return torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def step(self, x: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(x), buf


@dataclass
class AudioStreamState:
    """Where one stream stands: samples not yet turned into frames (after LEFT_PAD of history), conv buffers."""

    samples: torch.Tensor  # (B, LEFT_PAD + pending) float32
    buffers: list[torch.Tensor]  # one per layer of AudioEncoder.layers
    steps_computed: int = 0  # 25 Hz network outputs so far; output frame = step - lookahead
    samples_seen: int = 0  # real samples received (for the end-of-stream frame count)
    finished: bool = False


class AudioEncoder(nn.Module):
    """16 kHz PCM -> one `d_audio` vector per video frame, causal with a fixed lookahead; offline or streaming."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = c = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=N_FFT, hop_length=HOP, n_mels=c.n_mels, center=False, power=2.0
        )
        layers: list[nn.Module] = [CausalConv1d(c.n_mels, c.channels_mel, c.kernel_size)]
        layers += [CausalBlock(c.channels_mel, c.kernel_size, 2**i) for i in range(c.n_blocks_mel)]
        # Stride-4 conv over the 4 mel frames a video frame owns; inputs are always whole frames, so no history.
        layers.append(Stateless(nn.Conv1d(c.channels_mel, c.channels_frame, MELS_PER_FRAME, stride=MELS_PER_FRAME)))
        layers += [CausalBlock(c.channels_frame, c.kernel_size, 2**i) for i in range(c.n_blocks_frame)]
        layers.append(Stateless(nn.Conv1d(c.channels_frame, c.d_audio, 1)))
        self.layers = nn.ModuleList(layers)

    # ---- shared pieces -------------------------------------------------------------------------------------

    def _check_pcm(self, pcm: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Validate and return (B, N) float32; raises InputError naming the problem."""
        if sample_rate != self.config.sample_rate:
            raise InputError(
                f"audio at {sample_rate} Hz, the encoder needs {self.config.sample_rate} Hz: "
                "resample first (torchaudio.functional.resample)"
            )
        if not isinstance(pcm, torch.Tensor) or not pcm.is_floating_point():
            raise InputError(f"audio must be a float tensor of samples in [-1, 1], got {type(pcm).__name__} "
                             f"{getattr(pcm, 'dtype', '')}")
        if pcm.dim() not in (1, 2):
            raise InputError(f"audio must be (N,) or (B, N) samples, got shape {tuple(pcm.shape)}")
        if not bool(torch.isfinite(pcm).all()):
            raise InputError("audio contains NaN or inf samples; clean or re-decode the input")
        return (pcm[None] if pcm.dim() == 1 else pcm).to(torch.float32)

    def _log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, LEFT_PAD + 640 n) -> normalised log-mel (B, n_mels, 4 n)."""
        c = self.config
        mel = self.mel(samples)  # (B, n_mels, 4 n)
        return (mel.clamp_min(c.log_floor).log() - c.norm_mean) / c.norm_std

    # ---- offline -------------------------------------------------------------------------------------------

    def forward(self, pcm: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """(B, N) or (N,) samples -> (B, T, d_audio) or (T, d_audio), T = N // 640.

        The end is padded with `lookahead` frames of zeros, exactly as `flush` does at the end of a stream.
        """
        x = self._check_pcm(pcm, sample_rate)
        if x.shape[1] == 0:
            raise InputError("audio is empty (0 samples); give at least one video frame (640 samples)")
        n_frames = x.shape[1] // SAMPLES_PER_FRAME
        steps = n_frames + self.config.lookahead
        x = F.pad(x, (LEFT_PAD, self.config.lookahead * SAMPLES_PER_FRAME))[:, : LEFT_PAD + steps * SAMPLES_PER_FRAME]
        h = self._log_mel(x)  # (B, n_mels, 4 steps)
        for layer in self.layers:
            h = layer(h)
        out = h[..., self.config.lookahead :].transpose(1, 2)  # (B, T, d_audio)
        return out if pcm.dim() == 2 else out[0]

    # ---- streaming -----------------------------------------------------------------------------------------

    def init_state(self, batch_size: int = 1) -> AudioStreamState:
        """A fresh stream: zero history, as at the start of the offline path."""
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size} must be >= 1")
        return AudioStreamState(
            samples=torch.zeros(batch_size, LEFT_PAD, device=self.mel.spectrogram.window.device),
            buffers=[layer.init_buffer(batch_size).to(self.mel.spectrogram.window.device) for layer in self.layers],
        )

    @torch.no_grad()
    def step(
        self, pcm: torch.Tensor, state: AudioStreamState, sample_rate: int = SAMPLE_RATE, final: bool = False
    ) -> tuple[torch.Tensor, AudioStreamState]:
        """Feed (B, n) or (n,) = (1, n) samples, any n >= 0; emit (B, k, d_audio) for every frame whose
        lookahead is now complete. `final=True` ends the stream: the rest is padded with zeros like `forward`."""
        if state.finished:
            raise InputError("this audio stream was already flushed; start a new one with init_state()")
        x = self._check_pcm(pcm, sample_rate)
        if x.shape[0] != state.samples.shape[0]:
            raise InputError(f"chunk has batch {x.shape[0]}, the stream was started with {state.samples.shape[0]}")
        samples = torch.cat([state.samples, x.to(state.samples.device)], dim=1)
        seen = state.samples_seen + x.shape[1]
        if final:
            samples = F.pad(samples, (0, self.config.lookahead * SAMPLES_PER_FRAME))
        n_new = (samples.shape[1] - LEFT_PAD) // SAMPLES_PER_FRAME  # whole 25 Hz steps now computable
        used = LEFT_PAD + n_new * SAMPLES_PER_FRAME
        buffers, h = state.buffers, samples.new_zeros(samples.shape[0], self.config.d_audio, 0)
        if n_new > 0:
            h = self._log_mel(samples[:, :used])  # (B, n_mels, 4 n_new)
            buffers = []
            for layer, buf in zip(self.layers, state.buffers):
                h, buf = layer.step(h, buf)
                buffers.append(buf)
        skip = max(0, self.config.lookahead - state.steps_computed)  # the first L steps belong to no frame
        out = h[..., skip:].transpose(1, 2)  # (B, k, d_audio)
        new_state = AudioStreamState(
            samples=samples[:, used - LEFT_PAD :], buffers=buffers,
            steps_computed=state.steps_computed + n_new, samples_seen=seen, finished=final,
        )
        # With L frames of end padding the stream has made (seen // 640 + L) steps in all, so it has emitted
        # exactly seen // 640 frames, as many as `forward` returns for the same audio.
        return out, new_state

    def flush(self, state: AudioStreamState) -> tuple[torch.Tensor, AudioStreamState]:
        """End of stream: emit the remaining frames, padding with zeros exactly as `forward` does."""
        empty = state.samples.new_zeros(state.samples.shape[0], 0)
        return self.step(empty, state, final=True)
