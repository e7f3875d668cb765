"""ErrorFeedback (gtopk_mpi/torch/error_feedback.py), the one error-feedback state of the
optimizer and the DDP hook: per-parameter residuals that follow the parameters into any
bucket layout, and a state dict by parameter name."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gtopk_mpi.torch.error_feedback import ErrorFeedback  # noqa: E402

A = (("x", 3), ("y", 2))


def filled(ef: ErrorFeedback, layout, values) -> None:
    ef.residual(layout, torch.zeros(len(values))).copy_(torch.tensor(values))


def test_a_split_layout_keeps_every_piece():
    """Bucket (x, y) rebuilt as (y) and then (x): each gets its own entries; none is lost on
    the way (the piece not asked for first waits for its parameter)."""
    ef = ErrorFeedback(0.1, [])
    filled(ef, A, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert ef.residual((("y", 2),), torch.zeros(2)).tolist() == [4.0, 5.0]
    assert ef.residual((("x", 3),), torch.zeros(3)).tolist() == [1.0, 2.0, 3.0]
    kept = ef.per_parameter()
    assert kept.keys() == {"x", "y"} and kept["x"].tolist() == [1.0, 2.0, 3.0] and kept["y"].tolist() == [4.0, 5.0]


def test_merged_and_reordered_layouts():
    ef = ErrorFeedback(0.1, [])
    filled(ef, (("x", 3),), [1.0, 2.0, 3.0])
    filled(ef, (("y", 2),), [4.0, 5.0])
    assert ef.residual((("y", 2), ("x", 3)), torch.zeros(5)).tolist() == [4.0, 5.0, 1.0, 2.0, 3.0]
    assert list(ef.residuals) == [(("y", 2), ("x", 3))]


def test_state_dict_by_name_loads_into_another_layout_with_velocities():
    ef = ErrorFeedback(0.1, [], momentum=0.5)
    filled(ef, A, [1.0, 2.0, 3.0, 4.0, 5.0])
    ef.compensate(A, torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0]))  # velocity = 2 everywhere
    ef.step = 7
    saved = ef.state_dict()
    assert set(saved) == {"step", "residuals", "velocities"} and set(saved["residuals"]) == {"x", "y"}
    other = ErrorFeedback(0.1, [], momentum=0.5)
    other.load_state_dict(saved)
    assert other.step == 7
    other.place((("y", 2),), torch.zeros(2))
    other.place((("x", 3),), torch.zeros(3))
    assert not other.pending["residuals"] and not other.pending["velocities"]
    for kind in ("residuals", "velocities"):
        got, want = other.per_parameter(kind), saved[kind]
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


def test_a_piece_of_the_wrong_size_is_refused():
    ef = ErrorFeedback(0.1, [])
    ef.load_state_dict({"step": 0, "residuals": {"x": torch.ones(4)}})
    with pytest.raises(ValueError, match="'x' have 4 entries, the parameter 3"):
        ef.residual((("x", 3),), torch.zeros(3))
    with pytest.raises(ValueError, match="a flat vector of 4 entries for parameters of 3"):
        ErrorFeedback(0.1, []).residual((("x", 3),), torch.zeros(4))
