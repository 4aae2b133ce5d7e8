"""How good is the int8 model we just wrote? An estimate on held-out synthetic images, with no real data.

Two numbers against the float model (top-1 agreement and output SQNR) on images the converter never
calibrated on, and a per-tensor error table in the spirit of TFLite's QuantizationDebugger: for every
int8 activation tensor, the RMSE between its dequantized value and the same-named tensor of the
calibrated float model, divided by the tensor's scale (in quantization steps: ideal rounding alone gives
about 1/sqrt(12) = 0.29; clipping or accumulated error shows as much more).

Held-out images matter: ranges were calibrated on the calibration images, so on those very images
nothing clips and the estimate would flatter the model. They come from their own seed stream, so they
never equal a calibration image, at any size.

What it cannot see: held-out images made like the calibration images share their blind spot. A range
that both miss (real images are more confident: their logits reach further) stays hidden, so the
numbers can look better than on real data. Probes made differently (gaussian noise in the input space,
and images pushed by the class loss without the BatchNorm term) show how often the float outputs leave the
int8 output range: a high clip rate there is what the held-out numbers cannot reveal.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from tflite_retroq.config import SynthesisConfig, check_count
from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.errors import ConfigError, DataError, TFLiteModelError
from tflite_retroq.evaluate import _checked_images, _checked_reference, reference_outputs, run_tflite, sqnr_db
from tflite_retroq.io_utils import library_quiet
from tflite_retroq.model.input_space import InputSpace
from tflite_retroq.model.prepared import prepare
from tflite_retroq.synthesis import synthesize
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.inspect import output_range

# Below these the conversion is called poor (one warning line): a tenth of a percent of the decisions
# changing is normal int8 noise; five percent is not. 15 dB: the output error is 3 % of its power.
POOR_AGREEMENT = 95.0
POOR_SQNR_DB = 15.0
# The per-tensor table runs the two interpreters image by image with every tensor kept: a few images
# are enough to rank tensors, and bound the cost on large models.
TABLE_IMAGES = 8
# One image in a hundred is one point of agreement: the held-out set resolves 1 % when it can afford to.
RESOLVING_IMAGES = 100
# The held-out and probe images' seeds come from their own streams of the calibration seed.
_HOLDOUT_STREAM, _PROBE_STREAM = 0x4E1D, 0x9B0E
LIMITS = ("held-out images are made like the calibration images, so a range both miss (real images are more "
          "confident) stays hidden; the probes made differently show how often outputs clip")


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
class ClipProbe:
    """Images made unlike the calibration images: on how many of them the float outputs leave the
    int8 output range (those outputs clip in the int8 model)."""
    name: str                      # "gaussian", "confident"
    num_images: int
    clipped: float                 # percent of images with at least one output outside the int8 range

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class QualityEstimate:
    num_images: int
    agreement: float               # top-1 agreement with the float model, percent (nan: no estimate)
    sqnr_db: float                 # output SQNR against the float model (nan: no estimate)
    tensors: Tuple[TensorError, ...] = ()  # graph order; empty when no calibrated model was given
    source: str = "held-out synthetic images"
    probes: Tuple[ClipProbe, ...] = ()
    note: str = ""                 # why there is no (or a partial) estimate, e.g. NaN float outputs

    @property
    def poor(self) -> bool:
        """Below a threshold (NaN is no evidence either way: never poor)."""
        return self.agreement < POOR_AGREEMENT or self.sqnr_db < POOR_SQNR_DB

    @property
    def step(self) -> float:
        """Agreement moves in steps of one image: 100 / num_images points."""
        return 100.0 / self.num_images if self.num_images else float("nan")

    def worst(self, k: int = 3) -> List[TensorError]:
        return sorted(self.tensors, key=lambda t: -t.rmse_per_scale)[:k]

    def line(self) -> str:
        """The one line `retroq convert` prints."""
        head = f"quality estimate on {self.num_images} {self.source} (not used for calibration): "
        if not np.isfinite(self.agreement):
            return head + f"none ({self.note})"
        text = head + f"{self.agreement:.1f} % top-1 agreement with float"
        if self.step > 1.0:
            text += f" (in {self.step:.1f}-point steps)"
        text += f", output SQNR {self.sqnr_db:.1f} dB"
        worst = self.worst(1)
        if worst:
            text += f"; largest per-tensor error {worst[0].rmse_per_scale:.2f} steps at {worst[0].name}"
        if self.probes:
            text += "; outputs clip on " + " and ".join(f"{p.clipped:.0f} % of {p.num_images} {p.name}"
                                                       for p in self.probes) + " images made differently"
        if self.note:
            text += f" ({self.note})"
        return text

    def warning(self, used: Optional[Dict] = None) -> Optional[str]:
        """One line when poor, with only the advice the run can still take. `used`: what the run chose
        (keys scheme, weight_bits, rounding, data_file); None gives every piece of advice."""
        if not self.poor:
            return None
        used = used or {}
        advice = []
        if not used.get("data_file"):
            advice.append("check the input space (--input-range / --input-mean/--input-std)")
        else:
            advice.append("check how the --data-file images were made (input space, count)")
        if used.get("scheme", "per-tensor") != "per-channel":
            advice.append("try --scheme per-channel")
        bits = used.get("weight_bits", 4)
        if bits < 8:
            advice.append("more --weight-bits" + ("" if used.get("rounding") == "learned" else " or --rounding learned"))
        advice.append("see the per-tensor table in --report")
        return (f"the int8 model looks poor on held-out synthetic images ({self.agreement:.1f} % agreement, "
                f"{self.sqnr_db:.1f} dB; below {POOR_AGREEMENT:g} % or {POOR_SQNR_DB:g} dB): " + ", ".join(advice))

    def to_dict(self) -> dict:
        return {"num_images": self.num_images, "source": self.source, "agreement": self.agreement,
                "agreement_step": self.step, "sqnr_db": self.sqnr_db, "poor": self.poor, "note": self.note,
                "thresholds": {"agreement": POOR_AGREEMENT, "sqnr_db": POOR_SQNR_DB},
                "limits": LIMITS, "probes": [p.to_dict() for p in self.probes],
                "tensors": [t.to_dict() for t in self.tensors]}


def holdout_count(calibration_images: int) -> int:
    """Half the calibration set, at least 16 and at most RESOLVING_IMAGES (100: 1-point agreement steps)."""
    return int(min(RESOLVING_IMAGES, max(16, calibration_images // 2)))


def _calibration_set(data) -> SyntheticDataset:
    if isinstance(data, SyntheticDataset):
        return data
    if isinstance(data, np.ndarray):
        return SyntheticDataset.from_images(_checked_images(data))
    raise DataError(f"data must be the calibration SyntheticDataset (or its [N, H, W, C] image array), got "
                    f"{type(data).__name__}" + ("; load it first with rq.SyntheticDataset.load(path)."
                                                if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__")
                                                else "."))


def _stream_seed(seed: int, stream: int) -> int:
    """A seed of its own stream: never the calibration seed, nor seed + k for a nearby k."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(1)[0] & 0x7FFFFFFF)


_RECIPE = ("learning_rate", "bn_weight", "prior_weight", "class_weight", "smooth_weight", "class_loss",
           "target_confidence")


def _made_like(data: SyntheticDataset, stream: int, **changes) -> Tuple[SynthesisConfig, object]:
    """A SynthesisConfig like the one that made `data` (mode, iterations, input space), on its own seed stream."""
    meta = data.metadata
    cfg = meta.get("config")
    mode = meta.get("mode") if meta.get("mode") in ("retro", "zeroq", "gaussian") else "retro"
    seed = int(cfg.get("seed", 0)) if isinstance(cfg, dict) and isinstance(cfg.get("seed", 0), int) else 0
    iterations = meta.get("iterations_run") if isinstance(meta.get("iterations_run"), int) else None
    recipe = {k: cfg[k] for k in _RECIPE if k in cfg} if isinstance(cfg, dict) else {}  # objective, weights, priors
    kw = dict(recipe, **dict({"mode": mode, "seed": _stream_seed(seed, stream)}, **changes))
    if iterations and kw["mode"] != "gaussian":  # a retro probe of gaussian data gets the planned iterations
        kw.setdefault("iterations", iterations)
    space = meta.get("input_space")
    spec = InputSpace.from_dict(space) if isinstance(space, dict) and "offset" in space else None
    return SynthesisConfig(**kw), spec


def holdout_images(model, data: SyntheticDataset, count: Optional[int] = None) -> np.ndarray:
    """Fresh images made like `data` (same mode, iterations and input space; a seed of its own stream),
    never one of its own images.

    A dataset without a synthesis record (real images, a user's array) gets retro images in the space the
    model states (or the one recorded with the dataset).
    """
    data = _calibration_set(data)
    count = holdout_count(len(data)) if count is None else check_count(count, "count")
    config, spec = _made_like(data, _HOLDOUT_STREAM, images=count)
    images = synthesize(prepare(model), config, input_spec=spec, progress=False).images
    flat = data.images.reshape(len(data), -1)
    fresh = [i for i, x in enumerate(images.reshape(len(images), -1)) if not np.any(np.all(flat == x, axis=1))]
    return images[fresh]


def probe_images(model, data: SyntheticDataset, count: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Images made unlike `data`, to see what held-out images made like it cannot: gaussian noise in the
    input space (no optimization), and images pushed towards their class by the class loss alone (one-hot
    cross-entropy without the BatchNorm term that holds the calibration images back): as confident as the
    classifier allows, so they reach logits the calibration images may not."""
    data = _calibration_set(data)
    count = holdout_count(len(data)) if count is None else check_count(count, "count")
    prepared = prepare(model)
    out = {}  # gaussian images cost nothing to make; a quarter as many confident ones bound the extra synthesis
    for name, n, changes in (("gaussian", count, {"mode": "gaussian"}),
                             ("confident", max(16, count // 4), {"mode": "retro", "target_confidence": (1.0, 1.0),
                                                                 "class_loss": "ce", "bn_weight": 0.0})):
        config, spec = _made_like(data, _PROBE_STREAM, images=n, **changes)
        out[name] = synthesize(prepared, config, input_spec=spec, progress=False).images
    return out


def clip_rate(reference_out: np.ndarray, bounds: Tuple[float, float, float]) -> float:
    """Percent of images with a float output beyond the int8 output range by more than half a step."""
    lo, hi, scale = bounds
    outside = (reference_out < lo - scale / 2) | (reference_out > hi + scale / 2)
    return float(np.mean(np.any(outside, axis=1)) * 100.0) if len(reference_out) else float("nan")


def estimate_quality(quantized: bytes, reference, images: np.ndarray, *, calibrated: Optional[bytes] = None,
                     source: str = "held-out synthetic images",
                     probes: Optional[Dict[str, np.ndarray]] = None) -> QualityEstimate:
    """Agreement and output SQNR of `quantized` against `reference` (the float model, or its outputs on
    `images`), plus the per-tensor table when `calibrated` (the float model it was quantized from) is given,
    and the clip rate on each set of `probes` (images made differently; needs the model as reference).

    `images` must not be the calibration images (see the module docstring). Outputs given as an array must
    be finite; a float model that outputs NaN or inf on some images is named in the estimate's note (those
    images are left out), never raised: a finished conversion does not fail on it.
    """
    if not isinstance(quantized, (bytes, bytearray, memoryview)):
        raise TFLiteModelError(f"quantized must be the .tflite model's bytes, got {type(quantized).__name__}.")
    images = _checked_images(images)
    given = isinstance(reference, (np.ndarray, list, tuple))
    if probes is not None and (given or not isinstance(probes, dict)):
        raise ConfigError("probes= needs the float model as reference (its outputs on the probe images) and a "
                          "dict {name: images}.")
    out = run_tflite(quantized, images)  # first: it checks the images fit the model
    probe_sets = {str(k): _checked_images(v) for k, v in (probes or {}).items()}
    for name, x in probe_sets.items():
        if x.shape[1:] != images.shape[1:]:
            raise DataError(f"probe images {name!r} have shape {list(x.shape[1:])} per image, the model takes "
                            f"{list(images.shape[1:])}.")
    if probe_sets:  # one pass of the float model over every image set (one traced function, not one per set)
        everything = reference_outputs(reference, np.concatenate([images, *probe_sets.values()]))
        ref, cut = everything[:len(images)], len(images)
        for name, x in probe_sets.items():
            probe_sets[name], cut = everything[cut:cut + len(x)], cut + len(x)
    else:
        ref = reference_outputs(reference, images)
    note = ""
    if not given and ref.shape == out.shape and not np.all(np.isfinite(ref)):
        ok = np.all(np.isfinite(ref), axis=1)
        note = (f"the float model outputs NaN or inf on {int(np.sum(~ok))} of {len(ref)} of these images"
                + ("; no estimate" if not np.any(ok) else ", left out"))
        if not np.any(ok):
            return QualityEstimate(len(images), float("nan"), float("nan"), (), source, (), note)
        images, ref, out = images[ok], ref[ok], out[ok]
    ref = _checked_reference(ref, out)
    agreement = float(np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) * 100.0)
    tensors = tensor_errors(quantized, calibrated, images[:TABLE_IMAGES]) if calibrated is not None else ()
    found = []
    bounds = output_range(bytes(quantized)) if probe_sets else None
    for name, y in probe_sets.items():
        if bounds is not None:
            y = y[np.all(np.isfinite(y), axis=1)]
            found.append(ClipProbe(name, len(y), clip_rate(y, bounds)))
    return QualityEstimate(len(images), agreement, float(sqnr_db(ref, out)), tuple(tensors), source, tuple(found),
                           note)


def estimate_after_conversion(quantized: bytes, model, data: SyntheticDataset, calibrated: Optional[bytes],
                              held: Optional[np.ndarray] = None) -> Tuple[Optional[QualityEstimate], str]:
    """The estimate `retroq convert` prints once the model is made: held-out images (`held`, else made here),
    the probes and the table. A failure here (NaN images, an interpreter refusal) becomes a note, never a
    failed conversion."""
    from tflite_retroq.errors import RetroQError
    try:
        held = holdout_images(model, data) if held is None else held
        return estimate_quality(quantized, model, held, calibrated=calibrated,
                                probes=probe_images(model, data)), ""
    except RetroQError as e:
        return None, f"quality estimate skipped: {e}"


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
    """Float images in, quantized with the input's own scale and zero point for int8 and uint8 I/O."""
    if detail["dtype"] in (np.int8, np.uint8):
        s, zp = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / s) + zp, info.min, info.max)
    it.set_tensor(detail["index"], x.astype(detail["dtype"]))
    it.invoke()


def _int8_activations(model_bytes: bytes) -> Dict[str, Tuple[int, str, float, int]]:
    """name -> (tensor index, producing op, scale, zero point) of every per-tensor int8 op output, with the
    graph output under its own name for every I/O type: uint8 I/O ends in a QUANTIZE int8 -> uint8 that
    carries the name; float I/O in a DEQUANTIZE whose int8 input stands for the float output."""
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    producer = {i: op for op in sg.operators for i in op.outputs}
    found = {}
    for op in sg.operators:
        name_of_op = tfm.op_name(m, op)
        at_output = bool(set(op.outputs) & set(sg.outputs))
        if name_of_op in ("QUANTIZE", "DEQUANTIZE") and not at_output:
            continue
        for i in op.outputs:
            name = tfm.tensor_name(sg.tensors[i])
            if name_of_op in ("QUANTIZE", "DEQUANTIZE"):  # at the output: named by the op that computed it
                source = op.inputs[0]
                name_of_op = tfm.op_name(m, producer[source]) if source in producer else name_of_op
                i = source if sg.tensors[i].type not in (9, 3) else i  # float output: its int8 input
            t = sg.tensors[i]
            sc = tfm.scales(t)
            if t.type in (9, 3) and sc.size == 1:  # INT8 (or the UINT8 output), per-tensor activation
                zp = t.quantization.zeroPoint
                found.pop(tfm.tensor_name(t), None)  # listed once, under the output's name
                found[name] = (int(i), name_of_op, float(sc[0]), int(zp[0]) if zp is not None and len(zp) else 0)
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
