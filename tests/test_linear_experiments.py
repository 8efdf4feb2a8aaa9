"""The Depth-Without-the-Magic experiments: quick (or smaller) runs with every claim holding."""

import dataclasses
import json

import pytest

pytest.importorskip("torchdiffeq")
pytest.importorskip("scipy")

from natgrad.experiments import (  # noqa: E402
    depth_invariance,
    limiting_direction,
    sparse_classification,
    sparse_regression,
)
from natgrad.experiments._base import no_progress  # noqa: E402


def _check(module, cfg, tmp_path):
    results = module.EXPERIMENT.run(cfg, no_progress)
    results = json.loads(json.dumps(results))  # claims and figures work from stored data
    failed = [c.to_dict() for c in module.EXPERIMENT.claims(results) if not c.holds]
    assert not failed, failed
    paths = module.EXPERIMENT.figures(results, tmp_path)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert module.EXPERIMENT.paper == "depth"
    return results


def test_depth_invariance_quick(tmp_path):
    results = _check(depth_invariance, depth_invariance.config(True, 0), tmp_path)
    assert results["balanced_product_diagonal"]["jacobian_rank_at_w0"] == results["config"]["d"] - 1
    assert max(results["balanced_product_diagonal"]["discrete_stuck_coordinate"]) < 1e-20


def test_limiting_direction_quick(tmp_path):
    results = _check(limiting_direction, limiting_direction.config(True, 0), tmp_path)
    assert len(results["support"]) < results["config"]["n"]


def test_sparse_classification_small(tmp_path):
    cfg = dataclasses.replace(sparse_classification.config(True, 0), seeds=1, n_test=2000)
    _check(sparse_classification, cfg, tmp_path)


def test_sparse_regression_small(tmp_path):
    cfg = sparse_regression.config(True, 0)
    _check(sparse_regression, cfg, tmp_path)
