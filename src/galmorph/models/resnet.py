"""The classifier: a torchvision ResNet backbone plus a small head with two logits (spiral, elliptical).

Everything that knows the network's structure lives here: building it from ModelConfig, loading weights
(ImageNet, a state dict, or none), which stages are frozen, the layer-wise learning-rate groups, the
inference-time conv+BN folding, and the models/model.pt file that evaluate, predict and serve load.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from galmorph.config import CLASSES, ModelConfig, PreprocessConfig, from_dict, stored_preprocess
from galmorph.errors import UserError
from galmorph.io import atomic_path
from galmorph.models.ood import OodDetector
from galmorph.models.pretrained import adapt_stem, hub_state, is_hub_weights

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
MODEL_FORMAT = "galmorph.model/1"
LOGITS = "logits"
DIRICHLET = "dirichlet"
OUTPUTS = (LOGITS, DIRICHLET)
"""What the two outputs mean. logits: class logits. dirichlet (trained with train.loss: dirichlet): log
concentrations log alpha of a Dirichlet over the vote fractions, so softmax(outputs) = alpha / sum(alpha) is
the expected vote fraction. Either way softmax(outputs / T) is the class probability every caller uses; a
model file without the key (written before it existed) holds logits."""


def outputs_for_loss(loss: str) -> str:
    """The meaning of a network's outputs once trained with `loss` (train.loss)."""
    return DIRICHLET if loss == DIRICHLET else LOGITS


def build_head(cfg: ModelConfig, in_features: int) -> nn.Sequential:
    """An MLP (feat -> hidden -> ReLU -> Dropout -> 2), room for a non-linear decision on frozen features, or a
    linear probe (Dropout -> 2)."""
    if cfg.head == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 2)
        )
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(in_features, len(CLASSES)))


class GalaxyNet(nn.Module):
    """ResNet backbone (fc removed) + head; forward(x) returns logits (N, 2) in CLASSES order."""

    def __init__(self, arch: str, head: nn.Module) -> None:
        super().__init__()
        if arch not in FEATURE_DIMS:
            raise UserError(f"params: model.arch: expected one of {', '.join(FEATURE_DIMS)}, got {arch!r}")
        backbone = getattr(torchvision.models, arch)(weights=None)
        backbone.fc = nn.Identity()
        self.arch = arch
        self.backbone = backbone
        self.feature_dim = FEATURE_DIMS[arch]
        self.head = head
        # Stages whose BatchNorm statistics must not move while the rest trains (see freeze()).
        self.frozen_stages: tuple[str, ...] = ()
        self.outputs = LOGITS  # see OUTPUTS; set by fit() from train.loss, stored in the model file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """The backbone in the five pieces that freezing and layer decay count: stem, then layer1..layer4."""
        b = self.backbone
        return {
            "stem": [b.conv1, b.bn1],
            "layer1": [b.layer1],
            "layer2": [b.layer2],
            "layer3": [b.layer3],
            "layer4": [b.layer4],
        }

    def freeze(self, stages: tuple[str, ...]) -> None:
        """Stop gradients into `stages` and keep their BatchNorm in eval mode (frozen means frozen)."""
        self.frozen_stages = tuple(stages)
        for name, modules in self.stage_modules().items():
            for m in modules:
                m.requires_grad_(name not in self.frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> GalaxyNet:
        super().train(mode)
        for name in self.frozen_stages:
            for m in self.stage_modules()[name]:
                m.eval()
        return self


def build_model(cfg: ModelConfig) -> GalaxyNet:
    """The network of `cfg` with its initial weights (imagenet, timm / Hugging Face hub, a state-dict path, or
    none)."""
    if cfg.arch not in FEATURE_DIMS:
        raise UserError(f"params: model.arch: expected one of {', '.join(FEATURE_DIMS)}, got {cfg.arch!r}")
    model = GalaxyNet(cfg.arch, build_head(cfg, FEATURE_DIMS[cfg.arch]))
    weights = cfg.weights.strip()
    if weights.lower() == "imagenet":
        model.backbone.load_state_dict(_imagenet_state(cfg.arch), strict=False)
    elif is_hub_weights(weights):
        _load_backbone(model, hub_state(cfg.arch, weights), weights)
    elif weights.lower() not in ("none", ""):
        load_weights(model, weights)
    return model


def imagenet_file(arch: str) -> tuple[str, Path]:
    """(URL, local path) of torchvision's default ImageNet weights for `arch` in the torch hub cache."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    url, path = imagenet_file(arch)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"model.weights=imagenet: {path.name} is not in {path.parent} and could not be downloaded "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
                f"place {path.name} (from {url}) in {path.parent}, or set model.weights: none"
            ) from None
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _load_backbone(model: GalaxyNet, backbone: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load a backbone state dict strictly: a wrong arch is a user error, not a silent partial load."""
    try:
        model.backbone.load_state_dict(backbone, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"model.weights: {source}: does not fit a {model.arch} backbone ({first})") from None


def _read_state(p: Path) -> Any:
    """A state dict file: safetensors (what the hub serves) or a torch file, weights only either way."""
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    return torch.load(p, map_location="cpu", weights_only=True)


def load_weights(model: GalaxyNet, path: str | Path) -> None:
    """Initialise from a state dict file: a galmorph model/checkpoint, a GalaxyNet or a torchvision ResNet
    (timm's ResNets too: same key names; .safetensors or a torch file).

    The backbone must match exactly (a wrong arch is a user error, not a silent partial load); the head is
    taken when its shapes match and left freshly initialised otherwise (a new head on a trained backbone).
    """
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():  # a downloaded hub repo: timm reads its config
        _load_backbone(model, hub_state(model.arch, f"local-dir:{p}"), p)
        return
    if not p.is_file():
        raise UserError(
            f"model.weights: {p}: no such file (expected imagenet, none, a state-dict path, a folder with a timm "
            "config.json, or hf_hub:<owner>/<repo>, timm:<name>, local-dir:<folder>)"
        )
    try:
        state = _read_state(p)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a state dict we can read"
        raise UserError(f"model.weights: {p}: not a readable torch state dict ({type(exc).__name__})") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a galmorph model.pt or training checkpoint
    if not isinstance(state, Mapping):
        raise UserError(f"model.weights: {p}: expected a state dict (mapping of tensors), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):  # a plain torchvision ResNet
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    _load_backbone(model, adapt_stem(backbone), p)
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    own = model.head.state_dict()
    if head and head.keys() == own.keys() and all(head[k].shape == own[k].shape for k in own):
        model.head.load_state_dict(head)


def set_trainable(model: GalaxyNet, mode: str, unfreeze_blocks: int) -> None:
    """frozen: only the head trains. finetune: everything (0) or the top N residual stages plus the head."""
    if not 0 <= unfreeze_blocks <= 4:
        raise UserError(f"params: train.unfreeze_blocks: expected 0..4 (0 = whole network), got {unfreeze_blocks}")
    if mode == "frozen":
        model.freeze(STAGES)
    elif unfreeze_blocks == 0:
        model.freeze(())
    else:
        model.freeze(STAGES[: len(STAGES) - unfreeze_blocks])


def param_groups(model: GalaxyNet, lr: float, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups with layer-wise lr decay: head lr, layer4 lr*d, layer3 lr*d^2, ..., stem lr*d^5.

    Lower stages hold generic features that need less change; biases and BatchNorm weights get no weight
    decay (decaying a BN scale only fights the normalisation).
    """
    pieces: list[tuple[str, list[nn.Module], float]] = [("head", [model.head], lr)]
    for depth, name in enumerate(reversed(STAGES), start=1):
        pieces.append((name, model.stage_modules()[name], lr * layer_decay**depth))
    groups = []
    for name, modules, group_lr in pieces:
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for suffix, ps, wd in (("", decay, weight_decay), ("_no_wd", no_decay, 0.0)):
            if ps:
                groups.append({"name": f"{name}{suffix}", "params": ps, "lr": group_lr, "weight_decay": wd})
    return groups


def fold_input_standardization(head: nn.Sequential, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make a head trained on standardised features (x - mean) / std take raw features, exactly.

    Frozen mode trains on standardised embeddings (the optimiser then sees unit-scale inputs whatever
    the backbone's scale); folding the affine map into the first Linear afterwards leaves the saved
    network the plain backbone + head that inference runs.
    """
    linear = next(m for m in head if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = linear.weight.double() / std.double()
        linear.bias.copy_((linear.bias.double() - w @ mean.double()).to(linear.bias.dtype))
        linear.weight.copy_(w.to(linear.weight.dtype))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy for inference (GalaxyNet or bare torchvision ResNet) with every BatchNorm folded into its conv.

    BN in eval mode is an affine map, so folding it is exact up to rounding and saves a full pass over
    every activation tensor; on CPU that memory traffic is a large share of a ResNet's time.
    """
    folded = copy.deepcopy(model).eval()
    if isinstance(folded, GalaxyNet):
        folded.frozen_stages = ()
    b = folded.backbone if isinstance(folded, GalaxyNet) else folded
    b.conv1, b.bn1 = fuse_conv_bn_eval(b.conv1, b.bn1), nn.Identity()
    for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
        for block in layer:
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}", None), getattr(block, f"bn{i}", None)
                if conv is not None and bn is not None:
                    setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(block, f"bn{i}", nn.Identity())
            if block.downsample is not None:
                conv, bn = block.downsample
                block.downsample = nn.Sequential(fuse_conv_bn_eval(conv, bn))
    return folded


def save_model(
    path: str | Path,
    model: GalaxyNet,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    *,
    temperature: float = 1.0,
    metrics: Mapping[str, float] | None = None,
    ood: OodDetector | None = None,
) -> None:
    """Write models/model.pt: one dict of tensors and plain values, loadable with weights_only=True; `ood`: the
    out-of-distribution detector fitted on the training split (models.ood), stored under "ood" when there is one."""
    bundle = {
        "format": MODEL_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_cfg": dataclasses.asdict(model_cfg),
        "preprocess": dataclasses.asdict(preprocess),
        "classes": list(CLASSES),
        "temperature": float(temperature),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "outputs": getattr(model, "outputs", LOGITS),
    }
    if ood is not None:
        bundle["ood"] = ood.to_dict()
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)


def _read_bundle(path: str | Path) -> dict[str, Any]:
    """The dict save_model wrote (tensors and plain values only: weights_only=True), or a UserError naming
    the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: model file not found (run `galmorph train` first)")
    try:
        bundle = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{p}: not a galmorph model file ({type(exc).__name__})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
        raise UserError(f"{p}: not a galmorph model file (expected format {MODEL_FORMAT})")
    if bundle.setdefault("outputs", LOGITS) not in OUTPUTS:
        raise UserError(f"{p}: outputs {bundle['outputs']!r} is not one of {', '.join(OUTPUTS)} (a newer galmorph?)")
    return bundle


def model_digest(path: str | Path) -> str:
    """The md5 of what a model file computes: its weights (names, dtypes, shapes, values), configuration,
    preprocessing, classes and temperature. Unlike the file's own md5 it does not change with the container
    (torch's zip records the temporary file name an atomic write used), so a retrained-identical or
    re-registered model is recognised."""
    bundle = _read_bundle(path)
    digest = hashlib.md5(usedforsecurity=False)
    ood = bundle.get("ood") or {}
    tensors = {**bundle["model"], **{f"ood.{k}": v for k, v in ood.items() if isinstance(v, torch.Tensor)}}
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.contiguous().reshape(-1)  # 0-d tensors (BN's num_batches_tracked) cannot view as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    described = {k: bundle.get(k) for k in ("model_cfg", "preprocess", "classes", "temperature")}
    if bundle["outputs"] != LOGITS:  # only when not the default, so older models keep their digest
        described["outputs"] = bundle["outputs"]
    if ood:  # likewise: a model without a detector keeps its digest
        described["ood"] = {k: v for k, v in ood.items() if not isinstance(v, torch.Tensor)}
    digest.update(json.dumps(described, sort_keys=True).encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """What models/model.pt holds besides the weights: how to preprocess and how to calibrate."""

    model: GalaxyNet
    model_cfg: ModelConfig
    preprocess: PreprocessConfig
    temperature: float
    classes: tuple[str, ...]
    metrics: dict[str, float]
    outputs: str = LOGITS
    ood: OodDetector | None = None  # the out-of-distribution detector, when the model file has one


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a models/model.pt written by save_model (eval mode, on `device`)."""
    bundle = _read_bundle(path)
    model_cfg = from_dict(ModelConfig, {**bundle["model_cfg"], "weights": "none"}, "model")
    model = GalaxyNet(model_cfg.arch, build_head(model_cfg, FEATURE_DIMS[model_cfg.arch]))
    model.load_state_dict(bundle["model"])
    model.outputs = bundle["outputs"]
    return LoadedModel(
        model=model.to(device).eval(),
        model_cfg=from_dict(ModelConfig, bundle["model_cfg"], "model"),
        preprocess=stored_preprocess(bundle["preprocess"]),  # no framing keys (older file): the fixed crop
        temperature=float(bundle["temperature"]),
        classes=tuple(bundle["classes"]),
        metrics=dict(bundle.get("metrics", {})),
        outputs=bundle["outputs"],
        ood=OodDetector.from_dict(bundle["ood"], str(path)) if bundle.get("ood") else None,
    )
