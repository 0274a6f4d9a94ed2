"""``benchmarks/throughput.py``'s table: the share of sb3-contrib's update our products alone take."""

from project_files import PROJECT_ROOT, load_script


def test_products_share_is_products_per_update_times_the_median_product_over_sb3s_update(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))  # its sibling rl_zoo.py, as when run as a script
    throughput = load_script("benchmarks/throughput.py")
    ours = throughput.Measurement([], [0.040, 0.050], [0.002] * 40 + [0.004] * 10, [], [0.4, 0.5])
    sb3 = throughput.Measurement([], [0.100, 0.125, 0.150], [0.006] * 45, [], [1.0, 1.0, 1.0])
    assert throughput.products_per_update(ours) == 25.0
    throughput.print_table("Hopper-v5", throughput.SETTINGS["Hopper-v5"], {"ours": ours, throughput.SB3: sb3})
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ours "))
    assert row.split()[-1] == f"{25 * 0.002 / 0.125:.2f}"  # 0.40: 25 products of 2 ms against 125 ms
    assert row.split()[-2] == f"{0.002 / 0.006:.2f}"


def test_a_variant_row_is_the_defaults_with_its_overrides(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))
    throughput = load_script("benchmarks/throughput.py")
    setting = throughput.SETTINGS["Hopper-v5"]
    rows = throughput.ours_overridden(setting, [["fisher_fraction=0.25", "cg_iters=15"], ["cg_iters=10"]])
    assert rows == {
        "ours (fisher_fraction=0.25, cg_iters=15)": {"fisher_fraction": 0.25, "cg_iters": 15},
        "ours (cg_iters=10)": {"cg_iters": 10},
    }
