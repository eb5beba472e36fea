"""A training run's recipe: a frozen ``TrainConfig``, its command line, and how ``--resume`` goes on with it.

``state.json`` stores the config; a resumed run takes every option the command line does not give
from there, so the recipe goes on unless the user changes it on purpose.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConvertError
from .families import NAMES as FAMILIES


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``python -m convert.train`` (field = option without dashes, ``_`` for ``-``)."""

    out: str
    """Run folder: checkpoints, log.jsonl, state.json, best weights."""
    data: str | None = None
    """Data root with speech/{train,dev} and noise/{train,dev} (None: ../shared/data)."""
    speech: tuple[str, ...] = ()
    noise: tuple[str, ...] = ()
    segment: float = 2.0
    """Seconds per training segment (rounded to whole hops of the model)."""
    batch: int = 32
    steps_per_epoch: int = 400
    epochs: int = 200
    lr: float = 1e-3
    clipnorm: float = 3.0
    lr_patience: int = 3
    patience: int = 10
    min_lr: float = 1e-5
    family: str = FAMILIES[0]
    model_config: str | None = None
    plain: bool = False
    units: int = 128
    seed: int = 0
    threads: int = 2
    resume: bool = False
    dev_count: int = 128
    max_hours: float | None = None
    keep_epochs: bool = False
    """Also keep every epoch's weights (``epoch-NNN.h5``), for a choice made later on other evidence (the real
    int8 graph: its simulation's figure ranks checkpoints near the gate wrongly, docs/generalisation.md)."""
    init: str | None = None
    qat: bool = False
    gate_clip: float = 8.0
    cell_clip: float = 8.0
    speech_highpass: float = 0.0
    """Hertz; 0 = off."""
    spectral: float = 0.0
    spectral_complex: float = 0.0
    """Share of the spectral loss's error taken between compressed complex spectra (phase kept); 0 = magnitudes."""
    consistency: float = 0.0
    """With --qat: weight of the int8 simulation's distance from the same weights in float."""
    babble: float = 0.0
    noise_eq: float = 0.0
    """dB; 0 = off."""
    speed: float = 0.0
    reverb: float = 0.0
    """Share of training mixes in simulated rooms; 0 = off."""
    rumble: float = 0.0
    """Share of training mixes whose noise gets low-frequency rumble; 0 = off."""
    snr: tuple[float, float] = (-5.0, 25.0)
    """dB, low and high."""
    level: tuple[float, float] = (-35.0, -15.0)
    """Speech RMS of the training mixes, dBFS, low and high."""
    dev_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("speech", "noise", "snr", "level"):  # JSON gives lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.family not in FAMILIES:
            raise ConvertError(f"--family {self.family}: this trainer knows {', '.join(FAMILIES)}")
        if self.speech_highpass < 0:
            raise ConvertError(f"--speech-highpass {self.speech_highpass}: a cutoff in Hz, 0 or more")
        if not 0 <= self.spectral_complex <= 1 or (self.spectral_complex and not self.spectral):
            raise ConvertError(f"--spectral-complex {self.spectral_complex:g}: a share from 0 to 1 of the spectral "
                               "loss, and only with --spectral")
        if not 0 <= self.babble <= 1:
            raise ConvertError(f"--babble {self.babble}: a share of mixes, from 0 to 1")
        if self.noise_eq < 0:
            raise ConvertError(f"--noise-eq {self.noise_eq}: a gain range in dB, 0 or more")
        if not 0 <= self.speed < 0.5:
            raise ConvertError(f"--speed {self.speed}: a relative range from 0 to 0.5")
        if not 0 <= self.reverb <= 1:
            raise ConvertError(f"--reverb {self.reverb}: a share of mixes, from 0 to 1")
        if not 0 <= self.rumble <= 1:
            raise ConvertError(f"--rumble {self.rumble}: a share of mixes, from 0 to 1")
        if self.consistency < 0 or (self.consistency and not self.qat):
            raise ConvertError(f"--consistency {self.consistency:g}: a weight of 0 or more, and only with --qat")
        if len(self.snr) != 2 or self.snr[0] > self.snr[1]:
            raise ConvertError(f"--snr {' '.join(f'{v:g}' for v in self.snr)}: LOW above HIGH")
        if len(self.level) != 2 or self.level[0] > self.level[1] or self.level[1] > 0:
            raise ConvertError(f"--level {' '.join(f'{v:g}' for v in self.level)}: LOW above HIGH, or HIGH above "
                               "0 dBFS (full scale)")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConvertError(f"{where}: unknown training options {unknown}")
        return cls(**d)


RUN_ONLY = ("out", "resume", "max_hours", "keep_epochs")
"""Options of this invocation only: never taken from ``state.json``."""
SAME_ON_RESUME = {
    "family": "it trains that model",
    "spectral": "its best dev loss only compares under the same loss",
    "spectral_complex": "its best dev loss only compares under the same loss",
    "consistency": "its best dev loss only compares under the same loss",
    "speech_highpass": "its dev mixes only compare under the same",
    "model_config": "a resumed run keeps its architecture",
    "units": "a resumed run keeps its architecture",
    "plain": "a resumed run keeps its architecture",
}
"""Options a resumed run cannot change, and why."""


def build_parser() -> argparse.ArgumentParser:
    """The command line; options not given stay out of the namespace (``argument_default=SUPPRESS``), so the
    namespace says what the user gave and ``TrainConfig`` supplies the rest."""
    d = TrainConfig(out="")
    p = argparse.ArgumentParser(prog="python -m convert.train", argument_default=argparse.SUPPRESS,
                                description="train DTLN or PoCoNet on speech + noise folders mixed on the fly "
                                            "(Keras 3, CPU)")
    p.add_argument("--out", metavar="DIR", required=True, help="run folder: checkpoints, log.jsonl, best weights")
    p.add_argument("--data", metavar="DIR",
                   help="data root with speech/{train,dev} and noise/{train,dev} (default: ../shared/data)")
    p.add_argument("--speech", metavar="DIR", nargs="*", help="extra clean speech folders")
    p.add_argument("--noise", metavar="DIR", nargs="*", help="extra noise folders")
    p.add_argument("--segment", type=float, help=f"seconds per training segment (default: {d.segment})")
    p.add_argument("--batch", type=int, help=f"segments per step (default: {d.batch})")
    p.add_argument("--steps-per-epoch", type=int, help=f"(default: {d.steps_per_epoch})")
    p.add_argument("--epochs", type=int, help=f"maximum epochs (default: {d.epochs})")
    p.add_argument("--lr", type=float,
                   help=f"initial Adam learning rate; with --resume, replaces the run's current one "
                        f"(default: {d.lr:g})")
    p.add_argument("--clipnorm", type=float, help=f"gradient norm clip (default: {d.clipnorm:g})")
    p.add_argument("--lr-patience", type=int,
                   help=f"epochs without dev gain before halving the LR (default: {d.lr_patience})")
    p.add_argument("--patience", type=int, help=f"epochs without dev gain before stopping (default: {d.patience})")
    p.add_argument("--min-lr", type=float, help=f"(default: {d.min_lr:g})")
    p.add_argument("--family", choices=FAMILIES,
                   help=f"model to train: dtln, or poconet (our causal U-Net, docs/poconet.md) (default: {d.family})")
    p.add_argument("--model-config", metavar="FILE",
                   help="poconet: a JSON object of PoCoNetConfig fields to change (default: the edge model)")
    p.add_argument("--plain", action="store_true", help="DTLN without the log-magnitude norm (default: norm)")
    p.add_argument("--units", type=int, help=f"DTLN LSTM units (default: {d.units})")
    p.add_argument("--seed", type=int, help=f"(default: {d.seed})")
    p.add_argument("--threads", type=int, help=f"TensorFlow intra-op threads (default: {d.threads})")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--dev-count", type=int, help=f"fixed dev mixes of 4 s (default: {d.dev_count})")
    p.add_argument("--max-hours", type=float, help="stop after this much wall time")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep every epoch's weights as epoch-NNN.h5 in the run folder (4 MB each for DTLN)")
    p.add_argument("--init", metavar="FILE",
                   help="start from these weights (fine-tuning); the architecture is read from the file")
    p.add_argument("--qat", action="store_true",
                   help="quantisation-aware fine-tuning for full int8 (dtln): gate pre-activations clipped to "
                        "--gate-clip, cell state to --cell-clip, and what the int8 graph rounds rounded in "
                        "training: the input, weights (per channel), x@W+b and h@U and the mask logits on "
                        "ranges tracked like calibration, the gates, c and h")
    p.add_argument("--consistency", type=float, metavar="W",
                   help="with --qat: add W x the negative SNR in dB of the int8 simulation's output against the "
                        "same weights computed in float (what the converter's 25 dB int8 gate measures); dev "
                        "selection uses the same sum; turns dropout off, so both see the same network "
                        "(default: 0)")
    p.add_argument("--gate-clip", type=float, help=f"with --qat (default: {d.gate_clip:g})")
    p.add_argument("--cell-clip", type=float, help=f"with --qat (default: {d.cell_clip:g})")
    p.add_argument("--speech-highpass", type=float, metavar="HZ",
                   help="high-pass the clean speech (train and dev) at HZ before mixing, zero-phase, so the model "
                        "learns to remove the rumble recorded under it; 50 suits 16 kHz speech (default: 0, off)")
    p.add_argument("--spectral", type=float, metavar="W",
                   help="add W x the spectral loss (negative SNR in dB of power-law compressed STFT magnitudes, "
                        "|X|**0.3) to the negative SI-SDR; dev selection then uses the same sum (default: 0)")
    p.add_argument("--spectral-complex", type=float, metavar="SHARE",
                   help="with --spectral: take this share of the spectral loss's error between the compressed "
                        "spectra with their phase (|X|**0.3 * X/|X|), the rest between magnitudes; 0.3 is Braun "
                        "and Tashev's mix (default: 0, magnitudes only)")
    p.add_argument("--babble", type=float, metavar="P",
                   help="share of training mixes whose noise is babble: 3-7 training utterances summed; "
                        "dev mixes are unchanged (default: 0)")
    p.add_argument("--noise-eq", type=float, metavar="DB",
                   help="recolour each training noise by a random smooth gain curve of up to +-DB dB; dev mixes "
                        "are unchanged (default: 0, off)")
    p.add_argument("--speed", type=float, metavar="R",
                   help="speed perturbation of the training speech by a factor in 1 +- R (default: 0, off)")
    p.add_argument("--reverb", type=float, metavar="P",
                   help="share of training mixes whose speech is played in a simulated room (128 shoebox "
                        "rooms, RT60 0.2-0.6 s by Sabine, pyroomacoustics); the target keeps the direct path and "
                        "50 ms of early reflections; dev mixes are unchanged (default: 0, off)")
    p.add_argument("--rumble", type=float, metavar="P",
                   help="share of training mixes whose noise gets low-frequency rumble (white noise low-passed "
                        "at 15-120 Hz, -10..+5 dB against the noise) before the SNR is set; dev mixes are "
                        "unchanged (default: 0, off)")
    p.add_argument("--snr", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help=f"input SNR range of the training mixes in dB (default: {d.snr[0]:g} {d.snr[1]:g})")
    p.add_argument("--level", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="speech RMS range of the training mixes in dBFS; a mix whose peak would pass 0.99 is "
                        "scaled down; dev mixes are unchanged (default: "
                        f"{d.level[0]:g} {d.level[1]:g}; bench/level.py measures what quieter input costs)")
    p.add_argument("--dev-dir", metavar="DIR",
                   help="choose checkpoints on these clean/noisy WAV pairs (python -m convert.devset "
                        "--generalisation) instead of the fixed dev mixes, which are still scored and logged")
    return p


def resolve(given: dict[str, Any]) -> tuple[TrainConfig, dict | None]:
    """(config, state to resume or None) from the options the command line gave.

    A fresh run: ``TrainConfig`` defaults plus ``given``. ``--resume``: the run's stored config plus
    ``given`` (``RUN_ONLY`` options never come from the store); an ``SAME_ON_RESUME`` option that
    differs is refused; a given ``--lr`` restarts the learning-rate schedule at that rate.
    """
    if not given.get("resume"):
        return TrainConfig(**given), None
    path = Path(given["out"]) / "state.json"
    if not path.exists():
        raise ConvertError(f"--resume: {path} not found")
    state = json.loads(path.read_text())
    stored = TrainConfig.from_dict(state["config"], str(path))
    for key, why in SAME_ON_RESUME.items():
        if key in given and given[key] != getattr(stored, key):
            raise ConvertError(f"--resume: {given['out']} was trained with --{key.replace('_', '-')} "
                               f"{getattr(stored, key)}, not {given[key]}; {why}")
    cfg = replace(stored, **{**{k: getattr(TrainConfig(out=""), k) for k in RUN_ONLY}, **given})
    if "lr" in given:  # --lr on a resume sets the learning rate from here on
        state["lr"], state["lr_bad_epochs"] = cfg.lr, 0
    return cfg, state


def stored(cfg: TrainConfig) -> dict[str, Any]:
    """The config as ``state.json`` keeps it."""
    return asdict(cfg)
