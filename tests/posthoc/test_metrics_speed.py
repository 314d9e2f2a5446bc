"""posthoc.bench.metrics_speed: runs end to end on tiny frames and writes its JSON."""
import json

import numpy as np
import pytest

from posthoc.bench import metrics_speed


def test_main_writes_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert metrics_speed.main(["--frames", "2", "--height", "64", "--width", "96", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("pixel_smiyc", "pixel_exact", "component", "sklearn_pooled"):
        assert res[key]["fps"] > 0
    assert abs(res["exact_ap_minus_sklearn"]) < 1e-12
    assert abs(res["exact_auroc_minus_sklearn"]) < 1e-12
    assert "x sklearn" in capsys.readouterr().out


def test_frames_and_bad_args():
    frames = metrics_speed.make_frames(2, 32, 48, seed=1, dtype="float16")
    s, lab = frames[0]
    assert s.dtype == np.float16 and s.shape == (32, 48) and set(np.unique(lab)) <= {0, 1, 255}
    assert metrics_speed.main(["--frames", "0"]) == 2
    with pytest.raises(SystemExit):
        metrics_speed.main(["--dtype", "int8"])
