"""Dataset loading: the digits split, the IDX reader through the real loader, and the checksummed download path."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from platformdirs import user_cache_dir

from uhnas import data
from uhnas.data import (
    DATA_DIR_ENV,
    IDX_FILES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    SPLIT_SEED,
    DatasetError,
    IdxSource,
    dataset_dir,
    dataset_spec,
    holdout_split,
    load_dataset,
    resolve_device,
    stratified_split,
)
from uhnas.errors import ConfigError

N_TRAIN = 48  # samples in the generated IDX training set: 44 train / 4 validation (1/12)
N_TEST = 12


# ---------------------------------------------------------------- generated IDX files


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Serialise a uint8 array as an IDX file: big-endian magic, big-endian uint32 dims, data."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path: Path, content: bytes, gz: bool) -> Path:
    """Write `content` raw, or gzipped to `path` + .gz."""
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content, mtime=0))
    else:
        path.write_bytes(content)
    return path


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 images and labels 0..9 for the four IDX files."""
    rng = np.random.default_rng(seed)
    return {
        data.TRAIN_IMAGES: rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        data.TRAIN_LABELS: rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        data.TEST_IMAGES: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        data.TEST_LABELS: rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def write_idx_set(directory: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    """Write the four IDX files of a fake MNIST into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for base, array in arrays.items():
        magic = IDX_IMAGES_MAGIC if array.ndim == 3 else IDX_LABELS_MAGIC
        write_file(directory / base, idx_bytes(array, magic), gz)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Datasets under tmp_path must not leak between tests through the per-process cache."""
    yield
    for key in [k for k in data._CACHE if k[0] != "digits"]:
        del data._CACHE[key]


# ---------------------------------------------------------------- digits


def test_digits_sizes_shapes_and_dtypes() -> None:
    ds = load_dataset("digits")
    assert ds.sizes == {"train": 1077, "val": 360, "test": 360}
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.x_train.shape == (1077, 1, 8, 8) and ds.x_train.dtype == torch.float32
    assert ds.y_test.dtype == torch.int64 and ds.device == torch.device("cpu")


def test_digits_split_is_disjoint_complete_and_stratified() -> None:
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, val, test = stratified_split(labels, data.DIGITS_VAL_SIZE, data.DIGITS_TEST_SIZE, SPLIT_SEED)
    assert (len(train), len(val), len(test)) == (1077, 360, 360)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test])) == list(range(len(labels)))
    overall = np.bincount(labels, minlength=10) / len(labels)
    for split in (train, val, test):
        share = np.bincount(labels[split], minlength=10)
        assert np.all(np.abs(share - overall * len(split)) <= 1.0)


def test_digits_normalised_with_training_statistics() -> None:
    ds = load_dataset("digits")
    assert abs(float(ds.x_train.mean())) < 1e-4
    assert abs(float(ds.x_train.std()) - 1.0) < 1e-3
    assert abs(float(ds.x_val.mean())) < 0.1  # the training statistics applied, close to but not exactly 0


def test_load_is_cached_and_split_is_deterministic() -> None:
    first = load_dataset("digits")
    assert load_dataset("digits", device="cpu") is first
    data.clear_cache()
    second = load_dataset("digits")
    assert second is not first
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(first, field), getattr(second, field))


def test_unknown_dataset_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'.*digits, mnist, fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="unknown dataset"):
        dataset_spec("cifar")


def test_spec_matches_the_loaded_dataset(tmp_path: Path) -> None:
    assert set(data.DATASET_SPECS) == set(data.DATASETS)
    ds = load_dataset("digits")
    assert dataset_spec("digits") == (ds.input_shape, ds.num_classes)
    write_idx_set(tmp_path / "mnist", fake_arrays(), gz=True)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert dataset_spec("mnist") == (ds.input_shape, ds.num_classes) == dataset_spec("fashion-mnist")


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_dataset_through_the_loader(tmp_path: Path, gz: bool) -> None:
    arrays = fake_arrays()
    write_idx_set(tmp_path / "mnist", arrays, gz)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.sizes == {"train": 44, "val": 4, "test": N_TEST}
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    train, val = holdout_split(N_TRAIN, N_TRAIN // 12, SPLIT_SEED)
    images = arrays[data.TRAIN_IMAGES].astype(np.float64)
    mean, std = images[train].mean(), images[train].std()
    expected_val = (images[val] - mean) / std
    np.testing.assert_allclose(ds.x_val[:, 0].numpy(), expected_val, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays[data.TRAIN_LABELS][train])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays[data.TEST_LABELS])
    expected_test = (arrays[data.TEST_IMAGES].astype(np.float64) - mean) / std
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), expected_test, rtol=1e-5, atol=1e-5)


def test_env_var_names_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "fashion-mnist", fake_arrays(1), gz=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert dataset_dir("fashion-mnist") == tmp_path / "fashion-mnist"
    assert load_dataset("fashion-mnist", download=False).sizes["test"] == N_TEST


def test_default_root_is_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert dataset_dir("mnist") == Path(user_cache_dir("uhnas")) / "datasets" / "mnist"


def _break(arrays: dict[str, np.ndarray], directory: Path, how: str) -> Path:
    """Write a fake MNIST with one file malformed in the way named; return the malformed file's path."""
    write_idx_set(directory, arrays, gz=False)
    labels = directory / data.TRAIN_LABELS
    images = directory / data.TEST_IMAGES
    if how == "bad magic":
        images.write_bytes(idx_bytes(arrays[data.TEST_IMAGES], 0x00000903))
        return images
    if how == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return images
    if how == "count mismatch":
        labels.write_bytes(idx_bytes(arrays[data.TRAIN_LABELS][:-1], IDX_LABELS_MAGIC))
        return labels
    if how == "label range":
        bad = arrays[data.TRAIN_LABELS].copy()
        bad[3] = 12
        labels.write_bytes(idx_bytes(bad, IDX_LABELS_MAGIC))
        return labels
    assert how == "bad gzip"
    labels.unlink()
    broken = directory / f"{data.TRAIN_LABELS}.gz"
    broken.write_bytes(gzip.compress(idx_bytes(arrays[data.TRAIN_LABELS], IDX_LABELS_MAGIC))[:-8])
    return broken


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("bad magic", "bad IDX magic number 0x00000903"),
        ("truncated", "truncated"),
        ("count mismatch", f"{N_TRAIN - 1} labels but"),
        ("label range", "label 12 out of range 0..9"),
        ("bad gzip", "cannot read"),
    ],
)
def test_malformed_idx_names_the_file(tmp_path: Path, how: str, message: str) -> None:
    broken = _break(fake_arrays(), tmp_path / "mnist", how)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(broken) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_files_without_download_say_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "mnist") in message
    assert all(f"{base}.gz" in message for base in IDX_FILES)


# ---------------------------------------------------------------- download


def _gz_mirror(directory: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Write gzipped IDX files to serve from `directory`; return their MD5s keyed by file name."""
    write_idx_set(directory, arrays, gz=True)
    return {f"{base}.gz": hashlib.md5((directory / f"{base}.gz").read_bytes()).hexdigest() for base in IDX_FILES}


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving tmp_path/served/; yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_http_mirror(
    tmp_path: Path, http_mirror: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = http_mirror
    arrays = fake_arrays(2)
    monkeypatch.setitem(data.IDX_SOURCES, "mnist", IdxSource(mirrors=(url,), md5=_gz_mirror(served, arrays)))
    root = tmp_path / "root"
    ds = load_dataset("mnist", data_dir=root)
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays[data.TEST_LABELS])
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(f"{b}.gz" for b in IDX_FILES)


def test_download_falls_back_to_the_next_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    md5 = _gz_mirror(served, fake_arrays(3))
    mirrors = ((tmp_path / "nowhere").as_uri() + "/", served.as_uri() + "/")
    monkeypatch.setitem(data.IDX_SOURCES, "fashion-mnist", IdxSource(mirrors=mirrors, md5=md5))
    assert load_dataset("fashion-mnist", data_dir=tmp_path / "root").sizes["train"] == 44


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    md5 = _gz_mirror(served, fake_arrays(4))
    md5[f"{data.TRAIN_IMAGES}.gz"] = "0" * 32
    monkeypatch.setitem(data.IDX_SOURCES, "mnist", IdxSource(mirrors=(served.as_uri() + "/",), md5=md5))
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="checksum mismatch") as caught:
        load_dataset("mnist", data_dir=root)
    message = str(caught.value)
    assert f"{data.TRAIN_IMAGES}.gz" in message and str(root / "mnist") in message
    assert list((root / "mnist").iterdir()) == []


def test_offline_download_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = IdxSource(mirrors=("http://127.0.0.1:9/",), md5=data.IDX_SOURCES["mnist"].md5)  # port 9: discard
    monkeypatch.setitem(data.IDX_SOURCES, "mnist", source)
    with pytest.raises(DatasetError, match="could not download train-images-idx3-ubyte.gz") as caught:
        load_dataset("mnist", data_dir=tmp_path)
    assert f"in {tmp_path / 'mnist'}" in str(caught.value)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_published_checksums_are_complete() -> None:
    for name in ("mnist", "fashion-mnist"):
        source = data.IDX_SOURCES[name]
        assert set(source.md5) == {f"{base}.gz" for base in IDX_FILES}
        assert all(len(digest) == 32 for digest in source.md5.values()) and source.mirrors
