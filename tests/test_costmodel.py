"""The alpha-beta cost model: formulas, the fit, and (as root) the emulated 1 GbE cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gtopk_mpi import costmodel
from gtopk_mpi.wire import HEADER

from mpi_launch import ROOT, run


def test_fit_recovers_a_linear_network():
    net = costmodel.Network(alpha=4e-4, beta=9e-9)
    sizes = [8, 1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 24]
    fitted = costmodel.fit([(n, net.alpha + n * net.beta) for n in sizes])
    assert fitted.alpha == pytest.approx(net.alpha, rel=1e-6)
    assert fitted.beta == pytest.approx(net.beta, rel=1e-9)


def test_table1_formulas():
    net = costmodel.Network(alpha=1.0, beta=1.0)  # unit costs: the formulas count messages and bytes
    m, k, h = 1000, 10, HEADER.itemsize
    assert costmodel.comm_time("dense", net, 4, m, k) == 2 * 3 + 2 * 3 / 4 * 4 * m
    assert costmodel.comm_time("topk", net, 8, m, k) == 3 + 7 * 8 * k
    assert costmodel.comm_time("gtopk", net, 8, m, k) == 3 + 3 * (8 * k + h)
    assert costmodel.comm_time("gtopk-tree", net, 8, m, k) == 2 * 3 + 2 * 3 * (8 * k + h)
    assert costmodel.comm_time("gtopk", net, 1, m, k) == 0
    assert costmodel.total_time("gtopk", net, 8, m, k, select_s=5.0, merge_s=2.0) == 3 + 3 * (8 * k + h) + 5 + 6


def test_layout_formulas():
    """H hosts x G ranks: the flat butterfly's cross rounds carry G sets through each port, the
    hierarchical one's a single set; inside hosts raw pairs go down and back."""
    net, intra = costmodel.Network(alpha=1.0, beta=1.0), costmodel.Network(alpha=0.5, beta=0.25)
    m, k, h, e = 1000, 10, HEADER.itemsize, 3.5
    s, raw = k * e, 8 * k + h
    assert costmodel.layout_comm_time("gtopk", net, intra, 8, 4, m, k, 4, e) == 2 * (0.5 + s / 4) + 3 * (1 + 4 * s)
    assert costmodel.layout_comm_time("gtopk-hier", net, intra, 8, 4, m, k, 4, e) == (
        2 * (0.5 + raw / 4) + 3 * (1 + s) + 2 * (0.5 + (raw + k) / 4))
    assert costmodel.layout_comm_time("dense", net, intra, 8, 4, m, k) == 2 * 7 + 2 * 7 / 8 * 4 * m + 2 * 2 * 0.5 + (
        2 * 4 * m / 4)
    # one rank per host: the two schedules are the same butterfly
    assert costmodel.layout_comm_time("gtopk", net, intra, 16, 1, m, k, 4, e) == costmodel.layout_comm_time(
        "gtopk-hier", net, intra, 16, 1, m, k, 4, e) == costmodel.comm_time("gtopk", net, 16, m, k, 4, e)


def bench_rows(nprocs: int, tmp_path: Path, *extra: str) -> tuple[list[dict], str]:
    import csv

    out = tmp_path / f"bench{nprocs}.csv"
    proc = run(nprocs, ["-m", "gtopk_mpi.bench", "--numel", "100000", "--density", "0.01", "--iters", "2",
                        "--warmup", "1", "--no-progress", "--csv", str(out), *extra], timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        return list(csv.DictReader(f)), proc.stdout


def test_bench_byte_counts_match_the_formulas(tmp_path):
    rows, _ = bench_rows(2, tmp_path, "--wire", "raw,bf16")
    by = {(r["algorithm"], r["wire"]): r for r in rows}
    m, k, p = 100_000, 1000, 2
    assert int(by["gtopk", "raw"]["bytes_sent"]) == 1 * (8 * k + HEADER.itemsize)
    assert int(by["gtopk", "raw"]["messages"]) == 1
    assert int(by["gtopk-exact", "raw"]["bytes_sent"]) == 8 * k + HEADER.itemsize
    assert int(by["topk", "raw"]["bytes_sent"]) == (p - 1) * (8 * k + HEADER.itemsize)
    assert int(by["dense", "fp32"]["bytes_sent"]) == 2 * (p - 1) * 4 * m // p
    assert float(by["gtopk", "raw"]["bytes_per_entry"]) == (8 * k + HEADER.itemsize) / k
    for algo in ("topk", "gtopk", "gtopk-exact"):  # 2-byte values, packed indices (gaps ~100: 7-8 bits)
        assert 2.5 < float(by[algo, "bf16"]["bytes_per_entry"]) < 3.5


def test_bench_model_fit_is_sane_on_loopback(tmp_path):
    rows, out = bench_rows(2, tmp_path, "--model-fit", "--predict", "16,1024", "--algorithms", "dense,gtopk")
    match = re.search(r"alpha = ([\d.]+) ms per message, beta = ([\d.]+) ns per byte", out)
    assert match, out
    alpha_ms, beta_ns = float(match.group(1)), float(match.group(2))
    assert 0 <= alpha_ms < 5 and 0 < beta_ns < 20, out   # shared memory: microseconds, GB/s
    assert "1024" in out and all(r["model_ms"] not in ("", "nan") for r in rows)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
                    reason="the emulated cluster needs root and iproute2")
def test_emulated_cluster_limits_bandwidth():
    script = str(ROOT / "scripts" / "cluster" / "emulate_cluster.sh")
    subprocess.run(["bash", script, "up", "2"], check=True, capture_output=True, timeout=60)
    try:
        code = ("import socket,sys,time\n"
                "if sys.argv[1]=='s':\n"
                " s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                " s.bind(('10.77.0.2',5999));s.listen(1);c,_=s.accept();n=0\n"
                " while True:\n"
                "  b=c.recv(1<<20)\n"
                "  if not b: break\n"
                "  n+=len(b)\n"
                " print(n)\n"
                "else:\n"
                " c=socket.create_connection(('10.77.0.2',5999));buf=b'x'*(1<<20);t=time.perf_counter()\n"
                " for _ in range(60): c.sendall(buf)\n"
                " c.shutdown(socket.SHUT_WR);c.recv(1);print(60*(1<<20)/(time.perf_counter()-t)/1e6)\n")
        server = subprocess.Popen(["ip", "netns", "exec", "gtk-1", sys.executable, "-c", code, "s"],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        client = subprocess.run(["ip", "netns", "exec", "gtk-0", sys.executable, "-c", code, "c"],
                                capture_output=True, text=True, timeout=60)
        server.wait(timeout=30)
        rate = float(client.stdout.strip())
        assert 50 < rate < 135, f"{rate:.1f} MB/s through a 1 Gbit/s link"   # 125 MB/s is the line rate
        proc = subprocess.run(["bash", script, "run", "2", sys.executable, "-c",
                               "from mpi4py import MPI; print('rank', MPI.COMM_WORLD.Get_rank())"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0 and proc.stdout.count("rank") == 2, proc.stdout + proc.stderr
    finally:
        subprocess.run(["bash", script, "down"], capture_output=True, timeout=60)
