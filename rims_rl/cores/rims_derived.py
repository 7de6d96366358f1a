"""RIMs' time loop re-derived for fewer, cheaper kernels per step (one input slot, LSTM units).

``RIMs.forward`` runs this by default where it applies (``RIMs.derived_step``); the reference step loop
(``fast_path = False``) is the ground truth and ``rims_rl.cores.rims_fused`` the general fused loop (GRU
units, several input slots). All three agree to rounding (tests/test_core_bptt.py).

Why: at PPO's chunk shape (B=8, T=32, width 192) a step's arithmetic is tiny and its cost is the number
of kernels it launches (~2 us each on CPU, more with Python around them). The re-derivation moves the
input side of the cell's matmul out of the loop::

    read[n,b]  = concat_h  p'[n,b,h] * V[t,b,h]          (p' = dropped attention probability, [n,B,H])
    read W_x   = sum_h p'[n,b,h] * (V[t,b,h] W_x[n,h])   =  p' . VW[t,n,b]

so ``VW[t,n,b,h,:] = V[t,b,h,:] @ W_x[n, h-th block of rows]`` is one batched matmul over all T steps
before the loop, and a step's input gates are a [1, H+1] x [H+1, 4u] product per (unit, sample), the
bias riding on a constant 1 in slot H. Per step (unit-major; h, c [n,B,u]; K_t [n,B,H,u] folded keys)::

    p      = sigmoid(K_t h)                     [n,B,H]     score = mean_h p; mask = top-k units
    gates  = [p', 1] VW_aug[t] + h W_hh         [n,B,4u]    (i, f, o sigmoid; g tanh)
    c'     = f c + i g;   h' = o tanh(c')
    hm     = where(m, h', h);  [q k v] = hm W_comm;  P = softmax_units(q . k);  h' += (P v) W_comm_out
    h, c   = where(m, h', h), where(m, c', c)

Backward runs the steps in reverse by hand, as ``rims_fused`` does; ``VW`` is never differentiated as a
tensor: ``dW_x`` and ``dV`` come from ``read`` and ``dgates`` as matmuls over all T*B rows after the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rims_rl.cores import rims_ext
from rims_rl.cores.rims_fused import _dropout_noise, _Workspace

if TYPE_CHECKING:
    from rims_rl.cores.rims import RIMs


@dataclass
class _DerivedSaved:
    """Activations ``_derived_loop`` keeps for ``_derived_backward`` (views of ``workspace`` buffers)."""

    mask: Tensor  # [T, n, B] bool
    workspace: _Workspace
    vw: Tensor  # [T, n, B, H + 1, 4u]: V_t W_x per head, then the bias
    pd: Tensor  # [T, n, B, H + 1]: dropped input probabilities, then 1
    p: Tensor  # [T, n, B, H]: input probabilities (before dropout)
    hs: Tensor  # [T, n, B, u]: h entering each step (after resets)
    acts: Tensor  # [T, n, B, 4u]: i, f, o, g
    tcs: Tensor  # [T, n, B, u]: tanh(c')
    cs: Tensor  # [T + 1, n, B, u]: c entering each step (after resets), then the final c
    noise_in: Tensor | None = None  # [T, n, B, H] input-dropout masks (dropout only)
    hms: Tensor | None = None  # communication: input, projections, attended values
    qkvs: Tensor | None = None
    atts: Tensor | None = None
    probs_c: Tensor | None = None  # [T, B*Hc, n_key, n_query] attention probabilities
    noise_c: Tensor | None = None  # [T, B*Hc, n_key, n_query] dropout masks (dropout only)


def _derived_loop(
    core: RIMs,
    resets: list[int],
    keep: Tensor | None,
    keys: Tensor,
    values: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_x: Tensor,
    w_hh: Tensor,
    b: Tensor,
    w_comm: Tensor,
    w_comm_out: Tensor,
    *,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, _DerivedSaved | None]:
    """The sequence without autograd: (out [T,n,B,u], cT [n,B,u], mask [T,n,B], saved or None).

    keys: [T,n,B,H,u] (query weights and scale folded in); values: [T,B,H,dv]; h0, c0: [n,B,u];
    keep: [T,B,1], applied before the steps in ``resets``; w_x: [n,H*dv,4u]; w_hh: [n,u,4u];
    b: [n,1,4u] (b_x + b_h); w_comm: [n,u,Hc*(2dk+dv)] in head order, query scaled (``_fused_weights``).
    """
    T, B, H, dv = values.shape
    n, u, k = core.n_units, core.unit_size, core.k
    G4 = 4 * u
    comm = core.use_comm
    opts: dict[str, Any] = dict(dtype=h0.dtype, device=h0.device)
    reset_set = set(resets)
    p_drop_in = core.input_dropout.p if core.training else 0.0
    p_drop_c = core.comm_dropout.p if core.training else 0.0
    out = torch.empty(T, n, B, u, **opts)
    mask = torch.zeros(T, n, B, dtype=torch.bool, device=h0.device)
    ws = _Workspace.acquire(core, opts, "_derived_pool")
    # VW_aug: one batched matmul for all steps, [T, n, B, H + 1, 4u]; slot H holds the bias.
    vw = ws.get("vw", False, T, n, B, (H + 1) * G4).view(T, n, B, H + 1, G4)
    vw[:, :, :, :H] = torch.einsum("tbhd,nhdg->tnbhg", values, w_x.view(n, H, dv, G4))
    vw[:, :, :, H] = b
    pd = ws.get("pd", False, T, n, B, H + 1)
    pd[..., H] = 1.0
    use_ext = rims_ext.usable(h0)
    p_all = ws.get("p", False, T, n, B, H) if p_drop_in > 0 or use_ext else pd[..., :H]
    hs = ws.get("hs", False, T, n, B, u)  # time-major: a step's [n*B, u, 1] view feeds a bmm
    acts = ws.get("acts", False, T, n, B, G4)
    tcs = ws.get("tcs", False, T, n, B, u)
    cs = ws.get("cs", False, T + 1, n, B, u)
    cs[0] = c0
    sv = _DerivedSaved(mask, ws, vw, pd, p_all, hs, acts, tcs, cs)

    top_k: int | None = None
    if comm:
        Hc, dkc, dvc = core.comm_heads, core.comm_key_size, core.comm_value_size
        Gc = 2 * dkc + dvc
        hms = ws.get("hms", False, T, n, B, u)
        qkvs = ws.get("qkvs", False, T, n, B, Hc * Gc)
        atts = ws.get("atts", False, T, n, B, Hc * dvc)
        sv.hms, sv.qkvs, sv.atts = hms, qkvs, atts
        top_k = core.comm_top_k if core.comm_top_k is not None and core.comm_top_k < n else None
    if use_ext:  # the same steps as the loop below, in C++ (``rims_ext``)
        none = h0.new_empty(0)
        if comm:
            sv.probs_c = ws.get("probs_c", False, T, B * Hc, n, n)
            if p_drop_c > 0:
                sv.noise_c = ws.get("noise_c", False, T, B * Hc, n, n)
        if p_drop_in > 0:
            sv.noise_in = ws.get("noise_in", False, T, n, B, H)
        ext = rims_ext.extension()
        assert ext is not None
        keep_c = None if keep is None else keep.contiguous()  # the policy's starts come transposed
        ext.forward(
            keys, vw, w_hh, w_comm, w_comm_out, h0.contiguous(), keep_c, resets, out, mask, hs, cs, acts, tcs,
            p_all, pd, none if sv.noise_in is None else sv.noise_in,
            *(none, none, none) if not comm else (hms, qkvs, atts),
            none if sv.probs_c is None else sv.probs_c, none if sv.noise_c is None else sv.noise_c,
            k, top_k or 0, *(0, 0, 0) if not comm else (Hc, dkc, dvc), p_drop_in, p_drop_c, comm,
        )  # fmt: skip
        c_t = cs[T].clone()
        if not save:
            ws.release()
        return out, c_t, mask, (sv if save else None)

    # Per-step views, cut once (a Python slice costs more than the small kernels it feeds).
    vw_s = vw.view(T, n * B, H + 1, G4).unbind(0)
    keys_s = keys.view(T, n * B, H, u).unbind(0)
    pd_s, pdh_s, p_s = pd.view(T, n * B, 1, H + 1).unbind(0), pd[..., :H].unbind(0), p_all.unbind(0)
    hs_s, cs_s, tcs_s, out_s = hs.unbind(0), cs.unbind(0), tcs.unbind(0), out.unbind(0)
    ifo_s, g_s = acts[..., : 3 * u].unbind(0), acts[..., 3 * u :].unbind(0)
    i_s, f_s, o_s, gg_s = (a.unbind(0) for a in acts.split(u, dim=-1))
    mask_s, m_s = mask.unbind(0), mask.unsqueeze(-1).unbind(0)
    keep_s = keep.unbind(0) if keep is not None else ()
    if comm:
        hms_s, qkvs_s, atts_s = hms.unbind(0), qkvs.unbind(0), atts.unbind(0)
        att4_s = atts.view(T, n, B, Hc, dvc).unbind(0)
        heads = qkvs.view(T, n, B * Hc, Gc).transpose(1, 2)  # [T, B*Hc, n, Gc]: one attention per (b, head)
        q_s, k_s, v_s = (a.unbind(0) for a in heads.split((dkc, dkc, dvc), dim=-1))

    noise_in: list[Tensor] = []
    probs_c: list[Tensor] = []
    noise_cs: list[Tensor] = []
    h = h0
    for t in range(T):
        h_t = hs_s[t]
        if t in reset_set:
            torch.mul(h, keep_s[t], out=h_t)
            cs_s[t].mul_(keep_s[t])
        else:
            h_t.copy_(h)
        h = h_t
        p = torch.sigmoid(torch.bmm(keys_s[t], h.view(n * B, u, 1)).view(n, B, H), out=p_s[t])
        mask_s[t].scatter_(0, torch.topk(p.mean(dim=-1), k, dim=0).indices, True)
        if p_drop_in > 0:  # drawn on [n, B, H] as the reference's nn.Dropout draws it
            noise = _dropout_noise(p, p_drop_in)
            noise_in.append(noise)
            torch.mul(p, noise, out=pdh_s[t])
        m = m_s[t]
        gates_ifo, gates_g = torch.baddbmm(torch.bmm(pd_s[t], vw_s[t]).view(n, B, G4), h, w_hh).split(
            (3 * u, u), dim=-1
        )
        torch.sigmoid(gates_ifo, out=ifo_s[t])
        torch.tanh(gates_g, out=g_s[t])
        c = cs_s[t]
        c_new = torch.addcmul(f_s[t] * c, i_s[t], gg_s[t])
        h_cell = o_s[t] * torch.tanh(c_new, out=tcs_s[t])
        if comm:
            torch.bmm(torch.where(m, h_cell, h, out=hms_s[t]), w_comm, out=qkvs_s[t])
            # [B*Hc, n_key, n_query]: softmax over a middle dim of size n is faster on CPU than a last one
            scores = torch.bmm(k_s[t], q_s[t].transpose(1, 2))
            if top_k is not None:
                kth = scores.topk(top_k, dim=1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            P = scores.softmax(dim=1)
            probs_c.append(P)
            if p_drop_c > 0:  # drawn in the reference's [n_query, n_key, B, Hc] order
                noise_c = _dropout_noise(P.new_empty(n, n, B, Hc), p_drop_c).permute(2, 3, 1, 0)
                noise_cs.append(noise_c.reshape(B * Hc, n, n))
                P = P * noise_cs[-1]
            att4_s[t].copy_(torch.bmm(P.transpose(1, 2), v_s[t]).view(B, Hc, n, dvc).permute(2, 0, 1, 3))
            h_cell = torch.baddbmm(h_cell, atts_s[t], w_comm_out)
        h = torch.where(m, h_cell, h, out=out_s[t])
        torch.where(m, c_new, c, out=cs_s[t + 1])
    if save:
        sv.noise_in = torch.stack(noise_in) if noise_in else None
        sv.probs_c = torch.stack(probs_c) if probs_c else None
        sv.noise_c = torch.stack(noise_cs) if noise_cs else None
    c_t = cs[T].clone()
    if not save:
        ws.release()
    return out, c_t, mask, (sv if save else None)


def _derived_backward(
    core: RIMs,
    resets: list[int],
    keep: Tensor | None,
    keys: Tensor,
    values: Tensor,
    w_x: Tensor,
    w_hh: Tensor,
    w_comm: Tensor,
    w_comm_out: Tensor,
    sv: _DerivedSaved,
    d_out: Tensor,
    d_ct: Tensor,
) -> tuple[Tensor | None, ...]:
    """Gradients of ``_derived_loop`` for (keys, values, h0, c0, w_x, w_hh, b, w_comm, w_comm_out).

    d_out: [T,n,B,u] contiguous; d_ct: [n,B,u]. Inactive units pass dh, dc through unchanged.
    """
    T, B, H, dv = values.shape
    n, u = core.n_units, core.unit_size
    G4 = 4 * u
    comm = core.use_comm
    opts: dict[str, Any] = dict(dtype=d_out.dtype, device=d_out.device)
    reset_set = set(resets)
    scratch = _Workspace.acquire(core, opts, "_derived_backward_pool")

    dgates = scratch.get("dgates", False, T, n, B, G4)
    ds = scratch.get("ds", False, T, n, B, H)
    w_hh_t = w_hh.transpose(1, 2)
    if comm:
        Hc, dkc, dvc = core.comm_heads, core.comm_key_size, core.comm_value_size
        Gc = 2 * dkc + dvc
        w_comm_t, w_comm_out_t = w_comm.transpose(1, 2), w_comm_out.transpose(1, 2)
        dcomm = scratch.get("dcomm", False, T, n, B, u)
        dqkv = scratch.get("dqkv", False, T, n, B, Hc * Gc)
    if rims_ext.usable(d_out):  # the loop below in C++ (``rims_ext``)
        ext = rims_ext.extension()
        assert ext is not None
        none = d_out.new_empty(0)
        dh, dc = torch.zeros(n, B, u, **opts), d_ct.clone()
        ext.backward(
            keys, sv.vw, w_hh_t.contiguous(), *(none, none) if not comm else
            (w_comm_t.contiguous(), w_comm_out_t.contiguous()),
            None if keep is None else keep.contiguous(), resets, sv.mask, sv.cs, sv.acts, sv.tcs, sv.p,
            none if sv.noise_in is None else sv.noise_in, none if sv.qkvs is None else sv.qkvs,
            none if sv.probs_c is None else sv.probs_c, none if sv.noise_c is None else sv.noise_c,
            d_out, dh, dc, dgates, ds, *(none, none) if not comm else (dcomm, dqkv),
            *(0, 0, 0) if not comm else (Hc, dkc, dvc), comm,
        )  # fmt: skip
        return _weight_grads(core, values, w_x, sv, dgates, ds, dh, dc, dqkv if comm else None,
                             dcomm if comm else None, scratch)  # fmt: skip
    mf = sv.mask.to(d_out.dtype).unsqueeze(-1)  # [T,n,B,1]
    # Factors that do not depend on the incoming gradient, for all steps at once.
    i, f, o, g = sv.acts.split(u, dim=-1)
    tc, c_prev = sv.tcs, sv.cs[:T]
    k_c = o * (1.0 - tc * tc)  # dc'/dh' through h' = o tanh(c')
    fac = scratch.get("fac", False, T, n, B, G4)  # d(pre-activation) = fac * (dc' for i, f, g; dh' for o)
    torch.cat([g * i * (1.0 - i), c_prev * f * (1.0 - f), tc * o * (1.0 - o), i * (1.0 - g * g)], -1, out=fac)
    dsig = sv.p * (1.0 - sv.p)
    if sv.noise_in is not None:  # d(gates)/d(p) passes the dropout mask
        dsig = dsig * sv.noise_in

    mf_s, d_out_s = mf.unbind(0), d_out.unbind(0)
    k_c_s, f_s = k_c.unbind(0), f.unbind(0)
    fac4_s, fac_o_s = fac.view(T, n, B, 4, u).unbind(0), fac[..., 2 * u : 3 * u].unbind(0)
    dgates_s, dg4_s = dgates.unbind(0), dgates.view(T, n, B, 4, u).unbind(0)
    dg_o_s, dg_col_s = dgates[..., 2 * u : 3 * u].unbind(0), dgates.view(T, n * B, G4, 1).unbind(0)
    vw_s = sv.vw.view(T, n * B, H + 1, G4).unbind(0)  # all H + 1 rows: a bmm wants plain batch strides
    dsig_s, ds_s, ds_row_s = dsig.unbind(0), ds.unbind(0), ds.view(T, n * B, 1, H).unbind(0)
    keys_s = keys.view(T, n * B, H, u).unbind(0)
    keep_s = keep.unbind(0) if keep is not None else ()
    if comm:
        assert sv.qkvs is not None and sv.probs_c is not None
        dcomm_s, dqkv_s = dcomm.unbind(0), dqkv.unbind(0)
        heads = sv.qkvs.view(T, n, B * Hc, Gc).transpose(1, 2)
        q_s, k_s, v_s = (a.unbind(0) for a in heads.split((dkc, dkc, dvc), dim=-1))
        d_heads_s = dqkv.view(T, n, B * Hc, Gc).transpose(1, 2).unbind(0)
        probs_c = sv.probs_c.unbind(0)
        noise_c = () if sv.noise_c is None else sv.noise_c.unbind(0)

    dh = torch.zeros(n, B, u, **opts)
    dc = d_ct
    for t in reversed(range(T)):
        m = mf_s[t]
        dh_out = d_out_s[t] + dh
        if comm:
            d_att = torch.bmm(torch.mul(dh_out, m, out=dcomm_s[t]), w_comm_out_t)
            d_att = d_att.view(n, B * Hc, dvc).transpose(0, 1)  # [B*Hc, n, dv]
            P = probs_c[t]
            P_d = P * noise_c[t] if noise_c else P  # the probabilities the values were mixed with
            dP = torch.bmm(v_s[t], d_att.transpose(1, 2))  # [B*Hc, n_key, n_query], as in the forward
            if noise_c:
                dP = dP * noise_c[t]
            PdP = P * dP
            dS = torch.addcmul(PdP, P, PdP.sum(dim=1, keepdim=True), value=-1.0)
            d_heads = torch.cat(
                [torch.bmm(dS.transpose(1, 2), k_s[t]), torch.bmm(dS, q_s[t]), torch.bmm(P_d, d_att)], -1
            )
            d_heads_s[t].copy_(d_heads)
            dh_out = torch.baddbmm(dh_out, dqkv_s[t], w_comm_t)
        dh_cell = dh_out * m
        dc_new = dc * m
        dc_tot = torch.addcmul(dc_new, dh_cell, k_c_s[t])
        torch.mul(fac4_s[t], dc_tot.unsqueeze(2), out=dg4_s[t])
        torch.mul(fac_o_s[t], dh_cell, out=dg_o_s[t])
        dc = torch.addcmul(dc - dc_new, dc_tot, f_s[t])
        dh = torch.baddbmm(dh_out - dh_cell, dgates_s[t], w_hh_t)
        # input attention: d p' = VW_t . dgates, through the dropout mask and the sigmoid, then into h
        d_pd = torch.bmm(vw_s[t], dg_col_s[t]).view(n, B, H + 1)  # the bias row H is not used
        torch.mul(d_pd[..., :H], dsig_s[t], out=ds_s[t])
        dh = torch.baddbmm(dh.view(n * B, 1, u), ds_row_s[t], keys_s[t]).view(n, B, u)
        if t in reset_set:
            dh = dh * keep_s[t]
            dc = dc * keep_s[t]

    return _weight_grads(core, values, w_x, sv, dgates, ds, dh, dc, dqkv if comm else None,
                         dcomm if comm else None, scratch)  # fmt: skip


def _weight_grads(
    core: RIMs,
    values: Tensor,
    w_x: Tensor,
    sv: _DerivedSaved,
    dgates: Tensor,
    ds: Tensor,
    dh: Tensor,
    dc: Tensor,
    dqkv: Tensor | None,
    dcomm: Tensor | None,
    scratch: _Workspace,
) -> tuple[Tensor | None, ...]:
    """After the reverse loop: every gradient that sums over steps, as matmuls over all T*B rows."""
    T, B, H, dv = values.shape
    n = core.n_units

    def rows(a: Tensor) -> Tensor:  # [T,n,B,X] -> [n,T*B,X] (one transposing copy)
        return a.transpose(0, 1).reshape(n, T * B, a.shape[-1])

    def wgrad(a: Tensor, b: Tensor) -> Tensor:  # sum over all steps and samples of a^T b, per unit
        return torch.bmm(rows(a).transpose(1, 2), rows(b))

    # read = p' V per head, [n, T, B, H, dv]; dW_x = read^T dgates, dV = sum_n p' (dgates W_x^T)
    pd_um = sv.pd[..., :H].permute(1, 0, 2, 3).unsqueeze(-1)  # [n, T, B, H, 1]
    read = (pd_um * values).reshape(n, T * B, H * dv)
    dg_rows = rows(dgates)
    d_wx = torch.bmm(read.transpose(1, 2), dg_rows)
    d_read = torch.bmm(dg_rows, w_x.transpose(1, 2)).view(n, T, B, H, dv)
    d_values = (d_read * pd_um).sum(0)
    d_keys = ds.unsqueeze(-1) * sv.hs.unsqueeze(-2)  # [T, n, B, H, u]
    d_whh = torch.bmm(rows(sv.hs).transpose(1, 2), dg_rows)  # dgates' rows copied once, above
    d_b = dg_rows.sum(dim=1, keepdim=True)
    d_wc: Tensor | None = None  # no communication: those weights get no gradient
    d_wco: Tensor | None = None
    if dqkv is not None and dcomm is not None:
        assert sv.hms is not None and sv.atts is not None
        d_wc, d_wco = wgrad(sv.hms, dqkv), wgrad(sv.atts, dcomm)
    scratch.release()
    return (d_keys, d_values, dh, dc, d_wx, d_whh, d_b, d_wc, d_wco)


class _RIMsDerived(torch.autograd.Function):
    """The re-derived time loop as one autograd node: forward saves activations, backward by hand."""

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx: attributes are set on it (torch's stubs do not declare them)
        core: RIMs,
        resets: list[int],
        keep: Tensor | None,
        *inputs: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, c_t, mask, saved = _derived_loop(core, resets, keep, *inputs, save=True)
        ctx.core, ctx.resets, ctx.keep, ctx.saved = core, resets, keep, saved
        keys, values, _, _, w_x, w_hh, _, w_comm, w_comm_out = inputs
        ctx.save_for_backward(keys, values, w_x, w_hh, w_comm, w_comm_out)
        ctx.mark_non_differentiable(mask)
        return out, c_t, mask

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_ct: Tensor, _: Tensor) -> tuple:
        keys, values, w_x, w_hh, w_comm, w_comm_out = ctx.saved_tensors
        grads = _derived_backward(
            ctx.core,
            ctx.resets,
            ctx.keep,
            keys,
            values,
            w_x,
            w_hh,
            w_comm,
            w_comm_out,
            ctx.saved,
            d_out.contiguous(),
            d_ct.contiguous(),
        )
        return (None, None, None, *grads)
