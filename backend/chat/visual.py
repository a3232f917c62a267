"""EarthGPT-style visual soft tokens for the built-in LM (CHAT_DESIGN §6.2 item 4; optional, off by default).

A frozen image encoder gives multi-scale maps (strides 4/8/16/32). Each map is pooled to a ``grid x grid``
raster (average and max pooling side by side: the average keeps the scene, the max keeps small objects a mean
would wash out) plus one global token; the scales are concatenated along channels (shallow scales carry detail,
deep ones semantics). A 2-layer MLP (:class:`VisualProjector`) maps every pooled cell to the LM's hidden size,
giving ``grid² + 1`` soft tokens that are spliced into the prompt embeddings right at the start of the first
user turn, so they sit between the system prompt (fact sheet) and the question.

Only the transformers path can take embeddings (llama.cpp has no way to feed MTP features), and a projector is
tied to the LM it was trained for (SmolLM2-135M-Instruct, hidden 576): another LM needs a retrained projector.

Directory format (``save_projector`` / ``load_projector``): ``projector.safetensors`` (weights only, loaded with
safetensors: no pickle) and ``projector.json`` (shapes, the encoder package, the LM, how the LM was tuned,
training provenance); with LM tuning also ``lm_adapter.safetensors`` (``backend.chat.lm_tuning``).

Entry point for evaluation and the plugin::

    soft = load_soft_backend("/tmp/chat_soft/projector")
    lm = soft.for_image(Path("image.jpg"))   # a ChatBackend
    lm.generate(messages, max_tokens=48)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.chat.lm import ChatBackend, LMError

CONFIG_FILE = "projector.json"
WEIGHTS_FILE = "projector.safetensors"
FORMAT = "rsfm-chat-projector"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_ENCODER = "rsfm-detection-nwpu-efflite0"


@dataclass
class ProjectorConfig:
    """Shapes and provenance of a projector directory.

    Attributes:
        in_channels: channels of each encoder scale (strides 4, 8, 16, 32).
        hidden_size: the LM's embedding width.
        grid: each scale is pooled to ``grid x grid`` cells.
        mlp_dim: width of the MLP's hidden layer.
        encoder: model package whose backbone gives the features (a name under resources/models or a path).
        max_side: images are downscaled so that their longer side is at most this many pixels.
        lm: the LM the projector was trained for (informative; a projector does not transfer to another LM).
        lm_tuning: how the LM was tuned with the projector (:class:`backend.chat.lm_tuning.LMTuning` as a dict;
            mode ``none``: frozen, the default and the only mode of projectors written before it existed).
        training: free-form provenance written by the training script.
    """

    in_channels: list[int]
    hidden_size: int
    grid: int = 4
    mlp_dim: int = 1024
    encoder: str = DEFAULT_ENCODER
    max_side: int = 1024
    lm: str = "SmolLM2-135M-Instruct"
    lm_tuning: dict[str, Any] = field(default_factory=lambda: {"mode": "none"})
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return 2 * sum(self.in_channels)  # average + max pooling per scale

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid + 1  # grid cells + one global token

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProjectorConfig:
        if d.get("format") != FORMAT:
            raise LMError(f"not a chat projector config (format {d.get('format')!r}, expected {FORMAT!r}); point "
                          "the soft-token backend at the folder written by `rsfm-train chat-projector`")
        keys = {"in_channels", "hidden_size", "grid", "mlp_dim", "encoder", "max_side", "lm", "lm_tuning", "training"}
        return cls(**{k: v for k, v in d.items() if k in keys})


def pool_scales(maps: Sequence[torch.Tensor], grid: int) -> torch.Tensor:
    """Multi-scale maps ``[B x C_i x H_i x W_i]`` → pooled tokens ``B x (grid² + 1) x 2·ΣC_i``.

    Token 0 is the global (whole-image) pool; tokens 1.. are the grid cells in row-major order. Maps smaller
    than the grid (small images, stride 32) are pooled adaptively, which repeats cells.
    """
    cells, glob = [], []
    for m in maps:
        m = m.float()
        cells.append(torch.cat([F.adaptive_avg_pool2d(m, grid), F.adaptive_max_pool2d(m, grid)], dim=1))
        glob.append(torch.cat([m.mean(dim=(2, 3)), m.amax(dim=(2, 3))], dim=1))
    grid_tokens = torch.cat(cells, dim=1).flatten(2).transpose(1, 2)  # B x G² x 2ΣC
    return torch.cat([torch.cat(glob, dim=1)[:, None], grid_tokens], dim=1)


class VisualProjector(nn.Module):
    """Pooled encoder features ``B x N x feature_dim`` → soft tokens ``B x N x hidden_size``.

    LayerNorm first (the scales differ in magnitude by an order), then Linear-GELU-Linear, plus a learned
    embedding per token slot so the LM can tell the global token and the grid cells apart.
    """

    def __init__(self, cfg: ProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.feature_dim)
        self.fc1 = nn.Linear(cfg.feature_dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.hidden_size)
        self.slot = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.hidden_size))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim != 3 or feats.shape[1:] != (self.cfg.num_tokens, self.cfg.feature_dim):
            raise ValueError(f"projector input must be B x {self.cfg.num_tokens} x {self.cfg.feature_dim}, got "
                             f"{tuple(feats.shape)}; were the features pooled with grid={self.cfg.grid}?")
        return self.fc2(F.gelu(self.fc1(self.norm(feats)))) + self.slot

    @torch.no_grad()
    def match_scale(self, target_std: float) -> None:
        """Rescale the output layer so the initial soft tokens have about ``target_std`` per element (the
        LM's own embedding scale): far larger tokens would swamp the frozen LM's attention at step 0."""
        x = torch.randn(64, self.cfg.num_tokens, self.cfg.feature_dim)
        std = float(self.fc2(F.gelu(self.fc1(self.norm(x)))).std())
        self.fc2.weight.mul_(target_std / max(std, 1e-8))
        self.fc2.bias.zero_()


def save_projector(out_dir: str | Path, projector: VisualProjector, lm_model: nn.Module | None = None) -> Path:
    """Write ``projector.safetensors`` + ``projector.json`` into ``out_dir``, and the LM adapter of ``lm_model``
    (``lm_adapter.safetensors``) when ``projector.cfg.lm_tuning`` tunes the LM."""
    from safetensors.torch import save_file

    from backend.chat.lm_tuning import LMTuning, save_adapter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float().contiguous() for k, v in projector.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    if LMTuning.from_dict(projector.cfg.lm_tuning).mode != "none":
        if lm_model is None:
            raise ValueError("this projector was trained with LM tuning: pass the adapted LM to save its adapter")
        save_adapter(out, lm_model)
    (out / CONFIG_FILE).write_text(json.dumps(projector.cfg.to_dict(), indent=2) + "\n")
    return out


def load_projector(path: str | Path) -> VisualProjector:
    """Load a projector directory (safetensors only; shapes are checked against the config).

    Raises:
        LMError: missing files, wrong format, or weights that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / CONFIG_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
        raise LMError(f"{p} is not a chat projector directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}); train "
                      "one with `rsfm-train chat-projector --out DIR`")
    try:
        cfg = ProjectorConfig.from_dict(json.loads((p / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise LMError(f"{p / CONFIG_FILE} is broken ({e}); retrain or restore the projector") from None
    model = VisualProjector(cfg)
    try:
        state = load_file(str(p / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise LMError(f"projector weights in {p} do not fit {CONFIG_FILE} ({e}); retrain the projector") from None
    return model.eval()


# ------------------------------------------------------------------------------------------------ encoder


class FeatureExtractor:
    """Frozen multi-scale encoder: image file → pooled tokens ``N x feature_dim`` (:func:`pool_scales`).

    Args:
        encoder: module with ``forward_intermediates(x) -> [B x C_i x H/s x W/s]`` (s = 4, 8, 16, 32).
        mean, std: per-band normalisation in 0-255 units (from the model package).
        grid: pooling grid.
        max_side: longer image side after downscaling (pixels); larger images cost more and the detector that
            gave the encoder was trained on 512 px crops at native resolution.
    """

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float], grid: int,
                 max_side: int = 1024) -> None:
        self.encoder = encoder.eval()
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
        self.grid = grid
        self.max_side = max_side

    @classmethod
    def from_package(cls, package: str, grid: int, max_side: int = 1024) -> FeatureExtractor:
        """The backbone of a model package (a name under resources/models or a folder path), or the encoder an
        MTP pretraining run exported (a folder with ``encoder.json`` + ``encoder.safetensors``,
        ``rsfm-train mtp``)."""
        from training.package import PackageError, load_package

        p = Path(package)
        if (p / "encoder.json").is_file():
            return cls.from_mtp_encoder(p, grid, max_side)
        if not p.is_dir():
            p = REPO / "resources" / "models" / package
        try:
            cfg, model = load_package(p)
        except (PackageError, FileNotFoundError) as e:
            raise LMError(f"cannot load the soft-token encoder package {package!r} ({e}); install that model "
                          "package or retrain the projector with another --encoder") from None
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "forward_intermediates"):
            raise LMError(f"model package {package!r} has no multi-scale backbone; use a detection package")
        return cls(backbone, cfg.mean, cfg.std, grid, max_side)

    @classmethod
    def from_mtp_encoder(cls, folder: str | Path, grid: int, max_side: int = 1024) -> FeatureExtractor:
        """The shared encoder of an MTP pretraining run: ``encoder.json`` names the backbone and its
        normalisation, ``encoder.safetensors`` holds its weights (loaded with the backbone's own key filter)."""
        from training.models.registry import create_model
        from training.mtp import load_encoder_weights

        folder = Path(folder)
        try:
            meta = json.loads((folder / "encoder.json").read_text())
            encoder = create_model(meta["backbone"], **meta.get("backbone_kwargs", {}))
            missing, _ = load_encoder_weights(encoder, folder / "encoder.safetensors")
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            raise LMError(f"cannot load the MTP encoder in {folder} ({e}); pass the folder rsfm-train mtp wrote "
                          "(encoder.json + encoder.safetensors)") from None
        if missing:
            raise LMError(f"the MTP encoder in {folder} lacks {len(missing)} weights of {meta['backbone']} "
                          f"(e.g. {missing[:3]}); the file does not fit its encoder.json")
        if not hasattr(encoder, "forward_intermediates"):
            raise LMError(f"backbone {meta['backbone']!r} of {folder} has no multi-scale features")
        return cls(encoder, meta["mean"], meta["std"], grid, max_side)

    def read(self, image: str | Path) -> torch.Tensor:
        """The image as a normalised ``1 x 3 x H x W`` float tensor, downscaled to ``max_side`` and padded to a
        multiple of 32 (exact strides)."""
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain JPEGs have no georeference
            with rasterio.open(image) as src:
                data = src.read()
        if data.shape[0] == 1:
            data = data.repeat(3, axis=0)
        x = torch.from_numpy(data[:3].astype("float32"))
        x = ((x - self.mean) / self.std)[None]
        h, w = x.shape[-2:]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            x = F.interpolate(x, size=(max(32, round(h * scale)), max(32, round(w * scale))), mode="bilinear",
                              align_corners=False, antialias=True)
        ph, pw = (-x.shape[-2]) % 32, (-x.shape[-1]) % 32
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    @torch.no_grad()  # not inference_mode: cached features must stay usable by the projector's training
    def __call__(self, image: str | Path) -> torch.Tensor:
        return pool_scales(self.encoder.forward_intermediates(self.read(image)), self.grid)[0]


# --------------------------------------------------------------------------------------- prompt splicing


def user_turn_start(tokenizer: Any, messages: list[dict[str, str]], ids: torch.Tensor) -> int:
    """Index in ``ids`` (the chat-templated prompt) where the first user message's content starts.

    Found by rendering the template as text, cutting it at the first user content and tokenising the part
    before the cut; the answer is the common prefix length with ``ids`` (equal to that part's length unless the
    tokeniser merges across the cut). Without a user message the tokens go at the end of the prompt.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    start, cut = 0, None
    for m in messages:
        j = text.find(m["content"], start)
        if j < 0:
            break
        if m["role"] == "user":
            cut = j
            break
        start = j + len(m["content"])
    if cut is None:
        return int(ids.shape[1])
    before = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
    row = ids[0].tolist()
    n = 0
    while n < min(len(before), len(row)) and before[n] == row[n]:
        n += 1
    return n


def splice(embeds: torch.Tensor, soft: torch.Tensor, pos: int) -> torch.Tensor:
    """Insert ``soft`` (``N x H`` or ``B x N x H``) into ``embeds`` (``B x T x H``) before position ``pos``."""
    if soft.ndim == 2:
        soft = soft[None].expand(embeds.shape[0], -1, -1)
    soft = soft.to(embeds.dtype)
    return torch.cat([embeds[:, :pos], soft, embeds[:, pos:]], dim=1)


class SoftTokenBackend(ChatBackend):
    """The built-in LM (or its adapted copy) with one image's soft tokens in the prompt (greedy decoding).

    Args:
        lm: a ``backend.chat.lm._TorchLM`` (the cached built-in model, or a test model).
        tokens: this image's soft tokens ``N x hidden`` (already projected).
        image: the image path (for :meth:`describe`).
    """

    name = "soft"
    compact_prompt = True

    def __init__(self, lm: Any, tokens: torch.Tensor, image: str | None = None, projector_dir: str | None = None):
        self._lm = lm
        self.tokens = tokens
        self.image = image
        self.projector_dir = projector_dir
        self.last_insert_pos: int | None = None

    def embed_fn(self, messages: list[dict[str, str]]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The ``embed_prompt`` hook for ``_TorchLM.generate``: prompt ids → embeddings with the soft tokens."""
        emb = self._lm.model.get_input_embeddings()

        def embed(ids: torch.Tensor) -> torch.Tensor:
            pos = user_turn_start(self._lm.tokenizer, messages, ids)
            self.last_insert_pos = pos
            return splice(emb(ids), self.tokens, pos)

        return embed

    def generate(self, messages, max_tokens=256, stop=None, on_token=None) -> str:
        return self._lm.generate(messages, max_tokens, stop, on_token, embed_prompt=self.embed_fn(messages))

    @property
    def last_stats(self) -> dict[str, float]:
        return self._lm.last_stats

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "projector": self.projector_dir, "image": self.image,
                "soft_tokens": int(self.tokens.shape[0]), **self._lm.describe()}


class SoftBackendFactory:
    """A loaded projector + encoder + LM; :meth:`for_image` gives a :class:`SoftTokenBackend` per image.

    Soft tokens are computed once per image path and cached (the encoder pass is the expensive part).
    """

    name = "soft"

    def __init__(self, projector: VisualProjector, extractor: FeatureExtractor, lm: Any,
                 projector_dir: str | None = None) -> None:
        self.projector = projector
        self.extractor = extractor
        self.lm = lm
        self.projector_dir = projector_dir
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.encode_s: list[float] = []  # seconds per image for encoder + projector (cache misses)

    def tokens(self, image: str | Path) -> torch.Tensor:
        import time

        key = str(Path(image).resolve())
        with self._lock:
            if key not in self._cache:
                t0 = time.perf_counter()
                with torch.no_grad():
                    self._cache[key] = self.projector(self.extractor(image)[None])[0]
                self.encode_s.append(time.perf_counter() - t0)
            return self._cache[key]

    def for_image(self, image_path: str | Path) -> SoftTokenBackend:
        return SoftTokenBackend(self.lm, self.tokens(image_path), str(image_path), self.projector_dir)

    def describe(self) -> dict[str, Any]:
        c = self.projector.cfg
        return {"name": self.name, "projector": self.projector_dir, "encoder": c.encoder, "grid": c.grid,
                "soft_tokens": c.num_tokens, "lm": c.lm, "lm_tuning": c.lm_tuning.get("mode", "none"), **self.lm.describe()}


def load_soft_backend(path: str | Path, lm: Any = None, extractor: FeatureExtractor | None = None
                      ) -> SoftBackendFactory:
    """Projector directory → :class:`SoftBackendFactory` (encoder from the projector's package unless
    ``extractor`` is given, the cached built-in SmolLM2 on the torch engine unless ``lm`` is given). A projector
    trained with LM tuning gets its own adapted copy of the LM; ``lm`` itself is not changed.

    Raises:
        LMError: the projector, its LM adapter or the encoder cannot be loaded, or its width does not match the
            LM's.
    """
    from backend.chat.lm_tuning import LMTuning, adapted_copy

    projector = load_projector(path)
    cfg = projector.cfg
    tuning = LMTuning.from_dict(cfg.lm_tuning)
    if extractor is None:
        extractor = FeatureExtractor.from_package(cfg.encoder, cfg.grid, cfg.max_side)
    if lm is None:
        from backend.chat.lm import BuiltinBackend

        lm = BuiltinBackend.load()
    if not hasattr(lm, "model") or not hasattr(lm.model, "get_input_embeddings"):
        raise LMError("soft tokens need the transformers (torch) engine of the built-in LM, which takes input "
                      "embeddings; set RSFM_CHAT_ENGINE=torch")
    width = lm.model.get_input_embeddings().weight.shape[1]
    if width != cfg.hidden_size:
        raise LMError(f"projector in {path} outputs width {cfg.hidden_size} but the LM's embeddings are {width} "
                      f"wide; it was trained for {cfg.lm}. Retrain it for this LM")
    return SoftBackendFactory(projector, extractor, adapted_copy(lm, tuning, path), str(path))


__all__ = ["ProjectorConfig", "VisualProjector", "FeatureExtractor", "SoftTokenBackend", "SoftBackendFactory",
           "load_projector", "load_soft_backend", "pool_scales", "save_projector", "splice", "user_turn_start"]
