"""`lori inspect`: the tree of any artifact, the energy table, plots, clear errors, xarray compatibility."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from lori import factorize
from lori.__main__ import main as lori_main
from lori.inspect import describe, main

from tests.runs import write_hidden


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 20, 30))])
    H = rng.standard_normal((offsets[-1], 3, 10)) * np.array([1.0, 4.0, 9.0])[None, :, None]
    hidden = write_hidden(d / "calib.zarr", H, offsets, chunk=16)
    factors = str(d / "factors.zarr")
    factorize.main(["--hidden", hidden, "--out", factors, "--rank-layer", "2", "--rank-hidden", "3"])
    return hidden, factors, offsets


def test_factors_tree_energy_table_and_diagnostics(stores):
    text = describe(stores[1])
    assert "stage factorize" in text and "rank_hidden: 3" in text
    assert "U_hidden         [hidden=10 x rank_hidden=3]  float64" in text
    assert "effective_rank   [example=30]  float64" in text and "example_id       [example=30]  string" in text
    table = text[text.index("energy captured vs rank"):].splitlines()
    spec = zarr.open_group(stores[1], mode="r")["spectrum_hidden"][...]
    row3 = next(line for line in table if line.split()[:1] == ["3"])
    assert f"{100 * spec[:3].sum() / spec.sum():.2f}*" in row3             # chosen hidden rank marked
    assert "per example (30 with CoT tokens of 30)" in text and "effective rank    median" in text


def test_hidden_store_and_other_artifacts(stores, tmp_path, capsys):
    text = describe(stores[0])
    assert "states           [token=" in text and "float16" in text and "chunks (16, 3, 10)" in text
    assert f"examples: 30, tokens: {stores[2][-1]}" in text
    (tmp_path / "eval.jsonl").write_text('{"id": "a", "correct": true}\n{"id": "b", "correct": false}\n')
    (tmp_path / "summary.json").write_text(json.dumps({"accuracy": 0.5, "n": 2}))
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 3), np.float32)}, str(tmp_path / "model.safetensors"))
    text = describe(tmp_path)
    assert "eval.jsonl" in text and "2 rows" in text and "accuracy: 0.5" in text
    assert "1 tensors, 6 parameters" in text and "F32" in text
    lori_main(["inspect", str(tmp_path / "summary.json")])
    assert capsys.readouterr().out.splitlines()[1:] == ["  accuracy: 0.5", "  n: 2"]


def test_plots(stores, tmp_path):
    main([stores[1], "--plot", str(tmp_path / "spectrum.png"), "--plot-examples", str(tmp_path / "examples.png")])
    for name in ("spectrum.png", "examples.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_errors_name_the_array(stores, tmp_path, capsys):
    cases = []
    missing = tmp_path / "missing.zarr"
    shutil.copytree(stores[1], missing)
    shutil.rmtree(missing / "U_hidden")
    cases.append((missing, "no readable array 'U_hidden'"))
    corrupt = tmp_path / "corrupt.zarr"
    shutil.copytree(stores[1], corrupt)
    (corrupt / "effective_rank" / "zarr.json").write_text("{broken")
    cases.append((corrupt, "array 'effective_rank' is unreadable or corrupt"))
    no_meta = tmp_path / "no_meta.zarr"
    shutil.copytree(stores[0], no_meta)
    (no_meta / "anchors" / "zarr.json").unlink()
    cases.append((no_meta, "'anchors'"))
    cases.append((tmp_path / "nowhere.zarr", "no such artifact"))
    for path, fragment in cases:
        with pytest.raises(SystemExit) as e:
            main([str(path)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err and str(path) in err, err
    with pytest.raises(SystemExit):
        main([stores[0], "--plot", str(tmp_path / "x.png")])
    assert "needs a factors store" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_console_dispatch(stores, capsys):
    lori_main(["inspect", stores[1]])
    assert "energy captured vs rank" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        lori_main(["nonsense"])
    assert e.value.code == 2 and "unknown command 'nonsense'" in capsys.readouterr().err


def test_xarray_opens_every_store(stores):
    xr = pytest.importorskip("xarray")
    hidden = xr.open_zarr(stores[0], consolidated=False)
    assert hidden["states"].dims == ("token", "layer", "hidden") and hidden.sizes["example"] == 30
    assert hidden["offsets"].dims == ("example_plus_one",)
    f = xr.open_zarr(stores[1], consolidated=False)
    assert f["U_layer"].dims == ("layer", "rank_layer") and f["mean"].dims == ("layer", "hidden")
    assert f["effective_rank"].dims == ("example",) and f.sizes["layer"] == 3 and f.sizes["rank_hidden"] == 3
    np.testing.assert_array_equal(f["cot_length"].values, np.diff(stores[2]))
    assert f.attrs["stage"] == "factorize"
