"""Starting a network from pretrained weights: read a checkpoint of any common layout, map its key names onto the
network (or one of its submodules), check names and shapes, load, and report what was loaded.

Layouts read by :func:`read_state_dict`:

- a plain state dict (``torch.save(model.state_dict())``; MONAI bundles' ``models/model.pt``; our ``model.pt``);
- a dict holding the state dict under ``model``, ``state_dict``, ``network``, ``net``, ``model_state_dict`` or
  ``encoder`` (timm / RETFound ``{"model": ...}``, Lightning ``{"state_dict": ...}``, our resume checkpoints
  ``{"network": ..., "optimizer": ...}``);
- a TorchScript file (``model.ts``): its parameters and buffers.

Key names are mapped by :func:`map_keys`: a ``module.`` prefix (DataParallel / DDP) is always removed, then a
prefix is stripped (given, or the one that matches the target best, e.g. ``encoder.`` of a whole-network
checkpoint loaded into an encoder), then an optional key map renames keys (a registered name such as
``"timm_vit"``, or ``{regex: replacement}``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import SettingsError
from .parallel import unwrap_parallel

__all__ = [
    "KEY_MAPS",
    "STATE_DICT_KEYS",
    "PretrainedReport",
    "load_pretrained",
    "load_pretrained_weights",
    "map_keys",
    "read_state_dict",
    "register_key_map",
    "resize_position_embeddings",
    "submodule",
    "timm_vit_to_monai",
]

logger = logging.getLogger(__name__)

#: Keys under which checkpoints hold the network's state dict, in the order they are looked for.
STATE_DICT_KEYS = ("model", "state_dict", "network", "net", "model_state_dict", "encoder")
# prefixes tried when none is given: the one matching most of the target's keys wins
_AUTO_PREFIXES = ("", "encoder.", "model.", "backbone.", "net.", "network.", "module.")
_SHOW = 8  # key names listed per kind in messages

KeyMap = Union[str, Mapping[str, str], Callable[[dict], dict], None]


def _first(names: list[str]) -> str:
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in the checkpoint file ``path`` and a description of its layout.

    Raises:
        SettingsError: the file is missing or unreadable, or holds no state dict; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SettingsError(f"pretrained weights {path} do not exist (setting 'pretrained').")
    try:
        with warnings.catch_warnings():  # torch warns when it dispatches a TorchScript archive to torch.jit.load
            warnings.simplefilter("ignore", UserWarning)
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if zipfile.is_zipfile(path):
            try:  # a TorchScript export (model.ts): its parameters and buffers
                return dict(torch.jit.load(path, map_location="cpu").state_dict()), "TorchScript module"
            except Exception:
                pass
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SettingsError(
            f"pretrained weights {path} cannot be read as a PyTorch checkpoint ({type(err).__name__}: {first}); "
            "give a file written by torch.save (a state dict or a dict holding one)."
        ) from err
    if _is_state_dict(obj):
        return dict(obj), "state dict"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), f"checkpoint dict, key '{key}'"
        described = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:_SHOW])
        raise SettingsError(
            f"pretrained weights {path} hold no state dict: a dict with {{{described}}}; expected tensors by name or "
            f"a state dict under one of {list(STATE_DICT_KEYS)}."
        )
    raise SettingsError(
        f"pretrained weights {path} hold a {type(obj).__name__}, not a state dict (tensors by parameter name)."
    )


def timm_vit_to_monai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm / MAE / RETFound ViT state dict to :class:`~common.networks.ViTEncoder` names.

    ``patch_embed.proj`` -> ``patch_embedding.patch_embeddings``; ``pos_embed`` (CLS first) is split into
    ``cls_pos`` and ``patch_embedding.position_embeddings``; ``blocks.i.attn.proj`` -> ``blocks.i.attn.out_proj``;
    ``blocks.i.mlp.fc1/fc2`` -> ``blocks.i.mlp.linear1/linear2``; ``norm1``, ``norm2``, ``attn.qkv``, ``norm``,
    ``cls_token`` keep their names. A ``fc_norm`` (global-pool models) replaces ``norm``; the MAE decoder's keys
    (``mask_token``, ``decoder_*``) get a ``mae.`` prefix, so they never match the encoder's own mask token; heads
    and other keys pass unchanged (all are reported as not used).
    """
    rules = (
        (r"^patch_embed\.proj\.", "patch_embedding.patch_embeddings."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"blocks.\1.attn.out_proj."),
        (r"^blocks\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.linear1."),
        (r"^blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.linear2."),
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "mask_token" or key.startswith("decoder"):
            out["mae." + key] = value
            continue
        if key == "pos_embed":
            if "cls_token" in state:
                out["cls_pos"] = value[:, :1]
                value = value[:, 1:]
            out["patch_embedding.position_embeddings"] = value
            continue
        if key.startswith("fc_norm."):
            out["norm." + key[len("fc_norm.") :]] = value
            continue
        if key.startswith("norm.") and any(k.startswith("fc_norm.") for k in state):
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


# tensors of the ViT encoder without a timm counterpart: the SimMIM mask token, MONAI's unused cross-attention norms
_TIMM_VIT_OWN = r"(^mask_token$|\.norm_cross_attn\.)"

#: Named key maps for ``key_map`` (e.g. ``"pretrained_key_map": "timm_vit"`` in a config): name -> (function from
#: state dict to renamed state dict, regex of the target's keys that layout never holds: they keep their own values).
KEY_MAPS: dict[str, tuple[Callable[[dict], dict], Optional[str]]] = {"timm_vit": (timm_vit_to_monai, _TIMM_VIT_OWN)}


def register_key_map(name: str, mapping: Callable[[dict], dict], keep: str | None = None) -> None:
    """Add a named key map for ``key_map``: ``mapping`` renames a state dict; target keys matching the regex
    ``keep`` are not in such files and keep their values (reported, never an error)."""
    if not callable(mapping):
        raise ValueError(f"mapping must be callable, got {type(mapping).__name__}.")
    KEY_MAPS[str(name)] = (mapping, keep)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if prefix else dict(state)


def map_keys(
    state: Mapping[str, torch.Tensor],
    target_keys: set[str] | None = None,
    prefix: str | None = None,
    key_map: KeyMap = None,
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Rename the keys of ``state`` for a module with ``target_keys``; return the mapped dict, the prefix used and
    the keys left out because they do not start with it.

    Args:
        state: the checkpoint's state dict.
        target_keys: the state dict keys of the module the weights are for (used to choose a prefix).
        prefix: keys starting with it are kept without it, others dropped; None chooses, among ``""``,
            ``"encoder."``, ``"model."``, ``"backbone."``, ... the prefix matching most ``target_keys``.
        key_map: a name of :data:`KEY_MAPS`, ``{regex: replacement}`` applied in order with ``re.sub``, or a
            function from state dict to state dict; applied after the prefix is stripped.
    """
    out = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    if isinstance(key_map, str):
        if key_map not in KEY_MAPS:
            raise SettingsError(f"pretrained_key_map must be one of {sorted(KEY_MAPS)} or a mapping, got '{key_map}'.")
        convert: Callable[[dict], dict] | None = KEY_MAPS[key_map][0]
    elif isinstance(key_map, Mapping):
        rules = [(re.compile(p), str(r)) for p, r in key_map.items()]

        def convert(sd: dict) -> dict:
            renamed = {}
            for k, v in sd.items():
                for pattern, repl in rules:
                    k = pattern.sub(repl, k)
                renamed[k] = v
            return renamed

    elif callable(key_map) or key_map is None:
        convert = key_map
    else:
        raise SettingsError(f"pretrained_key_map must be a name, a mapping or None, got {type(key_map).__name__}.")

    def apply(p: str) -> dict[str, torch.Tensor]:
        stripped = _strip(out, p)
        return convert(stripped) if convert is not None else stripped

    def outside(p: str) -> list[str]:
        return [k for k in out if not k.startswith(p)]

    if prefix is not None:
        return apply(str(prefix)), str(prefix), outside(str(prefix))
    if not target_keys:
        return apply(""), "", []
    best, best_hits = "", -1
    for p in _AUTO_PREFIXES:
        if p and not any(k.startswith(p) for k in out):
            continue
        hits = len(target_keys & set(apply(p)))
        if hits > best_hits:
            best, best_hits = p, hits
    return apply(best), best, outside(best)


def submodule(network: nn.Module, target: str | None) -> nn.Module:
    """The module pretrained weights are loaded into: ``network`` itself for ``None``, ``""`` or ``"network"``,
    else the submodule of that dotted name (``"encoder"``); a DDP/DataParallel wrapper is looked through."""
    core = unwrap_parallel(network)
    if target in (None, "", "network"):
        return core
    try:
        return core.get_submodule(str(target))
    except AttributeError as err:
        children = [name for name, _ in core.named_children()]
        raise SettingsError(
            f"pretrained_target must be 'network' or a submodule of {type(core).__name__} ({children}), "
            f"got '{target}'."
        ) from err


class PretrainedReport:
    """What :func:`load_pretrained` did: keys loaded, missing from the file, not used, and of another shape."""

    def __init__(self, path: str, layout: str, target: str, prefix: str) -> None:
        self.path, self.layout, self.target, self.prefix = path, layout, target, prefix
        self.loaded: list[str] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.mismatched: list[str] = []  # "key: file (shape) vs network (shape)"
        self.kept: list[str] = []  # the target's own tensors the file's layout never holds (see KEY_MAPS)
        self.resized: list[str] = []  # "key: grid a x b -> c x d" (ViT position embeddings interpolated)

    def summary(self) -> str:
        text = (
            f"pretrained weights {self.path} ({self.layout}"
            + (f", prefix '{self.prefix}' stripped" if self.prefix else "")
            + f") -> {self.target}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing from the file, "
            f"{len(self.unexpected)} in the file not used, {len(self.mismatched)} of another shape"
            + (f", {len(self.kept)} not in this layout kept" if self.kept else "")
            + (f", position embeddings resized ({'; '.join(self.resized)})" if self.resized else "")
        )
        lists = (("missing", self.missing), ("not used", self.unexpected), ("shape", self.mismatched),
                 ("kept", self.kept))
        for name, keys in lists:
            if keys:
                text += f"; {name}: {_first(keys)}"
        return text


def resize_position_embeddings(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
    """A ViT's learnt position embeddings ``(1, N, D)`` of a square ``sqrt(N)`` x ``sqrt(N)`` patch grid, resized
    (bicubic, as timm and MAE fine-tuning do) to ``grid``: ``(1, grid[0] * grid[1], D)``; None when ``N`` is not a
    square number (then the grid of the file is unknown)."""
    if pos.ndim != 3 or pos.shape[0] != 1:
        return None
    side = int(round(pos.shape[1] ** 0.5))
    if side * side != pos.shape[1]:
        return None
    dim = pos.shape[2]
    image = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    image = nn.functional.interpolate(image, size=tuple(grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos.dtype)


def _target_grid(module: nn.Module, key: str, n: int) -> tuple[int, int] | None:
    """Patch grid of the position embeddings ``key`` of ``module`` (``n`` positions): the owning ViT's ``grid``
    attribute when it has one, else square."""
    owner = module
    for part in key.split(".")[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            break
        if isinstance(getattr(owner, "grid", None), tuple):
            return tuple(owner.grid)
    if isinstance(getattr(module, "grid", None), tuple):
        return tuple(module.grid)
    side = int(round(n**0.5))
    return (side, side) if side * side == n else None


def _written_with(path: str) -> str:
    """" The file was written with settings {...}" where a settings file lies beside it (``x.pt`` ->
    ``x_settings.json``, as pre-training and training write it: ``common.handlers.settings_path``), else ""."""
    where = f"{os.path.splitext(path)[0]}_settings.json"  # not imported: common.handlers imports this package
    try:
        with open(where) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return ""
    return f" The file was written with settings {json.dumps(settings)} ({where}); build the network with them."


def load_pretrained(
    network: nn.Module,
    path: str | os.PathLike | None,
    target: str | None = "network",
    prefix: str | None = None,
    key_map: KeyMap = None,
    strict: bool = True,
) -> nn.Module:
    """Load the pretrained weights in ``path`` into ``network`` (see :func:`load_pretrained_weights`) and return
    ``network``, for configs: ``"$common.networks.load_pretrained(@network_def, @pretrained, ...)"``. With ``path``
    None or ``""`` the network is returned unchanged."""
    if path is not None and str(path).strip() not in ("", "None", "null"):
        if isinstance(strict, str):  # a command-line override such as --pretrained_strict false
            strict = strict.strip().lower() not in ("false", "0", "no")
        prefix = None if prefix in ("None", "null") else prefix
        key_map = None if key_map in ("", "None", "null") else key_map
        load_pretrained_weights(network, path, target, prefix, key_map, strict)
    return network


def load_pretrained_weights(
    network: nn.Module,
    path: str | os.PathLike,
    target: str | None = "network",
    prefix: str | None = None,
    key_map: KeyMap = None,
    strict: bool = True,
) -> PretrainedReport:
    """Load the pretrained weights in ``path`` into ``network`` (or its submodule ``target``); return the report.

    Every tensor whose (mapped) name and shape match is loaded; the report (loaded / missing / not used / other
    shape) is logged. A ViT's position embeddings learnt on another patch grid (e.g. RETFound's 14x14 at 224 px
    into a 256-px or 128-px model) are resized bicubically to this network's grid, and the report says so. Keys of
    the file the target does not have (an ImageNet classifier, an MAE decoder) are never an error.

    Args:
        network: the network (a DDP/DataParallel wrapper is looked through).
        path: checkpoint file (see :func:`read_state_dict` for the layouts).
        target: ``"network"`` (the whole network) or the dotted name of a submodule, e.g. ``"encoder"``.
        prefix: key prefix of the target's weights in the file (None: chosen, see :func:`map_keys`).
        key_map: key renaming (see :func:`map_keys`), e.g. ``"timm_vit"`` for timm / RETFound ViTs.
        strict: every tensor of the target must be loaded (none missing, none of another shape); False loads
            what matches (e.g. an encoder and some heads) and skips the rest, reported.

    Raises:
        SettingsError: naming the file and the missing, unused and other-shape keys, when the file cannot be read,
            when ``strict`` and a tensor of the target is missing or of another shape, or when nothing matched.
    """
    path = os.fspath(path)
    module = submodule(network, target)
    own = module.state_dict()
    state, layout = read_state_dict(path)
    mapped, used_prefix, left_out = map_keys(state, set(own), prefix, key_map)
    report = PretrainedReport(path, layout, str(target or "network"), used_prefix)
    loadable: dict[str, torch.Tensor] = {}
    keep = KEY_MAPS[key_map][1] if isinstance(key_map, str) and key_map in KEY_MAPS else None
    for key, value in own.items():
        if key not in mapped and keep and re.search(keep, key):
            report.kept.append(key)
        elif key not in mapped:
            report.missing.append(key)
        elif tuple(mapped[key].shape) != tuple(value.shape) and key.endswith("position_embeddings"):
            grid = _target_grid(module, key, value.shape[1]) if value.ndim == 3 else None
            resized = resize_position_embeddings(mapped[key], grid) if grid else None
            if resized is not None and tuple(resized.shape) == tuple(value.shape):
                side = int(round(mapped[key].shape[1] ** 0.5))
                report.resized.append(f"{key}: grid {side}x{side} -> {grid[0]}x{grid[1]}")
                loadable[key] = resized
            else:
                report.mismatched.append(f"{key}: file {tuple(mapped[key].shape)} vs network {tuple(value.shape)}")
        elif tuple(mapped[key].shape) != tuple(value.shape):
            report.mismatched.append(f"{key}: file {tuple(mapped[key].shape)} vs network {tuple(value.shape)}")
        else:
            loadable[key] = mapped[key]
    report.unexpected = left_out + [k for k in mapped if k not in own]
    report.loaded = list(loadable)
    if not loadable or (strict and (report.missing or report.mismatched)):
        why = "no tensor matched" if not loadable else "not every tensor of the target could be loaded"
        hint = (
            "set pretrained_target (e.g. 'encoder' or 'network'), pretrained_prefix or pretrained_key_map to match "
            "the file's names"
            + ("; pretrained_strict false loads what matches" if loadable else "")
        )
        file_keys = _first(list(state)) if state else "none"
        raise SettingsError(f"{report.summary()}; file keys: {file_keys}. {why}: {hint}.{_written_with(path)}")
    module.load_state_dict(loadable, strict=False)
    logger.info(report.summary())
    return report
