from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from arvc.audio.mel import linear_spectrogram
from arvc.config import load_config
from arvc.data.dataset import Batch, EpochSampler, VoiceDataset, collate, make_loader
from arvc.data.demo import generate_demo_voice
from arvc.data.preprocess import DataError, preprocess


def Cfg():  # noqa: N802 - reads like the dataclass it returns
    """The tiny config's data section: 16 kHz, hop 160, n_fft 512, 80-d mel features."""
    return load_config("tiny").data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    demo = tmp_path_factory.mktemp("demo")
    generate_demo_voice(demo, seconds=15, sr=16000)
    run = tmp_path_factory.mktemp("run")
    preprocess(demo, run, 16000, "pm")
    return run


def test_item_shapes_and_alignment(run_dir):
    ds = VoiceDataset(run_dir, Cfg())
    assert len(ds) >= 4 and len(ds.lengths) == len(ds)
    for i in range(len(ds)):
        item = ds[i]
        t = item.phone.shape[0]
        assert item.phone.shape == (t, 80) and item.phone.dtype == torch.float32
        assert item.pitch.shape == (t,) and item.pitch.dtype == torch.long
        assert item.pitchf.shape == (t,) and item.pitchf.dtype == torch.float32
        assert item.spec.shape == (257, t)
        assert item.wave.shape == (1, t * 160)
        assert item.sid == 0
        # Features are repeated to the spectrogram's 100 frames/s.
        assert torch.equal(item.phone[0::2][: t // 2], item.phone[1::2][: t // 2])
        assert t >= ds.lengths[i] - 2


def test_spec_matches_wave_and_is_cached(run_dir):
    ds = VoiceDataset(run_dir, Cfg())
    item = ds[0]
    cache = ds.entries[0][0].with_suffix(".spec.pt")
    assert cache.is_file()
    full, _ = sf.read(ds.entries[0][0], dtype="float32")
    expected = linear_spectrogram(torch.from_numpy(full)[None], 512, 160, 512)[0]
    torch.testing.assert_close(item.spec, expected[:, : item.spec.shape[1]])  # whole-wave spec, then cut
    torch.testing.assert_close(ds[0].spec, item.spec)  # from the cache
    # A config with other framing must not reuse the cache.
    other = VoiceDataset(run_dir, replace(Cfg(), filter_length=256, win_length=256))
    assert other[0].spec.shape[0] == 129
    assert VoiceDataset(run_dir, Cfg(), cache_spec=False)[0].spec.shape[0] == 257


def test_length_cap(run_dir):
    ds = VoiceDataset(run_dir, Cfg(), max_frames=50)
    item = ds[0]
    assert item.phone.shape[0] == item.spec.shape[1] == 50 and item.wave.shape[1] == 50 * 160


def test_collate_pads_with_zeros_longest_first(run_dir):
    ds = VoiceDataset(run_dir, Cfg())
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    assert isinstance(batch, Batch)
    assert list(Batch._fields) == [
        "phone",
        "phone_lengths",
        "pitch",
        "pitchf",
        "spec",
        "spec_lengths",
        "wave",
        "wave_lengths",
        "sid",
        "index",
    ]
    b, t = len(items), max(it.spec.shape[1] for it in items)
    assert batch.phone.shape == (b, t, 80) and batch.pitch.shape == (b, t) and batch.pitchf.shape == (b, t)
    assert batch.spec.shape == (b, 257, t) and batch.wave.shape == (b, 1, t * 160)
    assert batch.sid.dtype == torch.long and batch.pitch.dtype == torch.long
    assert torch.all(batch.spec_lengths[:-1] >= batch.spec_lengths[1:])
    assert torch.equal(batch.phone_lengths, batch.spec_lengths)
    assert torch.equal(batch.wave_lengths, batch.spec_lengths * 160)
    for i in range(b):
        n = int(batch.spec_lengths[i])
        assert not batch.phone[i, n:].any() and not batch.pitch[i, n:].any() and not batch.pitchf[i, n:].any()
        assert not batch.spec[i, :, n:].any() and not batch.wave[i, :, n * 160 :].any()
    assert batch.to("cpu").phone.shape == batch.phone.shape


def test_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(20, seed=7), EpochSampler(20, seed=7)
    assert a.order(3) == b.order(3)
    assert sorted(a.order(3)) == list(range(20))
    assert a.order(3) != a.order(4) and a.order(3) != EpochSampler(20, seed=8).order(3)
    b.set_epoch(3, start=5)
    assert list(b) == a.order(3)[5:] and len(b) == 15
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("start", [0, 8])  # from the epoch's start, and resumed after 2 global batches
def test_ranks_share_every_global_batch_exactly(start):
    """With W ranks, global batch j holds the same pieces as with one process; rank r has slice r of it."""
    one = EpochSampler(23, seed=5, batch_size=4)
    one.set_epoch(3, start=start)
    whole = list(one)
    batches = [sorted(whole[i : i + 4]) for i in range(0, len(whole) - len(whole) % 4, 4)]
    for world in (2, 4):
        ranks = [EpochSampler(23, seed=5, batch_size=4, rank=r, world_size=world) for r in range(world)]
        for sampler in ranks:
            sampler.set_epoch(3, start=start)
        shares = [list(sampler) for sampler in ranks]
        share = 4 // world
        assert [len(s) for s in shares] == [len(r) for r in ranks] == [len(batches) * share] * world
        for j, batch in enumerate(batches):
            assert sorted(i for s in shares for i in s[j * share : (j + 1) * share]) == batch
    with pytest.raises(ValueError, match="divisible"):
        EpochSampler(23, batch_size=4, world_size=3)


def test_loader_reproducible_and_resumable(run_dir):
    ds = VoiceDataset(run_dir, Cfg())

    def epoch_sids(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return [b.spec_lengths.tolist() + b.pitchf.sum(dim=1).tolist() for b in loader]

    one, two = make_loader(ds, 2, seed=11), make_loader(ds, 2, seed=11)
    epoch_sids(one, 0)
    assert epoch_sids(one, 1) == epoch_sids(two, 1)  # epoch 1 without having run epoch 0
    assert len(one) == -(-len(ds) // 2)
    assert len(make_loader(ds, 2, seed=11, drop_last=True)) == len(ds) // 2


def test_batch_larger_than_dataset(run_dir):
    ds = VoiceDataset(run_dir, Cfg())
    with pytest.raises(DataError, match="larger than the dataset"):
        make_loader(ds, len(ds) + 1)


def test_mismatched_config_is_explained(run_dir):
    with pytest.raises(DataError, match="feature_dim=768"):
        VoiceDataset(run_dir, replace(Cfg(), feature_dim=768))[0]
    with pytest.raises(DataError, match="40000"):
        VoiceDataset(run_dir, replace(Cfg(), sampling_rate=40000, hop_length=400))[0]


def test_missing_or_bad_filelist(tmp_path):
    with pytest.raises(DataError, match="run preprocessing"):
        VoiceDataset(tmp_path, Cfg())
    (tmp_path / "filelist.txt").write_text("a.wav|b.npy\n")
    with pytest.raises(DataError, match="gt_wav"):
        VoiceDataset(tmp_path, Cfg())
    (tmp_path / "filelist.txt").write_text("a.wav|b.npy|c.npy|d.npy|0\n")
    with pytest.raises(DataError, match="missing"):
        VoiceDataset(tmp_path, Cfg())


def test_item_lengths_agree_with_stored_f0(run_dir):
    ds = VoiceDataset(run_dir, Cfg())
    _, _, f0, f0nsf, _ = ds.entries[0]
    item = ds[0]
    np.testing.assert_array_equal(item.pitch.numpy(), np.load(f0)[: len(item.pitch)])
    np.testing.assert_allclose(item.pitchf.numpy(), np.load(f0nsf)[: len(item.pitchf)])
