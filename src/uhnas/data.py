"""Datasets as device-resident tensors: digits (bundled with scikit-learn, offline) and MNIST / Fashion-MNIST (IDX).

Every dataset comes back normalised with training-set statistics and split into train / validation / test with a
fixed split seed that does not depend on the run seed, so every run and every search method sees the same split.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from platformdirs import user_cache_dir

from uhnas.errors import ConfigError, DatasetError

__all__ = [
    "DATASETS",
    "DATASET_SPECS",
    "DATA_DIR_ENV",
    "Dataset",
    "DatasetError",
    "IdxSource",
    "IDX_SOURCES",
    "SPLIT_SEED",
    "clear_cache",
    "dataset_dir",
    "dataset_spec",
    "holdout_split",
    "load_dataset",
    "read_idx",
    "resolve_device",
    "stratified_split",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")

DATASET_SPECS: dict[str, tuple[tuple[int, int, int], int]] = {  # name -> ((channels, height, width), classes)
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
}

DATA_DIR_ENV = "UHNAS_DATA_DIR"  # root folder; a dataset lives in <root>/<name>/

SPLIT_SEED = 20240531  # fixed split seed, independent of every run seed: all runs and methods share one split

DIGITS_VAL_SIZE = 360  # samples; with DIGITS_TEST_SIZE leaves 1077 of the 1797 digits for training
DIGITS_TEST_SIZE = 360  # samples

IDX_VAL_FRACTION_DENOMINATOR = 12  # validation = 1/12 of the IDX training set: 5,000 of MNIST's 60,000
IDX_IMAGE_HW = DATASET_SPECS["mnist"][0][1:]  # pixels, MNIST and Fashion-MNIST
IDX_NUM_CLASSES = 10

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IDX_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions (LeCun's IDX format)
IDX_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension

DOWNLOAD_TIMEOUT_S = 60.0  # seconds per connection attempt
DOWNLOAD_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class IdxSource:
    """Where the gzipped IDX files of one dataset can be downloaded from, and their MD5 checksums."""

    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is base + "<file>.gz"
    md5: Mapping[str, str]  # "<file>.gz" -> MD5 hex digest of the gzipped file


# Checksums: the MD5 digests published with torchvision.datasets.MNIST / FashionMNIST (`resources`), which are the
# digests of the original files distributed by LeCun et al. and by Zalando Research (zalandoresearch/fashion-mnist).
IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
            "http://yann.lecun.com/exdb/mnist/",  # the original site
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": IdxSource(
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's bucket, torchvision's source
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A normalised dataset split into train / validation / test tensors, all on one device."""

    name: str
    input_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int
    x_train: torch.Tensor  # float32, (N, C, H, W), standardised with training-set mean and std
    y_train: torch.Tensor  # int64 class indices, (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __post_init__(self) -> None:
        """Reject inconsistent tensors early, where the mistake is made."""
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if tuple(x.shape[1:]) != tuple(self.input_shape) or x.shape[0] != y.shape[0] or y.ndim != 1:
                raise DatasetError(
                    f"dataset {self.name!r}: {split} split has x {tuple(x.shape)} and y {tuple(y.shape)}, "
                    f"expected (N, {', '.join(map(str, self.input_shape))}) and (N,)"
                )

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    @property
    def device(self) -> torch.device:
        """The device every tensor lives on."""
        return self.x_train.device


_CACHE: dict[tuple[str, str | None, str], Dataset] = {}  # (name, directory, device) -> dataset
_CACHE_LOCK = threading.Lock()


def dataset_spec(name: str) -> tuple[tuple[int, int, int], int]:
    """Input shape (C, H, W) and class count of a dataset, without loading it (for shape checks and the CLI)."""
    if name not in DATASET_SPECS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASET_SPECS[name]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" into CUDA when available, else CPU; check that an explicit CUDA device exists."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(resolved)!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if resolved.index is None:  # name one GPU, so "cuda" and "cuda:0" share a cached dataset
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of one IDX dataset: <root>/<name>, root = data_dir, else $UHNAS_DATA_DIR, else <user cache>/datasets."""
    if data_dir is not None:
        root = Path(data_dir)
    elif os.environ.get(DATA_DIR_ENV):
        root = Path(os.environ[DATA_DIR_ENV])
    else:
        root = Path(user_cache_dir("uhnas")) / "datasets"
    return root.expanduser() / name


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
) -> Dataset:
    """Load a dataset onto a device, once per process: the same arguments return the same object.

    digits: 8x8 scikit-learn digits (bundled, `data_dir` and `download` unused), 1x8x8 inputs, stratified split of
    the 1797 images into 1077 train / 360 validation / 360 test with the fixed SPLIT_SEED.
    mnist, fashion-mnist: 1x28x28 inputs from the four IDX files in `dataset_dir(name, data_dir)` (.gz or raw),
    downloaded there (checksummed) when missing and `download` is true; validation is a seeded random 1/12 of the
    training set (55,000 train / 5,000 validation), test is the 10,000-image t10k set.
    """
    dataset_spec(name)  # rejects unknown names
    resolved = resolve_device(device)
    directory = None if name == "digits" else dataset_dir(name, data_dir).resolve()
    # `download` is not part of the key: it only matters while files are missing, and failures are not cached.
    key = (name, None if directory is None else str(directory), str(resolved))
    with _CACHE_LOCK:
        if key not in _CACHE:
            arrays = _digits_arrays() if directory is None else _idx_arrays(name, directory, download)
            _CACHE[key] = _to_dataset(name, arrays, resolved)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget every dataset loaded in this process (tests, or to free device memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class _Splits(NamedTuple):
    """Raw (unnormalised) split arrays, images as (N, C, H, W)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def _to_dataset(name: str, splits: _Splits, device: torch.device) -> Dataset:
    """Standardise with training-set mean and std (one scalar each: every dataset here has one channel)."""
    mean, std = _mean_std(splits.x_train)

    def images(x: np.ndarray) -> torch.Tensor:
        normalised = (x.astype(np.float32) - np.float32(mean)) / np.float32(std)
        return torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32)).to(device)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(device)

    c, h, w = splits.x_train.shape[1:]
    return Dataset(
        name=name,
        input_shape=(int(c), int(h), int(w)),
        num_classes=splits.num_classes,
        x_train=images(splits.x_train),
        y_train=labels(splits.y_train),
        x_val=images(splits.x_val),
        y_val=labels(splits.y_val),
        x_test=images(splits.x_test),
        y_test=labels(splits.y_test),
    )


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of all values (std 1 when constant); uint8 via a histogram, no float copy."""
    if x.dtype == np.uint8:
        counts = np.bincount(x.ravel(), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64)
        mean = float(counts @ values / counts.sum())
        variance = float(counts @ (values - mean) ** 2 / counts.sum())
    else:
        mean, variance = float(x.mean(dtype=np.float64)), float(x.var(dtype=np.float64))
    return mean, (variance**0.5) or 1.0


# ---------------------------------------------------------------- digits


def _digits_arrays() -> _Splits:
    """The 1797 scikit-learn digits (8x8, pixels 0..16), split 1077 / 360 / 360, stratified by class."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    train, val, test = stratified_split(y, DIGITS_VAL_SIZE, DIGITS_TEST_SIZE, SPLIT_SEED)
    return _Splits(x[train], y[train], x[val], y[val], x[test], y[test], num_classes=10)


def stratified_split(
    labels: np.ndarray, n_val: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted train / validation / test indices with class proportions preserved in every split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=n_test, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


# ---------------------------------------------------------------- MNIST-family IDX files


def _idx_arrays(name: str, directory: Path, download: bool) -> _Splits:
    """Read (downloading when missing and allowed) the four IDX files and carve validation from training."""
    files = _locate_idx_files(directory)
    missing = [base for base in IDX_FILES if base not in files]
    if missing:
        if not download:
            raise DatasetError(f"{name}: files missing and download is off; {_placement_hint(directory, missing)}")
        _download_missing(name, directory, missing)
        files = _locate_idx_files(directory)
    x_train, y_train = _read_pair(files[TRAIN_IMAGES], files[TRAIN_LABELS])
    x_test, y_test = _read_pair(files[TEST_IMAGES], files[TEST_LABELS])
    if len(y_train) < 2:
        raise DatasetError(f"{files[TRAIN_LABELS]}: {len(y_train)} training samples, need at least 2 to split")
    train, val = holdout_split(len(y_train), max(1, len(y_train) // IDX_VAL_FRACTION_DENOMINATOR), SPLIT_SEED)
    return _Splits(
        x_train[train][:, None], y_train[train], x_train[val][:, None], y_train[val],
        x_test[:, None], y_test, num_classes=IDX_NUM_CLASSES,
    )  # fmt: skip


def holdout_split(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation indices: a seeded random `n_val` of `n` samples are held out."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _locate_idx_files(directory: Path) -> dict[str, Path]:
    """Map each IDX base name present in `directory` to its file, preferring the uncompressed one."""
    found: dict[str, Path] = {}
    for base in IDX_FILES:
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                found[base] = candidate
                break
    return found


def _placement_hint(directory: Path, missing: list[str]) -> str:
    """Tell the user exactly which files to put where."""
    names = ", ".join(f"{base}.gz" for base in missing)
    return f"put {names} (gzipped, or uncompressed without .gz) in {directory}"


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64, checked against each other."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != IDX_IMAGE_HW:
        h, w = images.shape[1:]
        raise DatasetError(f"{images_path}: images are {h}x{w}, expected {IDX_IMAGE_HW[0]}x{IDX_IMAGE_HW[1]}")
    if len(labels) != len(images):
        raise DatasetError(f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images")
    if len(labels) and int(labels.max()) >= IDX_NUM_CLASSES:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..{IDX_NUM_CLASSES - 1}")
    return images, labels.astype(np.int64)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (raw or .gz): big-endian magic, big-endian uint32 dims, then the data."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = raw[3]
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} of {header_bytes} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header_bytes
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes"
        raise DatasetError(f"{path}: {problem}: header declares shape {dims} ({expected} bytes), file holds {actual}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None


# ---------------------------------------------------------------- download


class _DownloadFailed(Exception):
    """One URL did not yield a file with the expected checksum."""


def _download_missing(name: str, directory: Path, missing: list[str]) -> None:
    """Fetch each missing file's .gz from the first mirror that serves it with the right checksum."""
    source = IDX_SOURCES[name]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = _placement_hint(directory, missing)
        raise DatasetError(f"{name}: cannot create {directory} ({exc}); {hint}") from None
    for position, base in enumerate(missing):
        gz_name = f"{base}.gz"
        failures: list[str] = []
        for mirror in source.mirrors:
            try:
                _fetch_verified(mirror + gz_name, directory / gz_name, source.md5[gz_name])
                break
            except _DownloadFailed as exc:
                failures.append(str(exc))
        else:
            reasons = "; ".join(failures) or "no mirror configured"
            raise DatasetError(
                f"{name}: could not download {gz_name} ({reasons}); {_placement_hint(directory, missing[position:])}"
            )


def _fetch_verified(url: str, target: Path, md5: str) -> None:
    """Download `url` to `target` atomically: a temporary file in the same folder, renamed once verified."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # integrity against published MD5s, not security
        request = urllib.request.Request(url, headers={"User-Agent": "uhnas-dataset-download"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise _DownloadFailed(f"{url}: checksum mismatch, md5 {digest.hexdigest()} instead of {md5}")
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _DownloadFailed(f"{url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
