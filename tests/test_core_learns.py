"""A core that cannot carry information across blank steps cannot pass this (chance loss is ln 8 = 2.08)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rims_rl.copying import CopyingModel, copying_batch
from rims_rl.cores.rims import RIMs


def test_rims_learns_to_recall_a_symbol_across_blanks() -> None:
    torch.manual_seed(0)
    n_blank, n_copy = 6, 1
    core = RIMs(
        10,
        48,
        n_units=6,
        k=4,
        input_key_size=16,
        input_heads=2,
        comm_key_size=16,
        comm_value_size=16,
        comm_heads=2,
        input_dropout=0.0,
        comm_dropout=0.0,
    )
    model = CopyingModel(core)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        x, y = copying_batch(64, n_blank, n_copy, generator=gen)
        loss = F.cross_entropy(model(x)[-n_copy:].flatten(0, 1), y[-n_copy:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        x, y = copying_batch(512, n_blank, n_copy, generator=gen)
        test_loss = F.cross_entropy(model(x)[-n_copy:].flatten(0, 1), y[-n_copy:].flatten()).item()
    assert test_loss < 0.05, f"recall loss {test_loss:.3f} (chance 2.08)"
