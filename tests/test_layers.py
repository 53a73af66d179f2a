import itertools

import pytest
import torch

from lambdalib.layers import LambdaLayer


def naive_lambda(layer: LambdaLayer, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 2-3 position by position, straight from the paper, with no shared tricks."""
    b, _, height, width = x.shape
    n = height * width
    hk, uk = layer.heads * layer.dim_k, layer.dim_u * layer.dim_k
    q, k, v = layer.qkv(x).split([hk, uk, layer.dim_u * layer.dim_v], dim=1)
    q = layer.norm_q(q).reshape(b, layer.heads, layer.dim_k, n)
    k = k.reshape(b, layer.dim_u, layer.dim_k, n).softmax(-1)
    v = layer.norm_v(v).reshape(b, layer.dim_u, layer.dim_v, n)
    table = layer.pos_emb  # k u th tw
    th, tw = table.shape[-2:]
    if layer.position == "lc":  # the window usable on this map, centred
        uh, uw = min(th, 2 * height - 1), min(tw, 2 * width - 1)
        table = table[..., (th - uh) // 2 : (th - uh) // 2 + uh, (tw - uw) // 2 : (tw - uw) // 2 + uw]
        th, tw = uh, uw
    positions = list(itertools.product(range(height), range(width)))
    out = torch.zeros(b, layer.heads, layer.dim_v, n, dtype=x.dtype)
    for i in range(b):
        for ni, (yn, xn) in enumerate(positions):
            lam = torch.zeros(layer.dim_k, layer.dim_v, dtype=x.dtype)
            for mi, (ym, xm) in enumerate(positions):
                dy, dx = ym - yn + th // 2, xm - xn + tw // 2
                inside = 0 <= dy < th and 0 <= dx < tw
                for u in range(layer.dim_u):
                    e_nm = table[:, u, dy, dx] if inside else torch.zeros(layer.dim_k, dtype=x.dtype)
                    lam += torch.outer(k[i, u, :, mi] + e_nm, v[i, u, :, mi])
            for h in range(layer.heads):
                out[i, h, :, ni] = lam.T @ q[i, h, :, ni]
    return layer.pool(out.reshape(b, layer.dim_out, height, width))


@pytest.mark.parametrize(
    "kwargs,size",
    [
        (dict(position="rpe"), (5, 4)),
        (dict(position="rpe", dim_u=2), (3, 4)),
        (dict(position="lc", scope=3, impl="dense"), (5, 4)),
        (dict(position="lc", scope=3, impl="conv"), (5, 4)),
        (dict(position="lc", scope=5, impl="conv", dim_u=2), (4, 4)),
        (dict(position="lc", scope=23, impl="conv"), (4, 3)),  # scope far beyond the map
        (dict(position="rpe", stride=2), (4, 4)),
    ],
)
def test_layer_matches_naive_loop(kwargs, size):
    torch.manual_seed(0)
    feat = size if kwargs["position"] == "rpe" else None
    layer = LambdaLayer(6, 8, heads=2, dim_k=3, feat_size=feat, **kwargs).double()
    with torch.no_grad():  # non-trivial BN statistics so the norms are really exercised
        for bn in (layer.norm_q, layer.norm_v):
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    layer.train()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_lambda(layer, x))


def test_lc_with_full_scope_equals_rpe():
    torch.manual_seed(1)
    size = (5, 6)
    rpe = LambdaLayer(8, 8, position="rpe", feat_size=size, heads=2, dim_k=4).double()
    lc = LambdaLayer(8, 8, position="lc", scope=11, feat_size=size, heads=2, dim_k=4).double()
    assert lc.pos_emb.shape == rpe.pos_emb.shape  # scope cropped to 2*side-1 = (9, 11)
    lc.load_state_dict(rpe.state_dict())
    x = torch.randn(3, 8, *size, dtype=torch.float64)
    for impl in ("dense", "conv"):
        lc.impl = impl
        torch.testing.assert_close(lc(x), rpe(x))


def test_auto_impl_picks_conv_only_for_large_maps():
    lc = LambdaLayer(128, 128, position="lc", scope=23)
    assert not lc._use_conv(16 * 16, 23 * 23)
    assert lc._use_conv(96 * 96, 23 * 23)
    x = torch.randn(2, 128, 12, 12)
    lc.impl = "dense"
    dense = lc(x)
    lc.impl = "conv"
    torch.testing.assert_close(lc(x), dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("position", ["rpe", "lc"])
def test_gradients_finite_and_reach_every_parameter(position):
    torch.manual_seed(0)
    layer = LambdaLayer(16, 32, position=position, feat_size=(8, 8), scope=5)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    layer(x).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("position,size", [("rpe", (16, 16)), ("rpe", (8, 8)), ("lc", (16, 16)), ("lc", (8, 8))])
def test_output_scale_at_init_is_unit_order(position, size):
    """Unlike the anchors (std ~63 for lucidrains' rpe, ~15 for timm's lc), the output starts near unit scale."""
    torch.manual_seed(0)
    layer = LambdaLayer(128, 128, position=position, feat_size=size, scope=23)
    std = layer(torch.randn(16, 128, *size)).std().item()
    assert 0.3 < std < 3.0, std


def test_rpe_rejects_other_map_size_naming_both():
    layer = LambdaLayer(8, 8, position="rpe", feat_size=(10, 10), heads=2)
    with pytest.raises(ValueError, match=r"10x10.*8x8"):
        layer(torch.randn(1, 8, 8, 8))


def test_lc_accepts_any_map_size():
    layer = LambdaLayer(8, 8, position="lc", scope=23, heads=2)
    for size in [(3, 3), (7, 12), (30, 30)]:
        assert layer(torch.randn(1, 8, *size)).shape == (1, 8, *size)


def test_bad_dimensions_give_clear_errors():
    with pytest.raises(ValueError, match="not divisible by heads"):
        LambdaLayer(8, 10, heads=4, feat_size=4)
    with pytest.raises(ValueError, match="needs feat_size"):
        LambdaLayer(8, 8, position="rpe")
    with pytest.raises(ValueError, match="odd"):
        LambdaLayer(8, 8, position="lc", scope=4)
    layer = LambdaLayer(8, 8, heads=2, feat_size=4)
    with pytest.raises(ValueError, match=r"expects \(B, 8, H, W\)"):
        layer(torch.randn(1, 16, 4, 4))


def test_stride_pools_output():
    layer = LambdaLayer(8, 16, position="lc", scope=3, heads=2, stride=2)
    assert layer(torch.randn(2, 8, 8, 6)).shape == (2, 16, 4, 3)


@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_position_term_backward_matches_autograd(monkeypatch, chunk):
    """The hand-written backward (which rebuilds q.e chunk by chunk) against torch.autograd.gradcheck."""
    from lambdalib import layers

    monkeypatch.setattr(layers, "_chunk", lambda total, per_item, device: chunk)
    torch.manual_seed(0)
    b, n, h, k, slots, v = 3, 5, 2, 3, 10, 4
    q = torch.randn(n, b, h, k, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(n, k, slots, dtype=torch.float64, requires_grad=True)
    v_cols = torch.randn(b, slots, v, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layers.position_term, (q, emb, v_cols))
    expected = torch.einsum("nbhk,nkm,bmv->bnhv", q, emb, v_cols)
    torch.testing.assert_close(layers.position_term(q, emb, v_cols), expected)


@pytest.mark.parametrize("position", ["rpe", "lc"])
def test_whole_layer_gradcheck(position):
    torch.manual_seed(0)
    layer = LambdaLayer(4, 4, position=position, feat_size=(3, 3), scope=3, heads=2, dim_k=2, dim_u=2).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
