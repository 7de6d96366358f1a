"""Optional C++ time loop for the GRU core on CPU, with a hand-written backward, built on first use.

torch sends ``nn.LSTM`` to oneDNN on CPU but runs ``nn.GRU`` step by step through its generic cell, with
autograd recording every small op; at PPO's chunk shape (B=8, T=32, width 192, one thread) that made the
GRU core ~2.7x slower than ``nn.LSTM`` forward+backward (docs/benchmarks.md). This loop computes what
``nn.GRU`` computes, for one layer (gate order r, z, n)::

    gi = x W_ih^T + b_ih                     (all T steps in one matmul, outside the loop, by autograd)
    hg = h W_hh^T + b_hh                     (one addmm per step)
    r = sigmoid(gi_r + hg_r); z = sigmoid(gi_z + hg_z)
    n = tanh(gi_n + r * hg_n)
    h' = n + z * (h - n)

with the state multiplied by ``keep = 1 - episode_start`` before each step (sb3-contrib's per-step loop),
so a whole training sequence with episode starts inside runs in one call. The backward runs the steps in
reverse (elementwise, plus one matmul for ``dh``); ``dW_hh`` and ``db_hh`` are single matmuls / sums over
all T*B rows after it, and ``dW_ih``, ``db_ih`` and ``dx`` come from autograd's backward of the input
projection.

Built with ``torch.utils.cpp_extension.load_inline`` under its own name (``EXTENSION_NAME``), with the
build, lock and fallback helpers of ``rims_ext``. Without a compiler, or with ``RIMS_RL_NO_EXT=1``, the
GRU core runs ``nn.GRU`` as before: same results, one warning line, never an error.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from rims_rl.cores import rims_ext

_STATE: dict[str, Any] = {}  # "module": the built extension or None after a failed build

EXTENSION_NAME = "rims_rl_gru_loop"

_SOURCE = r"""
#include <torch/extension.h>
#include <vector>

using at::Tensor;

// gi [T, B, 3H] input projections (b_ih included); w_hh [3H, H]; b_hh [3H] or undefined; h0 [B, H];
// keep [T, B] (1 - episode_start) or undefined. Fills out [T, B, H], and for the backward: hprev [T, B, H]
// (the state each step starts from, after keep), gates [T, B, 3H] (r, z, n after their activations),
// hg [T, B, 3H] (h W_hh^T + b_hh).
template <typename T>
static void forward_impl(const Tensor& gi, const Tensor& w_hh_t, const Tensor& b_hh, const Tensor& h0,
                         const Tensor& keep, const Tensor& out, const Tensor& hprev, const Tensor& gates,
                         const Tensor& hg) {
  const int64_t Tn = gi.size(0), B = gi.size(1), G3 = gi.size(2), H = G3 / 3;
  const T* GI = gi.data_ptr<T>();
  const T* KP = keep.defined() ? keep.data_ptr<T>() : nullptr;
  T *OUT = out.data_ptr<T>(), *HP = hprev.data_ptr<T>(), *GT = gates.data_ptr<T>(), *HG = hg.data_ptr<T>();
  const T* prev = h0.data_ptr<T>();
  for (int64_t t = 0; t < Tn; ++t) {
    T* hp = HP + t * B * H;
    if (KP) {
      for (int64_t i = 0; i < B; ++i) {
        const T kv = KP[t * B + i];
        const T* __restrict__ src = prev + i * H;
        T* __restrict__ dst = hp + i * H;
        #pragma omp simd
        for (int64_t j = 0; j < H; ++j) dst[j] = src[j] * kv;
      }
    } else {
      std::copy(prev, prev + B * H, hp);
    }
    Tensor hg_t = hg.select(0, t), g_t = gates.select(0, t);
    if (b_hh.defined()) at::addmm_out(hg_t, b_hh, hprev.select(0, t), w_hh_t);
    else at::mm_out(hg_t, hprev.select(0, t), w_hh_t);
    for (int64_t i = 0; i < B; ++i) {
      const T* __restrict__ gi_i = GI + (t * B + i) * G3;
      const T* __restrict__ hg_i = HG + (t * B + i) * G3;
      T* __restrict__ g = GT + (t * B + i) * G3;
      #pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) g[j] = hg_i[j] + gi_i[j];
    }
    g_t.narrow(1, 0, 2 * H).sigmoid_();  // ATen's vectorised sigmoid on the r and z blocks
    for (int64_t i = 0; i < B; ++i) {
      const T* __restrict__ gi_i = GI + (t * B + i) * G3 + 2 * H;
      const T* __restrict__ hg_i = HG + (t * B + i) * G3 + 2 * H;
      const T* __restrict__ r = GT + (t * B + i) * G3;
      T* __restrict__ n = GT + (t * B + i) * G3 + 2 * H;
      #pragma omp simd
      for (int64_t j = 0; j < H; ++j) n[j] = gi_i[j] + hg_i[j] * r[j];
    }
    g_t.narrow(1, 2 * H, H).tanh_();
    T* o = OUT + t * B * H;
    for (int64_t i = 0; i < B; ++i) {
      const T* __restrict__ z = GT + (t * B + i) * G3 + H;
      const T* __restrict__ n = z + H;
      const T* __restrict__ h = hp + i * H;
      T* __restrict__ oi = o + i * H;
      #pragma omp simd
      for (int64_t j = 0; j < H; ++j) oi[j] = (h[j] - n[j]) * z[j] + n[j];  // nn.GRU's order of operations
    }
    prev = o;
  }
}

std::vector<Tensor> forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_hh,
                            c10::optional<Tensor> keep) {
  TORCH_CHECK(gi.dim() == 3 && gi.is_contiguous() && h0.is_contiguous(), "rims_rl GRU loop: bad buffers");
  const int64_t Tn = gi.size(0), B = gi.size(1), G3 = gi.size(2), H = G3 / 3;
  auto opts = gi.options();
  Tensor out = at::empty({Tn, B, H}, opts), hprev = at::empty({Tn, B, H}, opts);
  Tensor gates = at::empty({Tn, B, G3}, opts), hg = at::empty({Tn, B, G3}, opts);
  Tensor bh = b_hh.has_value() ? b_hh.value() : Tensor();
  Tensor kp = keep.has_value() ? keep.value().contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_forward", [&] {
    forward_impl<scalar_t>(gi, w_hh.t(), bh, h0, kp, out, hprev, gates, hg);
  });
  return {out, out.select(0, Tn - 1).clone(), hprev, gates, hg};
}

// Backward through time. d_out [T, B, H], dh [B, H] (in: the final state's gradient; out: h0's);
// fills dgi [T, B, 3H] (the input projections' gradient) and dhg [T, B, 3H] (hg's).
template <typename T>
static void backward_impl(const Tensor& d_out, const Tensor& dh, const Tensor& w_hh, const Tensor& gates,
                          const Tensor& hg, const Tensor& hprev, const Tensor& keep, const Tensor& dgi,
                          const Tensor& dhg) {
  const int64_t Tn = gates.size(0), B = gates.size(1), G3 = gates.size(2), H = G3 / 3;
  const T *DO = d_out.data_ptr<T>(), *GT = gates.data_ptr<T>(), *HG = hg.data_ptr<T>();
  const T* HP = hprev.data_ptr<T>();
  const T* KP = keep.defined() ? keep.data_ptr<T>() : nullptr;
  T *DH = dh.data_ptr<T>(), *DGI = dgi.data_ptr<T>(), *DHG = dhg.data_ptr<T>();
  for (int64_t t = Tn - 1; t >= 0; --t) {
    for (int64_t i = 0; i < B; ++i) {
      const int64_t row = (t * B + i) * G3;
      const T* __restrict__ r = GT + row;
      const T* __restrict__ z = r + H;
      const T* __restrict__ n = r + 2 * H;
      const T* __restrict__ hgn = HG + row + 2 * H;
      const T* __restrict__ hp = HP + (t * B + i) * H;
      const T* __restrict__ dout = DO + (t * B + i) * H;
      T* __restrict__ dhi = DH + i * H;
      T* __restrict__ dgi = DGI + row;
      T* __restrict__ dhg = DHG + row;
      #pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T d = dhi[j] + dout[j];
        const T dan = d * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
        const T dar = dan * hgn[j] * (r[j] * (T(1) - r[j]));
        const T daz = d * (hp[j] - n[j]) * (z[j] * (T(1) - z[j]));
        dgi[j] = dar;
        dgi[j + H] = daz;
        dgi[j + 2 * H] = dan;
        dhg[j] = dar;
        dhg[j + H] = daz;
        dhg[j + 2 * H] = dan * r[j];
        dhi[j] = d * z[j];
      }
    }
    dh.addmm_(dhg.select(0, t), w_hh);  // dh += dhg W_hh
    if (KP)
      for (int64_t i = 0; i < B; ++i) {
        const T kv = KP[t * B + i];
        T* __restrict__ dh_i = DH + i * H;
        #pragma omp simd
        for (int64_t j = 0; j < H; ++j) dh_i[j] *= kv;
      }
  }
}

std::vector<Tensor> backward(Tensor d_out, Tensor d_ht, Tensor w_hh, Tensor gates, Tensor hg, Tensor hprev,
                             c10::optional<Tensor> keep, bool bias) {
  const int64_t Tn = gates.size(0), B = gates.size(1), G3 = gates.size(2), H = G3 / 3;
  auto opts = gates.options();
  Tensor dgi = at::empty({Tn, B, G3}, opts), dhg = at::empty({Tn, B, G3}, opts);
  Tensor dh = d_ht.contiguous().clone();
  Tensor kp = keep.has_value() ? keep.value().contiguous() : Tensor();
  Tensor dout = d_out.contiguous();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    backward_impl<scalar_t>(dout, dh, w_hh, gates, hg, hprev, kp, dgi, dhg);
  });
  Tensor dhg2 = dhg.view({Tn * B, G3});
  Tensor dw_hh = at::mm(dhg2.t(), hprev.view({Tn * B, H}));
  Tensor db_hh = bias ? dhg2.sum(0) : Tensor();
  return {dgi, dh, dw_hh, db_hh};
}
"""


def extension() -> ModuleType | None:
    """The built extension, or None (no compiler, ``RIMS_RL_NO_EXT=1``, or a failed build: one warning)."""
    return rims_ext.cached_extension(_STATE, _build, "the C++ GRU loop", "nn.GRU")


def _build() -> ModuleType:
    return rims_ext.build_inline(EXTENSION_NAME, _SOURCE, ["forward", "backward"])


def usable(t: Tensor) -> bool:
    """Whether the C++ loop takes tensors like ``t``: CPU float32/float64 and a built extension."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and extension() is not None


class _GRULoop(torch.autograd.Function):
    """One GRU layer's time loop from the input projections ``gi``: (out, h_T), backward by hand."""

    @staticmethod
    def forward(
        ctx: Any, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, keep: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        ext = extension()
        assert ext is not None
        out, h_t, hprev, gates, hg = ext.forward(gi, h0, w_hh, b_hh, keep)
        ctx.save_for_backward(w_hh, gates, hg, hprev, keep)
        ctx.bias = b_hh is not None
        return out, h_t

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_ht: Tensor) -> tuple[Tensor | None, ...]:
        w_hh, gates, hg, hprev, keep = ctx.saved_tensors
        ext = extension()
        assert ext is not None
        dgi, dh0, dw_hh, db_hh = ext.backward(d_out, d_ht, w_hh, gates, hg, hprev, keep, ctx.bias)
        return dgi, dh0, dw_hh, db_hh if ctx.bias else None, None


def gru_layer(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    keep: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One ``nn.GRU`` layer over ``x`` [T, B, I] from ``h0`` [B, H], the state multiplied by ``keep``
    [T, B] before each step (None: never reset): (out [T, B, H], h_T [B, H]). Needs ``extension()``."""
    gi = F.linear(x, w_ih, b_ih).contiguous()  # all steps' input projections in one matmul
    if keep is not None:
        keep = keep.to(gi.dtype).contiguous()
    h0 = h0.contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (gi, h0, w_hh, b_hh)):
        out, h_t = _GRULoop.apply(gi, h0, w_hh, b_hh, keep)
        return out, h_t
    ext = extension()  # nothing to differentiate (rollouts): no autograd node, nothing saved
    assert ext is not None
    out, h_t = ext.forward(gi, h0, w_hh, b_hh, keep)[:2]
    return out, h_t
