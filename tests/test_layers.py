import itertools

import pytest
import torch

import lambdalib
from lambdalib.layers import LambdaLayer


def naive_lambda(layer: LambdaLayer, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 2-3 position by position, straight from the paper, with no shared tricks.

    e_nm is the stored table's entry for offset m - n (the table is centred on offset 0); for lc it is zero
    outside the r x r scope. An in-scope offset the (cropped) table does not hold raises LookupError: no
    layer could compute that map without inventing parameters.
    """
    b, _, height, width = x.shape
    n = height * width
    hk, uk = layer.heads * layer.dim_k, layer.dim_u * layer.dim_k
    q, k, v = layer.qkv(x).split([hk, uk, layer.dim_u * layer.dim_v], dim=1)
    q = layer.norm_q(q).reshape(b, layer.heads, layer.dim_k, n)
    k = k.reshape(b, layer.dim_u, layer.dim_k, n).softmax(-1)
    v = layer.norm_v(v).reshape(b, layer.dim_u, layer.dim_v, n)
    table = layer.pos_emb  # k u th tw
    th, tw = table.shape[-2:]
    reach = layer.scope // 2 if layer.position == "lc" else max(height, width)  # rpe: global scope
    zero = torch.zeros(layer.dim_k, dtype=x.dtype)
    positions = list(itertools.product(range(height), range(width)))
    out = torch.zeros(b, layer.heads, layer.dim_v, n, dtype=x.dtype)
    for ni, (yn, xn) in enumerate(positions):
        lam = torch.zeros(b, layer.dim_k, layer.dim_v, dtype=x.dtype)  # lambda_n of every example
        for mi, (ym, xm) in enumerate(positions):
            dy, dx = ym - yn, xm - xn
            in_scope = abs(dy) <= reach and abs(dx) <= reach
            ty, tx = dy + th // 2, dx + tw // 2
            if in_scope and not (0 <= ty < th and 0 <= tx < tw):
                raise LookupError(f"offset ({dy}, {dx}) is in scope but not in the {th}x{tw} table")
            for u in range(layer.dim_u):
                e_nm = table[:, u, ty, tx] if in_scope else zero
                lam += (k[:, u, :, mi] + e_nm)[:, :, None] * v[:, u, None, :, mi]  # outer product per example
        for h in range(layer.heads):
            out[:, h, :, ni] = (lam.transpose(1, 2) @ q[:, h, :, ni, None])[..., 0]
    return layer.pool(out.reshape(b, layer.dim_out, height, width))


def _nontrivial_norms(layer: LambdaLayer) -> LambdaLayer:
    with torch.no_grad():  # non-trivial BN statistics so the norms are really exercised
        for bn in (layer.norm_q, layer.norm_v):
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    return layer


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
    layer = _nontrivial_norms(LambdaLayer(6, 8, heads=2, dim_k=3, feat_size=feat, **kwargs).double())
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


@pytest.mark.parametrize("dim_u", [1, 4])
def test_the_position_table_starts_at_its_documented_scale(dim_u):
    """N(0, 1/(|k|·|u|·context)): an output sums |k|·|u|·context position terms, so it starts near unit scale."""
    torch.manual_seed(0)
    layer = LambdaLayer(128, 128, position="rpe", feat_size=(16, 16), dim_u=dim_u)
    assert layer.pos_emb.std().item() == pytest.approx((16 * dim_u * 16 * 16) ** -0.5, rel=0.05)


def test_rpe_rejects_other_map_size_naming_both():
    layer = LambdaLayer(8, 8, position="rpe", feat_size=(10, 10), heads=2)
    with pytest.raises(ValueError, match=r"10x10.*8x8"):
        layer(torch.randn(1, 8, 8, 8))


def test_lc_accepts_any_map_size():
    layer = LambdaLayer(8, 8, position="lc", scope=23, heads=2)
    for size in [(3, 3), (7, 12), (30, 30)]:
        assert layer(torch.randn(1, 8, *size)).shape == (1, 8, *size)


LC_MAPS = [(5, 5), (8, 8), (9, 9), (12, 12), (6, 11), (3, 8)]  # smaller, equal, larger, non-square


@pytest.mark.parametrize("size", LC_MAPS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scope", [7, 23])
def test_lc_built_for_a_map_on_other_maps(scope, size):
    """lc built for 8x8 on other maps: the true lambda convolution (the naive loop), or a clear refusal.

    scope 7 fits an 8x8 map, so the full 7x7 table is stored and every map is computed exactly. Scope 23
    stores only the 15x15 offsets an 8x8 map can use: maps up to 8x8 are exact; a larger side needs offsets
    that were never stored (the reference cannot compute them either), so every impl refuses, naming both.
    """
    torch.manual_seed(0)
    layer = _nontrivial_norms(
        LambdaLayer(6, 8, position="lc", feat_size=(8, 8), scope=scope, heads=2, dim_k=3).double()
    )
    assert layer.pos_emb.shape[-2:] == ((7, 7) if scope == 7 else (15, 15))
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    fits = scope == 7 or max(size) <= 8
    if fits:
        expected = naive_lambda(layer, x)
    else:
        with pytest.raises(LookupError):
            naive_lambda(layer, x)
    for impl in ("dense", "conv", "auto"):
        layer.impl = impl
        if fits:
            torch.testing.assert_close(layer(x), expected, msg=lambda m: f"impl={impl}: {m}")  # noqa: B023
        else:
            with pytest.raises(ValueError, match=rf"built for a 8x8 feature map but got {size[0]}x{size[1]}"):
                layer(x)


def test_lc_model_on_other_image_sizes():
    """LR18_L2(lc) built at 64 px (8x8 map at the lambda layer): exact on images up to that, refused beyond."""
    torch.manual_seed(0)
    model = lambdalib.create("LR18_L2(lc)", num_classes=10, img_size=64).eval()
    layer = next(m for m in model.modules() if isinstance(m, LambdaLayer))
    seen = []
    hook = layer.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        for image in [(48, 48), (64, 48)]:  # 6x6 and 8x6 maps
            seen.clear()
            assert model(torch.randn(1, 3, *image)).shape == (1, 10)
            (x, out), = seen
            torch.testing.assert_close(out, naive_lambda(layer, x), rtol=1e-4, atol=1e-4)
        for image, side in [(72, 9), (96, 12)]:
            with pytest.raises(ValueError, match=rf"8x8 feature map but got {side}x{side}"):
                model(torch.randn(1, 3, image, image))
    hook.remove()


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


# --------------------------------------------------------------------------- memory format (#23), device, dtype
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kwargs", [dict(position="rpe", feat_size=(6, 6)), dict(position="lc", scope=5),
                                    dict(position="lc", scope=3, impl="conv")], ids=["rpe", "lc-dense", "lc-conv"])
def test_output_keeps_the_input_memory_format(kwargs, stride):
    """NCHW in, NCHW out (the layer used to hand on a channels-last view, switching the rest of an NCHW network
    to NHWC: DDP's "Grad strides do not match bucket view strides"); channels-last in, channels-last out."""
    torch.manual_seed(0)
    layer = _nontrivial_norms(LambdaLayer(8, 16, heads=2, dim_k=4, stride=stride, **kwargs)).train()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    y = layer(x)
    assert y.is_contiguous(), y.stride()
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous()
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y_cl = layer(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous(), y_cl.stride()
    torch.testing.assert_close(y_cl, y)


def test_nchw_model_stays_nchw_after_the_lambda_layer():
    model = lambdalib.create("LR18_L3(lc)", num_classes=10, img_size=64)
    layer = next(m for m in model.modules() if isinstance(m, LambdaLayer))
    seen = []
    hook = layer.register_forward_hook(lambda mod, args, out: seen.append(out))
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    hook.remove()
    assert seen[0].is_contiguous()
    assert all(p.grad.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("position", ["rpe", "lc"])
def test_layer_is_built_on_the_device_and_dtype_asked(position):
    """device=/dtype= reach every tensor (timm's create_model(..., device=, dtype=)); under a meta-device context
    the init still works (it used to call .item() on a meta tensor)."""
    kwargs = dict(position=position, feat_size=(6, 6), scope=23, heads=2)
    layer = LambdaLayer(8, 8, device="meta", dtype=torch.bfloat16, **kwargs)
    tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
    assert {k for k, t in tensors.items() if t.device.type != "meta"} == set()
    assert {k for k, t in tensors.items() if t.is_floating_point() and t.dtype != torch.bfloat16} == set()
    assert layer(torch.randn(2, 8, 6, 6, device="meta", dtype=torch.bfloat16)).shape == (2, 8, 6, 6)
    with torch.device("meta"):
        assert LambdaLayer(8, 8, **kwargs).pos_emb.is_meta
    torch.manual_seed(0)
    real = LambdaLayer(8, 8, dtype=torch.bfloat16, **kwargs)
    assert real(torch.randn(2, 8, 6, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_context_size_counts_the_positions_each_query_sees():
    """The init scale's context size, counted on the CPU whatever the device, against a plain count."""
    layer = LambdaLayer(8, 8, position="lc", feat_size=(5, 7), scope=5, heads=2, device="meta")
    reach = 2  # scope 5: offsets -2..2
    counts = [sum(abs(ym - yn) <= reach and abs(xm - xn) <= reach for ym in range(5) for xm in range(7))
              for yn in range(5) for xn in range(7)]
    assert layer.context_size() == pytest.approx(sum(counts) / len(counts), rel=1e-6)


def test_offsets_index_is_derived_state():
    """The dense path's offset index is a buffer (moves with .to(), seen by TorchScript) but not a weight: the
    state_dict is what it was, and an lc layer that takes the conv path at its size stores none."""
    dense = LambdaLayer(8, 8, position="lc", feat_size=(6, 6), scope=23, heads=2)
    assert "offsets_index" not in dense.state_dict() and dense.offsets_index.numel() == 36 * 36
    conv = LambdaLayer(8, 8, position="lc", feat_size=(6, 6), scope=5, heads=2, impl="conv")
    assert conv.offsets_index.numel() == 0
    assert set(dense.state_dict()) == {"qkv.weight", "pos_emb", *(f"norm_{n}.{k}" for n in "qv" for k in (
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"))}
