"""tools.compress_frames and the report/argument helpers of tools.bench_compress."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO

from tools.bench_compress import parse_counts, scaled_counts
from tools.compress_frames import (
    FrameLayout, encoded_pixel_bytes, fmt_spread, layout_of, mb_per_s, opj_raw_format,
    opj_raw_frame, parse_stats, ratio, spread)
from tools.compress_report import render_report


def _image(**values) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 2, 3, 16, 12
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_layout_reads_the_image_pixel_module():
    layout = layout_of(_image(SamplesPerPixel=3, NumberOfFrames="4", PixelRepresentation=1,
                              PlanarConfiguration=1))
    assert layout == FrameLayout(2, 3, 3, 4, 16, 12, True, True)
    assert layout.frame_bytes == 2 * 3 * 3 * 2 and layout.pixel_bytes == 4 * 36


def test_layout_defaults_to_one_unsigned_monochrome_frame():
    layout = layout_of(_image())
    assert (layout.samples, layout.frames, layout.signed, layout.planar) == (1, 1, False, False)


def test_layout_refuses_bits_allocated_it_does_not_benchmark():
    with pytest.raises(ValueError):
        layout_of(_image(BitsAllocated=32))


def test_monochrome_frame_is_written_as_is_and_frames_are_picked_by_index():
    layout = FrameLayout(2, 2, 1, 2, 16, 16, True)
    pixels = np.arange(8, dtype="<i2").tobytes()
    assert opj_raw_frame(pixels, layout, 1) == pixels[8:]


def test_colour_by_pixel_frame_is_written_component_after_component():
    layout = FrameLayout(1, 2, 3, 1, 8, 8, False)
    pixels = bytes([1, 2, 3, 4, 5, 6])  # R G B of pixel 0, then of pixel 1
    assert opj_raw_frame(pixels, layout, 0) == bytes([1, 4, 2, 5, 3, 6])


def test_colour_by_plane_frame_is_already_in_opj_order():
    layout = FrameLayout(1, 2, 3, 1, 8, 8, False, planar=True)
    assert opj_raw_frame(bytes(range(6)), layout, 0) == bytes(range(6))


def test_frame_outside_the_pixel_data_is_an_error():
    layout = FrameLayout(2, 2, 1, 2, 8, 8, False)
    with pytest.raises(IndexError):
        opj_raw_frame(bytes(8), layout, 2)
    with pytest.raises(ValueError):
        opj_raw_frame(bytes(6), layout, 1)


@pytest.mark.parametrize("signed, expected", [(True, "512,256,1,16,s"),
                                              (False, "512,256,1,16,u")])
def test_opj_format_is_columns_rows_components_bits_sign(signed, expected):
    assert opj_raw_format(FrameLayout(256, 512, 1, 1, 16, 16, signed)) == expected


def test_encoded_pixel_bytes_counts_fragments_without_the_offset_table():
    ds = Dataset()
    ds.Rows = 1
    ds.add_new(0x7FE00010, "OB", encapsulate([b"a" * 10, b"b" * 6], has_bot=True))
    ds["PixelData"].is_undefined_length = True
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    assert encoded_pixel_bytes(fp.getvalue()) == (2, 16)


def test_parse_stats_reads_instances_and_compression_totals():
    text = ("patients   1\nstudies    1\nseries     1\ninstances  12\nconflicts  0\n"
            "bytes      10 (0.000 GB)\n\ncompression: 3 queued, 0 not compressible (see log)\n"
            "modality   instances   MB before    MB after   ratio\n"
            "CT                 7         3.7         1.2    3.08\n")
    assert parse_stats(text) == (12, {"CT": (7, 3.7, 1.2)})
    assert parse_stats(text.split("\n\n")[0] + "\n") == (12, {})
    with pytest.raises(ValueError):
        parse_stats("nothing")


def test_figures_helpers():
    assert mb_per_s(5e6, 2.0) == 2.5 and mb_per_s(1, 0) is None
    assert spread([3.0, None, 1.0, 2.0]) == (2.0, 1.0, 3.0) and spread([None]) is None
    assert fmt_spread((2.0, 1.0, 3.0)) == "2.0 (1.0–3.0)" and fmt_spread((2.0, 2.0, 2.0)) == "2.0"
    assert ratio(3.0, 2.0) == "1.50×" and ratio(None, 2.0) == "—"


def test_counts_flag_and_scale():
    assert parse_counts("ct=40, cr=3") == {"ct": 40, "cr": 3}
    for bad in ("xx=1", "ct=0", "ct", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_counts(bad)
    assert scaled_counts({"ct": 40, "mg": 1}, 0.1) == {"ct": 4, "mg": 1}


def _doc(stage_ok: bool = True) -> dict:
    codec = [{"modality": "ct", "frames": 1, "pixel_bytes": 1_000_000, "encoded_bytes": 250_000,
              "seconds": 0.1}]
    phases = [{"modality": "ct", "pixel_bytes": 1_000_000, "encode_s": 0.05, "verify_s": 0.04}]
    opj = [{"threads": t, "processes": p, "frames": 1, "pixel_bytes": 1_000_000, "seconds": s,
            "by_modality": {"ct": {"pixel_bytes": 1_000_000, "encoded_bytes": 200_000}}}
           for t, p, s in ((1, 1, 0.05), (2, 1, 0.04), (1, 2, 0.03))]
    stage = [{"workers": w, "instances": 1, "compressed": 1 if stage_ok else 0, "failed": 0,
              "verified": True, "seconds": s, "cpu_s": 0.2, "failures": [],
              "by_modality": {"CT": {"count": 1, "bytes_before": 1_100_000,
                                     "bytes_after": 350_000}}}
             for w, s in ((1, 0.2), (2, 0.1))]
    return {"finished_at": "now", "notes": [], "errors": [], "config": {"sweep_interval": 0.5},
            "machine": {"git": "x", "python": "3", "nproc": 2, "cpu_model": "c",
                        "memory_gb": 1, "kernel": "k", "disk": "d"},
            "data": {"ct": {"files": 1, "frames": 1, "bytes": 1_100_000,
                            "pixel_bytes": 1_000_000}},
            "runs": [{"run": 1, "codec": codec, "phases": phases, "opj": opj,
                      "stage": stage}],
            "ingest_data": {"files": 10, "bytes": 5_000_000, "backlog": 5},
            "ingest": [{"mode": "pacs", "run": 1, "status": "ok", "instances_per_s": 100.0,
                        "mb_per_s": 50.0, "server_cpu_s": 1.0, "compressed_during": 0},
                       {"mode": "pacs+compression", "run": 1, "status": "ok",
                        "instances_per_s": 90.0, "mb_per_s": 45.0, "server_cpu_s": 2.0,
                        "compressed_during": 4}]}


def test_report_shows_throughput_ratios_and_targets():
    text = render_report(_doc())
    assert "| engine `transcode_file` in-process (encode + verify) | 1 | 10.0 | 10.0 | 0.50× |" \
        in text
    assert "| stage `run_now`, 2 workers | 2 | 10.0 | 5.0 | 0.30× |" in text
    assert "**10.0 MB/s = 0.18× the target** (NOT met)" in text
    assert "| ct | 1 | 1 | 1.0 | 100.0 | 10.0 | 20.0 | 44% | 4.00 | 3.14 | 5.00 |" in text
    assert "**0.90×** (target ≥ 0.8: met)" in text


def test_report_leaves_a_stage_run_that_missed_instances_out_and_lists_it():
    text = render_report(_doc(stage_ok=False))
    assert "| stage `run_now`, 2 workers | 2 | — |" in text
    assert "## Failures" in text and "compressed 0/1" in text


@pytest.mark.dcmtk
@pytest.mark.slow
def test_smoke_run_compresses_every_instance_and_reports_every_section(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.support import require_tool

    for tool in ("storescu", "echoscu"):
        require_tool(tool)
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-m", "tools.bench_compress", "--smoke",
                           "--out", str(tmp_path)],
                          cwd=repo, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    doc = json.loads((tmp_path / "results.json").read_text())
    assert not doc["errors"]
    stage = doc["runs"][0]["stage"]
    assert [r["workers"] for r in stage] == [1, 2]
    assert all(r["compressed"] == r["instances"] == 8 and r["verified"] for r in stage)
    assert {r["mode"] for r in doc["ingest"]} == {"pacs", "pacs+compression", "pacs+idle loops"}
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Throughput", "## By modality", "## Ingest while the stage compresses",
                    "## Where transcode_file spends its time", "## Speed-up candidates"):
        assert heading in report
