"""Backbone weights from timm and the Hugging Face hub: `model.weights: hf_hub:<owner>/<repo>` (e.g. Zoobot's
`hf_hub:mwalmsley/zoobot-encoder-resnet50`, a ResNet-50 trained on Galaxy Zoo volunteers' votes),
`timm:<model name>` (a timm registry model with its pretrained tag, e.g. `timm:resnet50.a1_in1k`) or
`local-dir:<folder>` (a folder holding a hub repo's config.json and model.safetensors / pytorch_model.bin).

timm's ResNets name their tensors as torchvision's do (conv1, bn1, layer1..4, downsample.0/1), so the weights
load strictly into the torchvision backbone that everything else (BN folding, freezing, layer decay, Grad-CAM,
the model file) is built around; any other layout is refused by name rather than half-loaded. Files come from
the hub cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) and are downloaded only when missing: a repo
already in the cache is read as a local folder, so an offline machine never waits on the hub's retries.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from galmorph.errors import UserError

PREFIXES = ("hf_hub:", "hf-hub:", "local-dir:", "timm:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_weights(weights: str) -> bool:
    """Whether model.weights names timm / hub weights rather than imagenet, none or a file."""
    return weights.strip().lower().startswith(PREFIXES)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (read now, not
    at import, so a changed environment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _timm_name(weights: str) -> str:
    """What timm.create_model takes: the registry name without our `timm:` prefix, hub/dir sources as given."""
    w = weights.strip()
    return w[len("timm:") :] if w.lower().startswith("timm:") else w


def _hub_repo(weights: str) -> str | None:
    """The hub repository the files come from (`owner/name`), when there is one."""
    w = weights.strip()
    lower = w.lower()
    if lower.startswith(("hf_hub:", "hf-hub:")):
        return w.split(":", 1)[1].split("@", 1)[0]
    if lower.startswith("timm:"):
        try:
            import timm

            return timm.models.get_pretrained_cfg(_timm_name(w)).hf_hub_id
        except Exception:  # noqa: BLE001 - an unknown name is reported by create_model itself
            return None
    return None


def cached_snapshot(repo: str) -> Path | None:
    """The cache folder holding `repo`'s config.json and weights (`owner/name[@revision]`), if it is complete."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir(), revision=revision or None)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any((folder / name).is_file() for name in WEIGHT_FILES) else None


def placement_hint(weights: str) -> str:
    """Where to put the files by hand when there is no network: the cache folder and the files, or local-dir."""
    repo = _hub_repo(weights)
    if weights.strip().lower().startswith("local-dir:"):
        return f"put config.json and {' or '.join(WEIGHT_FILES)} of a timm hub model in that folder"
    if repo is None:
        return f"use hf_hub:<owner>/<repo> or local-dir:<folder> (cache: {hub_cache_dir()})"
    folder = hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    return (
        f"place config.json and {WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}) from https://huggingface.co/{repo} in "
        f"{folder}/snapshots/main/ and write 'main' to {folder}/refs/main (HF_HUB_CACHE moves the cache), or put "
        f"them in any folder and set model.weights: local-dir:<folder>"
    )


def adapt_stem(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A greyscale (1-channel) first conv made to take RGB: its kernel shared out over three channels (/3), so a
    grey image replicated to RGB gives exactly the 1-channel response."""
    w = state.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[1] == 1:
        state = {**state, "conv1.weight": w.repeat(1, 3, 1, 1) / 3}
    return state


def hub_state(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """The backbone state dict (torchvision key names, no classifier) of timm / hub `weights`, for `arch`."""
    try:
        import timm
    except ImportError:
        raise UserError(f"model.weights={weights}: needs the timm package (pip install timm)") from None
    repo = _hub_repo(weights)
    snapshot = cached_snapshot(repo) if repo else None
    name = f"local-dir:{snapshot}" if snapshot is not None else _timm_name(weights)
    try:
        net = timm.create_model(name, pretrained=True, num_classes=0, cache_dir=hub_cache_dir())
    except Exception as exc:  # noqa: BLE001 - offline, not found, unknown name: all mean "not loadable here"
        detail = (str(exc).splitlines() or [""])[0].split(". ")[0][:120] or "no detail"
        raise UserError(
            f"model.weights={weights}: could not be loaded through timm ({type(exc).__name__}: {detail}); "
            f"{placement_hint(weights)}"
        ) from None
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    if net.__class__.__name__ != "ResNet" or "conv1.weight" not in state:
        raise UserError(
            f"model.weights={weights}: a timm {net.__class__.__name__} ({net.default_cfg.get('architecture', '?')}), "
            f"not a ResNet with torchvision's layout; model.arch takes resnet18/34/50/101 weights"
        )
    return adapt_stem(state)
