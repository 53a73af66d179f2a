"""The lambda layer (Bello 2021, "LambdaNetworks", eqs. 2-3 of the report).

For every query position n and head h (|k| = query depth, |v| = dim_out / heads, |u| = intra-depth):

    lambda_n = sum_m (softmax_m(K)_m + e_nm) v_m^T      content lambda + position lambda, |k| x |v|
    y_n      = lambda_n^T q_n                           per head; heads are concatenated

Position embeddings e_nm depend only on the offset m - n:
  * "rpe": global scope, one learned vector per offset of an (H, W) map, so the layer is tied to H, W;
  * "lc":  lambda convolution, offsets limited to an r x r window (zero outside), any map size; built with
           feat_size it stores only the offsets that map can use (2H-1 x 2W-1 when smaller than r x r), so
           it then takes any map up to that size and refuses a larger one, naming both sizes.

How the position term is computed (the layer picks the cheaper, same result):
  * "dense": contract q with the offsets first, qe[n, m] = q_n . e_nm, then y_n = sum_m qe[n, m] v_m.
    b*h*n*m*(k+v) multiply-adds: a fraction of the replaced 3x3 conv at every LR18 shape.
  * "conv":  lc only, position lambdas as a convolution of v with the r x r table (the paper's way):
    b*n*k*v*r^2 multiply-adds, cheaper than dense once the map is much larger than the scope.

Initialisation: position embeddings are N(0, 1/(|k| |u| m)) where m is the number of positions each
query sees, so y has unit scale at init (lucidrains' N(0, 1) table gives std ~ 63 at 16x16, which a
following BatchNorm hides in the forward pass but not in the gradients).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Position = Literal["rpe", "lc"]
Impl = Literal["auto", "dense", "conv"]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def relative_offsets_index(height: int, width: int, table_h: int, table_w: int) -> torch.Tensor:
    """Index (n, m) -> flat index into a (table_h, table_w) offset table centred on offset 0.

    Offsets (dy, dx) = position(m) - position(n) outside the table get index table_h * table_w,
    which points at an extra zero row (the lambda convolution's zero padding).
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[None, :] - ys[:, None] + table_h // 2  # [n, m]
    dx = xs[None, :] - xs[:, None] + table_w // 2
    inside = (dy >= 0) & (dy < table_h) & (dx >= 0) & (dx < table_w)
    return torch.where(inside, dy * table_w + dx, torch.full_like(dy, table_h * table_w))


class LambdaLayer(nn.Module):
    """Drop-in replacement for a 3x3 convolution: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride).

    Args:
        dim, dim_out: input / output channels; dim_out must divide by ``heads``.
        position: "rpe" (needs ``feat_size``, the H, W it will see) or "lc" (needs ``scope``).
        feat_size: map size; required for rpe. For lc it sizes the init and crops the stored table to the
            offsets that map can use: the layer then computes the exact lambda convolution on any map up to
            feat_size (in each direction) and raises ValueError on a larger one, whose r x r window needs
            offsets that were never stored (leave feat_size out to keep the full r x r table).
        scope: lc window side r (odd).
        dim_k, heads, dim_u: |k|, |h|, |u| of the paper.
        stride: >1 average-pools the output (as timm does), since the lambda itself is per position.
        impl: "auto" (cheapest), "dense" or "conv" (lc only); all give the same result.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        position: Position = "rpe",
        feat_size: int | tuple[int, int] | None = None,
        scope: int = 23,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        stride: int = 1,
        impl: Impl = "auto",
    ):
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
        self.feat_size = _pair(feat_size) if feat_size is not None else None

        if position == "rpe":
            if self.feat_size is None:
                raise ValueError("LambdaLayer: position='rpe' needs feat_size=(H, W), the map size it will see")
            height, width = self.feat_size
            table = (2 * height - 1, 2 * width - 1)
        else:
            if scope < 1 or scope % 2 == 0:
                raise ValueError(f"LambdaLayer: scope={scope} must be a positive odd number")
            self.scope = scope
            table = (scope, scope)
            if self.feat_size is not None:  # positions a map can never use are not stored
                table = self._scope_on(self.feat_size)

        # q, k, v by one bias-free 1x1 projection; batch norm on queries and values (the paper's choice)
        self.qkv = nn.Conv2d(dim, heads * dim_k + dim_u * dim_k + dim_u * self.dim_v, 1, bias=False)
        self.norm_q = nn.BatchNorm2d(heads * dim_k)
        self.norm_v = nn.BatchNorm2d(dim_u * self.dim_v)
        # one table for both modes: embedding of offset (dy, dx) for each (k, u), layout of a conv weight
        self.pos_emb = nn.Parameter(torch.empty(dim_k, dim_u, *table))
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self._index_cache: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    # ----------------------------------------------------------------------------------- set-up
    def _scope_on(self, size: tuple[int, int]) -> tuple[int, int]:
        """lc window actually usable on a (H, W) map: offsets beyond +-(side-1) only ever hit padding."""
        return min(self.scope, 2 * size[0] - 1), min(self.scope, 2 * size[1] - 1)

    def context_size(self) -> float:
        """Mean number of positions each query sees (sets the init scale)."""
        if self.position == "rpe":
            return float(self.feat_size[0] * self.feat_size[1])
        if self.feat_size is None:
            return float(self.scope**2)
        index = relative_offsets_index(*self.feat_size, *self.pos_emb.shape[-2:])
        return (index < self.pos_emb.shape[-2] * self.pos_emb.shape[-1]).sum(1).float().mean().item()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.qkv.weight, std=self.dim**-0.5)
        nn.init.normal_(self.pos_emb, std=(self.dim_k * self.dim_u * self.context_size()) ** -0.5)

    # ---------------------------------------------------------------------------------- forward
    def _table_for(self, height: int, width: int) -> torch.Tensor:
        """The (k, u, th, tw) offset table usable on this map (lc crops the window to the map)."""
        if self.position == "rpe":
            if (height, width) != self.feat_size:
                raise ValueError(
                    f"LambdaLayer(rpe) was built for a {self.feat_size[0]}x{self.feat_size[1]} feature map but got "
                    f"{height}x{width}: rpe embeddings are tied to the map size; build the model with the "
                    f"image size you feed it (img_size=...), or use position='lc'"
                )
            return self.pos_emb
        th, tw = self._scope_on((height, width))
        stored_h, stored_w = self.pos_emb.shape[-2:]
        if th > stored_h or tw > stored_w:  # the r x r window reaches offsets the cropped table never stored
            fh, fw = self.feat_size
            raise ValueError(
                f"LambdaLayer(lc) was built for a {fh}x{fw} feature map but got {height}x{width}: it stores only "
                f"the {stored_h}x{stored_w} offsets a {fh}x{fw} map can use, and its scope-{self.scope} window "
                f"needs {th}x{tw} on a {height}x{width} map; build the model with the image size you feed it "
                f"(img_size=...) or no larger, or build the layer without feat_size to store the full "
                f"{self.scope}x{self.scope} table"
            )
        top, left = (stored_h - th) // 2, (stored_w - tw) // 2
        return self.pos_emb[..., top : top + th, left : left + tw]

    def _use_conv(self, n: int, table_area: int) -> bool:
        if self.position == "rpe" or self.impl == "dense":
            return False
        if self.impl == "conv":
            return True
        dense_macs = self.heads * n * self.dim_u * (self.dim_k + self.dim_v)  # per query position
        conv_macs = self.dim_k * self.dim_u * self.dim_v * table_area + self.heads * self.dim_k * self.dim_v
        return conv_macs < dense_macs

    def _offsets_index(self, height: int, width: int, th: int, tw: int, device: torch.device) -> torch.Tensor:
        key = (height, width, th, tw, device)
        if key not in self._index_cache:
            self._index_cache[key] = relative_offsets_index(height, width, th, tw).flatten().to(device)
        return self._index_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.dim:
            raise ValueError(f"LambdaLayer expects (B, {self.dim}, H, W) input, got {tuple(x.shape)}")
        b, _, height, width = x.shape
        table = self._table_for(height, width)  # checks the map size first
        n, hk, uk = height * width, self.heads * self.dim_k, self.dim_u * self.dim_k
        q, k, v = self.qkv(x).split([hk, uk, self.dim_u * self.dim_v], dim=1)
        # layouts chosen so every contraction below is one batched matmul with no big permute:
        q_by_n = self.norm_q(q).reshape(b, self.heads, self.dim_k, n).permute(3, 0, 1, 2).contiguous()  # n b h k
        k = k.reshape(b, self.dim_u, self.dim_k, n).softmax(dim=-1)  # b u k m, normalised over context
        v = self.norm_v(v).reshape(b, self.dim_u, self.dim_v, n)  # b u v m

        # content lambda K^T V, shared by all positions: y_c[b, n, h, :] = q[b, n, h, :] @ lambda_c[b]
        v_cols = v.transpose(2, 3).reshape(b, self.dim_u * n, self.dim_v)  # b (u m) v
        content_lambda = torch.bmm(k.transpose(1, 2).reshape(b, self.dim_k, self.dim_u * n), v_cols)  # b k v
        q = q_by_n.transpose(0, 1).reshape(b, n * self.heads, self.dim_k)  # b (n h) k
        y = torch.bmm(q, content_lambda).view(b, n, self.heads, self.dim_v)

        th, tw = table.shape[-2:]
        if self._use_conv(n, th * tw):
            # position lambdas as a convolution of v with the table: lambda_p[b, n, k, v]
            lam = F.conv2d(v.transpose(1, 2).reshape(b * self.dim_v, self.dim_u, height, width),
                           table, padding=(th // 2, tw // 2))  # (b v) k H W
            lam = lam.reshape(b, self.dim_v, self.dim_k, n)
            y = y + torch.einsum("nbhk,bvkn->bnhv", q_by_n, lam)
        else:
            # e[n, k, (u m)] gathered from the table; offsets outside the lc scope hit a zero row
            flat = torch.cat([table.flatten(2), table.new_zeros(self.dim_k, self.dim_u, 1)], dim=2)
            index = self._offsets_index(height, width, th, tw, x.device)
            emb = flat.permute(2, 0, 1).index_select(0, index)  # (n m) k u
            emb = emb.view(n, n, self.dim_k, self.dim_u).permute(0, 2, 3, 1).reshape(n, self.dim_k, self.dim_u * n)
            y = y + position_term(q_by_n, emb, v_cols)

        # (b, n, h, v) is channels-last (b, H, W, C): hand it on as such, no copy
        y = y.reshape(b, height, width, self.dim_out).permute(0, 3, 1, 2)
        return self.pool(y)

    def extra_repr(self) -> str:
        where = f"feat_size={self.feat_size}" if self.position == "rpe" else f"scope={self.scope}"
        return (f"{self.dim}, {self.dim_out}, position={self.position}, {where}, dim_k={self.dim_k}, "
                f"heads={self.heads}, dim_u={self.dim_u}, impl={self.impl}")


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
            qe = _q_dot_e(q_by_n[start:stop], emb[start:stop])  # (b, nc h, M)
            out[:, start:stop] = torch.bmm(qe, v_cols).view(b, stop - start, h, -1)
        ctx.save_for_backward(q_by_n, emb, v_cols)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad):
        q_by_n, emb, v_cols = ctx.saved_tensors
        n, b, h, k = q_by_n.shape
        grad_q, grad_emb = torch.empty_like(q_by_n), torch.empty_like(emb)
        grad_v = torch.zeros_like(v_cols)
        for start in range(0, n, ctx.step):
            stop = min(n, start + ctx.step)
            nc = stop - start
            q_chunk = q_by_n[start:stop].reshape(nc, b * h, k)
            qe = _q_dot_e(q_by_n[start:stop], emb[start:stop])
            g = grad[:, start:stop].reshape(b, nc * h, -1)
            grad_v += torch.bmm(qe.transpose(1, 2), g)
            grad_qe = torch.bmm(g, v_cols.transpose(1, 2))  # (b, nc h, M)
            grad_qe = grad_qe.view(b, nc, h, -1).transpose(0, 1).reshape(nc, b * h, -1)
            grad_q[start:stop] = torch.bmm(grad_qe, emb[start:stop].transpose(1, 2)).view(nc, b, h, k)
            grad_emb[start:stop] = torch.bmm(q_chunk.transpose(1, 2), grad_qe)
        return grad_q, grad_emb, grad_v


def _q_dot_e(q_chunk: torch.Tensor, emb_chunk: torch.Tensor) -> torch.Tensor:
    """(nc, b, h, k) x (nc, k, M) -> (b, nc*h, M): one matmul batched over positions, then one regroup."""
    nc, b, h, k = q_chunk.shape
    qe = torch.bmm(q_chunk.reshape(nc, b * h, k), emb_chunk)  # nc (b h) M
    return qe.view(nc, b, h, -1).transpose(0, 1).reshape(b, nc * h, -1)


def position_term(q_by_n: torch.Tensor, emb: torch.Tensor, v_cols: torch.Tensor) -> torch.Tensor:
    """sum_m (q_n . e_nm) v_m for every n: q_by_n (n,b,h,k), emb (n,k,M), v_cols (b,M,v) -> (b,n,h,v).

    Under autocast q and v arrive in half precision while the table stays fp32; the Function's backward
    runs outside autocast, so all three are brought to one dtype here (autograd casts the grads back).
    """
    dtype = q_by_n.dtype
    return _PositionTerm.apply(q_by_n, emb.to(dtype), v_cols.to(dtype))
