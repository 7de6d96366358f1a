"""Our own policy classes saved by plain SB3 (RL Zoo does this: no rims_config.json in the zip) rebuild
safely: the class is read from its pickle's opcodes, never by unpickling, and only a known class passes."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sb3_contrib import RecurrentPPO

from rims_rl.app.checkpoint import CheckpointError
from rims_rl.app.foreign import load_foreign, read_foreign
from rims_rl.envs import make_vec_env_for
from rims_rl.extractors import MiniGridCNN

ENV = "CartPole-v1"
MINIGRID = "MiniGrid-Empty-5x5-v0"
KWARGS = {"core": "rims", "rims_kwargs": {"n_units": 4, "unit_size": 8, "k": 2}}


@pytest.fixture(scope="module")
def zoo_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = make_vec_env_for(ENV, n_envs=1, seed=0, vec_cls="dummy")
    model = RecurrentPPO("MlpRimsPolicy", env, n_steps=8, batch_size=8, policy_kwargs=KWARGS, seed=0)
    model.learn(16)
    path = tmp_path_factory.mktemp("zoo") / "rims.zip"
    model.save(path)  # what RL Zoo writes
    env.close()
    return path


def _with_policy_class(path: Path, tmp: Path, edit: dict) -> Path:
    out = tmp / "edited.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == "data":
                meta = json.loads(data)
                meta["policy_class"].update(edit)
                data = json.dumps(meta).encode()
            zf.writestr(name, data)
    return out


@pytest.fixture(scope="module")
def zoo_cnn_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MiniGrid agent with our extractor class in its policy_kwargs (pickled by SB3 beside its repr)."""
    env = make_vec_env_for(MINIGRID, n_envs=1, seed=0, vec_cls="dummy")
    kwargs = {
        **KWARGS,
        "features_extractor_class": MiniGridCNN,
        "features_extractor_kwargs": {"features_dim": 16},
    }
    model = RecurrentPPO("CnnRimsPolicy", env, n_steps=8, batch_size=8, policy_kwargs=kwargs, seed=0)
    model.learn(16)
    path = tmp_path_factory.mktemp("zoo") / "rims-cnn.zip"
    model.save(path)
    env.close()
    return path


@pytest.mark.parametrize(
    ("fixture", "env_id", "policy"),
    [("zoo_zip", ENV, "MlpRimsPolicy"), ("zoo_cnn_zip", MINIGRID, "CnnRimsPolicy")],
)
def test_our_policy_saved_by_sb3_predicts_what_sb3s_own_loader_predicts(
    fixture: str, env_id: str, policy: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    foreign = read_foreign(path)
    assert (foreign.policy, foreign.algo) == (policy, "RecurrentPPO")
    env = make_vec_env_for(env_id, n_envs=1, seed=0, vec_cls="dummy")
    trusted = RecurrentPPO.load(path, env=env)  # SB3's loader (unpickles): the reference
    rebuilt = load_foreign(path, foreign, env)
    obs, starts, s1, s2 = env.reset(), np.ones(1, dtype=bool), None, None
    for _ in range(5):
        a1, s1 = trusted.predict(obs, state=s1, episode_start=starts, deterministic=True)
        a2, s2 = rebuilt.predict(obs, state=s2, episode_start=starts, deterministic=True)
        assert np.array_equal(a1, a2) and np.allclose(s1[0], s2[0])
        obs, _, starts, _ = env.step(a1)
    env.close()


@pytest.mark.parametrize(
    "blob",
    [
        pickle.dumps(print, protocol=4),  # a known-safe global, but not a policy class
        pickle.dumps(("rims_rl.policies", "MlpRimsPolicy")),  # strings only: no reference at all
        b"\x80\x05not a pickle",
    ],
    ids=["other-global", "no-global", "garbage"],
)
def test_a_pickle_that_is_not_a_known_policy_class_is_refused(
    zoo_zip: Path, tmp_path: Path, blob: bytes
) -> None:
    # The readable __module__ / __doc__ still claim MlpRimsPolicy: only the pickle's reference counts.
    edited = _with_policy_class(zoo_zip, tmp_path, {":serialized:": base64.b64encode(blob).decode()})
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_foreign(edited)


def test_the_init_fallback_needs_the_classes_own_module(zoo_zip: Path, tmp_path: Path) -> None:
    # A blob that is not a plain reference (as for a class defined in a user's script, pickled by value):
    # the __init__ name decides only if __module__ agrees, so a script's subclass is not built as stock.
    blob = base64.b64encode(pickle.dumps({"a class": "by value"})).decode()
    stock = "sb3_contrib.common.recurrent.policies"
    init = "<function RecurrentActorCriticPolicy.__init__ at 0x7f>"
    for module, ok in (("__main__", False), (stock, True)):
        edit = {":serialized:": blob, "__init__": init, "__module__": module}
        edited = _with_policy_class(zoo_zip, tmp_path, edit)
        if ok:
            assert read_foreign(edited).policy == "RecurrentActorCriticPolicy"
        else:
            with pytest.raises(CheckpointError, match="--trust-checkpoint"):
                read_foreign(edited)


def test_a_long_blob_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickletools

    from rims_rl.app import foreign

    def refuse(*_: object) -> None:
        raise AssertionError("a blob far longer than a class reference was parsed")

    monkeypatch.setattr(pickletools, "genops", refuse)
    assert foreign._pickled_reference("A" * 2_000_000) is None


def test_an_older_protocols_reference_is_read() -> None:
    from rims_rl.app import foreign
    from rims_rl.policies import MlpRimsPolicy

    for protocol in (2, 3, 4, 5):
        blob = base64.b64encode(pickle.dumps(MlpRimsPolicy, protocol=protocol)).decode()
        assert foreign._pickled_reference(blob) == ("rims_rl.policies", "MlpRimsPolicy"), protocol
