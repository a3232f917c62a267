"""MTP multi-task model: one shared encoder, three decoders, per-dataset output layers (MTP_SPEC §2.2).

Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task Pretraining", IEEE JSTARS 2024
(official code ``ViTAE-Transformer/MTP``, ``Multi-Task_Pretrain/models.py``). Re-implemented in plain
PyTorch on the RSFM pieces:

* ``encoder``: any registered RSFM backbone (``forward_intermediates(x)`` -> 4 NCHW maps, strides 4..32);
* ``semseg``: UperNet (:class:`training.models.segmentation.UperNetHead`), its final 1x1 classifier replaced
  by one classifier per dataset;
* ``insseg``: Mask R-CNN decoder (FPN + RPN + RoI box/mask heads), per-dataset ``fc_cls`` / ``fc_reg`` /
  mask logits;
* ``rotdet``: Oriented R-CNN decoder with its own FPN, per-dataset ``fc_cls`` / ``fc_reg``.

The images of all datasets of a step are concatenated along the batch and run through the encoder
**once**; each pyramid level is then split back per dataset and fed to the decoders of the label types that
dataset has. Decoder bodies are shared across datasets, only the last layers are per dataset
(:class:`PerDatasetLayer`, switched per call). Every loss term of every dataset has weight 1 and is
summed by the caller (:func:`total_loss`).

Per-image loss semantics: the official run has one image per dataset per GPU, and DDP averages gradients
over GPUs, so the effective loss is the *mean over images of the per-image loss*. :meth:`MultiTaskModel.
forward` computes exactly that for any number of images per dataset (semseg: per-image pixel means
averaged over images; the detectors run image by image), with the detectors' random RoI sampling seeded per
image from the sample's global position.
That makes ``N`` processes x ``b`` images numerically the same as 1 process x ``N*b`` images.

State-dict keys: ``encoder.*``, ``semseg.*``, ``insseg.*``, ``rotdet.*``; :func:`encoder_state_dict`
extracts the encoder (no prefix) for finetuning, loadable ``strict=True`` into ``create_model(backbone)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.registry import create_model
from training.models.segmentation import UperNetHead

__all__ = [
    "DatasetSpec",
    "MultiTaskModel",
    "InstanceDecoder",
    "PerDatasetLayer",
    "RotatedDecoder",
    "SemSegDecoder",
    "build_mtp_model",
    "encoder_state_dict",
    "total_loss",
]

MTP_TASKS: tuple[str, ...] = ("semseg", "insseg", "rotdet")
IGNORE_INDEX = 255


@dataclass
class DatasetSpec:
    """One pretraining dataset as the model sees it.

    Attributes:
        name: short id (becomes part of parameter names, e.g. ``semseg.decode_head.classifier.heads.<name>``).
        classes: per label type the class names (index order, background not included), e.g.
            ``{"insseg": [...], "rotdet": [...]}``; the label types present are the dataset's tasks.
    """

    name: str
    classes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in MTP_TASKS if t in self.classes)


class PerDatasetLayer(nn.Module):
    """A set of dataset-specific output layers of which one is active at a time.

    It stands in for the final layer of a shared decoder (e.g. a 1x1 classifier); the model sets
    :attr:`active` to the dataset whose features are being decoded. Parameters are named
    ``heads.<dataset>.*``.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("PerDatasetLayer needs at least one dataset layer")
        self.heads = nn.ModuleDict(dict(layers))
        self.active: str = next(iter(self.heads))

    def forward(self, *args, **kwargs):
        return self.heads[self.active](*args, **kwargs)


def _activate(module: nn.Module, dataset: str) -> None:
    """Switch every :class:`PerDatasetLayer` inside ``module`` to ``dataset``."""
    for m in module.modules():
        if isinstance(m, PerDatasetLayer):
            if dataset not in m.heads:
                raise KeyError(f"dataset {dataset!r} has no output layer here; known: {list(m.heads)}")
            m.active = dataset


class SemSegDecoder(nn.Module):
    """UperNet with a per-dataset classifier; loss = pixel CE (ignore 255) at label resolution."""

    def __init__(self, in_channels: Sequence[int], num_classes: Mapping[str, int], channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.decode_head = UperNetHead(in_channels, channels, num_classes=1, dropout=dropout)
        self.decode_head.classifier = PerDatasetLayer(
            {name: nn.Conv2d(channels, k, 1) for name, k in num_classes.items()})

    def forward(self, feats: Sequence[torch.Tensor], dataset: str) -> torch.Tensor:
        """Stride-4 logits ``B x K_dataset x H/4 x W/4``."""
        _activate(self, dataset)
        return self.decode_head(feats)

    def loss(self, feats: Sequence[torch.Tensor], target: torch.Tensor, image_size: tuple[int, int] | None,
             dataset: str) -> dict[str, torch.Tensor]:
        """``target``: ``B x H x W`` int64 (255 = ignore).

        Returns ``{"loss_seg": CE}``: pixel CE averaged per image, then over images (so a batch of B equals
        B processes with one image each). The decoder runs on the whole batch at once, so BatchNorm in
        ``--norm batch`` mode sees all B images.
        """
        logits = F.interpolate(self(feats, dataset), size=target.shape[-2:], mode="bilinear", align_corners=False)
        ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")  # B x H x W
        valid = (target != IGNORE_INDEX).flatten(1).sum(1)
        # An all-ignore crop contributes a zero that keeps the graph whole.
        per_image = ce.flatten(1).sum(1) / valid.clamp(min=1)
        return {"loss_seg": per_image.mean() + logits.sum() * 0.0}


class _TwoStageDecoder(nn.Module):
    """FPN neck + RPN + RoI heads on the encoder pyramid, with per-dataset final layers.

    Mirrors the official ``inssegdecoder`` / ``rotdetdecoder`` structure (``neck``, ``rpn_head``,
    ``roi_head``), so keys read ``insseg.neck.lateral_convs.0.conv.weight`` etc. The per-dataset layers
    (``roi_head.bbox_head.fc_cls`` / ``fc_reg`` and, for masks, ``roi_head.mask_head.conv_logits``) are
    :class:`PerDatasetLayer` s: ``...fc_cls.heads.<dataset>.weight``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: Mapping[str, int], oriented: bool,
                 fpn_channels: int = 256, fc_channels: int = 1024, roi_samples: int = 512) -> None:
        super().__init__()
        from training.models.detection.roi_heads import BoxHead, RoIHeads, RotatedRoIHeads
        from training.models.detection.rpn import RPN
        from training.models.necks import FPN

        if not num_classes:
            raise ValueError("a detection decoder needs at least one dataset")
        self.num_classes = dict(num_classes)
        self.oriented = oriented
        self.neck = FPN(in_channels, fpn_channels, num_outs=5)
        self.rpn_head = RPN(fpn_channels, strides=(4, 8, 16, 32, 64), oriented=oriented)
        first = next(iter(self.num_classes.values()))
        if oriented:
            self.roi_head = RotatedRoIHeads(first, fpn_channels)
        else:
            self.roi_head = RoIHeads(first, fpn_channels, with_mask=True)
        self.roi_head.num_samples = roi_samples
        if fc_channels != self.roi_head.bbox_head.fc_cls.in_features:  # smaller heads for tests / CPU runs
            self.roi_head.bbox_head = BoxHead(first, 5 if oriented else 4 * first, fpn_channels, fc_channels=fc_channels)
        head = self.roi_head.bbox_head
        fc_in = head.fc_cls.in_features
        # Dataset-specific classifier (K + 1 with background) and regressor, initialised like the shared ones.
        cls_layers, reg_layers = {}, {}
        for name, k in self.num_classes.items():
            cls_layers[name] = nn.Linear(fc_in, k + 1)
            reg_layers[name] = nn.Linear(fc_in, 5 if oriented else 4 * k)  # rotated: class-agnostic
            nn.init.normal_(cls_layers[name].weight, std=0.01)
            nn.init.normal_(reg_layers[name].weight, std=0.001)
            nn.init.zeros_(cls_layers[name].bias)
            nn.init.zeros_(reg_layers[name].bias)
        head.fc_cls = PerDatasetLayer(cls_layers)
        head.fc_reg = PerDatasetLayer(reg_layers)
        mask_head = getattr(self.roi_head, "mask_head", None)
        if mask_head is not None:
            old = mask_head.conv_logits
            layers = {}
            for name, k in self.num_classes.items():
                layers[name] = nn.Conv2d(old.in_channels, k, 1)
                nn.init.kaiming_normal_(layers[name].weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layers[name].bias)
            mask_head.conv_logits = PerDatasetLayer(layers)

    def set_dataset(self, dataset: str) -> None:
        """Route the final layers (and the class count used for background labels) to ``dataset``."""
        if dataset not in self.num_classes:
            raise KeyError(f"dataset {dataset!r} has no {'rotated' if self.oriented else 'instance'} head; "
                           f"known: {list(self.num_classes)}")
        _activate(self, dataset)
        self.roi_head.num_classes = self.num_classes[dataset]

    def loss(self, feats: Sequence[torch.Tensor], target: list[dict], image_size: tuple[int, int],
             dataset: str) -> dict[str, torch.Tensor]:
        """RPN + RoI losses; ``target``: one dict per image as made by :func:`training.data.multitask.augment`."""
        self.set_dataset(dataset)
        pyramid = self.neck(list(feats))
        key = "boxes_cxcywha" if self.oriented else "boxes_xyxy"
        proposals, losses = self.rpn_head(pyramid, image_size, [t[key] for t in target])
        losses.update(self.roi_head(pyramid[:4], proposals, image_size, target))
        return losses

    @torch.no_grad()
    def predict(self, feats: Sequence[torch.Tensor], image_size: tuple[int, int], dataset: str) -> list[dict]:
        """Eval-mode detections per image, in the RoI heads' output format."""
        self.set_dataset(dataset)
        pyramid = self.neck(list(feats))
        proposals, _ = self.rpn_head(pyramid, image_size)
        return self.roi_head(pyramid[:4], proposals, image_size)


class InstanceDecoder(_TwoStageDecoder):
    """Mask R-CNN decoder: ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``, ``loss_mask``."""

    def __init__(self, in_channels: Sequence[int], num_classes: Mapping[str, int], **kwargs) -> None:
        super().__init__(in_channels, num_classes, oriented=False, **kwargs)


class RotatedDecoder(_TwoStageDecoder):
    """Oriented R-CNN decoder: ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``."""

    def __init__(self, in_channels: Sequence[int], num_classes: Mapping[str, int], **kwargs) -> None:
        super().__init__(in_channels, num_classes, oriented=True, **kwargs)


class MultiTaskModel(nn.Module):
    """Shared encoder + semseg / insseg / rotdet decoders.

    Args:
        encoder: an RSFM backbone.
        datasets: the pretraining datasets with their label types and classes.
        semseg_channels: UperNet width (official MTP: 256).
        semseg_dropout: dropout before the per-dataset classifier (official 0.1; 0 for exact DDP tests).
        det_channels: FPN / RPN / RoI width of both detectors (official 256).
        roi_fc_channels: width of the two shared FCs of the box heads (official 1024).
        roi_samples: RoIs sampled per image for the second stage (official 512).

    ``forward(batches, seeds=None)`` takes the collated step (one dict per dataset with ``images``
    ``B x 3 x S x S`` and its targets, see :func:`training.data.multitask.collate_multitask`) and returns a
    flat dict of losses named ``<task>.<dataset>.<loss>``; their plain sum is the MTP objective.
    """

    def __init__(self, encoder: nn.Module, datasets: Sequence[DatasetSpec], semseg_channels: int = 256,
                 semseg_dropout: float = 0.1, det_channels: int = 256, roi_fc_channels: int = 1024,
                 roi_samples: int = 512) -> None:
        super().__init__()
        if not hasattr(encoder, "out_channels") or len(encoder.out_channels) != 4:
            raise ValueError(f"{type(encoder).__name__} is not an RSFM backbone: it needs out_channels (4 levels) "
                             "and forward_intermediates(x) -> 4 maps at strides 4/8/16/32")
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        self.datasets = list(datasets)
        self.encoder = encoder
        ch = list(encoder.out_channels)
        k = {t: {d.name: len(d.classes[t]) for d in datasets if t in d.tasks} for t in MTP_TASKS}
        self.semseg = SemSegDecoder(ch, k["semseg"], semseg_channels, semseg_dropout) if k["semseg"] else None
        det = {"fpn_channels": det_channels, "fc_channels": roi_fc_channels, "roi_samples": roi_samples}
        self.insseg = InstanceDecoder(ch, k["insseg"], **det) if k["insseg"] else None
        self.rotdet = RotatedDecoder(ch, k["rotdet"], **det) if k["rotdet"] else None

    def decoder(self, task: str) -> nn.Module:
        dec = getattr(self, task)
        if dec is None:
            raise KeyError(f"no dataset has label type {task!r}")
        return dec

    def forward(self, batches: Sequence[Mapping], seeds: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Multi-task losses of one step.

        Args:
            batches: one dict per dataset (``source`` index into ``datasets``, ``images``, targets).
            seeds: per dataset, per image an integer seeding that image's random RoI sampling (e.g. the
                sample's global position); None leaves the global RNG alone.

        Returns:
            ``{"<task>.<dataset>.<loss>": scalar}``, each the mean over that dataset's images.
        """
        sizes = [int(b["images"].shape[0]) for b in batches]
        images = torch.cat([b["images"] for b in batches])
        feats = self.encoder.forward_intermediates(images)
        parts = [f.split(sizes) for f in feats]  # level -> dataset -> B_k x C x h x w
        losses: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(batches):
            spec = self.datasets[int(batch["source"])]
            level_feats = [p[k] for p in parts]
            for task in spec.tasks:
                dec = self.decoder(task)
                if task == "semseg":  # no random sampling: whole batch at once, per-image mean inside
                    for name, v in dec.loss(level_feats, batch["semseg"], None, spec.name).items():
                        losses[f"{task}.{spec.name}.{name}"] = v
                    continue
                per_image = []
                for i in range(sizes[k]):
                    one = [f[i:i + 1] for f in level_feats]
                    seed = None if seeds is None else int(seeds[k][i])
                    per_image.append(self._task_loss(task, dec, one, batch, i, seed, spec.name))
                for name in per_image[0]:
                    losses[f"{task}.{spec.name}.{name}"] = torch.stack([d[name] for d in per_image]).mean()
        return losses

    @staticmethod
    def _task_loss(task: str, dec: nn.Module, feats: list[torch.Tensor], batch: Mapping, i: int,
                   seed: int | None, dataset: str) -> dict[str, torch.Tensor]:
        target = [batch[task][i]]
        size = tuple(batch["images"].shape[-2:])
        if seed is None:
            return dec.loss(feats, target, size, dataset)
        # Fork so the per-image sampling seed does not disturb the global stream (dropout, other images).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return dec.loss(feats, target, size, dataset)

    def no_weight_decay(self) -> set[str]:
        """Encoder's own list (prefixed ``encoder.``) plus every 1-D parameter (norms, biases)."""
        names = {f"encoder.{n}" for n in getattr(self.encoder, "no_weight_decay", set)()}
        names |= {n for n, p in self.named_parameters() if p.ndim <= 1}
        return names


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Plain sum of every term whose name contains ``loss`` (official ``parse_losses``; all weights 1)."""
    terms = [v for k, v in losses.items() if "loss" in k.rsplit(".", 1)[-1]]
    if not terms:
        raise ValueError(f"no loss terms in {sorted(losses)}")
    return torch.stack([t.float() for t in terms]).sum()


def build_mtp_model(backbone: str, datasets: Sequence[DatasetSpec], backbone_kwargs: dict | None = None,
                    **model_kwargs) -> MultiTaskModel:
    """Build the encoder ``backbone`` from the registry and the decoders for ``datasets``.

    ``model_kwargs`` go to :class:`MultiTaskModel` (``semseg_channels``, ``det_channels``, ...).
    """
    encoder = create_model(backbone, **(backbone_kwargs or {}))
    return MultiTaskModel(encoder, datasets, **model_kwargs)


def encoder_state_dict(state: Mapping) -> dict[str, torch.Tensor]:
    """Encoder-only state dict (keys without ``encoder.``) from an MTP model, state dict or checkpoint.

    Accepts a :class:`MultiTaskModel`, its ``state_dict()``, or a training checkpoint dict holding it under
    ``"model"`` / ``"state_dict"``; ``module.`` (DDP) prefixes are stripped.

    Raises:
        KeyError: no ``encoder.*`` key was found (the message says what was found instead).
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("model", "state_dict"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith("encoder."):
            out[k[len("encoder."):]] = v
    if not out:
        sample = ", ".join(list(state)[:5])
        raise KeyError(f"no 'encoder.*' keys in this state dict (first keys: {sample}); is it an MTP checkpoint?")
    return out
