"""CPU bf16 precision: how (runtime, precision) is chosen, that bf16 class maps agree with fp32, and that the
job result reports what ran.

bf16 tests need a CPU with native bf16 matmul (AMX or AVX512-BF16); elsewhere they are skipped with that
reason. The selection tests fake the CPU flags, so they run everywhere.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from make_fixtures import build_fixture_package, fixture_name, write_fixture_raster

import backend.runtimes as rts
from backend.errors import BadRequestError
from backend.jobs import Job, JobContext
from backend.models import BUNDLED_DIR, ModelRegistry
from backend.runtimes import RuntimeCache, TorchRuntime, cpu_bf16_support, resolve_runtime
from backend.settings import Settings
from backend.tasks import build_spec, run_spec

NATIVE_BF16 = cpu_bf16_support() is not None
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 matmul (neither amx_bf16 nor "
                                                        "avx512_bf16 in /proc/cpuinfo flags): bf16 is not offered")
DEFAULT_MODEL = "rsfm-landcover-dubai"
NAIP = Path(__file__).resolve().parents[2] / "resources" / "samples" / "naip_2020_rgb.tif"


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory) -> dict:
    """A segmentation package with model.onnx, one without, and a detection package (fixture weights)."""
    root = tmp_path_factory.mktemp("precision")
    build_fixture_package("semantic_segmentation", root / "models" / "seg-onnx", name="prec-seg-onnx",
                          onnx=True)
    plain = build_fixture_package("semantic_segmentation", root / "models" / "seg", name="prec-seg")
    rgb = write_fixture_raster(root / "rgb.tif", width=160, height=128)
    _train_fixture(plain, rgb)
    reg = ModelRegistry([root / "models"], include_bundled=False)
    out = {"root": root, "seg_onnx": reg.get("prec-seg-onnx"), "seg": reg.get("prec-seg"), "rgb": rgb}
    try:
        build_fixture_package("object_detection", root / "det" / "det", name=fixture_name("object_detection"))
        out["det"] = ModelRegistry([root / "det"], include_bundled=False).get(fixture_name("object_detection"))
    except KeyError:  # detection architecture not registered: the detection case is skipped
        out["det"] = None
    return out


def _train_fixture(package: Path, raster: Path, steps: int = 80) -> None:
    """Train the fixture package in place on a learnable rule (brightness tertiles of ``raster``).

    Random weights give near-tied logits everywhere, so any rounding flips classes (bf16 agrees with fp32 on
    only ~98.6 % of pixels there): that is why ``precision=auto`` keeps unvalidated packages in fp32. A
    trained model has real margins, like the packages people run; 80 seeded Adam steps (~5-15 s on one
    core) reach ~83 % accuracy on the rule.
    """
    import torch

    from training.package import load_package, save_package

    cfg, model = load_package(package)
    with rasterio.open(raster) as ds:
        px = ds.read().astype(np.float32)
    x = torch.from_numpy((px - np.asarray(cfg.mean, np.float32)[:, None, None])
                         / np.asarray(cfg.std, np.float32)[:, None, None])[None]
    bright = x[0].mean(0)
    q = torch.quantile(bright.flatten(), torch.tensor([1 / 3, 2 / 3]))
    y = ((bright > q[0]).long() + (bright > q[1]).long())[None]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    h, w = x.shape[-2:]
    for _ in range(steps):  # batches of 4 random 48 px crops (batch norm needs more than one value)
        rc = [(int(rng.integers(0, h - 48)), int(rng.integers(0, w - 48))) for _ in range(4)]
        xb = torch.cat([x[..., r:r + 48, c:c + 48] for r, c in rc])
        yb = torch.cat([y[..., r:r + 48, c:c + 48] for r, c in rc])
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_package(model.eval(), cfg, package)


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU flags :func:`cpu_bf16_support` sees (``None``: /proc/cpuinfo unreadable)."""
    def set_flags(flags: set[str] | None) -> None:
        monkeypatch.setattr(rts, "_cpuinfo_flags", lambda: flags)
        rts.cpu_bf16_support.cache_clear()
    yield set_flags
    rts.cpu_bf16_support.cache_clear()


@pytest.fixture
def validated(monkeypatch):
    """Treat the fixture packages as bf16-validated (config ``bf16: true``), like the bundled default model."""
    real = rts.package_allows_bf16
    monkeypatch.setattr(rts, "package_allows_bf16",
                        lambda entry: entry.config.name in {"prec-seg-onnx", "prec-seg"} or real(entry))


# -- selection ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}, "amx_bf16"),
    ({"avx512f", "avx512_bf16"}, "avx512_bf16"),
    ({"avx2", "avx512f", "avx512_vnni"}, None),  # AVX-512 without bf16: emulated, slower than fp32
])
def test_cpu_bf16_support_reads_the_flags(cpu_flags, flags, expected):
    cpu_flags(flags)
    assert cpu_bf16_support() == expected


def test_auto_on_a_bf16_cpu(cpu_flags, validated, pkgs):
    cpu_flags({"amx_bf16"})
    # runtime auto keeps onnx fp32 where the graph is shipped (as fast as torch bf16, and exact) ...
    assert resolve_runtime(pkgs["seg_onnx"], "auto", "auto", "cpu") == ("onnx", "fp32")
    assert resolve_runtime(pkgs["seg_onnx"], "onnx", "auto", "cpu") == ("onnx", "fp32")
    # ... and a validated package that runs on torch runs in bf16 (1.7x torch fp32)
    assert resolve_runtime(pkgs["seg_onnx"], "torch", "auto", "cpu") == ("torch", "bf16")
    assert resolve_runtime(pkgs["seg"], "auto", "auto", "cpu") == ("torch", "bf16")
    # explicit bf16 with runtime auto means torch
    assert resolve_runtime(pkgs["seg_onnx"], "auto", "bf16", "cpu") == ("torch", "bf16")
    # explicit fp32 stays fp32
    assert resolve_runtime(pkgs["seg"], "auto", "fp32", "cpu") == ("torch", "fp32")
    assert resolve_runtime(pkgs["seg"], "torch", "fp32", "cpu") == ("torch", "fp32")
    # a GPU device never gets bf16 automatically
    assert resolve_runtime(pkgs["seg"], "torch", "auto", "cuda:0") == ("torch", "fp32")


def test_auto_keeps_fp32_off_the_pixel_size_range(cpu_flags, validated, pkgs):
    cpu_flags({"amx_bf16"})
    lo, hi = pkgs["seg"].config.gsd_range_m
    assert resolve_runtime(pkgs["seg"], "torch", "auto", "cpu", gsd_m=(lo + hi) / 2) == ("torch", "bf16")
    assert resolve_runtime(pkgs["seg"], "torch", "auto", "cpu", gsd_m=hi * 2) == ("torch", "fp32")
    assert resolve_runtime(pkgs["seg"], "torch", "auto", "cpu", gsd_m=lo / 2) == ("torch", "fp32")
    # an explicit request is honoured anywhere
    assert resolve_runtime(pkgs["seg"], "torch", "bf16", "cpu", gsd_m=hi * 2) == ("torch", "bf16")


def test_auto_may_prefer_torch_bf16_when_configured(cpu_flags, validated, pkgs, monkeypatch):
    cpu_flags({"amx_bf16"})
    monkeypatch.setattr(rts, "AUTO_PREFERS_TORCH_BF16", True)
    assert resolve_runtime(pkgs["seg_onnx"], "auto", "auto", "cpu") == ("torch", "bf16")
    assert resolve_runtime(pkgs["seg_onnx"], "auto", "fp32", "cpu") == ("onnx", "fp32")


def test_auto_stays_fp32_for_packages_not_validated_in_bf16(cpu_flags, pkgs):
    cpu_flags({"amx_bf16"})
    assert resolve_runtime(pkgs["seg_onnx"], "auto", "auto", "cpu") == ("onnx", "fp32")
    assert resolve_runtime(pkgs["seg"], "auto", "auto", "cpu") == ("torch", "fp32")
    assert resolve_runtime(pkgs["seg"], "torch", "auto", "cpu") == ("torch", "fp32")
    # ... but an explicit request runs it in bf16
    assert resolve_runtime(pkgs["seg"], "auto", "bf16", "cpu") == ("torch", "bf16")


def test_auto_on_a_cpu_without_bf16(cpu_flags, validated, pkgs):
    cpu_flags({"avx2", "avx512f"})
    assert resolve_runtime(pkgs["seg_onnx"], "auto", "auto", "cpu") == ("onnx", "fp32")
    assert resolve_runtime(pkgs["seg"], "torch", "auto", "cpu") == ("torch", "fp32")


def test_bf16_refused_on_a_cpu_without_it(cpu_flags, pkgs):
    cpu_flags({"avx2"})
    with pytest.raises(BadRequestError, match="AMX or AVX512-BF16.*precision fp32") as exc:
        resolve_runtime(pkgs["seg"], "torch", "bf16", "cpu")
    assert exc.value.code == "invalid_option"


@pytest.mark.parametrize(("runtime", "precision", "match"), [
    ("onnx", "bf16", "onnx computes in fp32 only"),
    ("tensorrt", "auto", "runtime 'tensorrt' is unknown"),
    ("torch", "fp16", "precision 'fp16' is unknown"),
])
def test_invalid_combinations(cpu_flags, pkgs, runtime, precision, match):
    cpu_flags({"amx_bf16"})
    with pytest.raises(BadRequestError, match=match) as exc:
        resolve_runtime(pkgs["seg_onnx"], runtime, precision, "cpu")
    assert exc.value.code == "invalid_option"


def test_bf16_refused_for_detection(cpu_flags, pkgs):
    if pkgs["det"] is None:
        pytest.skip("object_detection architecture is not registered")
    cpu_flags({"amx_bf16"})
    assert resolve_runtime(pkgs["det"], "auto", "auto", "cpu") == ("torch", "fp32")
    with pytest.raises(BadRequestError, match="bf16 is supported for semantic_segmentation"):
        resolve_runtime(pkgs["det"], "torch", "bf16", "cpu")


def test_the_bundled_default_model_is_validated_for_bf16():
    entry = ModelRegistry([], include_bundled=True).get(DEFAULT_MODEL)
    assert rts.package_allows_bf16(entry)
    assert resolve_runtime(entry, "auto", "auto", "cpu") == ("onnx", "fp32")
    assert resolve_runtime(entry, "torch", "auto", "cpu") == (("torch", "bf16") if NATIVE_BF16 else ("torch", "fp32"))


def test_precision_setting():
    assert Settings.resolve({}, env={}).precision == "auto"
    assert Settings.resolve({}, env={"RSFM_PRECISION": "fp32"}).precision == "fp32"
    assert Settings.resolve({"precision": "bf16"}, env={"RSFM_PRECISION": "fp32"}).precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        Settings.resolve({"precision": "fp16"}, env={})


def test_the_cli_has_a_precision_flag(capsys):
    import argparse
    import json

    from backend.cli import _add_settings, main

    p = argparse.ArgumentParser()
    _add_settings(p)
    assert p.parse_args(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "fp16"])
    capsys.readouterr()
    assert main(["settings"]) == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed["precision"]["default"] == "auto" and "bf16" in listed["precision"]["help"]


def test_runtime_cache_keeps_precisions_apart(pkgs):
    cache = RuntimeCache()
    a, b = object(), object()
    cache.put(pkgs["seg"], "torch", "cpu", a)
    cache.put(pkgs["seg"], "torch", "cpu", b, precision="bf16")
    assert cache.get(pkgs["seg"], "torch", "cpu", 1) is a
    assert cache.get(pkgs["seg"], "torch", "cpu", 1, "bf16") is b


# -- jobs ----------------------------------------------------------------------------------------------------

def _app(models_dir: Path, **settings):
    return SimpleNamespace(models=ModelRegistry([models_dir], include_bundled=False), device="cpu",
                           settings=Settings.resolve({"threads": 1, **settings}, env={}), runtimes=RuntimeCache())


def _job(app, model: str, raster: Path, out: Path, **options) -> tuple[dict, np.ndarray]:
    spec = build_spec(app, {"task": "semantic_segmentation", "model": model, "inputs": {"raster": str(raster)},
                            "output_dir": str(out), "options": {"vectorize": False, **options}})
    result = run_spec(app, spec, JobContext(Job(task=spec.task, model=model, runner=lambda c: {})))
    with rasterio.open(result["outputs"][0]["path"]) as ds:
        return result["stats"]["parameters"], ds.read(1)


def test_job_reports_fp32(pkgs, tmp_path):
    params, _ = _job(_app(pkgs["root"] / "models"), "prec-seg", pkgs["rgb"], tmp_path, precision="fp32")
    assert (params["runtime"], params["precision"]) == ("torch", "fp32")


def test_job_option_bf16_refused_without_native_bf16(cpu_flags, pkgs, tmp_path):
    cpu_flags(set())
    with pytest.raises(BadRequestError, match="native bf16") as exc:
        build_spec(_app(pkgs["root"] / "models"), {
            "task": "semantic_segmentation", "model": "prec-seg", "inputs": {"raster": str(pkgs["rgb"])},
            "output_dir": str(tmp_path), "options": {"precision": "bf16"}})
    assert exc.value.code == "invalid_option"
    assert not any(tmp_path.iterdir())


def test_job_option_precision_must_be_a_string(pkgs, tmp_path):
    with pytest.raises(BadRequestError, match="option precision must be str"):
        build_spec(_app(pkgs["root"] / "models"), {
            "task": "semantic_segmentation", "model": "prec-seg", "inputs": {"raster": str(pkgs["rgb"])},
            "output_dir": str(tmp_path), "options": {"precision": 16}})


@needs_bf16
def test_fixture_bf16_job_agrees_with_fp32(pkgs, tmp_path):
    app = _app(pkgs["root"] / "models")
    p32, fp32 = _job(app, "prec-seg", pkgs["rgb"], tmp_path / "a", precision="fp32")
    p16, bf16 = _job(app, "prec-seg", pkgs["rgb"], tmp_path / "b", precision="bf16")
    assert (p16["runtime"], p16["precision"]) == ("torch", "bf16")
    assert len(np.unique(fp32)) > 1  # a real class map, not a constant
    agree = (fp32 == bf16).mean()
    assert agree >= 0.995, f"bf16 agrees with fp32 on only {agree:.4%} of pixels"


@needs_bf16
def test_server_setting_bf16_applies_to_jobs(pkgs, tmp_path):
    params, _ = _job(_app(pkgs["root"] / "models", precision="bf16"), "prec-seg", pkgs["rgb"], tmp_path)
    assert params["precision"] == "bf16"


def _naip(window: tuple[tuple[int, int], tuple[int, int]], up: int = 1) -> tuple[np.ndarray, rasterio.Affine]:
    """A crop of the NAIP sample (5 m pixels), optionally upsampled ``up`` times (bilinear) into the default
    model's 0.3-1.6 m range; returns ``3 x H x W`` uint8-valued float32 pixels and their transform."""
    import torch

    with rasterio.open(NAIP) as ds:
        px = ds.read(window=window).astype(np.float32)
        transform = ds.window_transform(window) @ rasterio.Affine.scale(1 / up)
    if up > 1:
        px = torch.nn.functional.interpolate(torch.from_numpy(px)[None], scale_factor=up, mode="bilinear")[0]
        px = px.round().clamp(0, 255).numpy()
    return px, transform


def _normalise(px: np.ndarray, cfg) -> np.ndarray:
    return (px - np.asarray(cfg.mean, np.float32)[:, None, None]) / np.asarray(cfg.std, np.float32)[:, None, None]


@needs_bf16
def test_default_model_bf16_agrees_with_fp32_on_naip_in_range():
    """The bundled model on a 96 x 96 NAIP crop upsampled 4x (1.25 m, inside its range): >= 99.5 % agree."""
    entry = ModelRegistry([], include_bundled=True).get(DEFAULT_MODEL)
    px, _ = _naip(((100, 196), (200, 296)), up=4)
    x = _normalise(px, entry.config)[None]
    fp32 = TorchRuntime(entry, threads=1)(x).argmax(1)
    bf16_rt = TorchRuntime(entry, threads=1, precision="bf16")
    assert bf16_rt.precision == "bf16"
    bf16 = bf16_rt(x).argmax(1)
    assert len(np.unique(fp32)) > 1
    agree = (fp32 == bf16).mean()
    assert agree >= 0.995, f"bf16 agrees with fp32 on only {agree:.4%} of pixels"


@needs_bf16
def test_default_model_bf16_flips_only_unsure_pixels_at_native_naip_gsd():
    """At NAIP's own 5 m (off the model's range) the model is unsure of most pixels and bf16 flips ~5 % of
    them (measured 94.7 %: why auto keeps fp32 there), but none where fp32 is confident (top p > 0.6)."""
    entry = ModelRegistry([], include_bundled=True).get(DEFAULT_MODEL)
    px, _ = _naip(((100, 484), (200, 584)))
    x = _normalise(px, entry.config)[None]
    logits = TorchRuntime(entry, threads=1)(x)
    fp32 = logits.argmax(1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    sure = (e / e.sum(1, keepdims=True)).max(1) > 0.6
    bf16 = TorchRuntime(entry, threads=1, precision="bf16")(x).argmax(1)
    assert sure.mean() > 0.1  # enough confident pixels for the check to mean something
    agree_sure = (fp32 == bf16)[sure].mean()
    assert agree_sure >= 0.999, f"bf16 flips {1 - agree_sure:.3%} of the confident pixels"


def _write(path: Path, px: np.ndarray, transform) -> Path:
    with rasterio.open(NAIP) as src:
        crs = src.crs
    with rasterio.open(path, "w", driver="GTiff", width=px.shape[2], height=px.shape[1], count=3, dtype="uint8",
                       crs=crs, transform=transform) as dst:
        dst.write(px.astype(np.uint8))
    return path


def test_default_model_job_precision_follows_the_pixel_size(tmp_path):
    """Jobs on the bundled model: every default runs onnx fp32; on torch (server setting) the precision is
    bf16 on a CPU with native bf16 when the raster's pixel size is in the model's range, fp32 off the range
    (NAIP's native 5 m) and on CPUs without bf16."""
    native = _write(tmp_path / "native.tif", *_naip(((0, 128), (0, 128))))
    params, _ = _job(_app(BUNDLED_DIR), DEFAULT_MODEL, native, tmp_path / "a")
    assert (params["runtime"], params["precision"]) == ("onnx", "fp32")
    app = _app(BUNDLED_DIR, runtime="torch")
    params, _ = _job(app, DEFAULT_MODEL, native, tmp_path / "b")
    assert (params["runtime"], params["precision"]) == ("torch", "fp32")
    if not NATIVE_BF16:
        pytest.skip("the in-range case needs native bf16 (amx_bf16 / avx512_bf16)")
    in_range = _write(tmp_path / "in_range.tif", *_naip(((100, 164), (200, 264)), up=4))
    params, cls = _job(app, DEFAULT_MODEL, in_range, tmp_path / "c")
    assert (params["runtime"], params["precision"]) == ("torch", "bf16")
    assert cls.shape == (256, 256)
