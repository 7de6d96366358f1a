"""RIMs' fused time loop: the sequence as one autograd node with a hand-written backward.

``RIMs.forward`` (``rims_rl.cores.rims``) calls this unless ``fast_path`` is False; the reference step loop
there is the ground truth (tests/test_core_bptt.py: outputs, masks and every gradient agree to rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from rims_rl.cores.rims import RIMs

# ----------------------------------------------------------------------------------------------------------
# The fused time loop and its hand-written backward.
#
# Per step t (unit-major: h, c are [n, B, u]; m is the step's [n, B, 1] activation mask):
#   input attention (one slot, keys K_t [n,B,H,u] with the query weights folded in):
#       p = sigmoid(h . K_t)  [n,B,H];  read = p * V_t  [n,B,H,dv]
#   (several slots: scores = (h W_q) . K_t / sqrt(dk), probs = softmax over [null=0, slots], read = probs V_t)
#   LSTM: [i f o g] = [sig sig sig tanh]([read, h] W_cell + b);  c' = f c + i g;  h' = o tanh(c')
#   GRU:  [r z] = sig(gx_rz + gh_rz);  n = tanh(gx_n + r gh_n);  h' = n + z (h - n)  (gx, gh: read/h affine)
#   communication on hm = where(m, h', h): [q k v] = hm W_comm;  P = softmax_units(q . k) (top-k masked);
#       h' += (P v) W_comm_out
#   update: h = where(m, h', h), c = where(m, c', c)
# Backward runs the steps in reverse carrying dh, dc; every factor that does not depend on the incoming
# gradient (sigmoid/tanh derivatives, products of saved activations) is computed for all steps at once
# before the loop, and every weight gradient is one bmm over all T*B rows after it.
# ----------------------------------------------------------------------------------------------------------


class _Workspace:
    """The flat buffers of one ``_fused_loop`` (or ``_fused_backward``) call, taken from and given back to a
    module's pool.

    Buffers grow to the largest size asked for and are handed out as views. They go back to the pool by
    ``release()`` (no-grad calls) or when this holder dies with the autograd graph that saved it, never
    while a backward may still read them. The pool keeps at most ``keep`` sets per module (training
    holds two at once: the previous graph is freed after the next forward).
    """

    keep = 2

    def __init__(self, pool: list, opts: dict, flat: dict) -> None:
        self.pool, self.opts, self.flat, self.released = pool, opts, flat, False

    @classmethod
    def acquire(cls, core: RIMs, opts: dict, pool_name: str = "_forward_pool") -> _Workspace:
        """Buffers of ``opts`` (dtype, device) from the module's pool ``pool_name`` (see ``POOLED``)."""
        pool: list = core.__dict__.setdefault(pool_name, [])
        for i, (pool_opts, flat) in enumerate(pool):
            if pool_opts == opts:
                del pool[i]
                return cls(pool, opts, flat)
        return cls(pool, opts, {})

    def get(self, name: str, unit_major: bool, T: int, n: int, B: int, X: int) -> Tensor:
        """A [T, n, B, X] buffer; contents undefined. Unit-major storage (``unit_major``): step t's slice is
        written in the loop, and the weight gradients read all steps of a unit as [T*B, X] rows, no copy."""
        size = T * n * B * X
        flat = self.flat.get(name)
        if flat is None or flat.numel() < size:
            flat = self.flat[name] = torch.empty(size, **self.opts)
        if unit_major:
            return flat[:size].view(n, T, B, X).transpose(0, 1)
        return flat[:size].view(T, n, B, X)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if len(self.pool) < self.keep:
                self.pool.append((self.opts, self.flat))

    def __del__(self) -> None:
        self.release()


def _dropout_noise(like: Tensor, p: float) -> Tensor:
    """A dropout mask (kept entries 1/(1-p)) drawn as ``nn.Dropout`` draws it on CPU, so the reference
    path gets the same one from the same seed."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def _dropped(x: Tensor, p: float, noises: list[Tensor]) -> Tensor:
    """``x`` with dropout; the mask is appended to ``noises`` for the backward."""
    noise = _dropout_noise(x, p)
    noises.append(noise)
    return x * noise


@dataclass
class _Saved:
    """What ``_fused_loop`` keeps for ``_fused_backward``: per-step activations (views of ``workspace``
    buffers, [T, n, B, X]), per-step lists, the dropout masks drawn and the activation mask."""

    mask: Tensor
    workspace: _Workspace
    hs: Tensor | None = None
    noise_in: list[Tensor] = field(default_factory=list)
    noise_c: list[Tensor] = field(default_factory=list)
    # LSTM units
    xh: Tensor | None = None
    acts: Tensor | None = None
    tcs: Tensor | None = None
    cs: Tensor | None = None
    # GRU units
    reads: Tensor | None = None
    rzs: Tensor | None = None
    cands: Tensor | None = None
    ghns: list[Tensor] = field(default_factory=list)
    # input attention: one slot / several slots
    p_in: Tensor | None = None
    queries: Tensor | None = None
    probs_in: list[Tensor] = field(default_factory=list)
    # communication
    hms: Tensor | None = None
    qkvs: Tensor | None = None
    atts: Tensor | None = None
    probs_c: list[Tensor] = field(default_factory=list)


def _fused_loop(
    core: RIMs,
    resets: list[int],
    keep: Tensor | None,
    keys: Tensor,
    values: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_query: Tensor,
    w_comm: Tensor,
    w_comm_out: Tensor,
    *cell_w: Tensor,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, _Saved | None]:
    """The sequence without autograd: (out [T,n,B,u], cT [n,B,u], mask [T,n,B], saved).

    keys: [T,n,B,H,u] (one slot, query weights folded in) or [T,B,S,H,dk]; values: [T,B,(S,)H,dv];
    h0, c0: [n,B,u]; keep: [T,B,1] (applied before the steps listed in ``resets``); cell_w: (W_cell,
    b_cell) for LSTM, (W_x, W_hh, b_x, b_h) for GRU. ``saved`` holds what the backward needs (None if
    not ``save``); the per-step buffers are written in place with ``out=``, so saving costs no copies.
    """
    one_slot = values.dim() == 4
    T, B = values.shape[:2]
    n, u, k = core.n_units, core.unit_size, core.k
    H, dk, Dv = core.input_heads, core.input_key_size, core.input_value_size
    dv = Dv // H
    lstm, comm = core.cell == "lstm", core.use_comm
    opts: dict[str, Any] = dict(dtype=h0.dtype, device=h0.device)
    reset_set = set(resets)
    p_drop_in = core.input_dropout.p if core.training else 0.0
    p_drop_c = core.comm_dropout.p if core.training else 0.0
    out = torch.empty(T, n, B, u, **opts)
    mask = torch.zeros(T, n, B, dtype=torch.bool, device=h0.device)
    # The saved activations come from the module's pool and go back when the graph that saved them is
    # freed (or at the end of a no-grad call): fresh buffers this size come from mmap, and first-touch
    # page faults cost more than the loop's arithmetic at large batches. ``out`` and ``mask`` escape, so
    # they are always fresh.
    ws = _Workspace.acquire(core, opts)
    sv = _Saved(mask=mask, workspace=ws)
    if lstm:
        w_cell, b_cell = cell_w
        xh = ws.get("xh", True, T, n, B, Dv + u)  # the cell's input [read, h], rows for dW_cell
        reads, hs = xh[..., :Dv], xh[..., Dv:]
        acts = ws.get("acts", False, T, n, B, 4 * u)
        tcs = ws.get("tcs", False, T, n, B, u)
        cs = ws.get("cs", False, T + 1, n, B, u)
        cs[0] = c0
        sv.xh, sv.acts, sv.tcs, sv.cs = xh, acts, tcs, cs
    else:
        w_x, w_hh, b_x, b_h = cell_w
        reads = ws.get("reads", True, T, n, B, Dv)
        hs = ws.get("hs", True, T, n, B, u)
        rzs = ws.get("rzs", False, T, n, B, 2 * u)
        cands = ws.get("cands", False, T, n, B, u)
        ghns = sv.ghns
        sv.reads, sv.rzs, sv.cands = reads, rzs, cands
    sv.hs = hs
    if one_slot:
        p_in = ws.get("p_in", False, T, n, B, H)
        sv.p_in = p_in
    else:
        queries = ws.get("queries", True, T, n, B, H * dk)
        probs_in = sv.probs_in
        sv.queries = queries
    if comm:
        Hc, dkc, dvc = core.comm_heads, core.comm_key_size, core.comm_value_size
        hms = ws.get("hms", True, T, n, B, u)
        G = 2 * dkc + dvc  # one head's [query, key, value] columns (w_comm comes in head order)
        qkvs = ws.get("qkvs", False, T, n, B, Hc * G)
        atts = ws.get("atts", True, T, n, B, Hc * dvc)
        probs_c = sv.probs_c
        sv.hms, sv.qkvs, sv.atts = hms, qkvs, atts
        top_k = core.comm_top_k if core.comm_top_k is not None and core.comm_top_k < n else None

    # Every per-step view is cut once for all steps (``unbind``): indexing a tensor costs ~2 us and a
    # ``[..., a:b]`` slice ~6 us in Python, a list lookup ~0.1 us, and a step has dozens of them.
    hs_s, reads_s, mask_s, out_s = hs.unbind(0), reads.unbind(0), mask.unbind(0), out.unbind(0)
    m_s = mask.unsqueeze(-1).unbind(0)
    keys_s, values_s = keys.unbind(0), values.unbind(0)
    keep_s = keep.unbind(0) if keep is not None else ()
    if one_slot:
        p_in_s, read4_s = p_in.unbind(0), reads.view(T, n, B, H, dv).unbind(0)
    else:
        queries_s = queries.unbind(0)
    if lstm:
        xh_s, cs_s, tcs_s = xh.unbind(0), cs.unbind(0), tcs.unbind(0)
        ifo_s, g_s = acts[..., : 3 * u].unbind(0), acts[..., 3 * u :].unbind(0)
        i_s, f_s, o_s, gg_s = (a.unbind(0) for a in acts.split(u, dim=-1))
    else:
        rzs_s, r_s, z_s, cands_s = (
            rzs.unbind(0),
            rzs[..., :u].unbind(0),
            rzs[..., u:].unbind(0),
            cands.unbind(0),
        )
    if comm:
        hms_s, qkvs_s = hms.unbind(0), qkvs.unbind(0)
        heads = qkvs.view(T, n, B * Hc, G).transpose(1, 2)  # [T, B*Hc, n, G]
        q_s, k_s, v_s = (a.unbind(0) for a in heads.split((dkc, dkc, dvc), dim=-1))
        atts_s, att4_s = atts.unbind(0), atts.view(T, n, B, Hc, dvc).unbind(0)
    h = h0
    for t in range(T):
        h_t = hs_s[t]
        if t in reset_set:
            torch.mul(h, keep_s[t], out=h_t)
            if lstm:
                cs_s[t].mul_(keep_s[t])
        else:
            h_t.copy_(h)
        h = h_t
        if one_slot:
            p = torch.sigmoid(torch.linalg.vecdot(h.unsqueeze(2), keys_s[t]), out=p_in_s[t])
            score = p.mean(dim=-1)
            if p_drop_in > 0:
                p = _dropped(p, p_drop_in, sv.noise_in)
            torch.mul(p.unsqueeze(-1), values_s[t], out=read4_s[t])
        else:
            q = torch.bmm(h, w_query, out=queries_s[t]).view(n, B, H, dk)
            scores = torch.einsum("nbhd,bshd->nbhs", q, keys_s[t]) * (1.0 / math.sqrt(dk))
            probs = F.pad(scores, (1, 0)).softmax(dim=-1)
            score = 1.0 - probs[..., 0].mean(dim=-1)
            probs_in.append(probs)
            if p_drop_in > 0:
                probs = _dropped(probs, p_drop_in, sv.noise_in)
            reads_s[t].copy_(torch.einsum("nbhs,bshv->nbhv", probs[..., 1:], values_s[t]).reshape(n, B, Dv))
        mask_s[t].scatter_(0, torch.topk(score, k, dim=0).indices, True)
        m = m_s[t]
        if lstm:
            gates_ifo, gates_g = torch.baddbmm(b_cell, xh_s[t], w_cell).split((3 * u, u), dim=-1)
            torch.sigmoid(gates_ifo, out=ifo_s[t])
            torch.tanh(gates_g, out=g_s[t])
            c = cs_s[t]
            c_new = torch.addcmul(f_s[t] * c, i_s[t], gg_s[t])
            h_cell = o_s[t] * torch.tanh(c_new, out=tcs_s[t])
        else:
            gx_rz, gx_n = torch.baddbmm(b_x, reads_s[t], w_x).split((2 * u, u), dim=-1)
            gh_rz, ghn = torch.baddbmm(b_h, h, w_hh).split((2 * u, u), dim=-1)
            torch.sigmoid(gx_rz + gh_rz, out=rzs_s[t])
            r, z = r_s[t], z_s[t]
            cand = torch.tanh(torch.addcmul(gx_n, r, ghn), out=cands_s[t])
            h_cell = torch.addcmul(cand, z, h - cand)
            ghns.append(ghn)
        if comm:
            torch.where(m, h_cell, h, out=hms_s[t])
            # [B*Hc, n, G]: one small attention per (sample, head), as batched matmuls
            torch.bmm(hms_s[t], w_comm, out=qkvs_s[t])
            # Transposed, [B*Hc, n_key, n_query]: softmax over a middle dim of size n is ~3x faster on CPU
            # than over a last dim of size n.
            scores = torch.bmm(k_s[t], q_s[t].transpose(1, 2))
            if top_k is not None:
                kth = scores.topk(top_k, dim=1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            P = scores.softmax(dim=1)
            probs_c.append(P)
            if p_drop_c > 0:  # drawn in the reference's [n_query, n_key, B, Hc] order, for the same mask
                noise = _dropout_noise(P.new_empty(n, n, B, Hc), p_drop_c)
                sv.noise_c.append(noise.permute(2, 3, 1, 0).reshape(B * Hc, n, n))
                P = P * sv.noise_c[-1]
            att_heads = torch.bmm(P.transpose(1, 2), v_s[t]).view(B, Hc, n, dvc)
            att4_s[t].copy_(att_heads.permute(2, 0, 1, 3))
            h_cell = h_cell + torch.bmm(atts_s[t], w_comm_out)
        h = torch.where(m, h_cell, h, out=out_s[t])
        if lstm:
            torch.where(m, c_new, c, out=cs_s[t + 1])
    c_t = cs[T].clone() if lstm else h0.new_zeros(0)
    if not save:
        ws.release()
    return out, c_t, mask, (sv if save else None)


def _fused_backward(
    core: RIMs,
    resets: list[int],
    keep: Tensor | None,
    keys: Tensor,
    values: Tensor,
    w_query: Tensor,
    w_comm: Tensor,
    w_comm_out: Tensor,
    cell_w: tuple[Tensor, ...],
    sv: _Saved,
    d_out: Tensor,
    d_ct: Tensor,
) -> tuple[Tensor | None, ...]:
    """Gradients of ``_fused_loop`` for (keys, values, h0, c0, w_query, w_comm, w_comm_out, *cell_w).

    d_out: [T,n,B,u], d_ct: [n,B,u]. Inactive units pass dh, dc straight through (``where``), so their
    rows of every per-step gradient are zero and their weights get nothing from that step.
    """
    one_slot = values.dim() == 4
    T, B = values.shape[:2]
    n, u = core.n_units, core.unit_size
    H, dk, Dv = core.input_heads, core.input_key_size, core.input_value_size
    dv = Dv // H
    lstm, comm = core.cell == "lstm", core.use_comm
    opts: dict[str, Any] = dict(dtype=d_out.dtype, device=d_out.device)
    reset_set = set(resets)
    mf = sv.mask.to(d_out.dtype).unsqueeze(-1)  # [T,n,B,1]
    # Scratch buffers live only inside this call: they come from the module's backward pool and go back
    # at the end (PPO minibatches vary in sequence count; buffers grow to the largest seen). Fresh
    # buffers of this size come from mmap, and their first-touch page faults were ~15% of the backward.
    scratch = _Workspace.acquire(core, opts, "_backward_pool")
    ws = scratch.get
    hs = sv.hs
    assert hs is not None

    if lstm:
        w_cell_t = cell_w[0].transpose(1, 2)
        assert sv.acts is not None and sv.tcs is not None and sv.cs is not None
        i, f, o, g = sv.acts.split(u, dim=-1)
        tc, c_prev = sv.tcs, sv.cs[:T]
        k_c = o * (1.0 - tc * tc)  # dc'/dh' through h' = o tanh(c')
        # d(pre-activation) = fac * (dc' for i, f, g; dh' for o)
        fac = ws("fac", False, T, n, B, 4 * u)
        parts = [g * i * (1.0 - i), c_prev * f * (1.0 - f), tc * o * (1.0 - o), i * (1.0 - g * g)]
        torch.cat(parts, dim=-1, out=fac)
        dgates = ws("dgates", True, T, n, B, 4 * u)
        dxh = ws("dxh", False, T, n, B, Dv + u)
        dreads = dxh[..., :Dv]
        dc = d_ct
    else:
        w_x_t, w_hh_t = cell_w[0].transpose(1, 2), cell_w[1].transpose(1, 2)
        assert sv.rzs is not None and sv.cands is not None
        r, z = sv.rzs.chunk(2, dim=-1)
        cand = sv.cands
        ghn = torch.stack(sv.ghns)
        f_n = (1.0 - z) * (1.0 - cand * cand)  # dh' -> d(gx_n)
        f_r = ghn * r * (1.0 - r)  # d(gx_n) -> d(r pre-activation)
        f_z = (hs - cand) * z * (1.0 - z)  # dh' -> d(z pre-activation)
        dgx = ws("dgx", True, T, n, B, 3 * u)
        dgh = ws("dgh", True, T, n, B, 3 * u)
        dreads = ws("dreads", False, T, n, B, Dv)
    noise_in, noise_c = sv.noise_in, sv.noise_c
    if one_slot:
        p_in = cast(Tensor, sv.p_in)
        dsig = p_in * (1.0 - p_in)
        if noise_in:  # d(read)/d(p) passes the dropout mask; fold it into the sigmoid derivative
            noise_all = torch.stack(noise_in)
            dsig = dsig * noise_all
            p_in = p_in * noise_all
        ds = ws("ds", False, T, n, B, H)
    else:
        S = keys.shape[2]
        w_query_t = w_query.transpose(1, 2)
        dscores = ws("dscores", False, T, n, B, H * S).view(T, n, B, H, S)
        dqueries = ws("dqueries", True, T, n, B, H * dk)
        scale = 1.0 / math.sqrt(dk)
    if comm:
        Hc, dkc, dvc = core.comm_heads, core.comm_key_size, core.comm_value_size
        w_comm_t, w_comm_out_t = w_comm.transpose(1, 2), w_comm_out.transpose(1, 2)
        qkvs, probs_c = cast(Tensor, sv.qkvs), sv.probs_c
        dcomm = ws("dcomm", True, T, n, B, u)
        dqkv = ws("dqkv", True, T, n, B, qkvs.shape[-1])
        G = 2 * dkc + dvc

    # Per-step views cut once (see _fused_loop).
    mf_s, d_out_s, reads4_s = mf.unbind(0), d_out.unbind(0), dreads.view(T, n, B, H, dv).unbind(0)
    keys_s, values_s = keys.unbind(0), values.unbind(0)
    keep_s = keep.unbind(0) if keep is not None else ()
    if comm:
        dcomm_s, dqkv_s = dcomm.unbind(0), dqkv.unbind(0)
        heads = qkvs.view(T, n, B * Hc, G).transpose(1, 2)  # [T, B*Hc, n, G]
        q_s, k_s, v_s = (a.unbind(0) for a in heads.split((dkc, dkc, dvc), dim=-1))
        d_heads_s = dqkv.view(T, n, B * Hc, G).transpose(1, 2).unbind(0)
    if lstm:
        k_c_s, fac4_s, fac_o_s = (
            k_c.unbind(0),
            fac.view(T, n, B, 4, u).unbind(0),
            fac[..., 2 * u : 3 * u].unbind(0),
        )
        dgates_s, dg4_s = dgates.unbind(0), dgates.view(T, n, B, 4, u).unbind(0)
        dg_o_s, f_s = dgates[..., 2 * u : 3 * u].unbind(0), f.unbind(0)
        dxh_s, dxh_h_s = dxh.unbind(0), dxh[..., Dv:].unbind(0)
    else:
        f_n_s, f_r_s, f_z_s, r_s, z_s = (a.unbind(0) for a in (f_n, f_r, f_z, r, z))
        dgx_s, dgh_s, dreads_s = dgx.unbind(0), dgh.unbind(0), dreads.unbind(0)
        dgx_r_s, dgx_z_s, dgx_n_s = (a.unbind(0) for a in dgx.split(u, dim=-1))
        dgx_rz_s, dgh_rz_s, dgh_n_s = (
            dgx[..., : 2 * u].unbind(0),
            *(a.unbind(0) for a in dgh.split((2 * u, u), -1)),
        )
    if one_slot:
        dsig_s, ds_s = dsig.unbind(0), ds.unbind(0)
    else:
        dscores_s, dqueries_s = dscores.unbind(0), dqueries.unbind(0)
        dq4_s = dqueries.view(T, n, B, H, dk).unbind(0)
    dh = torch.zeros(n, B, u, **opts)
    for t in reversed(range(T)):
        m = mf_s[t]
        dh_out = d_out_s[t] + dh
        if comm:
            d_att = torch.bmm(torch.mul(dh_out, m, out=dcomm_s[t]), w_comm_out_t)
            d_att = d_att.view(n, B * Hc, dvc).transpose(0, 1)  # [B*Hc, n, dv]
            P = probs_c[t]
            P_d = P * noise_c[t] if noise_c else P  # the probabilities the values were mixed with
            dP = torch.bmm(v_s[t], d_att.transpose(1, 2))  # all [B*Hc, n_key, n_query], as in the forward
            if noise_c:
                dP = dP * noise_c[t]
            dS = P * (dP - (P * dP).sum(dim=1, keepdim=True))
            # bmm's out= into a strided view is a slow path: one cat, then one copy into the unit-major rows
            d_heads = torch.cat(
                [torch.bmm(dS.transpose(1, 2), k_s[t]), torch.bmm(dS, q_s[t]), torch.bmm(P_d, d_att)], -1
            )
            d_heads_s[t].copy_(d_heads)
            dh_out = dh_out + torch.bmm(dqkv_s[t], w_comm_t)
        dh_cell = dh_out * m
        dh = dh_out - dh_cell
        if lstm:
            dc_new = dc * m
            dc_tot = torch.addcmul(dc_new, dh_cell, k_c_s[t])
            torch.mul(fac4_s[t], dc_tot.unsqueeze(2), out=dg4_s[t])
            torch.mul(fac_o_s[t], dh_cell, out=dg_o_s[t])
            torch.bmm(dgates_s[t], w_cell_t, out=dxh_s[t])
            dc = torch.addcmul(dc - dc_new, dc_tot, f_s[t])
            dh = dh + dxh_h_s[t]
        else:
            dn = torch.mul(dh_cell, f_n_s[t], out=dgx_n_s[t])
            torch.mul(dn, f_r_s[t], out=dgx_r_s[t])
            torch.mul(dh_cell, f_z_s[t], out=dgx_z_s[t])
            dgh_rz_s[t].copy_(dgx_rz_s[t])
            torch.mul(dn, r_s[t], out=dgh_n_s[t])
            torch.bmm(dgx_s[t], w_x_t, out=dreads_s[t])
            dh = torch.addcmul(dh, dh_cell, z_s[t]) + torch.bmm(dgh_s[t], w_hh_t)
        dread = reads4_s[t]
        if one_slot:
            d_p = (dread * values_s[t]).sum(-1)
            dsv = torch.mul(d_p, dsig_s[t], out=ds_s[t])
            dh = dh + (dsv.unsqueeze(-1) * keys_s[t]).sum(-2)
        else:
            ps = sv.probs_in[t][..., 1:]
            dps = torch.einsum("nbhv,bshv->nbhs", dread, values_s[t])
            if noise_in:
                dps = dps * noise_in[t][..., 1:]
            dsc = torch.mul(ps * (dps - (ps * dps).sum(-1, keepdim=True)), scale, out=dscores_s[t])
            dq4_s[t].copy_(torch.einsum("nbhs,bshd->nbhd", dsc, keys_s[t]))
            dh = dh + torch.bmm(dqueries_s[t], w_query_t)
        if t in reset_set:
            dh = dh * keep_s[t]
            if lstm:
                dc = dc * keep_s[t]

    def rows(a: Tensor) -> Tensor:  # [T,n,B,X] -> [n,T*B,X] (a view for unit-major buffers)
        return a.transpose(0, 1).reshape(n, T * B, a.shape[-1])

    def wgrad(a: Tensor, b: Tensor) -> Tensor:  # sum over all steps and samples of a^T b, per unit
        return torch.bmm(rows(a).transpose(1, 2), rows(b))

    if lstm:
        assert sv.xh is not None
        cell_grads: tuple[Tensor, ...] = (wgrad(sv.xh, dgates), dgates.sum(dim=(0, 2)).unsqueeze(1))
    else:
        cell_grads = (
            wgrad(cast(Tensor, sv.reads), dgx),
            wgrad(hs, dgh),
            dgx.sum(dim=(0, 2)).unsqueeze(1),
            dgh.sum(dim=(0, 2)).unsqueeze(1),
        )
    if one_slot:
        d_keys = ds.unsqueeze(-1) * hs.unsqueeze(-2)  # [T,n,B,H,u]
        d_values = (p_in.unsqueeze(-1) * dreads.reshape(T, n, B, H, dv)).sum(1)
        d_wq = None
    else:
        assert sv.queries is not None
        q_all = sv.queries.view(T, n, B, H, dk)
        d_keys = torch.einsum("tnbhs,tnbhd->tbshd", dscores, q_all)
        ps_all = torch.stack(sv.probs_in)[..., 1:]
        if noise_in:
            ps_all = ps_all * torch.stack(noise_in)[..., 1:]
        d_values = torch.einsum("tnbhs,tnbhv->tbshv", ps_all, dreads.reshape(T, n, B, H, dv))
        d_wq = wgrad(hs, dqueries)
    d_wc: Tensor | None = None  # no communication: those weights get no gradient
    d_wco: Tensor | None = None
    if comm:
        assert sv.hms is not None and sv.atts is not None
        d_wc, d_wco = wgrad(sv.hms, dqkv), wgrad(sv.atts, dcomm)
    scratch.release()
    return (d_keys, d_values, dh, dc if lstm else None, d_wq, d_wc, d_wco, *cell_grads)


class _RIMsSequence(torch.autograd.Function):
    """The time loop as one autograd node: forward saves activations, backward is ``_fused_backward``."""

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx: attributes are set on it (torch's stubs do not declare them)
        core: RIMs,
        resets: list[int],
        keep: Tensor | None,
        *inputs: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, c_t, mask, saved = _fused_loop(core, resets, keep, *inputs, save=True)
        ctx.core, ctx.resets, ctx.keep, ctx.saved = core, resets, keep, saved
        keys, values, _, _, w_query, w_comm, w_comm_out, *cell_w = inputs
        ctx.save_for_backward(keys, values, w_query, w_comm, w_comm_out, *cell_w)
        ctx.mark_non_differentiable(mask)
        return out, c_t, mask

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_ct: Tensor, _: Tensor) -> tuple:
        keys, values, w_query, w_comm, w_comm_out, *cell_w = ctx.saved_tensors
        grads = _fused_backward(
            ctx.core,
            ctx.resets,
            ctx.keep,
            keys,
            values,
            w_query,
            w_comm,
            w_comm_out,
            tuple(cell_w),
            ctx.saved,
            d_out.contiguous(),
            d_ct,
        )
        return (None, None, None, *grads)
