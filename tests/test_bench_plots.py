"""Benchmark pictures: a copy ceiling becomes a share axis; every suite's PNG renders."""
from benchmarks.common import Result
from benchmarks.runner import ceiling_shares, plot_suite


def norms_rows():
    rows = []
    for case, copy in (("N8192-d768", 3200.0), ("N4093-d1000", 2900.0)):
        rows.append(Result("norms", case, "copy", "fwd", 0.1, "GB/s", copy))
        for impl, share in (("ours", 0.78), ("eager", 0.21), ("torch.compile", 0.62)):
            rows.append(Result("norms", case, impl, "fwd", 0.1, "GB/s", copy * share))
            rows.append(Result("norms", case, impl, "fwd+bwd", 0.1, "GB/s", copy * share * 0.9))
    return rows


def test_ceiling_shares_only_when_every_case_has_a_copy_row():
    rows = norms_rows()
    forward = [r for r in rows if r.mode == "fwd"]
    assert ceiling_shares(forward) == {"N8192-d768": 3200.0, "N4093-d1000": 2900.0}
    assert ceiling_shares([r for r in rows if r.mode == "fwd+bwd"]) is None  # no copy row: absolute GB/s
    assert ceiling_shares([r for r in forward if not (r.impl == "copy" and r.case == "N4093-d1000")]) is None


def test_norms_and_step_pictures_render(tmp_path):
    step = [Result("step", case, impl, "train step", 1.0, "tokens/s", value)
            for case in ("base-s128", "large-s512")
            for impl, value in (("hf-sdpa", 1e5), ("ours", 1.9e5), ("ours+cudagraph", 2.1e5))]
    for name, rows in (("norms", norms_rows()), ("step", step)):
        path = plot_suite(rows, str(tmp_path / f"{name}.png"))
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
