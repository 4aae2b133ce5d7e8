"""SyntheticDataset: calibration images plus everything needed to reproduce them.

`representative_dataset()` is the converter hook: hand it to any
tf.lite.TFLiteConverter, including one the user configured themselves.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from tflite_retroq.errors import DataError
from tflite_retroq.io_utils import write_with

_FORMAT = "tflite_retroq.SyntheticDataset/1"


_KEYS = ("images", "labels", "meta")


def _check_members(path: str) -> None:
    """Before anything is loaded: the three arrays are there, and no header claims more data than the
    file holds (a corrupt or hostile header would otherwise ask for terabytes)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            missing = [k for k in _KEYS if k not in infos]
            if missing:
                have = ", ".join(sorted(infos)) or "no arrays"
                raise DataError(f"{path!r} has no {' or '.join(repr(k) for k in missing)} array (it holds {have}), so "
                                "it is not a tflite_retroq dataset; create one with `retroq synthesize`, or wrap your "
                                "own arrays: SyntheticDataset.from_images(images, labels).save(path).")
            for key in _KEYS:
                with z.open(infos[key]) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
                need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if need > infos[key].file_size:
                    raise DataError(f"{path!r} is corrupt: its {key!r} header claims shape {tuple(shape)} "
                                    f"({need / 2**30:.3g} GiB) but the file holds {infos[key].file_size} bytes of it; "
                                    "create the dataset again with `retroq synthesize`.")
    except DataError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, TypeError, OverflowError) as e:
        raise DataError(f"{path!r} is not a tflite_retroq dataset (.npz from `retroq synthesize`): "
                        f"{type(e).__name__}.") from None


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticDataset:
    images: np.ndarray                 # [N, H, W, C] float32, in the model's input space
    labels: np.ndarray                 # [N] int64, the class each image was pushed towards
    metadata: Dict = dataclasses.field(default_factory=dict)
    loss_history: Dict[str, List[float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        raw_images, raw_labels = np.asarray(self.images), np.asarray(self.labels)
        if raw_images.dtype.kind not in "fiub":
            raise DataError(f"images must be numbers (float32 pixels in the model's input space), got dtype "
                            f"{raw_images.dtype}; synthesize the data again with `retroq synthesize`.")
        if raw_labels.dtype.kind not in "iub" and not (raw_labels.dtype.kind == "f"
                                                       and np.all(raw_labels == np.round(raw_labels))):
            raise DataError(f"labels must be integer class indices, got dtype {raw_labels.dtype}; synthesize the "
                            "data again with `retroq synthesize`.")
        images = raw_images.astype(np.float32)
        labels = raw_labels.astype(np.int64)
        if images.ndim != 4 or images.shape[0] == 0:
            raise DataError(f"images must be a non-empty [N, H, W, C] array, got shape {images.shape}.")
        if labels.shape != (images.shape[0],):
            raise DataError(f"labels must have shape ({images.shape[0]},), got {labels.shape}.")
        if not np.all(np.isfinite(images)):
            bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
            raise DataError(f"images contain NaN or inf ({bad} of {images.size} values); calibration data must be "
                            "finite: if they were synthesized, the model's activations overflowed (check its weights).")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def mode(self) -> str:
        return str(self.metadata.get("mode", "unknown"))

    def representative_dataset(self, batch_size: int = 1, max_samples: Optional[int] = None
                               ) -> Callable[[], Iterator[List[np.ndarray]]]:
        """A zero-argument generator function for `TFLiteConverter.representative_dataset`."""
        n = len(self) if max_samples is None else min(len(self), int(max_samples))
        images = self.images

        def gen():
            for i in range(0, n, batch_size):
                yield [images[i:i + batch_size]]

        return gen

    def check_fits(self, input_shape) -> None:
        """Raise DataError if the images do not fit a model input of shape (H, W, C)."""
        if tuple(self.images.shape[1:]) != tuple(input_shape):
            raise DataError(f"The dataset holds images of shape {self.images.shape[1:]} but the model takes "
                            f"{tuple(input_shape)}; synthesize data for this model.")

    def save(self, path: str) -> str:
        meta = json.dumps({"format": _FORMAT, "metadata": self.metadata, "loss_history": self.loss_history})

        def writer(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=self.images, labels=self.labels, meta=np.asarray(meta))

        return write_with(path, writer)

    @classmethod
    def load(cls, path: str) -> "SyntheticDataset":
        from tflite_retroq.io_utils import check_readable
        path = os.fspath(path)
        check_readable(path, "Dataset file", DataError, "create it with `retroq synthesize`")
        _check_members(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                images, labels, meta = z["images"], z["labels"], json.loads(str(z["meta"]))
        except MemoryError:
            raise
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError, TypeError) as e:
            raise DataError(f"{path!r} is not a tflite_retroq dataset (.npz from `retroq synthesize`): "
                            f"{type(e).__name__}.") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path!r} has malformed metadata (a JSON {type(meta).__name__}, not an object); it is "
                            "not a tflite_retroq dataset: create it with `retroq synthesize`.")
        if meta.get("format") != _FORMAT:
            raise DataError(f"{path!r} has format {meta.get('format')!r}, expected {_FORMAT!r}.")
        metadata, history = meta.get("metadata", {}), meta.get("loss_history", {})
        if not isinstance(metadata, dict) or not isinstance(history, dict) or not all(
                isinstance(v, list) for v in history.values()):
            raise DataError(f"{path!r} has malformed metadata ('metadata' and 'loss_history' must be JSON objects); "
                            "create the dataset again with `retroq synthesize`.")
        if "input_space" in metadata and not isinstance(metadata["input_space"], dict):
            raise DataError(f"{path!r} has malformed metadata ('input_space' is a JSON "
                            f"{type(metadata['input_space']).__name__}, not an object); create the dataset again "
                            "with `retroq synthesize`.")
        try:
            return cls(images=images, labels=labels, metadata=metadata, loss_history=history)
        except DataError as e:
            raise DataError(f"{path!r}: {e}") from None

    @classmethod
    def from_images(cls, images: np.ndarray, labels: Optional[np.ndarray] = None, mode: str = "real"
                    ) -> "SyntheticDataset":
        """Wrap real images (e.g. a calibration baseline) in the same container."""
        images = np.asarray(images, np.float32)
        labels = np.zeros(len(images), np.int64) if labels is None else labels
        return cls(images=images, labels=labels, metadata={"mode": mode})
