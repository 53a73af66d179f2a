"""The lambda layer (Bello 2021, "LambdaNetworks", eqs. 2-3 of the report).

For every query position n and head h (|k| = query depth, |v| = dim_out / heads, |u| = intra-depth):

    lambda_n = sum_m (softmax_m(K)_m + e_nm) v_m^T      content lambda + position lambda, |k| x |v|
    y_n      = lambda_n^T q_n                           per head; heads are concatenated

Position embeddings e_nm depend only on the offset m - n: "rpe", one learned vector per offset of an (H, W) map
(so the layer is tied to H, W); "lc", the lambda convolution, offsets within an r x r window (zero outside), any
map size. The position term is computed "dense" (q.e first: b*h*n*m*(k+v) multiply-adds) or, lc only, "conv" (a
convolution of v with the r x r table, the paper's way: b*n*k*v*r^2, cheaper once the map is much larger than the
scope); "auto" picks the cheaper, same result.

The table is drawn N(0, 1/(|k| |u| m)), m the positions each query sees, so y has unit scale at init (an N(0, 1)
table, as lucidrains', gives y a large scale, which a following BatchNorm hides in the forward pass but not in the
gradients). The output keeps the input's memory format: a layer in an NCHW network leaves the rest of it NCHW.

The layer is scriptable, traceable (so the legacy ONNX exporter takes it), fx-traceable (the shape-dependent work
is in two ``torch.fx.wrap``-ped functions) and works under ``torch.compile`` and ``torch.export``
(tests/test_export_paths.py). TorchScript and tracing, which cannot record the memory-lean autograd Function,
compute the position term with plain ops.
"""
from __future__ import annotations

import math
import warnings
from typing import Literal, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

Position = Literal["rpe", "lc"]
Impl = Literal["auto", "dense", "conv"]


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def relative_offsets_index(height: int, width: int, table_h: int, table_w: int,
                           device: Optional[torch.device] = None) -> torch.Tensor:
    """Index (n, m) -> flat index into a (table_h, table_w) offset table centred on offset 0. Offsets
    (dy, dx) = position(m) - position(n) outside the table get index table_h * table_w, which points at an extra
    zero row (the lambda convolution's zero padding). ``device`` None: the default device (as torch.arange)."""
    pos = torch.arange(height * width, device=device)
    ys, xs = torch.div(pos, width, rounding_mode="floor"), torch.remainder(pos, width)
    dy = ys[None, :] - ys[:, None] + table_h // 2  # [n, m]
    dx = xs[None, :] - xs[:, None] + table_w // 2
    inside = (dy >= 0) & (dy < table_h) & (dx >= 0) & (dx < table_w)
    return torch.where(inside, dy * table_w + dx, torch.full_like(dy, table_h * table_w))


def _scope_window(scope: int, height: int, width: int) -> Tuple[int, int]:
    """lc window actually usable on a (H, W) map: offsets beyond +-(side-1) only ever hit padding."""
    return min(scope, 2 * height - 1), min(scope, 2 * width - 1)


def refuses_larger_maps(position: str, feat_size: Optional[Tuple[int, int]], scope: int) -> bool:
    """Whether a layer built so refuses maps larger than ``feat_size``: always for rpe (tied to its map; it
    refuses smaller ones too), and for lc when its table is cropped (a map whose 2*side-1 is below r)."""
    return position == "rpe" or (feat_size is not None and _scope_window(scope, *feat_size) != (scope, scope))


class LambdaLayer(nn.Module):
    """Drop-in replacement for a 3x3 convolution: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride).

    position "rpe" needs ``feat_size``, the (H, W) it will see; "lc" needs ``scope``, the odd window side r (an rpe
    layer's ``scope`` is 0: global). For lc, feat_size sizes the init and crops the stored table to the offsets
    that map can use: the exact lambda convolution on any map up to feat_size, and a ValueError on a larger one
    where the table was cropped (2·side−1 < r; leave feat_size out to keep the full r x r table). dim_k, heads,
    dim_u: |k|, |h|, |u| of the paper (dim_out must divide by heads). stride > 1 average-pools (as timm does).
    """

    def __init__(self, dim: int, dim_out: int | None = None, *, position: Position = "rpe",
                 feat_size: int | tuple[int, int] | None = None, scope: int = 23, dim_k: int = 16, heads: int = 4,
                 dim_u: int = 1, stride: int = 1, impl: Impl = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        if dim_out % heads:
            raise ValueError(f"LambdaLayer: dim_out={dim_out} is not divisible by heads={heads}; |v| = dim_out/heads")
        if position not in ("rpe", "lc"):
            raise ValueError(f"LambdaLayer: position={position!r}; expected 'rpe' or 'lc'")
        if impl not in ("auto", "dense", "conv") or (impl == "conv" and position == "rpe"):
            raise ValueError(f"LambdaLayer: impl={impl!r}; expected 'auto', 'dense' or (lc only) 'conv'")
        if stride < 1:
            raise ValueError(f"LambdaLayer: stride={stride} must be >= 1")
        self.dim, self.dim_out, self.position, self.impl = dim, dim_out, position, impl
        self.dim_k, self.heads, self.dim_u, self.dim_v = dim_k, heads, dim_u, dim_out // heads
        self._dims: Tuple[int, int, int, int] = (heads, dim_k, dim_u, self.dim_v)
        self.feat_size = _pair(feat_size) if feat_size is not None else None
        self._feat_hw: Tuple[int, int] = self.feat_size if self.feat_size is not None else (-1, -1)

        if position == "rpe":
            if self.feat_size is None:
                raise ValueError("LambdaLayer: position='rpe' needs feat_size=(H, W), the map size it will see")
            self.scope = 0  # global: every offset of the map
            table = (2 * self.feat_size[0] - 1, 2 * self.feat_size[1] - 1)
        else:
            if scope < 1 or scope % 2 == 0:
                raise ValueError(f"LambdaLayer: scope={scope} must be a positive odd number")
            self.scope = scope
            # positions a map can never use are not stored
            table = (scope, scope) if self.feat_size is None else _scope_window(scope, *self.feat_size)

        factory = dict(device=device, dtype=dtype)
        # q, k, v by one bias-free 1x1 projection; batch norm on queries and values (the paper's choice)
        self.qkv = nn.Conv2d(dim, heads * dim_k + dim_u * dim_k + dim_u * self.dim_v, 1, bias=False, **factory)
        self.norm_q = nn.BatchNorm2d(heads * dim_k, **factory)
        self.norm_v = nn.BatchNorm2d(dim_u * self.dim_v, **factory)
        # one table for both modes: embedding of offset (dy, dx) for each (k, u), layout of a conv weight
        self.pos_emb = nn.Parameter(torch.empty(dim_k, dim_u, *table, **factory))
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        # the dense path's (n, m) -> offset index for the map it was built for (not saved: derived), moved with
        # the module; empty when that map takes the conv path (an lc model at a large size: n^2 entries)
        index = torch.empty(0, dtype=torch.long)
        if self.feat_size is not None and not self._use_conv(math.prod(self.feat_size), math.prod(table)):
            index = relative_offsets_index(*self.feat_size, *table, device="cpu").flatten()
        self.register_buffer("offsets_index", index if device is None else index.to(device), persistent=False)
        self.reset_parameters()

    def context_size(self) -> float:
        """Mean number of positions each query sees (sets the init scale). Counted on the CPU whatever the
        layer's device (a meta-device layer has no values to count)."""
        if self.position == "rpe":
            return float(self.feat_size[0] * self.feat_size[1])
        if self.feat_size is None:
            return float(self.scope**2)
        table_h, table_w = self.pos_emb.shape[-2:]
        index = relative_offsets_index(*self.feat_size, table_h, table_w, device="cpu")
        return (index < table_h * table_w).sum(1).float().mean().item()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.qkv.weight, std=self.dim**-0.5)
        nn.init.normal_(self.pos_emb, std=(self.dim_k * self.dim_u * self.context_size()) ** -0.5)

    def _use_conv(self, n: int, table_area: int) -> bool:
        return _use_conv(self.position, self.impl, n, table_area, self._dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _checked_input(x, self.pos_emb, self.dim, self.position, self.scope, self._feat_hw)  # before any BN update
        hk, uk = self.heads * self.dim_k, self.dim_u * self.dim_k
        qkv = self.qkv(x)
        q = self.norm_q(qkv[:, :hk])
        k = qkv[:, hk : hk + uk]
        v = self.norm_v(qkv[:, hk + uk :])
        y = _lambda_output(x, q, k, v, self.pos_emb, self.offsets_index, position=self.position, impl=self.impl,
                           scope=self.scope, feat_hw=self._feat_hw, dims=self._dims)
        return self.pool(y)

    def extra_repr(self) -> str:
        where = f"feat_size={self.feat_size}" if self.position == "rpe" else f"scope={self.scope}"
        return (f"{self.dim}, {self.dim_out}, position={self.position}, {where}, dim_k={self.dim_k}, "
                f"heads={self.heads}, dim_u={self.dim_u}, impl={self.impl}")


# ------------------------------------------------------------------------------ the computation
# Free functions of tensors and plain numbers, so TorchScript compiles them and torch.fx records the two
# wrapped ones as single calls (their Python `if`s on shapes cannot be traced symbolically).
def _use_conv(position: str, impl: str, n: int, table_area: int, dims: Tuple[int, int, int, int]) -> bool:
    """Whether the position term runs as a convolution; dims = (heads, |k|, |u|, |v|)."""
    if position == "rpe" or impl == "dense":
        return False
    if impl == "conv":
        return True
    heads, dim_k, dim_u, dim_v = dims
    dense_macs = heads * n * dim_u * (dim_k + dim_v)  # per query position
    conv_macs = dim_k * dim_u * dim_v * table_area + heads * dim_k * dim_v
    return conv_macs < dense_macs


def _table_for(pos_emb: torch.Tensor, position: str, scope: int, feat_hw: Tuple[int, int], height: int,
               width: int) -> torch.Tensor:
    """The (k, u, th, tw) offset table usable on this map (lc crops the window to the map), or ValueError."""
    fh, fw = feat_hw
    if position == "rpe":
        if height != fh or width != fw:
            raise ValueError(f"LambdaLayer(rpe) was built for a {fh}x{fw} feature map but got {height}x{width}: rpe "
                             f"embeddings are tied to the map size; build the model with the image size you feed it "
                             f"(img_size=...), or use position='lc'")
        return pos_emb
    th, tw = _scope_window(scope, height, width)
    stored_h, stored_w = pos_emb.shape[-2], pos_emb.shape[-1]
    if th > stored_h or tw > stored_w:  # the r x r window reaches offsets the cropped table never stored
        raise ValueError(f"LambdaLayer(lc) was built for a {fh}x{fw} feature map but got {height}x{width}: it stores "
                         f"only the {stored_h}x{stored_w} offsets a {fh}x{fw} map can use, and its scope-{scope} "
                         f"window needs {th}x{tw} on a {height}x{width} map; build the model with the image size you "
                         f"feed it (img_size=...) or no larger, or build the layer without feat_size to store the "
                         f"full {scope}x{scope} table")
    top, left = (stored_h - th) // 2, (stored_w - tw) // 2
    return pos_emb[:, :, top : top + th, left : left + tw]


@torch.fx.wrap
def _checked_input(x: torch.Tensor, pos_emb: torch.Tensor, dim: int, position: str, scope: int,
                   feat_hw: Tuple[int, int]) -> torch.Tensor:
    """x itself, after checking its shape and that the layer can compute its map size."""
    if x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f"LambdaLayer expects (B, {dim}, H, W) input, got {list(x.shape)}")
    _table_for(pos_emb, position, scope, feat_hw, x.shape[2], x.shape[3])
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        x = _guard_traced_size(x)
    return x


def _traced_size_check(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[2] != height or x.shape[3] != width:
        raise ValueError(f"LambdaLayer was traced (torch.jit.trace) on a {height}x{width} map but got {x.shape[2]}x"
                         f"{x.shape[3]}: a trace records one map size; trace with inputs of the size you feed it, or "
                         f"use torch.jit.script")
    return x


_SCRIPTED: dict = {}


@torch.jit.unused
def _guard_traced_size(x: torch.Tensor) -> torch.Tensor:
    """Under torch.jit.trace, x passed through a scripted size check, which the trace records (a trace keeps no
    Python `if`): the traced module then refuses another map size in one line instead of failing deep inside
    or computing the wrong map. Left out of an ONNX export (which cannot hold the raise; ONNX Runtime checks the
    input's static shape itself)."""
    if torch.onnx.is_in_onnx_export():
        return x
    if "size_check" not in _SCRIPTED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
            _SCRIPTED["size_check"] = torch.jit.script(_traced_size_check)
    return _SCRIPTED["size_check"](x, x.shape[2], x.shape[3])


@torch.fx.wrap
def _lambda_output(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos_emb: torch.Tensor,
                   offsets_index: torch.Tensor, *, position: str, impl: str, scope: int, feat_hw: Tuple[int, int],
                   dims: Tuple[int, int, int, int]) -> torch.Tensor:
    """y = (content + position lambdas) applied to the queries, (b, heads*dim_v, H, W) in x's memory format.
    q: normalised queries (b, h*k, H, W); k: keys (b, u*k, H, W); v: normalised values (b, u*v, H, W);
    dims = (heads, |k|, |u|, |v|)."""
    heads, dim_k, dim_u, dim_v = dims
    b, height, width = q.shape[0], q.shape[2], q.shape[3]
    n = height * width
    table = _table_for(pos_emb, position, scope, feat_hw, height, width)
    # channels-last and not also plain contiguous (C == 1 or 1x1 maps are both)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    # layouts chosen so every contraction below is one batched matmul with no big permute:
    q = q.reshape(b, heads, dim_k, n)
    q_by_n = q.permute(3, 0, 1, 2).contiguous()  # n b h k
    k = k.reshape(b, dim_u, dim_k, n).softmax(dim=-1)  # b u k m, normalised over context
    v = v.reshape(b, dim_u, dim_v, n)  # b u v m

    # content lambda K^T V, shared by all positions: y_c[b, n, h, :] = q[b, n, h, :] @ lambda_c[b]
    v_cols = v.transpose(2, 3).reshape(b, dim_u * n, dim_v)  # b (u m) v
    content_lambda = torch.bmm(k.transpose(1, 2).reshape(b, dim_k, dim_u * n), v_cols)  # b k v
    if channels_last:  # y as (b, n, h, v) = (b, H, W, C)
        y = torch.bmm(q_by_n.transpose(0, 1).reshape(b, n * heads, dim_k), content_lambda).view(b, n, heads, dim_v)
    else:  # y as (b, h, v, n) = (b, C, H, W): lambda_c^T q per head
        y = torch.matmul(content_lambda.transpose(1, 2).unsqueeze(1), q)

    th, tw = table.shape[-2], table.shape[-1]
    if _use_conv(position, impl, n, th * tw, dims):
        # position lambdas as a convolution of v with the table: lambda_p[b, n, k, v]
        if not torch.jit.is_scripting() and torch.compiler.is_dynamo_compiling():
            # torch.compile: once the map size is dynamic (a second image size) inductor cannot lay out this
            # conv's one-channel input (`1 < s0` undecidable, torch 2.14), so the conv runs outside the graph
            lam = _conv_lambdas_outside_compile(v, table, height, width)
        else:
            lam = _conv_lambdas(v, table, height, width)
        position_y = torch.einsum("nbhk,bvkn->bnhv", q_by_n, lam)
    else:
        # e[n, k, (u m)] gathered from the table; offsets outside the lc scope hit a zero row
        flat = torch.cat([table.flatten(2), table.new_zeros(dim_k, dim_u, 1)], dim=2)
        if height == feat_hw[0] and width == feat_hw[1] and offsets_index.numel() == n * n:
            index = offsets_index  # the map the layer was built for
        else:
            index = relative_offsets_index(height, width, th, tw, device=x.device).flatten()
        emb = flat.permute(2, 0, 1).index_select(0, index)  # (n m) k u
        emb = emb.view(n, n, dim_k, dim_u).permute(0, 2, 3, 1).reshape(n, dim_k, dim_u * n)
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            position_y = _position_term_plain(q_by_n, emb, v_cols)
        else:
            position_y = position_term(q_by_n, emb, v_cols)  # (b, n, h, v)
    if channels_last:  # (b, n, h, v) is channels-last (b, H, W, C): hand it on as such, no copy
        return (y + position_y).reshape(b, height, width, heads * dim_v).permute(0, 3, 1, 2)
    return (y + position_y.permute(0, 2, 3, 1)).reshape(b, heads * dim_v, height, width)


def _conv_lambdas(v: torch.Tensor, table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Position lambdas lambda_p[b, v, k, n] as a convolution of the values v (b, u, v, n) with the table."""
    b, dim_u, dim_v = v.shape[0], v.shape[1], v.shape[2]
    lam = F.conv2d(v.transpose(1, 2).reshape(b * dim_v, dim_u, height, width), table,
                   padding=(table.shape[-2] // 2, table.shape[-1] // 2))  # (b v) k H W
    return lam.reshape(b, dim_v, table.shape[0], height * width)


@torch.jit.unused
@torch.compiler.disable
def _conv_lambdas_outside_compile(v: torch.Tensor, table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return _conv_lambdas(v, table, height, width)


def _chunk(total: int, per_item: int, device: torch.device) -> int:
    """Positions per chunk so one chunk's q.e map stays cache-sized on CPU (~4 MB) and large on GPU."""
    budget = 1 << 20 if device.type == "cpu" else 1 << 26
    return max(1, min(total, budget // max(per_item, 1)))


class _PositionTerm(torch.autograd.Function):
    """y[b, n, h, :] = sum_m (q[n, b, h, :] . e[n, :, m]) v[b, m, :], in chunks of query positions.

    The q.e map (b x n x h x m, the size of an attention map) is never kept: it is rebuilt chunk by
    chunk in backward, so memory stays O(inputs) for one extra q.e product. Chunking over positions
    (not examples) keeps every matmul wide: the per-position products see all b*h query rows at once.
    Shapes: q_by_n (n, b, h, k), emb (n, k, M), v_cols (b, M, v) with M = u*m context slots.
    """

    @staticmethod
    def forward(ctx, q_by_n, emb, v_cols):
        n, b, h, _ = q_by_n.shape
        step = _chunk(n, b * h * emb.shape[-1], q_by_n.device)
        out = q_by_n.new_empty(b, n, h, v_cols.shape[-1])
        for start in range(0, n, step):
            stop = min(n, start + step)
            out[:, start:stop] = _position_term_plain(q_by_n[start:stop], emb[start:stop], v_cols)
        ctx.save_for_backward(q_by_n, emb, v_cols)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad):
        q_by_n, emb, v_cols = ctx.saved_tensors
        n, b, h, k = q_by_n.shape
        grad_q, grad_emb, grad_v = torch.empty_like(q_by_n), torch.empty_like(emb), torch.zeros_like(v_cols)
        for start in range(0, n, ctx.step):
            stop = min(n, start + ctx.step)
            nc = stop - start
            qe = _q_dot_e(q_by_n[start:stop], emb[start:stop])
            g = grad[:, start:stop].reshape(b, nc * h, -1)
            grad_v += torch.bmm(qe.transpose(1, 2), g)
            grad_qe = torch.bmm(g, v_cols.transpose(1, 2))  # (b, nc h, M)
            grad_qe = grad_qe.view(b, nc, h, -1).transpose(0, 1).reshape(nc, b * h, -1)
            grad_q[start:stop] = torch.bmm(grad_qe, emb[start:stop].transpose(1, 2)).view(nc, b, h, k)
            grad_emb[start:stop] = torch.bmm(q_by_n[start:stop].reshape(nc, b * h, k).transpose(1, 2), grad_qe)
        return grad_q, grad_emb, grad_v


def _q_dot_e(q_chunk: torch.Tensor, emb_chunk: torch.Tensor) -> torch.Tensor:
    """(nc, b, h, k) x (nc, k, M) -> (b, nc*h, M): one matmul batched over positions, then one regroup."""
    nc, b, h, k = q_chunk.shape[0], q_chunk.shape[1], q_chunk.shape[2], q_chunk.shape[3]
    qe = torch.bmm(q_chunk.reshape(nc, b * h, k), emb_chunk)  # nc (b h) M
    return qe.view(nc, b, h, -1).transpose(0, 1).reshape(b, nc * h, -1)


@torch.jit.unused
def position_term(q_by_n: torch.Tensor, emb: torch.Tensor, v_cols: torch.Tensor) -> torch.Tensor:
    """sum_m (q_n . e_nm) v_m for every n: q_by_n (n,b,h,k), emb (n,k,M), v_cols (b,M,v) -> (b,n,h,v).
    Under autocast q and v arrive in half precision while the table stays fp32; the Function's backward runs
    outside autocast, so all three are brought to one dtype here (autograd casts the grads back)."""
    return _PositionTerm.apply(q_by_n, emb.to(q_by_n.dtype), v_cols.to(q_by_n.dtype))


def _position_term_plain(q_by_n: torch.Tensor, emb: torch.Tensor, v_cols: torch.Tensor) -> torch.Tensor:
    """position_term as plain ops in one chunk: _PositionTerm's forward per chunk, and TorchScript's and tracing's
    whole position term (they cannot record the autograd Function; autograd keeps the q.e map for backward)."""
    n, b, h = q_by_n.shape[0], q_by_n.shape[1], q_by_n.shape[2]
    qe = _q_dot_e(q_by_n, emb.to(q_by_n.dtype))  # (b, n h, M)
    return torch.bmm(qe, v_cols.to(q_by_n.dtype)).view(b, n, h, v_cols.shape[-1])
