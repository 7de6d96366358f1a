"""Optional C++ no-grad step and loop over rounds of the TLB core (``rims_rl.cores.tlb``) on CPU, built on
first use and cached.

A rollout step (T=1, no autograd) of :class:`~rims_rl.cores.tlb.TemporalLatentBottleneck` is ~50 small
ATen calls (~90 where a chunk ends); at 16 envs each does far less arithmetic than the Python and
dispatch around it costs (about half the step's time in a profile, docs/benchmarks.md). This extension
runs the same ATen calls, in the same order and with the same arguments, as ``TemporalLatentBottleneck._step``
and ``_chunk_end`` (so the results are the same bits), from C++; and, where the call continues from the
state the previous call returned, from a cache of what that call computed (keys and values of the
chunk's slots and of the latents, the chunk's outputs so far), so that a step computes its new slot only
and a chunk end only the slow update (same math, float rounding apart; see ``step`` in the source).

The loop over rounds of a sequence call (``Runner.rounds``, with autograd) is the Python loop's ATen
calls too, without the Python around each (same bits, ~0.85-0.99x its time at PPO's minibatch shapes).

Built with ``torch.utils.cpp_extension.load_inline`` the first time a TLB core runs on CPU, with the build
helpers of ``rims_rl.cores.rims_ext``; torch caches the build. Without a compiler, or with
``RIMS_RL_NO_EXT=1`` set, the Python step and loop run instead: same results, one warning line, never an
error.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from rims_rl.cores.rims_ext import build_inline, cached_extension

_STATE: dict[str, Any] = {}  # "module": the built extension or None after a failed build

EXTENSION_NAME = "rims_rl_tlb_step"

#: Order of the weights handed to the C++ step (``TemporalLatentBottleneck._ext_weights``).
WEIGHT_NAMES = (
    "embed.weight", "embed.bias", "position", "initial_latents",
    "fast_layers.0.norm_self.weight", "fast_layers.0.norm_self.bias",
    "fast_layers.0.self_attn.q.weight", "fast_layers.0.self_attn.q.bias",
    "fast_layers.0.self_attn.kv.weight", "fast_layers.0.self_attn.kv.bias",
    "fast_layers.0.self_attn.o.weight", "fast_layers.0.self_attn.o.bias",
    "fast_layers.0.ffn_self.0.weight", "fast_layers.0.ffn_self.0.bias",
    "fast_layers.0.ffn_self.1.weight", "fast_layers.0.ffn_self.1.bias",
    "fast_layers.0.ffn_self.3.weight", "fast_layers.0.ffn_self.3.bias",
    "fast_layers.0.norm_cross.weight", "fast_layers.0.norm_cross.bias",
    "fast_layers.0.norm_slow.weight", "fast_layers.0.norm_slow.bias",
    "fast_layers.0.cross_attn.q.weight", "fast_layers.0.cross_attn.q.bias",
    "fast_layers.0.cross_attn.kv.weight", "fast_layers.0.cross_attn.kv.bias",
    "fast_layers.0.cross_attn.o.weight", "fast_layers.0.cross_attn.o.bias",
    "fast_layers.0.ffn_cross.0.weight", "fast_layers.0.ffn_cross.0.bias",
    "fast_layers.0.ffn_cross.1.weight", "fast_layers.0.ffn_cross.1.bias",
    "fast_layers.0.ffn_cross.3.weight", "fast_layers.0.ffn_cross.3.bias",
    "norm_out.weight", "norm_out.bias", "out.weight", "out.bias",
    "norm_latents.weight", "norm_latents.bias",
    "slow_attn.q.weight", "slow_attn.q.bias", "slow_attn.kv.weight", "slow_attn.kv.bias",
    "slow_attn.o.weight", "slow_attn.o.bias",
    "slow_ffn.0.weight", "slow_ffn.0.bias", "slow_ffn.1.weight", "slow_ffn.1.bias",
    "slow_ffn.3.weight", "slow_ffn.3.bias",
    "slow_gate.weight", "slow_gate.bias",
)  # fmt: skip

#: The LayerNorms whose ``eps`` the C++ step takes, in its order.
NORM_NAMES = (
    "fast_layers.0.norm_self", "fast_layers.0.ffn_self.0", "fast_layers.0.norm_cross",
    "fast_layers.0.norm_slow", "fast_layers.0.ffn_cross.0", "norm_out", "norm_latents", "slow_ffn.0",
)  # fmt: skip

_SOURCE = r"""
#include <torch/extension.h>
#include <vector>

using at::Tensor;

// Weight indices: rims_rl/cores/tlb_ext.py WEIGHT_NAMES.
enum {
  EMB_W, EMB_B, POS, INIT, NS_W, NS_B, SAQ_W, SAQ_B, SAKV_W, SAKV_B, SAO_W, SAO_B,
  FS_LN_W, FS_LN_B, FS_UP_W, FS_UP_B, FS_DN_W, FS_DN_B,
  NC_W, NC_B, NSL_W, NSL_B, CAQ_W, CAQ_B, CAKV_W, CAKV_B, CAO_W, CAO_B,
  FC_LN_W, FC_LN_B, FC_UP_W, FC_UP_B, FC_DN_W, FC_DN_B,
  NO_W, NO_B, OUT_W, OUT_B, NL_W, NL_B, SLQ_W, SLQ_B, SLKV_W, SLKV_B, SLO_W, SLO_B,
  SF_LN_W, SF_LN_B, SF_UP_W, SF_UP_B, SF_DN_W, SF_DN_B, G_W, G_B, N_WEIGHTS
};
// LayerNorm eps indices: NORM_NAMES.
enum { E_NS, E_FS, E_NC, E_NSL, E_FC, E_NO, E_NL, E_SF };

struct Net {
  const std::vector<Tensor>& w;
  const std::vector<double>& eps;
  int64_t H;

  Tensor lin(const Tensor& x, int i) const { return at::linear(x, w[i], w[i + 1]); }
  Tensor norm(const Tensor& x, int i, int e) const {
    return at::layer_norm(x, {x.size(-1)}, w[i], w[i + 1], eps[e]);
  }
  // _gelu: a transposed 2-D view takes ATen's kernel, not oneDNN's.
  static Tensor gelu(const Tensor& x) {
    const int64_t f = x.size(-1);
    return at::gelu(x.reshape({-1, f}).t()).t().view(x.sizes());
  }
  Tensor ffn(const Tensor& x, int ln, int e) const {  // ln: index of the FFN's LayerNorm weight
    return at::linear(gelu(at::linear(norm(x, ln, e), w[ln + 2], w[ln + 3])), w[ln + 4], w[ln + 5]);
  }
  Tensor heads(const Tensor& t) const {  // [B, S, d] -> [B, H, S, d/H]
    return t.view({t.size(0), t.size(1), H, t.size(2) / H}).transpose(1, 2);
  }
  std::pair<Tensor, Tensor> kv_heads(const Tensor& keys, int i) const {
    const int64_t B = keys.size(0), S = keys.size(1), d = keys.size(2);
    Tensor kv = lin(keys, i).view({B, S, 2, H, d / H}).permute({2, 0, 3, 1, 4});
    return {kv[0], kv[1]};
  }
  static Tensor merge(const Tensor& r) { return r.transpose(1, 2).flatten(2); }
  // _kv_heads as the sequence path has it (split, not unbind)
  std::pair<Tensor, Tensor> kv_split(const Tensor& keys, int i) const {
    const int64_t d = keys.size(-1);
    Tensor kv = lin(keys, i);
    return {heads(kv.slice(-1, 0, d)), heads(kv.slice(-1, d))};
  }

  // TemporalLatentBottleneck._read_slow (first layer)
  Tensor read_slow(const Tensor& a, const Tensor& q, const Tensor& slow) const {
    auto [k, v] = kv_heads(norm(slow, NSL_W, E_NSL), CAKV_W);
    Tensor b = a + lin(merge(at::scaled_dot_product_attention(q, k, v)), CAO_W);
    return b + ffn(b, FC_LN_W, E_FC);
  }
  // _within_chunk
  Tensor within_chunk(const Tensor& z0) const {
    Tensor h = norm(z0, NS_W, E_NS);
    auto [k, v] = kv_heads(h, SAKV_W);
    Tensor read = at::scaled_dot_product_attention(heads(lin(h, SAQ_W)), k, v, {}, 0.0, true);
    Tensor a = z0 + lin(merge(read), SAO_W);
    return a + ffn(a, FS_LN_W, E_FS);
  }
  // _cross_queries
  Tensor cross_queries(const Tensor& a) const { return heads(lin(norm(a, NC_W, E_NC), CAQ_W)); }
  // _slow_update: new latents, and the queries / keys kept for last_slow_attention
  std::vector<Tensor> slow_update(const Tensor& slow, const Tensor& chunk_out) const {
    Tensor q = heads(lin(norm(slow, NL_W, E_NL), SLQ_W));
    auto [k, v] = kv_heads(chunk_out, SLKV_W);
    Tensor m = lin(merge(at::scaled_dot_product_attention(q, k, v)), SLO_W);
    m = m + ffn(m, SF_LN_W, E_SF);
    auto g = at::sigmoid(lin(at::cat({m, slow}, -1), G_W)).chunk(2, -1);
    return {g[1] * slow + g[0] * at::tanh(m), q, k};
  }
};

// The cache key: every weight's version and data pointer, and the version of the state's h.
static Tensor make_key(const std::vector<Tensor>& w, const Tensor& h) {
  const int64_t n = static_cast<int64_t>(w.size());
  Tensor key = at::empty({2 * n + 1}, at::kLong);
  int64_t* k = key.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    k[2 * i] = static_cast<int64_t>(w[i]._version());
    k[2 * i + 1] = reinterpret_cast<int64_t>(w[i].data_ptr());
  }
  k[2 * n] = static_cast<int64_t>(h._version());
  return key;
}

// TemporalLatentBottleneck._step (+ unpack_state, _chunk_end, pack_state) for one fast layer, no grad.
//
// cache: empty, or what the previous call returned after its (h, c) (the caller checks that h0 and c0
// are that call's h and c): {key, Ks, Vs, Kc, Vc, Y, complete}. Ks, Vs [B, H, K, d/H]: the self-attention
// keys and values of the chunk's slots so far; Kc, Vc [B, H, N, d/H]: the cross-attention keys and values
// of the latents; Y [B, K, d]: the fast stream's outputs of the chunk's slots so far; complete [B]: whether
// Y holds every earlier slot of the row's chunk (rows seen from a slot > 0 on a cache miss do not; their
// chunk end recomputes the chunk). With a valid cache a step computes keys and values for its new slot
// only, and a chunk end only the slow update. The cache is used only if the key (weights' versions and
// data pointers, h0's version) is unchanged.
std::vector<Tensor> step(const Tensor& x, const Tensor& h0, const Tensor& c0,
                         const c10::optional<Tensor>& starts, const std::vector<Tensor>& w,
                         const std::vector<double>& eps, int64_t n_latents, int64_t K, int64_t n_heads,
                         const std::vector<Tensor>& cache, bool keep_cache) {
  TORCH_CHECK(w.size() == N_WEIGHTS && eps.size() == 8, "tlb step: wrong number of weights");
  at::NoGradGuard no_grad;
  const Net net{w, eps, n_heads};
  const int64_t B = x.size(1), d = w[POS].size(1), S = h0.size(2), H = n_heads, dh = d / n_heads;
  const int64_t slow_size = n_latents * d, pos_index = (n_latents + K - 1) * d;
  bool hit = false;
  if (keep_cache && cache.size() == 7 && cache[1].size(0) == B && cache[1].scalar_type() == x.scalar_type()) {
    hit = at::equal(cache[0], make_key(w, h0));
  }
  // unpack_state
  Tensor s = at::cat({h0, c0}, -1)[0];
  Tensor slow = w[INIT] + s.slice(1, 0, slow_size).view({B, n_latents, d});
  Tensor memory = s.slice(1, slow_size, pos_index).view({B, K - 1, d});
  Tensor p = s.select(1, pos_index).round().to(at::kLong).clamp(0, K - 1);
  Tensor fresh;
  if (starts.has_value()) {
    fresh = (*starts)[0] != 0;
    if (fresh.any().item<bool>()) {
      slow = at::where(fresh.unsqueeze(1).unsqueeze(2), w[INIT], slow);
      p = p.masked_fill(fresh, 0);
    } else {
      fresh = Tensor();
    }
  }
  Tensor slots = at::arange(K, p.options());
  Tensor z0 = net.lin(x[0], EMB_W) + w[POS].index_select(0, p);
  Tensor at_p = slots == p.unsqueeze(1);  // [B, K]
  // The chunk's z^0: slots < p from the state, slot p the new step; slots > p are never read (the causal
  // mask; the state keeps slots < p + 1). The last slot holds z0 unless p = K-1 reads it (no padding copy).
  Tensor Z = at::cat({at::where(at_p.slice(1, 0, K - 1).unsqueeze(-1), z0.unsqueeze(1), memory),
                      z0.unsqueeze(1)}, 1);
  Tensor valid = (slots <= p.unsqueeze(1)).unsqueeze(1).unsqueeze(2);

  Tensor q, Ks, Vs, Kc, Vc, Y, complete;
  if (hit) {
    Tensor hz = net.norm(z0, NS_W, E_NS);
    q = net.lin(hz, SAQ_W);
    Tensor kv = net.lin(hz, SAKV_W).view({B, 2, H, 1, dh});
    Tensor here = at_p.view({B, 1, K, 1});
    Ks = at::where(here, kv.select(1, 0), cache[1]);
    Vs = at::where(here, kv.select(1, 1), cache[2]);
    Kc = cache[3];
    Vc = cache[4];
    if (fresh.defined()) {  // fresh latents: the initial latents' keys
      auto [ki, vi] = net.kv_heads(net.norm(w[INIT].unsqueeze(0), NSL_W, E_NSL), CAKV_W);
      Tensor f4 = fresh.view({B, 1, 1, 1});
      Kc = at::where(f4, ki, Kc);
      Vc = at::where(f4, vi, Vc);
    }
    Y = cache[5];
    complete = cache[6].logical_or(p == 0);
  } else {
    std::tie(Ks, Vs) = net.kv_heads(net.norm(Z, NS_W, E_NS), SAKV_W);
    q = net.lin(net.norm(z0, NS_W, E_NS), SAQ_W);
    std::tie(Kc, Vc) = net.kv_heads(net.norm(slow, NSL_W, E_NSL), CAKV_W);
    Y = at::zeros({B, K, d}, z0.options());
    complete = p == 0;
  }
  Tensor a = z0 + net.lin(at::scaled_dot_product_attention(q.view({B, H, 1, dh}), Ks, Vs, valid).view({B, d}),
                          SAO_W);
  a = (a + net.ffn(a, FS_LN_W, E_FS)).unsqueeze(1);
  Tensor qc = net.heads(net.lin(net.norm(a, NC_W, E_NC), CAQ_W));
  Tensor b = a + net.lin(Net::merge(at::scaled_dot_product_attention(qc, Kc, Vc)), CAO_W);
  Tensor y = net.norm(b + net.ffn(b, FC_LN_W, E_FC), NO_W, E_NO);  // [B, 1, d]
  Tensor out = net.lin(y, OUT_W).view({1, B, -1});

  Tensor ended = p == K - 1;
  Tensor next_p = at::where(ended, 0, p + 1);
  Tensor q_slow, k_slow;
  if (ended.any().item<bool>()) {
    Tensor idx = ended.nonzero().squeeze(1);
    Tensor sc = slow.index_select(0, idx);
    Tensor yc;
    if (keep_cache) {
      Y = at::where(at_p.unsqueeze(-1), y, Y);
      Tensor redo = ended.logical_and(complete.logical_not());
      if (redo.any().item<bool>()) {  // rows whose earlier outputs are not cached: the whole chunk
        Tensor ri = redo.nonzero().squeeze(1);
        Tensor ar = net.within_chunk(Z.index_select(0, ri));
        Tensor yr = net.norm(net.read_slow(ar, net.cross_queries(ar), slow.index_select(0, ri)), NO_W, E_NO);
        Y = Y.index_copy(0, ri, yr);
      }
      yc = Y.index_select(0, idx);
    } else {
      Tensor ac = net.within_chunk(Z.index_select(0, idx));
      yc = net.norm(net.read_slow(ac, net.cross_queries(ac), sc), NO_W, E_NO);
    }
    auto upd = net.slow_update(sc, yc);
    slow = slow.index_copy(0, idx, upd[0]);
    q_slow = upd[1];
    k_slow = upd[2];
    if (keep_cache) {
      auto [kn, vn] = net.kv_heads(net.norm(upd[0], NSL_W, E_NSL), CAKV_W);
      Kc = Kc.index_copy(0, idx, kn);
      Vc = Vc.index_copy(0, idx, vn);
    }
  } else if (keep_cache) {
    Y = at::where(at_p.unsqueeze(-1), y, Y);
  }
  Tensor kept = (slots.slice(0, 0, K - 1) < next_p.unsqueeze(1)).unsqueeze(-1).to(Z.scalar_type());
  // pack_state, written in place: latents - I_0, the kept z^0, the position, a zero pad
  Tensor packed = at::empty({B, 2 * S}, z0.options());
  Tensor slow_part = packed.slice(1, 0, slow_size).view({B, n_latents, d});
  Tensor memory_part = packed.slice(1, slow_size, pos_index).view({B, K - 1, d});
  at::sub_out(slow_part, slow, w[INIT]);
  at::mul_out(memory_part, Z.slice(1, 0, K - 1), kept);
  packed.select(1, pos_index).copy_(next_p);
  packed.slice(1, pos_index + 1).zero_();
  auto hc = packed.unsqueeze(0).split(S, -1);
  std::vector<Tensor> result{out, hc[0], hc[1]};
  if (keep_cache) {
    Tensor key = make_key(w, hc[0]);
    if (hit) key = cache[0].copy_(key);  // the same tensor as the one given: a hit, for Runner's count
    for (const Tensor& t : {key, Ks, Vs, Kc, Vc, Y, complete}) result.push_back(t);
  }
  if (q_slow.defined()) {
    result.push_back(q_slow);
    result.push_back(k_slow);
  }
  return result;
}

// One core's C++ step: its weights (the parameter tensors themselves: in-place updates are seen), and
// the cache of its latest step with the (h, c) that step returned. A call continuing from that very
// (h, c) is handed the cache (`handed` counts them); `step` uses it if its key still matches (`hits`).
struct Runner {
  std::vector<Tensor> w;
  std::vector<double> eps;
  int64_t n_latents, K, n_heads;
  std::vector<Tensor> cache;
  Tensor h, c;
  int64_t handed = 0, hits = 0;

  // TemporalLatentBottleneck._forward_fast's loop over rounds (one fast layer, folded latent weights), with
  // autograd: the Python loop's ATen calls in its order, without its Python. flags: any_reset, all_reset,
  // any_ended, all_ended, R each. Returns Y [R*B, K, d], the latents, and the last slow update's queries,
  // keys and round (-1: none) for last_slow_attention.
  std::vector<Tensor> rounds(const Tensor& A, const Tensor& Q, Tensor slow, const Tensor& reset,
                             const Tensor& ended, const std::vector<int64_t>& flags, const Tensor& fold_w,
                             const Tensor& fold_b) const {
    const Net net{w, eps, n_heads};
    const int64_t B = slow.size(0), d = slow.size(2), R = A.size(0) / B;
    TORCH_CHECK(static_cast<int64_t>(flags.size()) == 4 * R, "tlb rounds: wrong number of flags");
    auto As = A.split(B), Qs = Q.split(B);
    Tensor initial = w[INIT].expand({B, -1, -1});
    std::vector<Tensor> ys;
    Tensor q_last, k_last;
    int64_t r_last = -1;
    for (int64_t r = 0; r < R; ++r) {
      if (flags[r]) slow = flags[R + r] ? initial : at::where(reset[r].view({B, 1, 1}), initial, slow);
      Tensor proj = at::linear(at::layer_norm(slow, {d}, {}, {}, eps[E_NL]), fold_w, fold_b);
      Tensor kc = net.heads(proj.slice(-1, 0, d)), vc = net.heads(proj.slice(-1, d, 2 * d));
      Tensor qs = net.heads(proj.slice(-1, 2 * d));
      Tensor b = As[r] + net.lin(Net::merge(at::scaled_dot_product_attention(Qs[r], kc, vc)), CAO_W);
      Tensor y = net.norm(b + net.ffn(b, FC_LN_W, E_FC), NO_W, E_NO);
      ys.push_back(y);
      if (flags[2 * R + r]) {
        auto [k, v] = net.kv_split(y, SLKV_W);
        Tensor m = net.lin(Net::merge(at::scaled_dot_product_attention(qs, k, v)), SLO_W);
        m = m + net.ffn(m, SF_LN_W, E_SF);
        auto g = at::sigmoid(net.lin(at::cat({m, slow}, -1), G_W)).chunk(2, -1);
        Tensor updated = g[1] * slow + g[0] * at::tanh(m);
        slow = flags[3 * R + r] ? updated : at::where(ended[r].view({B, 1, 1}), updated, slow);
        q_last = qs.detach();
        k_last = k.detach();
        r_last = r;
      }
    }
    std::vector<Tensor> result{at::cat(ys), slow, at::scalar_tensor(r_last, at::kLong)};
    if (r_last >= 0) {
      result.push_back(q_last);
      result.push_back(k_last);
    }
    return result;
  }

  Runner(std::vector<Tensor> weights, std::vector<double> norm_eps, int64_t n, int64_t k, int64_t heads)
      : w(std::move(weights)), eps(std::move(norm_eps)), n_latents(n), K(k), n_heads(heads) {}

  std::vector<Tensor> call(const Tensor& x, const Tensor& h0, const Tensor& c0,
                           const c10::optional<Tensor>& starts, bool keep_cache) {
    std::vector<Tensor> given;
    if (keep_cache && h.defined() && h0.is_same(h) && c0.is_same(c)) {
      given = cache;
      ++handed;
    }
    std::vector<Tensor> r = step(x, h0, c0, starts, w, eps, n_latents, K, n_heads, given, keep_cache);
    cache.clear();
    h = Tensor();
    c = Tensor();
    if (!keep_cache) return r;
    if (!given.empty() && given[0].data_ptr() == r[3].data_ptr()) ++hits;  // the key tensor was kept
    h = r[1];
    c = r[2];
    cache.assign(r.begin() + 3, r.begin() + 10);
    r.erase(r.begin() + 3, r.begin() + 10);
    return r;
  }
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "TemporalLatentBottleneck._step in C++ (no grad)");
  pybind11::class_<Runner>(m, "Runner")
      .def(pybind11::init<std::vector<Tensor>, std::vector<double>, int64_t, int64_t, int64_t>())
      .def("__call__", &Runner::call)
      .def("rounds", &Runner::rounds)
      .def_readonly("handed", &Runner::handed)
      .def_readonly("hits", &Runner::hits);
}
"""


def extension() -> ModuleType | None:
    """The built extension, or None (no compiler, ``RIMS_RL_NO_EXT=1``, or a failed build: one warning)."""
    return cached_extension(_STATE, _build, "the C++ TLB step and loop", "the Python ones")


def _build() -> ModuleType:
    return build_inline(EXTENSION_NAME, _SOURCE, None, cflags=("-O2",))


def usable(x: torch.Tensor) -> bool:
    """Whether the C++ step takes this call: CPU float32/float64 tensors and a built extension."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and extension() is not None
