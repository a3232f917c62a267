"""Server settings as one table: it drives the CLI flags, ``/health`` and the docs.

Each :class:`Setting` has a name, default, type and help text; ``rsfm-backend serve --help`` is generated
from :data:`SETTINGS`, and environment variables ``RSFM_<NAME>`` override defaults (the CLI overrides both).
The token is deliberately *not* a setting: it never appears on a command line (see :mod:`backend.cli`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str
    repeatable: bool = False  # list-valued (a CLI flag given several times / os.pathsep in the env)
    choices: tuple[str, ...] | None = None


def _default_threads() -> int:
    # Leave a core for the HTTP server and the writer thread on bigger machines.
    n = os.cpu_count() or 1
    return max(1, n - 1) if n > 2 else n


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", "address to bind; only loopback (127.0.0.1, ::1, localhost) is accepted"),
    Setting("port", 0, "TCP port; 0 picks a free one (reported in the ready line)", int),
    Setting("models_dir", [], "extra folder of model packages (repeatable; also RSFM_MODELS_PATH, "
            "os.pathsep-separated)", str, True),
    Setting("device", "auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N"),
    Setting("runtime", "auto", "default runtime: auto (onnxruntime where the package ships model.onnx and the "
            "task's model returns one tensor, ~2.5x faster than torch fp32 on CPU; torch otherwise, and for "
            "precision bf16), torch, or onnx",
            choices=("auto", "torch", "onnx")),
    Setting("precision", "auto", "default compute precision of torch: auto (bf16 for dense models validated in "
            "bf16, on CPUs with native bf16 matmul (AMX or AVX512-BF16), for rasters inside the model's pixel-size "
            "range: ~1.7x torch fp32, flips only pixels the model is unsure of, ~0.5 %; fp32 otherwise and for "
            "onnx), fp32, or bf16 (torch only, dense tasks, refused on CPUs without native bf16)",
            choices=("auto", "fp32", "bf16")),
    Setting("state_dir", "", "folder where job requests are recorded so a job interrupted by a crash can be "
            "resumed (POST /jobs/{id}/resume); empty: <output_dir>/.rsfm-jobs of each job"),
    Setting("threads", _default_threads(), "intra-op threads for torch / onnxruntime per worker (default: the "
            "CPU count, less one on machines with more than 2, divided among the workers)", int),
    Setting("workers", 1, "jobs that run at the same time (each uses `threads` threads)", int),
    Setting("queue_size", 16, "jobs that may wait; more are refused with 503 queue_full", int),
    Setting("max_body_bytes", 1_048_576, "largest request body accepted (413 above)", int),
    Setting("block_size_px", 2048, "side of the output block held in memory by the tiled engine", int),
    Setting("max_vectorize_pixels", 64_000_000, "class rasters up to this size are vectorised in one pass; "
            "larger ones block by block (polygons then split at block edges)", int),
    Setting("job_history", 200, "finished jobs kept for GET /jobs", int),
    Setting("journal_interval_s", 3.0, "seconds of work per resume-journal unit of sparse tasks (detection, scene "
            "classification): one small file per unit; 0 journals every tile batch", float),
    Setting("gdal_cache_mb", 64, "GDAL block cache in MiB (GDAL's default is 5% of RAM; it counts towards the "
            "server's memory)", int),
)


def configure_gdal(cache_mb: int) -> None:
    """Bound GDAL's block cache (an explicit ``GDAL_CACHEMAX`` in the environment wins).

    Effective when called before the first raster block is cached (the server calls it at start).
    """
    if "GDAL_CACHEMAX" in os.environ:
        return
    os.environ["GDAL_CACHEMAX"] = str(int(cache_mb))
    try:
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", int(cache_mb) * 1024 * 1024)
    except ImportError:  # pragma: no cover - rasterio is a backend dependency
        pass


@dataclass
class Settings:
    """Resolved settings (defaults < environment ``RSFM_<NAME>`` < CLI)."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def resolve(cls, cli: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
        """Merge defaults, environment and CLI values (``None`` in ``cli`` means "not given")."""
        env = os.environ if env is None else env
        cli = cli or {}
        values: dict[str, Any] = {}
        for s in SETTINGS:
            val: Any = list(s.default) if s.repeatable else s.default
            env_val = env.get(f"RSFM_{s.name.upper()}")
            if env_val:
                if s.repeatable:
                    val = [p for p in env_val.split(os.pathsep) if p]
                else:
                    try:
                        val = s.type(env_val)
                    except ValueError:
                        raise ValueError(f"environment variable RSFM_{s.name.upper()}={env_val!r} "
                                         f"is not a valid {s.type.__name__}") from None
            if cli.get(s.name) not in (None, []):
                val = list(val) + list(cli[s.name]) if s.repeatable else cli[s.name]
            if s.choices and val not in s.choices:
                raise ValueError(f"setting {s.name} must be one of {', '.join(s.choices)}, got {val!r}")
            if s.type is int and not s.repeatable and s.name != "port" and val < 1:
                raise ValueError(f"setting {s.name} must be >= 1, got {val}")
            if s.type is float and not 0 <= val < float("inf"):
                raise ValueError(f"setting {s.name} must be a number >= 0, got {val}")
            values[s.name] = val
        # threads left at its default: share the machine's cores among the workers (no oversubscription)
        if env.get("RSFM_THREADS") in (None, "") and cli.get("threads") is None and values["workers"] > 1:
            values["threads"] = max(1, _default_threads() // values["workers"])
        # RSFM_MODELS_PATH is the documented name for extra model folders.
        extra = env.get("RSFM_MODELS_PATH")
        if extra:
            values["models_dir"] = [p for p in extra.split(os.pathsep) if p] + list(values["models_dir"])
        return cls(values)

    def public(self) -> dict[str, Any]:
        """Settings safe to show in /health (paths included, no secrets: the token is not a setting)."""
        return dict(self.values)
