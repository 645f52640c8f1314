"""Starting from pretrained weights: checkpoint layouts and key names, the one clear error for a wrong file,
learning-rate groups for fine-tuning and an encoder frozen for the first epochs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from torch import nn

from common.errors import SettingsError
from common.handlers import FreezeEncoder
from common.networks import (
    UNetSegClassifier,
    ViTClassifierMIM,
    encoder_param_groups,
    load_pretrained,
    load_pretrained_weights,
    read_state_dict,
    resize_position_embeddings,
)
from tests.bundle_cli import bundle_configs, bundle_names, log_of, run_bundle
from tests.bundle_specs import QUICK


def _net(seed: int = 0) -> UNetSegClassifier:
    torch.manual_seed(seed)
    return UNetSegClassifier(in_channels=3, seg_channels=2, features=(4, 8, 16), cls_hidden=8)


def _random_like(net: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in net.state_dict().items()}


def _assert_loaded(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    assert set(expected) <= set(own)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


def _vit(num_layers: int = 2) -> ViTClassifierMIM:
    torch.manual_seed(0)
    return ViTClassifierMIM(in_channels=3, img_size=32, patch_size=8, hidden_size=64, mlp_dim=128,
                            num_layers=num_layers, num_heads=4)


# each layout: how a file holds the network's weights (state dict -> object to torch.save), and the target
LAYOUTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "plain_state_dict": (lambda sd: sd, "network"),  # MONAI bundle models/model.pt, our model.pt
    "model_key": (lambda sd: {"model": sd, "epoch": 3}, "network"),  # timm / RETFound
    "state_dict_key": (lambda sd: {"state_dict": sd, "hyper_parameters": {}}, "network"),  # Lightning
    "our_resume_checkpoint": (lambda sd: {"network": sd, "optimizer": {"state": {}, "param_groups": []},
                                          "trainer": {"epoch": 2}}, "network"),
    "net_key": (lambda sd: {"net": sd}, "network"),
    "ddp_module_prefix": (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "network"),
    # a whole-network checkpoint loaded into the encoder only: the 'encoder.' prefix is found and stripped
    "whole_network_into_encoder": (lambda sd: sd, "encoder"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_load_the_written_weights(tmp_path: Path, layout: str) -> None:
    wrap, target = LAYOUTS[layout]
    expected = _random_like(_net())
    path = tmp_path / "weights.pt"
    torch.save(wrap(expected), path)
    net = _net(seed=5)
    heads_before = {k: v.clone() for k, v in net.heads.state_dict().items()}
    report = load_pretrained_weights(net, path, target=target)
    if target == "network":
        _assert_loaded(net, expected)
        assert len(report.loaded) == len(expected) and not report.missing and not report.unexpected
    else:
        _assert_loaded(net.encoder, {k[len("encoder."):]: v for k, v in expected.items() if k.startswith("encoder.")})
        for key, value in net.heads.state_dict().items():  # the heads keep their own weights
            assert torch.equal(value, heads_before[key]), key
        assert report.prefix == "encoder." and len(report.unexpected) > 0


def test_torchscript_file_loads(tmp_path: Path) -> None:
    source = _vit()
    for p in source.parameters():
        nn.init.normal_(p)
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(source), str(path))
    state, layout = read_state_dict(path)
    assert layout == "TorchScript module"
    net = _vit()
    load_pretrained_weights(net, path)
    _assert_loaded(net, source.state_dict())


def _torchvision_resnet18_names() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of torchvision's ``resnet18().state_dict()`` (written out, torchvision is not needed)."""
    def bn(name: str, c: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}

    names = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    cin = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            pre = f"layer{layer}.{block}"
            names[f"{pre}.conv1.weight"] = (c, cin if block == 0 else c, 3, 3)
            names.update(bn(f"{pre}.bn1", c))
            names[f"{pre}.conv2.weight"] = (c, c, 3, 3)
            names.update(bn(f"{pre}.bn2", c))
            if block == 0 and cin != c:
                names[f"{pre}.downsample.0.weight"] = (c, cin, 1, 1)
                names.update(bn(f"{pre}.downsample.1", c))
        cin = c
    names.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    return names


def _sepl_resnet18() -> nn.Module:
    from common.networks import SePLNet

    factors = [{"name": "age", "kind": "regression", "stage": "prior"},
               {"name": "sbp", "kind": "regression", "stage": "complex"}]
    return SePLNet(factors, backbone="resnet18")


BACKBONE_NETWORKS = {
    "sepl": (_sepl_resnet18, {"sbp": (2, 1)}),
    "unet_seg_cls": (lambda: UNetSegClassifier(3, 2, backbone="resnet18"), {"seg": (2, 2, 64, 64), "cls": (2, 1)}),
}


@pytest.mark.parametrize("network", sorted(BACKBONE_NETWORKS))
def test_torchvision_resnet18_checkpoint_loads_into_the_backbone_encoder(tmp_path: Path, network: str) -> None:
    gen = torch.Generator().manual_seed(0)
    names = _torchvision_resnet18_names()
    written = {k: (torch.randint(0, 9, s, generator=gen) if k.endswith("num_batches_tracked") else
                   torch.randn(s, generator=gen)) for k, s in names.items()}
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(written, path)
    build, shapes = BACKBONE_NETWORKS[network]
    net = build()
    report = load_pretrained_weights(net, path, target="encoder")
    assert report.unexpected == ["fc.weight", "fc.bias"] and not report.missing and not report.mismatched
    _assert_loaded(net.encoder, {k: v for k, v in written.items() if not k.startswith("fc.")})
    out = net.eval()(torch.rand(2, 3, 64, 64))
    for name, shape in shapes.items():
        assert out[name].shape == shape, name


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet-b0"])
def test_other_backbones_build_and_reload(tmp_path: Path, backbone: str) -> None:
    net = UNetSegClassifier(3, 2, num_classes=1, backbone=backbone, seg_task="seg", cls_task="glaucoma").eval()
    assert net.size_divisor == 32
    out = net(torch.rand(1, 3, 64, 64))
    assert out["seg"].shape == (1, 2, 64, 64) and out["glaucoma"].shape == (1, 1)
    expected = _random_like(net.encoder)
    path = tmp_path / "encoder.pt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in expected.items()}}, path)
    other = UNetSegClassifier(3, 2, backbone=backbone)
    load_pretrained_weights(other, path, target="encoder")  # 'backbone.' prefix found
    _assert_loaded(other.encoder, expected)
    with pytest.raises(ValueError, match="backbone"):
        UNetSegClassifier(3, 2, backbone="vgg16")


def _timm_vit(dim: int, depth: int, n_patches: int, mlp: int, patch: int = 16) -> dict[str, torch.Tensor]:
    """Random weights with the key names and shapes of a timm / MAE ViT of RGB input, with an MAE decoder's keys."""
    gen = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    timm = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + n_patches, dim),
            "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
            "norm.weight": r(dim), "norm.bias": r(dim), "decoder_embed.weight": r(32, dim), "mask_token": r(1, 1, 32)}
    for i in range(depth):
        timm.update({f"blocks.{i}.norm1.weight": r(dim), f"blocks.{i}.norm1.bias": r(dim),
                     f"blocks.{i}.attn.qkv.weight": r(3 * dim, dim), f"blocks.{i}.attn.qkv.bias": r(3 * dim),
                     f"blocks.{i}.attn.proj.weight": r(dim, dim), f"blocks.{i}.attn.proj.bias": r(dim),
                     f"blocks.{i}.norm2.weight": r(dim), f"blocks.{i}.norm2.bias": r(dim),
                     f"blocks.{i}.mlp.fc1.weight": r(mlp, dim), f"blocks.{i}.mlp.fc1.bias": r(mlp),
                     f"blocks.{i}.mlp.fc2.weight": r(dim, mlp), f"blocks.{i}.mlp.fc2.bias": r(dim)})
    return timm


def test_timm_vit_checkpoint_loads_with_the_key_map(tmp_path: Path) -> None:
    """A small random ViT (depth 2, dim 64) written with timm / RETFound names (an MAE checkpoint: decoder keys
    too) loads into the ViT encoder with ``key_map="timm_vit"``; every tensor lands where timm's layout says."""
    dim, depth, n = 64, 2, 16
    timm = _timm_vit(dim, depth, n, mlp=128, patch=8)
    path = tmp_path / "RETFound_mae_tiny.pth"
    torch.save({"model": timm, "epoch": 1}, path)
    net = _vit(depth)
    mask_token = net.encoder.mask_token.detach().clone()
    report = load_pretrained_weights(net, path, target="encoder", key_map="timm_vit")
    enc = net.encoder
    assert torch.equal(enc.patch_embedding.patch_embeddings.weight, timm["patch_embed.proj.weight"])
    assert torch.equal(enc.patch_embedding.position_embeddings, timm["pos_embed"][:, 1:])
    assert torch.equal(enc.cls_pos, timm["pos_embed"][:, :1])
    assert torch.equal(enc.cls_token, timm["cls_token"])
    assert torch.equal(enc.norm.weight, timm["norm.weight"])
    for i in range(depth):
        blk = enc.blocks[i]
        assert torch.equal(blk.attn.qkv.weight, timm[f"blocks.{i}.attn.qkv.weight"])
        assert torch.equal(blk.attn.out_proj.bias, timm[f"blocks.{i}.attn.proj.bias"])
        assert torch.equal(blk.mlp.linear1.weight, timm[f"blocks.{i}.mlp.fc1.weight"])
        assert torch.equal(blk.mlp.linear2.weight, timm[f"blocks.{i}.mlp.fc2.weight"])
        assert torch.equal(blk.norm2.bias, timm[f"blocks.{i}.norm2.bias"])
    # the SimMIM mask token (ours) and MONAI's unused cross-attention norms are not in a timm ViT: kept, reported;
    # the MAE decoder is not used
    assert not report.missing and "mask_token" in report.kept and torch.equal(enc.mask_token, mask_token)
    assert len(report.kept) == 1 + 2 * depth and len(report.loaded) == len(enc.state_dict()) - len(report.kept)
    assert sorted(report.unexpected) == ["mae.decoder_embed.weight", "mae.mask_token"]  # the MAE decoder's
    del timm["blocks.1.attn.qkv.weight"]
    torch.save({"model": timm}, path)
    with pytest.raises(SettingsError, match="blocks.1.attn.qkv.weight"):  # strict: a missing tensor is an error
        load_pretrained_weights(_vit(depth), path, target="encoder", key_map="timm_vit")


def test_vit_position_embeddings_of_another_grid_are_resized(tmp_path: Path) -> None:
    """A timm ViT pre-trained at 32 px (4x4 patches of 8) loads into a 64-px model (8x8 grid): the position
    embeddings are resized bicubically and reported; every other tensor loads as it is."""
    dim, depth = 64, 2
    timm = _timm_vit(dim, depth, 16, mlp=128, patch=8)
    path = tmp_path / "vit_32px.pth"
    torch.save({"model": timm}, path)
    torch.manual_seed(0)
    net = ViTClassifierMIM(in_channels=3, img_size=64, patch_size=8, hidden_size=dim, mlp_dim=128, num_layers=depth,
                           num_heads=4)  # fmt: skip
    report = load_pretrained_weights(net, path, target="encoder", key_map="timm_vit")
    pos = net.encoder.patch_embedding.position_embeddings
    expected = resize_position_embeddings(timm["pos_embed"][:, 1:], (8, 8))
    assert pos.shape == (1, 64, dim) and torch.allclose(pos, expected)
    grid = timm["pos_embed"][0, 1:].reshape(4, 4, dim)  # bicubic keeps a constant field constant, and the corners close
    assert torch.allclose(pos[0].reshape(8, 8, dim).mean(dim=(0, 1)), grid.mean(dim=(0, 1)), atol=0.2)
    assert report.resized == ["patch_embedding.position_embeddings: grid 4x4 -> 8x8"] and not report.mismatched
    assert "position embeddings resized" in report.summary()
    assert torch.equal(net.encoder.blocks[1].attn.qkv.weight, timm["blocks.1.attn.qkv.weight"])
    assert resize_position_embeddings(torch.zeros(1, 15, dim), (4, 4)) is None  # not a square grid: unknown
    timm["pos_embed"] = timm["pos_embed"][:, :16]  # CLS + 15 patches: no square grid, an error naming the key
    torch.save({"model": timm}, path)
    with pytest.raises(SettingsError, match="position_embeddings: file"):
        load_pretrained_weights(net, path, target="encoder", key_map="timm_vit")


def test_retfound_layout_loads_into_the_fundus_vit_backbone(tmp_path: Path) -> None:
    """RETFound's layout (``{"model": timm ViT + MAE decoder}``) into SePLNet's ViT backbone (timm's ViT-Ti/16 sizes
    here; RETFound is ``vit_large_patch16`` at 224 px), strict, then fine-tuned with layer-wise decay."""
    from common.networks import SePLNet

    timm = _timm_vit(192, 12, (32 // 16) ** 2, mlp=768)
    path = tmp_path / "RETFound_cfp_weights.pth"
    torch.save({"model": timm}, path)
    factors = [{"name": "age", "kind": "regression", "stage": "prior"},
               {"name": "sbp", "kind": "regression", "stage": "complex"}]
    net = SePLNet(factors, backbone="vit_tiny_patch16", image_size=32)
    report = load_pretrained_weights(net, path, target="encoder", key_map="timm_vit")
    assert not report.missing and len(report.loaded) == len(timm) - 2 + 1  # pos_embed split in two, MAE keys unused
    assert torch.equal(net.encoder.blocks[11].mlp.linear2.weight, timm["blocks.11.mlp.fc2.weight"])
    groups = encoder_param_groups(net, lr=1.0, layer_decay=0.65)
    assert len(groups) == 1 + 14 and min(g["lr"] for g in groups) == pytest.approx(0.65 ** 13)
    assert net.eval()(torch.rand(2, 3, 32, 32))["sbp"].shape == (2, 1)


def test_regex_key_map_and_explicit_prefix(tmp_path: Path) -> None:
    expected = _random_like(_net())
    renamed = {"backbone." + k.replace("encoder.", "enc_", 1): v for k, v in expected.items()}
    path = tmp_path / "renamed.pt"
    torch.save(renamed, path)
    net = _net(seed=3)
    load_pretrained_weights(net, path, prefix="backbone.", key_map={r"^enc_": "encoder."})
    _assert_loaded(net, expected)


def _write(tmp_path: Path, obj: object, name: str = "bad.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_missing_keys_fail_naming_file_and_keys(tmp_path: Path) -> None:
    state = _random_like(_net())
    dropped = [k for k in state if k.startswith("heads.glaucoma") or k.startswith("heads.cls")]
    path = _write(tmp_path, {k: v for k, v in state.items() if k not in dropped})
    with pytest.raises(SettingsError) as err:
        load_pretrained_weights(_net(), path)
    text = str(err.value)
    assert str(path) in text and dropped[0] in text and f"{len(dropped)} missing" in text
    assert "pretrained_strict false" in text
    # not strict: the rest loads, the heads keep their initial weights
    net = _net(seed=4)
    report = load_pretrained_weights(net, path, strict=False)
    assert sorted(report.missing) == sorted(dropped)
    _assert_loaded(net, {k: v for k, v in state.items() if k not in dropped})


def test_wrong_shapes_fail_naming_the_keys(tmp_path: Path) -> None:
    other = UNetSegClassifier(in_channels=3, seg_channels=3, features=(4, 8, 16), cls_hidden=8)  # 3 seg outputs
    path = _write(tmp_path, {"model": _random_like(other)})
    with pytest.raises(SettingsError) as err:
        load_pretrained_weights(_net(), path)
    text = str(err.value)
    assert str(path) in text and "heads.seg.out.weight: file (3, 4, 1, 1) vs network (2, 4, 1, 1)" in text
    report = load_pretrained_weights(_net(), path, strict=False)  # not strict: the other shapes are skipped
    assert [m.split(":")[0] for m in report.mismatched] == ["heads.seg.out.weight", "heads.seg.out.bias"]


def test_unrelated_names_fail_with_file_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, {"model": {"features.0.weight": torch.zeros(3), "classifier.bias": torch.zeros(2)}})
    with pytest.raises(SettingsError) as err:
        load_pretrained_weights(_net(), path, strict=False)
    text = str(err.value)
    assert str(path) in text and "no tensor matched" in text and "features.0.weight" in text
    assert "encoder.stem.conv_0.conv.weight" in text  # what the network expected


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "cannot be read as a PyTorch checkpoint"),
        (b"this is a text file, not a checkpoint", "cannot be read as a PyTorch checkpoint"),
        (None, "do not exist"),
        ({"epoch": 3, "optimizer": {}}, "hold no state dict"),
        ([1, 2, 3], "hold a list, not a state dict"),
    ],
    ids=["empty", "text", "missing", "no_state_dict", "list"],
)
def test_not_a_checkpoint_fails_naming_the_file(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(SettingsError, match=expected) as err:
        load_pretrained(_net(), str(path))
    assert str(path) in str(err.value)


def test_no_path_leaves_the_network_unchanged() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for path in (None, "", "None"):
        assert load_pretrained(net, path) is net
    _assert_loaded(net, before)


def test_bad_target_names_the_submodules(tmp_path: Path) -> None:
    path = _write(tmp_path, _random_like(_net()))
    with pytest.raises(SettingsError, match="pretrained_target.*'decoder'"):
        load_pretrained_weights(_net(), path, target="decoder")


def test_report_is_logged(tmp_path: Path, caplog) -> None:
    path = _write(tmp_path, _random_like(_net()), "mine.pt")
    with caplog.at_level(logging.INFO, logger="common.networks.pretrained"):
        load_pretrained(_net(), str(path), target="encoder")
    n = len(_net().encoder.state_dict())
    assert f"mine.pt (state dict, prefix 'encoder.' stripped) -> encoder: loaded {n} tensors" in caplog.text


# --- fine-tuning: learning-rate groups and freezing ---------------------------------------------------------------


def test_encoder_lr_scale_groups() -> None:
    net = _net()
    extra = [nn.Parameter(torch.zeros(2))]
    groups = encoder_param_groups(net, lr=1e-3, encoder_lr_scale=0.1, extra=extra)
    assert [g["name"] for g in groups] == ["other", "encoder"]
    assert groups[0]["lr"] == pytest.approx(1e-3) and groups[1]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.encoder_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters())) + 1  # every parameter, once
    opt = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])
    # no scaling: one group of every parameter, as network.parameters() (older resume checkpoints still load)
    single = encoder_param_groups(net, lr=1e-3, extra=extra)
    assert len(single) == 1 and single[0]["params"] == list(net.parameters()) + extra


def test_layer_decay_groups_for_a_vit() -> None:
    net = _vit(num_layers=3)
    groups = encoder_param_groups(net, lr=1.0, encoder_lr_scale=0.5, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    # embeddings (layer 0) 0.5 * 0.5**4, block i 0.5 * 0.5**(3 - i), final norm 0.5, heads 1
    assert lrs == pytest.approx({"encoder_layer_0": 0.5 ** 5, "encoder_layer_1": 0.5 ** 4, "encoder_layer_2": 0.5 ** 3,
                                 "encoder_layer_3": 0.5 ** 2, "encoder_layer_4": 0.5, "other": 1.0})
    block1 = {id(p) for p in net.encoder.blocks[1].parameters()}
    assert {id(p) for p in next(g for g in groups if g["name"] == "encoder_layer_2")["params"]} == block1
    with pytest.raises(SettingsError, match="layer_decay"):
        encoder_param_groups(_net(), lr=1.0, layer_decay=0.7)  # the U-Net encoder numbers no layers
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        encoder_param_groups(_net(), lr=1.0, encoder_lr_scale=-1)


def test_freeze_encoder_keeps_it_unchanged_then_trains_it() -> None:
    net = _net()
    freeze_epochs, epochs = 2, 4
    opt = torch.optim.AdamW(encoder_param_groups(net, lr=1e-2), lr=1e-2, weight_decay=0.1)
    x = torch.rand(2, 3, 16, 16)

    def step(engine: Engine, _: object) -> float:
        opt.zero_grad()
        out = net(x)
        loss = out["seg"].square().mean() + out["cls"].square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    FreezeEncoder(net, freeze_epochs).attach(trainer)
    snapshots: list[tuple[dict, dict]] = []
    start = ({k: v.clone() for k, v in net.encoder.state_dict().items()},
             {k: v.clone() for k, v in net.heads.state_dict().items()})

    @trainer.on(Events.EPOCH_COMPLETED)
    def _snapshot(engine: Engine) -> None:
        snapshots.append(({k: v.clone() for k, v in net.encoder.state_dict().items()},
                          {k: v.clone() for k, v in net.heads.state_dict().items()}))

    trainer.run([0, 1, 2], max_epochs=epochs)
    for epoch in range(freeze_epochs):  # encoder unchanged, heads trained
        assert all(torch.equal(v, start[0][k]) for k, v in snapshots[epoch][0].items()), epoch
        assert not all(torch.equal(v, start[1][k]) for k, v in snapshots[epoch][1].items()), epoch
    frozen_end = snapshots[freeze_epochs - 1][0]
    assert not all(torch.equal(v, frozen_end[k]) for k, v in snapshots[freeze_epochs][0].items())
    assert all(p.requires_grad for p in net.parameters())  # trainable after the run


def test_freeze_encoder_after_resume_is_trainable() -> None:
    net = _net()
    handler = FreezeEncoder(net, 2)
    engine = Engine(lambda e, b: None)
    engine.state.epoch = 3  # a run resumed after the frozen epochs
    handler(engine)
    assert all(p.requires_grad for p in net.encoder_parameters())
    engine.state.epoch = 1
    handler(engine)
    assert not any(p.requires_grad for p in net.encoder_parameters())
    assert all(p.requires_grad for p in net.heads.parameters())
    with pytest.raises(ValueError, match="epochs"):
        FreezeEncoder(net, -1)


# --- bundles: --pretrained in every train.json ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_names())
def test_bundle_trains_from_pretrained_weights(bundle: str, bundle_data, tmp_path: Path) -> None:
    """Each bundle trains a tiny run from a checkpoint of its own ``network_def`` (random weights, the file layout
    of a timm / RETFound checkpoint: ``{"model": ...}``): the whole network loads, reported in the log, with the
    encoder frozen for the first epoch and trained at a tenth of the learning rate afterwards."""
    quick = QUICK[bundle]
    parser = ConfigParser()
    parser.read_config(str(bundle_configs(bundle) / "train.json"))
    parser.update({k: v for k, v in quick.items()})
    net = parser.get_parsed_content("network_def")
    n_tensors = len(net.state_dict())
    weights = tmp_path / "pretrained.pt"
    torch.save({"model": _random_like(net), "epoch": 1}, weights)
    overrides = {"dataset_dir": str(bundle_data(bundle)), "bundle_root": str(tmp_path / "root"), **quick,
                 "epochs": 2, "pretrained": str(weights), "pretrained_target": "network",
                 "freeze_encoder_epochs": 1, "encoder_lr_scale": 0.1}
    log = log_of(run_bundle(bundle, "train.json", overrides))
    assert f"pretrained weights {weights} (checkpoint dict, key 'model') -> network: loaded {n_tensors} tensors" in log
    assert "epoch 1: encoder 'encoder'" in log and "frozen for epochs 1-1" in log, log[-3000:]
    assert "epoch 2: encoder 'encoder'" in log and "trainable" in log, log[-3000:]
    # a file of another network: one clear error naming the file, the run ends with exit 1
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(3)}}, other)
    proc = run_bundle(bundle, "train.json", {**overrides, "bundle_root": str(tmp_path / "bad"),
                                             "pretrained": str(other)}, check=False)
    assert proc.returncode == 1
    last = log_of(proc).strip().splitlines()[-1]
    assert last.startswith("SettingsError: pretrained weights") and str(other) in last and "no tensor matched" in last
