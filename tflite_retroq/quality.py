"""How good is the int8 model we just wrote? An estimate on held-out synthetic images, with no real data.

Two numbers against the float model (top-1 agreement and output SQNR) on images the converter never
calibrated on, and a per-tensor error table in the spirit of TFLite's QuantizationDebugger: for every
int8 activation tensor, the RMSE between its dequantized value and the same-named tensor of the
calibrated float model, divided by the tensor's scale (in quantization steps: ideal rounding alone gives
about 1/sqrt(12) = 0.29; clipping or accumulated error shows as much more).

Held-out images matter: ranges were calibrated on the calibration images, so on those very images
nothing clips and the estimate would flatter the model.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from tflite_retroq.config import SynthesisConfig
from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.errors import DataError, TFLiteModelError
from tflite_retroq.evaluate import reference_outputs, run_tflite, sqnr_db
from tflite_retroq.io_utils import library_quiet
from tflite_retroq.model.input_space import InputSpace
from tflite_retroq.synthesis import synthesize
from tflite_retroq.tflite import model as tfm

# Below these the conversion is called poor (one warning line): a tenth of a percent of the decisions
# changing is normal int8 noise; five percent is not. 15 dB: the output error is 3 % of its power.
POOR_AGREEMENT = 95.0
POOR_SQNR_DB = 15.0
# The per-tensor table runs the two interpreters image by image with every tensor kept: a few images
# are enough to rank tensors, and bound the cost on large models.
TABLE_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class TensorError:
    """One int8 activation tensor: its error against the float model, in real units and in scale steps."""
    name: str
    op: str
    scale: float
    rmse: float
    max_abs_error: float

    @property
    def rmse_per_scale(self) -> float:
        return self.rmse / self.scale if self.scale > 0 else float("inf")

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), rmse_per_scale=self.rmse_per_scale)


@dataclasses.dataclass(frozen=True)
class QualityEstimate:
    num_images: int
    agreement: float               # top-1 agreement with the float model, percent
    sqnr_db: float                 # output SQNR against the float model
    tensors: Tuple[TensorError, ...] = ()  # graph order; empty when no calibrated model was given
    source: str = "held-out synthetic images"

    @property
    def poor(self) -> bool:
        return self.agreement < POOR_AGREEMENT or self.sqnr_db < POOR_SQNR_DB

    def worst(self, k: int = 3) -> List[TensorError]:
        return sorted(self.tensors, key=lambda t: -t.rmse_per_scale)[:k]

    def line(self) -> str:
        """The one line `retroq convert` prints."""
        text = (f"quality estimate on {self.num_images} {self.source} (not used for calibration): "
                f"{self.agreement:.1f} % top-1 agreement with float, output SQNR {self.sqnr_db:.1f} dB")
        worst = self.worst(1)
        if worst:
            text += f"; largest per-tensor error {worst[0].rmse_per_scale:.2f} steps at {worst[0].name}"
        return text

    def warning(self) -> Optional[str]:
        if not self.poor:
            return None
        return (f"the int8 model looks poor on held-out synthetic images ({self.agreement:.1f} % agreement, "
                f"{self.sqnr_db:.1f} dB; below {POOR_AGREEMENT:g} % or {POOR_SQNR_DB:g} dB): check the input space "
                "(--input-range / --input-mean/--input-std), try --scheme per-channel or more --weight-bits, and "
                "see the per-tensor table in --report")

    def to_dict(self) -> dict:
        return {"num_images": self.num_images, "source": self.source, "agreement": self.agreement,
                "sqnr_db": self.sqnr_db, "poor": self.poor,
                "thresholds": {"agreement": POOR_AGREEMENT, "sqnr_db": POOR_SQNR_DB},
                "tensors": [t.to_dict() for t in self.tensors]}


def holdout_count(calibration_images: int) -> int:
    """An eighth of the calibration set, at least 16 and at most 64 images: enough to see clipping, cheap."""
    return int(min(64, max(16, calibration_images // 8)))


def holdout_images(model, data: SyntheticDataset, count: Optional[int] = None) -> np.ndarray:
    """Fresh images made like `data` (same mode, iterations and input space; another seed), never its own.

    A dataset without a synthesis record (real images, a user's array) gets retro images in the space the
    model states (or the one recorded with the dataset).
    """
    meta = data.metadata
    count = holdout_count(len(data)) if count is None else int(count)
    cfg = meta.get("config")
    mode = meta.get("mode") if meta.get("mode") in ("retro", "zeroq", "gaussian") else "retro"
    seed = int(cfg.get("seed", 0)) + 1 if isinstance(cfg, dict) else 1
    iterations = meta.get("iterations_run") if isinstance(meta.get("iterations_run"), int) else None
    kw = {"mode": mode, "images": count, "seed": seed}
    if iterations is not None and mode != "gaussian":
        kw["iterations"] = iterations
    space = meta.get("input_space")
    spec = InputSpace.from_dict(space) if isinstance(space, dict) and "offset" in space else None
    return synthesize(model, SynthesisConfig(**kw), input_spec=spec, progress=False).images


def estimate_quality(quantized: bytes, reference, images: np.ndarray, *, calibrated: Optional[bytes] = None,
                     source: str = "held-out synthetic images") -> QualityEstimate:
    """Agreement and output SQNR of `quantized` against `reference` (a Keras model, or its outputs on
    `images`), plus the per-tensor table when `calibrated` (the float model it was quantized from) is given.

    `images` must not be the calibration images (see the module docstring).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"Quality images must be a non-empty [N, H, W, C] array, got shape {images.shape}.")
    ref = reference_outputs(reference, images)
    out = run_tflite(quantized, images)
    agreement = float(np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) * 100.0)
    tensors = tensor_errors(quantized, calibrated, images[:TABLE_IMAGES]) if calibrated is not None else ()
    return QualityEstimate(len(images), agreement, float(sqnr_db(ref, out)), tuple(tensors), source)


def _all_tensors_interpreter(model_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    try:
        with library_quiet():
            it = Interpreter(model_content=bytes(model_bytes), experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as e:
        raise TFLiteModelError(f"The LiteRT interpreter rejected the model ({str(e).splitlines()[0][:200]}).") from None
    detail = it.get_input_details()[0]
    shape = [1] + [int(d) for d in detail["shape"][1:]]
    if list(detail["shape"]) != shape:
        it.resize_tensor_input(detail["index"], shape)
    it.allocate_tensors()
    return it, detail


def _feed(it, detail, x: np.ndarray) -> None:
    if detail["dtype"] == np.int8:
        s, zp = detail["quantization"]
        x = np.clip(np.round(x / s) + zp, -128, 127).astype(np.int8)
    it.set_tensor(detail["index"], x.astype(detail["dtype"]))
    it.invoke()


def _int8_activations(model_bytes: bytes) -> Dict[str, Tuple[int, str, float, int]]:
    """name -> (tensor index, producing op, scale, zero point) of every per-tensor int8 op output."""
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    found = {}
    for op in sg.operators:
        name_of_op = tfm.op_name(m, op)
        if name_of_op in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for i in op.outputs:
            t = sg.tensors[i]
            sc = tfm.scales(t)
            if t.type == 9 and sc.size == 1:  # INT8, per-tensor activation
                zp = t.quantization.zeroPoint
                found[tfm.tensor_name(t)] = (int(i), name_of_op, float(sc[0]), int(zp[0]) if zp is not None and len(zp) else 0)
    return found


def _float_tensors(model_bytes: bytes) -> Dict[str, int]:
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    return {tfm.tensor_name(sg.tensors[i]): int(i) for op in sg.operators for i in op.outputs}


def tensor_errors(quantized: bytes, calibrated: bytes, images: np.ndarray) -> List[TensorError]:
    """Per int8 activation tensor: RMSE and max |error| of its dequantized value against the same-named
    tensor of the calibrated float model, over `images` (graph order)."""
    q_tensors = _int8_activations(quantized)
    f_index = _float_tensors(calibrated)
    common = [n for n in q_tensors if n in f_index]
    if not common:
        return []
    qit, qd = _all_tensors_interpreter(quantized)
    fit, fd = _all_tensors_interpreter(calibrated)
    sq = {n: 0.0 for n in common}
    count = {n: 0 for n in common}
    worst = {n: 0.0 for n in common}
    for x in np.asarray(images, np.float32):
        _feed(qit, qd, x[None])
        _feed(fit, fd, x[None])
        for n in common:
            qi, _, s, zp = q_tensors[n]
            got = (qit.get_tensor(qi).astype(np.float64) - zp) * s
            want = fit.get_tensor(f_index[n]).astype(np.float64)
            if got.shape != want.shape:
                continue
            err = got - want
            sq[n] += float(np.sum(err ** 2))
            count[n] += err.size
            worst[n] = max(worst[n], float(np.max(np.abs(err))) if err.size else 0.0)
    return [TensorError(n, q_tensors[n][1], q_tensors[n][2], float(np.sqrt(sq[n] / count[n])), worst[n])
            for n in common if count[n]]
