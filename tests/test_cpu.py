"""CPU floating-point settings (ichseg.pipeline.cpu) and the network speed they protect.

Subnormal floats made the published network about 35x slower on Intel Xeon CPUs; AMD CPUs
barely slow down, so these tests must pass (and mean something) on both. Each process-level
check runs in a fresh Python process, where torch's thread pool starts in the default
floating-point mode, as in a Nipype worker.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from ichseg.pipeline import cpu
from ichseg.pipeline.inference import build_network, zero_subnormal_parameters

x86 = pytest.mark.skipif(
    platform.machine().lower() not in {"x86_64", "amd64", "i686", "x86"},
    reason="flush-to-zero through MXCSR exists on x86 CPUs only",
)


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter with 2 torch threads; it prints one JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@x86
def test_flush_reaches_a_thread_pool_that_already_exists():
    # torch's OpenMP pool is made before the flush (as when torch ran something earlier in
    # a worker): setting MXCSR in the calling thread alone leaves the pool threads as they were.
    result = _python("""
        import json, torch
        from ichseg.pipeline import cpu
        torch.set_num_threads(2)
        before = cpu._probe_subnormals_survive()     # creates the pool, default mode
        torch.set_flush_denormal(True)               # this thread only
        this_thread_only = cpu._probe_subnormals_survive()
        status = cpu.flush_denormals()
        print(json.dumps({"before": before, "this_thread_only": this_thread_only,
                          "status": status, "after": cpu._probe_subnormals_survive()}))
    """)
    assert result["before"] is True  # the probe does see subnormals when nothing flushes them
    assert result["this_thread_only"] is True  # so one thread's setting is not enough
    assert result["status"] == {"flush_denormal": True, "verified": True}
    assert result["after"] is False


@x86
def test_flush_is_in_force_inside_a_nipype_worker(tmp_path):
    # A MultiProc worker process runs the same call as the segment node and probes its threads.
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    def probe_in_worker():
        import os

        from ichseg.pipeline import cpu

        settings = cpu.configure_torch(2)
        return {"pid": os.getpid(), "survive": cpu._probe_subnormals_survive(), **settings}

    node = pe.Node(Function(function=probe_in_worker, output_names=["out"]), name="probe")
    workflow = pe.Workflow(name="ftz", base_dir=str(tmp_path))
    workflow.add_nodes([node])
    result = workflow.run(plugin="MultiProc", plugin_args={"n_procs": 2})
    out = next(iter(result.nodes())).result.outputs.out
    assert out["pid"] != __import__("os").getpid()  # it ran in a worker
    assert out["flush_denormal"] and out["flush_denormal_verified"]
    assert out["survive"] is False
    assert out["torch_threads"] == 2


def test_zero_subnormal_parameters():
    network = build_network({
        "model": {"DeepMedic": {"fully_connected": [6, 6], "feature_maps": [2, 2, 3, 3, 3, 3, 4, 4]}},
        "data": {"input_channels": 1, "num_classes": 5},
    })
    conv = network.fully_connected[0].conv
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.weight.view(-1)[:3] = torch.tensor([1e-39, -2e-40, 1e-37])  # two subnormal, one normal
    assert zero_subnormal_parameters(network) == 2
    flat = conv.weight.detach().view(-1)
    assert flat[0] == 0 and flat[1] == 0 and float(flat[2]) == pytest.approx(1e-37)
    assert torch.all(flat[3:] == 0.5)
    assert zero_subnormal_parameters(network) == 0


@pytest.mark.realdata
def test_published_weights_hold_subnormals(asset):
    # The reason for the flush: if a future model had none, the speed test below still holds.
    state = torch.load(str(asset("models/blastct-v1/model_1.pt")), map_location="cpu", weights_only=True)
    tiny = torch.finfo(torch.float32).tiny
    subnormal = sum(int(((v != 0) & (v.abs() < tiny)).sum()) for v in state.values() if v.is_floating_point())
    assert subnormal > 10_000


@pytest.mark.realdata
def test_real_network_runs_as_fast_as_a_plain_convolution(asset):
    """The published network on a small region, loaded and set up as the segment node does
    it, takes at most a few times as long per multiply-add as one plain Conv3d (random normal
    weights, no subnormals) in the same fresh process. Subnormals made the network about 35x
    slower on Intel Xeon CPUs; set up correctly the ratio is about 1-2 on AMD and Intel alike.
    Relative, so it holds on any machine speed."""
    result = _python(f"""
        import json, time, numpy as np, torch
        from ichseg.pipeline.cpu import configure_torch
        from ichseg.pipeline.inference import load_networks
        from ichseg.pipeline.streaming import region_probabilities
        configure_torch(2)
        config = json.load(open({str(asset("models/blastct-v1/config.json"))!r}))
        network = load_networks([{str(asset("models/blastct-v1/model_1.pt"))!r}], config)[0]
        rng = np.random.default_rng(0)
        image = rng.uniform(-1, 1, size=(48, 48, 48)).astype(np.float32)
        grid = np.indices(image.shape) - 23.5
        roi = (grid ** 2).sum(axis=0) < 18 ** 2
        channels, side = 48, 34
        plain = torch.nn.Conv3d(channels, channels, 3).eval().to(memory_format=torch.channels_last_3d)
        block = torch.randn(1, channels, side + 2, side + 2, side + 2).contiguous(memory_format=torch.channels_last_3d)

        def best(fn, repeats=3):
            fn()
            times = []
            for _ in range(repeats):
                start = time.perf_counter(); out = fn(); times.append(time.perf_counter() - start)
            return min(times), out

        with torch.inference_mode():
            network_s, (_, macs) = best(lambda: region_probabilities(image, network, roi))
            plain_s, _ = best(lambda: plain(block))
        print(json.dumps({{"network_s": network_s, "plain_s": plain_s, "macs": macs,
                          "plain_macs": side ** 3 * channels * channels * 27}}))
    """)
    per_mac = (result["network_s"] / result["macs"]) / (result["plain_s"] / result["plain_macs"])
    assert per_mac < 4.0, (
        f"the published network took {per_mac:.1f}x as long per multiply-add as a plain "
        f"convolution ({result}): subnormal floats are probably not flushed"
    )


def test_resolve_precision(monkeypatch):
    # bf16 failed the volume check on real CTs, so auto stays float32 even with native bf16.
    for native in (True, False):
        monkeypatch.setattr(cpu, "has_native_bf16", lambda native=native: native)
        assert cpu.resolve_precision("auto", "cpu") == "fp32"
        assert cpu.resolve_precision("auto", "cuda") == "fp32"
    assert cpu.resolve_precision("fp32", "cpu") == "fp32"
    assert cpu.resolve_precision("bf16", "cpu") == "bf16"  # allowed, with a warning
    with pytest.raises(cpu.PrecisionError, match="CUDA"):
        cpu.resolve_precision("fp16", "cpu")
    with pytest.raises(cpu.PrecisionError, match="choose one of"):
        cpu.resolve_precision("fp8", "cpu")


def test_machine_description_names_the_cpu_and_its_isa():
    described = cpu.machine_description()
    assert described["cpu_model"]
    assert set(described["isa"]) == set(cpu.ISA_FLAGS)
    assert described["torch"] == torch.__version__
    assert described["usable_cpus"] >= 1
    if platform.machine().lower() in {"x86_64", "amd64"}:
        assert described["onednn"]
    # AMX or AVX-512-BF16 is what "native bf16" means
    assert cpu.has_native_bf16() == (
        described["isa"]["amx_tile"] or described["isa"]["amx_bf16"] or described["isa"]["avx512_bf16"]
    )


def test_usable_cpus_follow_the_affinity_and_the_user_limit():
    # os.cpu_count() counts the whole machine; a Slurm job or `taskset` gives a process fewer
    # CPUs, and ichseg must size its threads by those.
    result = _python("""
        import json, os
        from ichseg.pipeline import cpu
        whole = cpu.usable_cpus()
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(json.dumps({"whole": whole, "pinned": cpu.usable_cpus()}))
    """)
    assert 1 <= result["whole"] <= len(__import__("os").sched_getaffinity(0))
    assert result["pinned"] == 1
    limited = subprocess.run(
        [sys.executable, "-c", "from ichseg.pipeline import cpu; print(cpu.usable_cpus())"],
        capture_output=True, text=True, check=True, env={**__import__("os").environ, "LOKY_MAX_CPU_COUNT": "1"})
    assert limited.stdout.strip() == "1"


def test_participant_run_sizes_itself_by_the_usable_cpus(monkeypatch):
    from ichseg.bids_app import resources
    from ichseg.bids_app.cli import build_parser

    monkeypatch.setattr(resources, "usable_cpus", lambda: 3)
    chosen = resources.Resources.from_args(build_parser().parse_args(["b", "o", "participant"]))
    assert (chosen.n_procs, chosen.omp_nthreads) == (3, 3)


def test_busy_cpus_are_reported_with_what_to_do(monkeypatch):
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    assert cpu.busy_cpus_message(2, others=0, usable=2) is None
    message = cpu.busy_cpus_message(2, others=2, usable=2)
    assert "2 thread(s) of other programs" in message and "--n-procs" in message
    # limited to a share of a larger machine: the machine-wide count says nothing of that share
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 64)
    assert cpu.busy_cpus_message(2, others=40, usable=2) is None


def test_runnable_threads_see_programs_that_compute():
    spinners = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
                for _ in range(2)]
    try:
        __import__("time").sleep(0.5)
        assert cpu.runnable_threads() >= 2
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
