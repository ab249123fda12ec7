"""Real images nobody here made: scikit-learn's bundled handwritten digits (no download).

The ten digit classes are the identities; two thirds of the images become a training
folder, 1000 pairs of the held-out third a verification `.bin` (bridges.recognition.
digits.build). Training goes through the real `bridges.train` CLI and verification
through the real `bridges.evaluate` CLI (10-fold protocol).
"""

import pytest

from bridges.recognition import digits as recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return recipe.build(tmp_path_factory.mktemp("digits"))


RUNS = {head: (recipe.HEADS[head], epochs, step) for head, epochs, step in recipe.RUNS}


def test_adaface_on_digits_verifies_held_out_pairs_above_90_percent(digits, tmp_path):
    flags, epochs, step = RUNS["adaface"]
    result = recipe.train_and_verify(*digits, tmp_path, flags, epochs, step)
    assert len(result["fold_accuracies"]) == 10 and result["pairs"] == 1000
    assert result["accuracy_mean"] > 0.90, result["accuracy_mean"]
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 10_000
    assert "digits" in (tmp_path / "eval" / "results.md").read_text()


# Slow (CI time): each head's logits and loss are pinned against hand-computed values in
# tests/test_recognition_models.py, and the same training path runs end to end with AdaFace
# above; this trains each other head on the digits too.
@pytest.mark.slow
@pytest.mark.parametrize("head", ["arcface", "cosface", "groupface"])
def test_other_heads_on_digits_above_75_percent(digits, tmp_path, head):
    flags, epochs, step = RUNS[head]
    result = recipe.train_and_verify(*digits, tmp_path, flags, epochs, step)
    assert result["accuracy_mean"] > 0.75, result["accuracy_mean"]
