"""The held-out validation split: seeded, whole recordings where it can, a contiguous block where not."""

import pytest

from arvc.data.preprocess import DataError
from arvc.data.split import MAX_HELD_PIECES, read_split, recording_of, split_pieces, write_split


def filelist(recordings: dict[str, int]) -> list[str]:
    return [
        f"0_gt_wavs/{name}_{k}.wav|3_feature/{name}_{k}.npy|2a_f0/{name}_{k}.npy|2b-f0nsf/{name}_{k}.npy|0"
        for name, count in recordings.items()
        for k in range(count)
    ]


def test_the_split_is_a_pure_function_of_lines_fraction_and_seed():
    lines = filelist({f"rec{i}": 9 for i in range(6)})
    assert split_pieces(lines, 0.1, 7) == split_pieces(lines, 0.1, 7)
    assert {split_pieces(lines, 0.1, s).held[0] for s in range(10)} != {split_pieces(lines, 0.1, 0).held[0]}


def test_several_recordings_hold_out_whole_recordings():
    lines = filelist({f"rec{i}": 9 for i in range(6)})
    split = split_pieces(lines, 0.1, 1234)
    held = {recording_of(line)[0] for line in split.held}
    trained = {recording_of(line)[0] for line in split.train}
    assert held and not held & trained, "no recording is on both sides"
    assert sorted(split.held + split.train) == sorted(lines)
    assert "whole recording" in split.how


def test_one_recording_holds_out_one_contiguous_block():
    lines = filelist({"only": 40})
    split = split_pieces(lines, 0.1, 3)
    numbers = sorted(recording_of(line)[1] for line in split.held)
    assert len(numbers) == 4 and numbers == list(range(numbers[0], numbers[0] + 4))
    assert "one recording" in split.how and "contiguous block" in split.how


def test_at_least_two_pieces_and_at_most_the_cap():
    assert len(split_pieces(filelist({"a": 6}), 0.1, 0).held) == 2
    many = split_pieces(filelist({f"r{i}": 40 for i in range(30)}), 0.5, 0)
    assert len(many.held) <= MAX_HELD_PIECES


def test_zero_disables_validation_and_too_few_pieces_is_a_clear_error():
    lines = filelist({"a": 3})
    assert split_pieces(lines, 0, 0).held == []
    with pytest.raises(DataError, match="--val-fraction 0"):
        split_pieces(lines, 0.1, 0)
    with pytest.raises(DataError, match="between 0"):
        split_pieces(lines, 0.9, 0)


def test_a_written_split_reads_back_the_same(tmp_path):
    split = split_pieces(filelist({f"rec{i}": 9 for i in range(6)}), 0.1, 5)
    write_split(split, tmp_path / "split.json")
    assert read_split(tmp_path / "split.json") == split
