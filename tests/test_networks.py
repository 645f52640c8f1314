"""Multi-task networks: dict outputs, masked pass semantics, shared/task parameters, TorchScript, attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.networks import MultiTaskNet, ViTClassifierMIM, attention_rollout


def small_vit(**kw) -> ViTClassifierMIM:
    args = dict(in_channels=2, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2)
    args.update(kw)
    return ViTClassifierMIM(**args)


def test_multitasknet_dict_and_parameter_groups():
    net = MultiTaskNet(nn.Linear(4, 8), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 3)})
    out = net(torch.randn(5, 4))
    assert set(out) == {"a", "b"} and out["a"].shape == (5, 1) and out["b"].shape == (5, 3)
    shared = {id(p) for p in net.shared_parameters()}
    head_a = {id(p) for p in net.task_parameters("a")}
    assert shared and head_a and not shared & head_a
    with pytest.raises(ValueError, match="task"):
        list(net.task_parameters("c"))
    with pytest.raises(ValueError, match="heads"):
        MultiTaskNet(nn.Identity(), {})


def test_vit_outputs_and_shapes():
    net = small_vit().eval()
    x = torch.randn(3, 2, 32, 32)
    out = net(x)
    assert out["cls"].shape == (3, 1) and out["mim"].shape == (3, 2, 32, 32)


def test_masked_pass_does_not_change_classification():
    """With a mask, the classification head still sees the clean image (the two views are batched together)."""
    torch.manual_seed(0)
    net = small_vit().eval()
    x = torch.randn(2, 2, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :16] = 1
    clean = net(x)
    masked = net(x, mask)
    assert torch.allclose(clean["cls"], masked["cls"], atol=1e-5)
    assert not torch.allclose(clean["mim"], masked["mim"], atol=1e-4)
    # classify=False runs only the masked pass: the classification output then differs
    only = net(x, mask, classify=False)
    assert torch.allclose(only["mim"], masked["mim"], atol=1e-5)
    assert not torch.allclose(only["cls"], clean["cls"], atol=1e-5)


def test_shared_pass_classifies_the_masked_view_in_one_encoder_pass():
    torch.manual_seed(0)
    two = small_vit().eval()
    one = small_vit(shared_pass=True).eval()
    one.load_state_dict(two.state_dict())  # same parameters: the option adds none
    x = torch.randn(2, 2, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :16] = 1
    calls = []
    one.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    shared = one(x, mask)
    assert calls == [2]  # one pass of the batch, not of the doubled batch
    masked_only = two(x, mask, classify=False)
    assert torch.allclose(shared["cls"], masked_only["cls"], atol=1e-5)
    assert torch.allclose(shared["mim"], masked_only["mim"], atol=1e-5)
    assert torch.allclose(one(x)["cls"], two(x)["cls"], atol=1e-5)  # inference: the clean pass either way


def test_mask_token_replaces_masked_patches_only():
    torch.manual_seed(0)
    net = small_vit().eval()
    x = torch.randn(1, 2, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :8, :8] = 1  # first patch
    x2 = x.clone()
    x2[..., :8, :8] = 100.0  # changing the masked patch's pixels must not change the masked pass
    a = net(x, mask, classify=False)["mim"]
    b = net(x2, mask, classify=False)["mim"]
    assert torch.allclose(a, b, atol=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="divisible"):
        small_vit(img_size=30)
    with pytest.raises(ValueError, match="in_channels"):
        small_vit(in_channels=0)


def test_torchscript_export_matches_eager():
    torch.manual_seed(0)
    net = small_vit().eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 2, 32, 32)
    eager, ts = net(x), scripted(x)
    for k in ("cls", "mim"):
        assert torch.allclose(eager[k], ts[k], atol=1e-5)


def test_attention_rollout_shape_and_range():
    net = small_vit(save_attn=True).eval()
    with torch.no_grad():
        net(torch.randn(2, 2, 32, 32))
    rel = attention_rollout(net.encoder)
    assert rel.shape == (2, 4, 4)
    assert float(rel.max()) == pytest.approx(1.0) and float(rel.min()) >= 0
    with pytest.raises(ValueError, match="save_attn"):
        attention_rollout(small_vit().encoder)


def test_training_and_inference_networks_share_weights():
    """The inference network (save_attn=True) loads the training network's state dict."""
    a, b = small_vit(), small_vit(save_attn=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 32, 32)
    assert torch.allclose(a.eval()(x)["cls"], b.eval()(x)["cls"], atol=1e-5)
