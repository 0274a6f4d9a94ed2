"""``benchmarks/throughput.py``: the share of sb3-contrib's update our products alone take, and ``--variant`` rows."""

import pytest
from project_files import PROJECT_ROOT, load_script


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))  # its sibling rl_zoo.py, as when run as a script
    return load_script("benchmarks/throughput.py")


def test_products_share_is_products_per_update_times_the_median_product_over_sb3s_update(throughput, capsys):
    ours = throughput.Measurement([], [0.040, 0.050], [0.002] * 40 + [0.004] * 10, [], [0.4, 0.5])
    sb3 = throughput.Measurement([], [0.100, 0.125, 0.150], [0.006] * 45, [], [1.0, 1.0, 1.0])
    assert throughput.products_per_update(ours) == 25.0
    throughput.print_table("Hopper-v5", throughput.SETTINGS["Hopper-v5"], {"ours": ours, throughput.SB3: sb3})
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ours "))
    assert row.split()[-1] == f"{25 * 0.002 / 0.125:.2f}"  # 0.40: 25 products of 2 ms against 125 ms
    assert row.split()[-2] == f"{0.002 / 0.006:.2f}"


def test_a_variant_row_is_the_defaults_with_its_overrides(throughput):
    variants = [[throughput.override("fisher_fraction=0.25"), throughput.override("cg_iters=15")]]
    variants.append([throughput.override('preconditioner="kfac"')])
    rows = throughput.ours_overridden(throughput.SETTINGS["Hopper-v5"], variants)
    assert rows == {
        "ours (fisher_fraction=0.25, cg_iters=15)": {"fisher_fraction": 0.25, "cg_iters": 15},
        'ours (preconditioner="kfac")': {"preconditioner": "kfac"},
    }


@pytest.mark.parametrize("item", ["cg_iters", "=10", "cg_iters=ten"])
def test_a_variant_that_is_not_name_equals_json_is_refused_in_one_line(throughput, capsys, item):
    with pytest.raises(SystemExit):
        throughput.main(["--no-sb3", "--variant", item])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NAME=VALUE" in error and repr(item) in error
