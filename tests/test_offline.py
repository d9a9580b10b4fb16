"""An unreachable Hugging Face hub is known at once: one error line, no minute of retry lines."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import run_ens

PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub online, with an empty cache and no proxy: only the endpoint is left to set."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    return constants


def test_unreachable_hub_is_one_line_at_once(hub, monkeypatch, image_folder, tmp_path):
    import ensemble.learn.model as model

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")  # reserved: never resolves, online or not
    probe, asked = model.hub_unreachable, []

    def timed(*args, **kw):  # the clock starts where the weights are asked for
        asked.append(time.perf_counter())
        return probe(*args, **kw)

    monkeypatch.setattr(model, "hub_unreachable", timed)
    res = run_ens(
        "train",
        "--dataset",
        f"folder:{image_folder}",
        "--opt",
        "sgd",
        "--n",
        "1",
        "--epochs",
        "1",
        "--size",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        "--members-dir",
        str(tmp_path / "M"),
    )  # the default recipe: resnet50.tv_in1k from the hub
    seconds = time.perf_counter() - asked[0]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "Retry" not in res.stderr and "Traceback" not in res.stderr
    assert "hub.invalid cannot be reached" in lines[0]
    assert "--weights PATH" in lines[0] and "--no-pretrained" in lines[0]
    assert seconds < 5, seconds  # was 47 s of retries (60 s in all)


def test_probe_answers_for_a_closed_and_an_open_port(hub, monkeypatch):
    from ensemble.learn.model import hub_unreachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    start = time.perf_counter()
    why = hub_unreachable()  # the port is closed now
    assert why is not None and "127.0.0.1 cannot be reached" in why
    assert time.perf_counter() - start < 3
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_unreachable() is None  # behind a proxy only the proxy knows
