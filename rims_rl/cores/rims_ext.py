"""Optional C++ time loop for ``rims_rl.cores.rims_derived`` on CPU, built on first use and cached.

The derived loop launches ~25 small kernels per step in Python; at PPO's chunk shape each costs a few
microseconds of dispatch for far less arithmetic. This extension runs the same steps (same buffers, same
equations, see ``rims_derived``'s module docstring) as plain C++ loops over the [n, B, ...] elements,
with ATen's ``bmm`` for the per-unit matmuls and ATen's ``bernoulli_`` / ``topk`` for dropout masks and
unit selection (so masks and winners are drawn exactly as the Python path draws them).

Built with ``torch.utils.cpp_extension.load_inline`` (g++ and ninja) the first time a CPU RIMs core
runs the derived loop; torch caches the build. Without a compiler, or with ``RIMS_RL_NO_EXT=1`` set, the
Python loop runs instead: same results, one warning line, never an error.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

_STATE: dict[str, Any] = {}  # "module": the built extension or None after a failed build

_SOURCE = r"""
#include <torch/extension.h>
#include <cmath>
#include <vector>
#include <algorithm>

using at::Tensor;

// Forward of the whole sequence; buffers are time-major and contiguous, filled here (cs[0] = c0 and
// pd[..., H] = 1 on entry). Equations: rims_rl/cores/rims_derived.py.
template <typename T>
static void forward_impl(
    const Tensor& keys, const Tensor& vw, const Tensor& w_hh, const Tensor& w_comm, const Tensor& w_comm_out,
    const Tensor& h0, const Tensor& keep, const std::vector<int64_t>& resets, const Tensor& out,
    const Tensor& mask, const Tensor& hs, const Tensor& cs, const Tensor& acts, const Tensor& tcs,
    const Tensor& p_buf, const Tensor& pd_buf, const Tensor& noise_in, const Tensor& hms, const Tensor& qkvs,
    const Tensor& atts, const Tensor& probs, const Tensor& noise_c, int64_t k, int64_t top_k, int64_t Hc,
    int64_t dkc, int64_t dvc, double p_in, double p_c, bool comm) {
  const int64_t Tn = vw.size(0), n = vw.size(1), B = vw.size(2), H = vw.size(3) - 1, G4 = vw.size(4);
  const int64_t u = G4 / 4, Gc = 2 * dkc + dvc, Wq = Hc * Gc, Wa = Hc * dvc;
  const int64_t nB = n * B;
  std::vector<char> is_reset(Tn, 0);
  for (auto t : resets) is_reset[t] = 1;
  auto opts = keys.options();
  Tensor gates = at::empty({n, B, G4}, opts), hcell = at::empty({n, B, u}, opts);
  Tensor tmp = at::empty({n, B, u}, opts), score = at::empty({n, B}, opts);
  const T* K = keys.data_ptr<T>();
  const T* VW = vw.data_ptr<T>();
  const T* KP = keep.defined() ? keep.data_ptr<T>() : nullptr;
  T *OUT = out.data_ptr<T>(), *HS = hs.data_ptr<T>(), *CS = cs.data_ptr<T>(), *A = acts.data_ptr<T>();
  T *TC = tcs.data_ptr<T>(), *P = p_buf.data_ptr<T>(), *PD = pd_buf.data_ptr<T>();
  T *GT = gates.data_ptr<T>(), *HC = hcell.data_ptr<T>(), *TM = tmp.data_ptr<T>(), *SC = score.data_ptr<T>();
  bool* M = mask.data_ptr<bool>();
  const T* hprev = h0.data_ptr<T>();
  for (int64_t t = 0; t < Tn; ++t) {
    T* h = HS + t * nB * u;
    T* c = CS + t * nB * u;
    if (is_reset[t]) {
      for (int64_t i = 0; i < nB; ++i) {
        const T kv = KP[t * B + i % B];
        for (int64_t j = 0; j < u; ++j) { h[i * u + j] = hprev[i * u + j] * kv; c[i * u + j] *= kv; }
      }
    } else {
      std::copy(hprev, hprev + nB * u, h);
    }
    // input attention: p = sigmoid(K_t h), score = mean_h p
    T* p = P + t * nB * H;
    T* pd = PD + t * nB * (H + 1);
    const T* Kt = K + t * nB * H * u;
    for (int64_t i = 0; i < nB; ++i)
      for (int64_t hh = 0; hh < H; ++hh) {
        const T* kr = Kt + (i * H + hh) * u;
        T s = 0;
        #pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < u; ++j) s += kr[j] * h[i * u + j];
        p[i * H + hh] = s;
      }
    p_buf.select(0, t).sigmoid_();  // ATen's vectorised sigmoid: scalar std::exp is ~10x slower
    for (int64_t i = 0; i < nB; ++i) {
      T acc = 0;
      for (int64_t hh = 0; hh < H; ++hh) acc += p[i * H + hh];
      SC[i] = acc / T(H);
    }
    Tensor winners = std::get<1>(at::topk(score, k, 0));  // [k, B], as torch.topk picks them
    const int64_t* W = winners.data_ptr<int64_t>();
    bool* m = M + t * nB;
    for (int64_t r = 0; r < k; ++r)
      for (int64_t b = 0; b < B; ++b) m[W[r * B + b] * B + b] = true;
    if (p_in > 0) {
      Tensor noise = at::empty({n, B, H}, opts).bernoulli_(1.0 - p_in).div_(1.0 - p_in);
      const T* nz = noise.data_ptr<T>();
      T* keepn = noise_in.data_ptr<T>() + t * nB * H;
      for (int64_t i = 0; i < nB * H; ++i) keepn[i] = nz[i];
      for (int64_t i = 0; i < nB; ++i)
        for (int64_t hh = 0; hh < H; ++hh) pd[i * (H + 1) + hh] = p[i * H + hh] * nz[i * H + hh];
    } else {
      for (int64_t i = 0; i < nB; ++i)
        for (int64_t hh = 0; hh < H; ++hh) pd[i * (H + 1) + hh] = p[i * H + hh];
    }
    // gates = h W_hh + [p', 1] VW_aug[t]
    Tensor h_t = hs.select(0, t);
    at::bmm_out(gates, h_t, w_hh);
    const T* VWt = VW + t * nB * (H + 1) * G4;
    T* a = A + t * nB * G4;
    T* tc = TC + t * nB * u;
    for (int64_t i = 0; i < nB; ++i) {
      T* __restrict__ g = GT + i * G4;
      for (int64_t hh = 0; hh <= H; ++hh) {
        const T w = pd[i * (H + 1) + hh];
        const T* __restrict__ row = VWt + (i * (H + 1) + hh) * G4;
        #pragma omp simd
        for (int64_t j = 0; j < G4; ++j) g[j] += w * row[j];
      }
    }
    Tensor a_t = acts.select(0, t);
    Tensor a_ifo = a_t.narrow(-1, 0, 3 * u), a_g = a_t.narrow(-1, 3 * u, u), tc_t = tcs.select(0, t);
    at::sigmoid_out(a_ifo, gates.narrow(-1, 0, 3 * u));
    at::tanh_out(a_g, gates.narrow(-1, 3 * u, u));
    for (int64_t i = 0; i < nB; ++i) {
      const T* ai = a + i * G4;
      for (int64_t j = 0; j < u; ++j) TM[i * u + j] = ai[u + j] * c[i * u + j] + ai[j] * ai[3 * u + j];  // c'
    }
    at::tanh_out(tc_t, tmp);
    for (int64_t i = 0; i < nB; ++i) {
      const T* ai = a + i * G4;
      for (int64_t j = 0; j < u; ++j) HC[i * u + j] = ai[2 * u + j] * tc[i * u + j];
    }
    T* cnext = CS + (t + 1) * nB * u;
    for (int64_t i = 0; i < nB; ++i) {
      const bool on = m[i];
      for (int64_t j = 0; j < u; ++j) cnext[i * u + j] = on ? TM[i * u + j] : c[i * u + j];
    }
    if (comm) {
      T* hm = hms.data_ptr<T>() + t * nB * u;
      for (int64_t i = 0; i < nB; ++i) {
        const bool on = m[i];
        for (int64_t j = 0; j < u; ++j) hm[i * u + j] = on ? HC[i * u + j] : h[i * u + j];
      }
      Tensor qkv_t = qkvs.select(0, t);
      at::bmm_out(qkv_t, hms.select(0, t), w_comm);
      const T* Q = qkv_t.data_ptr<T>();
      T* PR = probs.data_ptr<T>() + t * B * Hc * n * n;  // [B*Hc, n_key, n_query]
      T* at_ = atts.data_ptr<T>() + t * nB * Wa;
      Tensor nzc;
      const T* NZ = nullptr;
      T* NZS = nullptr;
      if (p_c > 0) {  // drawn in the reference's [n_query, n_key, B, Hc] order
        nzc = at::empty({n, n, B, Hc}, opts).bernoulli_(1.0 - p_c).div_(1.0 - p_c);
        NZ = nzc.data_ptr<T>();
        NZS = noise_c.data_ptr<T>() + t * B * Hc * n * n;
      }
      std::vector<T> sc(n * n), col(n);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t hd = 0; hd < Hc; ++hd) {
          T* Pbh = PR + (b * Hc + hd) * n * n;
          for (int64_t kk = 0; kk < n; ++kk) {
            const T* kr = Q + (kk * B + b) * Wq + hd * Gc + dkc;
            for (int64_t q = 0; q < n; ++q) {
              const T* qr = Q + (q * B + b) * Wq + hd * Gc;
              T s = 0;
              #pragma omp simd reduction(+ : s)
              for (int64_t j = 0; j < dkc; ++j) s += kr[j] * qr[j];
              sc[kk * n + q] = s;
            }
          }
          for (int64_t q = 0; q < n; ++q) {
            for (int64_t kk = 0; kk < n; ++kk) col[kk] = sc[kk * n + q];
            T kth = -INFINITY;
            if (top_k > 0) {
              std::vector<T> srt(col);
              std::nth_element(srt.begin(), srt.begin() + (top_k - 1), srt.end(), std::greater<T>());
              kth = srt[top_k - 1];
            }
            T mx = -INFINITY;
            for (int64_t kk = 0; kk < n; ++kk)
              if (!(top_k > 0 && col[kk] < kth)) mx = std::max(mx, col[kk]);
            for (int64_t kk = 0; kk < n; ++kk)  // exp(-inf) = 0 drops the masked units
              Pbh[kk * n + q] = (top_k > 0 && col[kk] < kth) ? T(-INFINITY) : col[kk] - mx;
          }
        }
      probs.select(0, t).exp_();  // vectorised, for all (sample, head) at once
      for (int64_t b = 0; b < B; ++b)
        for (int64_t hd = 0; hd < Hc; ++hd) {
          T* Pbh = PR + (b * Hc + hd) * n * n;
          for (int64_t q = 0; q < n; ++q) {
            T sum = 0;
            for (int64_t kk = 0; kk < n; ++kk) sum += Pbh[kk * n + q];
            for (int64_t kk = 0; kk < n; ++kk) Pbh[kk * n + q] /= sum;
          }
          if (NZ)
            for (int64_t q = 0; q < n; ++q)
              for (int64_t kk = 0; kk < n; ++kk)
                NZS[(b * Hc + hd) * n * n + kk * n + q] = NZ[((q * n + kk) * B + b) * Hc + hd];
          for (int64_t q = 0; q < n; ++q) {
            T* ar = at_ + (q * B + b) * Wa + hd * dvc;
            for (int64_t j = 0; j < dvc; ++j) ar[j] = 0;
            for (int64_t kk = 0; kk < n; ++kk) {
              T w = Pbh[kk * n + q];
              if (NZ) w *= NZS[(b * Hc + hd) * n * n + kk * n + q];
              const T* vr = Q + (kk * B + b) * Wq + hd * Gc + 2 * dkc;
              for (int64_t j = 0; j < dvc; ++j) ar[j] += w * vr[j];
            }
          }
        }
      at::bmm_out(tmp, atts.select(0, t), w_comm_out);
      for (int64_t i = 0; i < nB * u; ++i) HC[i] += TM[i];
    }
    T* o = OUT + t * nB * u;
    for (int64_t i = 0; i < nB; ++i) {
      const bool on = m[i];
      for (int64_t j = 0; j < u; ++j) o[i * u + j] = on ? HC[i * u + j] : h[i * u + j];
    }
    hprev = o;
  }
}

void forward(
    Tensor keys, Tensor vw, Tensor w_hh, Tensor w_comm, Tensor w_comm_out, Tensor h0,
    c10::optional<Tensor> keep, std::vector<int64_t> resets, Tensor out, Tensor mask, Tensor hs, Tensor cs,
    Tensor acts, Tensor tcs, Tensor p, Tensor pd, Tensor noise_in, Tensor hms, Tensor qkvs, Tensor atts,
    Tensor probs, Tensor noise_c,
    int64_t k, int64_t top_k, int64_t Hc, int64_t dkc, int64_t dvc, double p_in, double p_c, bool comm) {
  Tensor kp = keep.has_value() ? keep.value() : Tensor();
  for (const Tensor* x : {&keys, &vw, &h0, &kp, &out, &mask, &hs, &cs, &acts, &tcs, &p, &pd, &noise_in, &hms,
                          &qkvs, &atts, &probs, &noise_c})
    TORCH_CHECK(!x->defined() || x->is_contiguous(), "rims_rl C++ loop: buffers must be contiguous");
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rims_forward", [&] {
    forward_impl<scalar_t>(keys, vw, w_hh, w_comm, w_comm_out, h0, kp, resets, out, mask, hs, cs, acts,
                           tcs, p, pd, noise_in, hms, qkvs, atts, probs, noise_c, k, top_k, Hc, dkc, dvc,
                           p_in, p_c, comm);
  });
}

// Backward through time: fills dgates, ds, dcomm, dqkv per step; dh, dc carry in and out.
template <typename T>
static void backward_impl(
    const Tensor& keys, const Tensor& vw, const Tensor& w_hh_t, const Tensor& w_comm_t,
    const Tensor& w_comm_out_t, const Tensor& keep, const std::vector<int64_t>& resets, const Tensor& mask,
    const Tensor& cs, const Tensor& acts, const Tensor& tcs, const Tensor& p_buf, const Tensor& noise_in,
    const Tensor& qkvs, const Tensor& probs, const Tensor& noise_c, const Tensor& d_out, const Tensor& dh_io,
    const Tensor& dc_io, const Tensor& dgates, const Tensor& ds_buf, const Tensor& dcomm, const Tensor& dqkv,
    int64_t Hc, int64_t dkc, int64_t dvc, bool comm) {
  const int64_t Tn = vw.size(0), n = vw.size(1), B = vw.size(2), H = vw.size(3) - 1, G4 = vw.size(4);
  const int64_t u = G4 / 4, Gc = 2 * dkc + dvc, Wq = Hc * Gc, Wa = Hc * dvc;
  const int64_t nB = n * B;
  std::vector<char> is_reset(Tn, 0);
  for (auto t : resets) is_reset[t] = 1;
  auto opts = keys.options();
  Tensor dho = at::empty({n, B, u}, opts), tmp = at::empty({n, B, u}, opts);
  Tensor datt = at::empty({n, B, Wa}, opts);
  T *DH = dh_io.data_ptr<T>(), *DC = dc_io.data_ptr<T>(), *DHO = dho.data_ptr<T>(), *TM = tmp.data_ptr<T>();
  const T* K = keys.data_ptr<T>();
  const T* VW = vw.data_ptr<T>();
  const T* KP = keep.defined() ? keep.data_ptr<T>() : nullptr;
  const T *CS = cs.data_ptr<T>(), *A = acts.data_ptr<T>(), *TC = tcs.data_ptr<T>(), *P = p_buf.data_ptr<T>();
  const T* NI = noise_in.numel() ? noise_in.data_ptr<T>() : nullptr;
  const T* NC = noise_c.numel() ? noise_c.data_ptr<T>() : nullptr;
  const T* DO = d_out.data_ptr<T>();
  const bool* M = mask.data_ptr<bool>();
  T *DG = dgates.data_ptr<T>(), *DS = ds_buf.data_ptr<T>();
  std::vector<T> dP(n * n), dS(n * n);
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const bool* m = M + t * nB;
    const T* dot_ = DO + t * nB * u;
    for (int64_t i = 0; i < nB * u; ++i) DHO[i] = dot_[i] + DH[i];
    if (comm) {
      T* dcm = dcomm.data_ptr<T>() + t * nB * u;
      for (int64_t i = 0; i < nB; ++i)
        for (int64_t j = 0; j < u; ++j) dcm[i * u + j] = m[i] ? DHO[i * u + j] : T(0);
      at::bmm_out(datt, dcomm.select(0, t), w_comm_out_t);
      const T* DA = datt.data_ptr<T>();
      const T* Q = qkvs.data_ptr<T>() + t * nB * Wq;
      T* DQ = dqkv.data_ptr<T>() + t * nB * Wq;
      const T* PR = probs.data_ptr<T>() + t * B * Hc * n * n;
      const T* NZ = NC ? NC + t * B * Hc * n * n : nullptr;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t hd = 0; hd < Hc; ++hd) {
          const T* Pbh = PR + (b * Hc + hd) * n * n;
          const T* Nbh = NZ ? NZ + (b * Hc + hd) * n * n : nullptr;
          for (int64_t kk = 0; kk < n; ++kk) {
            const T* vr = Q + (kk * B + b) * Wq + hd * Gc + 2 * dkc;
            for (int64_t q = 0; q < n; ++q) {
              const T* da = DA + (q * B + b) * Wa + hd * dvc;
              T s = 0;
              #pragma omp simd reduction(+ : s)
              for (int64_t j = 0; j < dvc; ++j) s += vr[j] * da[j];
              dP[kk * n + q] = Nbh ? s * Nbh[kk * n + q] : s;
            }
          }
          for (int64_t q = 0; q < n; ++q) {
            T s = 0;
            for (int64_t kk = 0; kk < n; ++kk) s += Pbh[kk * n + q] * dP[kk * n + q];
            for (int64_t kk = 0; kk < n; ++kk) dS[kk * n + q] = Pbh[kk * n + q] * (dP[kk * n + q] - s);
          }
          for (int64_t r = 0; r < n; ++r) {  // unit r as query (dq), as key (dk), as value (dv)
            T* dq = DQ + (r * B + b) * Wq + hd * Gc;
            T* dk = dq + dkc;
            T* dv = dq + 2 * dkc;
            for (int64_t j = 0; j < Gc; ++j) dq[j] = 0;
            for (int64_t o = 0; o < n; ++o) {
              const T* ko = Q + (o * B + b) * Wq + hd * Gc + dkc;
              const T* qo = Q + (o * B + b) * Wq + hd * Gc;
              const T* dao = DA + (o * B + b) * Wa + hd * dvc;
              const T s_q = dS[o * n + r], s_k = dS[r * n + o];
              T pd = Pbh[r * n + o];
              if (Nbh) pd *= Nbh[r * n + o];
              #pragma omp simd
              for (int64_t j = 0; j < dkc; ++j) { dq[j] += s_q * ko[j]; dk[j] += s_k * qo[j]; }
              #pragma omp simd
              for (int64_t j = 0; j < dvc; ++j) dv[j] += pd * dao[j];
            }
          }
        }
      at::bmm_out(tmp, dqkv.select(0, t), w_comm_t);
      for (int64_t i = 0; i < nB * u; ++i) DHO[i] += TM[i];
    }
    const T* a = A + t * nB * G4;
    const T* tc = TC + t * nB * u;
    const T* cp = CS + t * nB * u;
    T* dg = DG + t * nB * G4;
    for (int64_t i = 0; i < nB; ++i) {
      const bool on = m[i];
      const T* ai = a + i * G4;
      T* dgi = dg + i * G4;
      for (int64_t j = 0; j < u; ++j) {
        const int64_t x = i * u + j;
        const T dhc = on ? DHO[x] : T(0);
        const T dcn = on ? DC[x] : T(0);
        const T iv = ai[j], fv = ai[u + j], ov = ai[2 * u + j], gv = ai[3 * u + j], tv = tc[x];
        const T dct = dcn + dhc * (ov * (T(1) - tv * tv));
        dgi[j] = dct * (gv * iv * (T(1) - iv));
        dgi[u + j] = dct * (cp[x] * fv * (T(1) - fv));
        dgi[2 * u + j] = dhc * (tv * ov * (T(1) - ov));
        dgi[3 * u + j] = dct * (iv * (T(1) - gv * gv));
        DC[x] = (DC[x] - dcn) + dct * fv;
        DH[x] = DHO[x] - dhc;
      }
    }
    at::bmm_out(tmp, dgates.select(0, t), w_hh_t);
    for (int64_t i = 0; i < nB * u; ++i) DH[i] += TM[i];
    const T* VWt = VW + t * nB * (H + 1) * G4;
    const T* Kt = K + t * nB * H * u;
    const T* p = P + t * nB * H;
    T* ds = DS + t * nB * H;
    for (int64_t i = 0; i < nB; ++i)
      for (int64_t hh = 0; hh < H; ++hh) {
        const T* row = VWt + (i * (H + 1) + hh) * G4;
        const T* dgi = dg + i * G4;
        T s = 0;
        #pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < G4; ++j) s += row[j] * dgi[j];
        const T pv = p[i * H + hh];
        T d = s * (pv * (T(1) - pv));
        if (NI) d *= NI[(t * nB + i) * H + hh];
        ds[i * H + hh] = d;
        const T* kr = Kt + (i * H + hh) * u;
        #pragma omp simd
        for (int64_t j = 0; j < u; ++j) DH[i * u + j] += d * kr[j];
      }
    if (is_reset[t])
      for (int64_t i = 0; i < nB; ++i) {
        const T kv = KP[t * B + i % B];
        for (int64_t j = 0; j < u; ++j) { DH[i * u + j] *= kv; DC[i * u + j] *= kv; }
      }
  }
}

void backward(
    Tensor keys, Tensor vw, Tensor w_hh_t, Tensor w_comm_t, Tensor w_comm_out_t, c10::optional<Tensor> keep,
    std::vector<int64_t> resets, Tensor mask, Tensor cs, Tensor acts, Tensor tcs, Tensor p, Tensor noise_in,
    Tensor qkvs, Tensor probs, Tensor noise_c, Tensor d_out, Tensor dh, Tensor dc, Tensor dgates, Tensor ds,
    Tensor dcomm, Tensor dqkv, int64_t Hc, int64_t dkc, int64_t dvc, bool comm) {
  Tensor kp = keep.has_value() ? keep.value() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rims_backward", [&] {
    backward_impl<scalar_t>(keys, vw, w_hh_t, w_comm_t, w_comm_out_t, kp, resets, mask, cs, acts, tcs, p,
                            noise_in, qkvs, probs, noise_c, d_out, dh, dc, dgates, ds, dcomm, dqkv, Hc, dkc,
                            dvc, comm);
  });
}
"""


def extension() -> ModuleType | None:
    """The built extension, or None (no compiler, ``RIMS_RL_NO_EXT=1``, or a failed build: one warning)."""
    return cached_extension(_STATE, _build, "the C++ RIMs loop", "the Python loop")


def cached_extension(
    state: dict[str, Any], build: Callable[[], ModuleType], what: str, instead: str
) -> ModuleType | None:
    """``state["module"]``, built by ``build()`` on the first call; None without a compiler, after a
    failed build (one warning line naming ``what`` and ``instead``, the path that runs then) or with
    ``RIMS_RL_NO_EXT=1`` (silently). Shared by the C++ loops (``rims_ext``, ``gru_ext``, ``tlb_ext``):
    each keeps its own ``state`` so a failure of one does not disable the others."""
    if "module" in state:
        return state["module"]
    module = None
    if os.environ.get("RIMS_RL_NO_EXT", "") not in ("", "0"):
        state["module"] = None
        return None
    try:
        module = build()
    except Exception as err:  # no compiler, no ninja, a build error: the Python path does the same work
        lines = str(err).strip().splitlines() or [type(err).__name__]
        first_line = next((ln for ln in lines if "error" in ln.lower() and ": " in ln), lines[0])
        warnings.warn(
            f"rims_rl: {what} could not be built ({first_line[:200]}); using {instead} "
            "(same results, slower on CPU; set RIMS_RL_NO_EXT=1 to skip the build)",
            RuntimeWarning,
            stacklevel=4,
        )
    state["module"] = module
    return module


EXTENSION_NAME = "rims_rl_derived_loop"
#: A build lock older than this was left by a process killed while it built (a build takes 1-2 minutes):
#: torch waits for its lock file to vanish with no time limit, so every later RIMs run would hang.
STALE_LOCK_SECONDS = 900


def build_directory(name: str) -> Path:
    """Where ``name`` is built: torch's extension cache, one folder per torch installation. The build
    flags hold the installation's include paths, so two virtual environments sharing one cache would
    otherwise rebuild each other's extension at every first use, each waiting on the other's lock."""
    from torch.utils.cpp_extension import _get_build_directory

    digest = hashlib.sha1(str(Path(torch.__file__).resolve().parent).encode()).hexdigest()[:10]
    folder = Path(_get_build_directory(f"{name}-{digest}", verbose=False))  # not ``name``'s folder too
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clear_stale_lock(folder: Path) -> None:
    try:
        lock = folder / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
    except OSError:
        pass  # the build below says what is wrong with the folder


def build_inline(
    name: str,
    source: str,
    functions: list[str] | None,
    cflags: tuple[str, ...] = ("-O3", "-fopenmp-simd"),  # the pragmas vectorise the dot products
) -> ModuleType:
    """``load_inline`` of a C++ source under its own cache ``name`` (after removing a stale lock);
    ``functions=None`` when the source declares its own ``PYBIND11_MODULE``. Raises what the build
    raises."""
    from torch.utils.cpp_extension import load_inline

    folder = build_directory(name)
    _clear_stale_lock(folder)
    return load_inline(
        name=name,
        cpp_sources=source,
        functions=functions,
        extra_cflags=list(cflags),
        build_directory=str(folder),
        verbose=False,
    )


def _build() -> ModuleType:
    return build_inline(EXTENSION_NAME, _SOURCE, ["forward", "backward"])


def usable(x: torch.Tensor) -> bool:
    """Whether the C++ loop takes this call: CPU float32/float64 tensors and a built extension."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and extension() is not None
