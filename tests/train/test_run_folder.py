"""The run folder's layout is written once (`arvc.data.outputs.RunFolder`): what training writes is where
it says, and the readers (CLI, web UI, export, index) ask it instead of spelling the names again."""

from pathlib import Path

from trainkit import options, tiny

from arvc.data.outputs import RUN_LOCK, RUN_PRODUCTS, RunFolder, run_products
from arvc.train.loop import train


def test_the_layout_users_read_about():
    run = RunFolder("runs/alice")
    assert run.root == Path("runs/alice")
    expected = {
        run.data: "data",
        run.filelist: "data/filelist.txt",
        run.config: "config.json",
        run.split: "split.json",
        run.checkpoints: "checkpoints",
        run.export: "export",
        run.best_export: "export/best",
        run.best_record: "export/best/best.json",
        run.metrics: "metrics.csv",
        run.validation: "validation.csv",
        run.tensorboard: "tensorboard",
        run.loss_plot: "loss.png",
        run.samples: "samples",
        run.sample_originals: "samples/original",
        run.epoch_samples(7): "samples/epoch_0007",
    }
    assert {path: path.relative_to(run.root).as_posix() for path in expected} == expected
    products = (run.checkpoints, run.export, run.metrics, run.tensorboard, run.loss_plot)
    assert tuple(p.name for p in products) == RUN_PRODUCTS


def test_sampled_epochs_are_numbered_in_order_and_ignore_other_files(tmp_path):
    run = RunFolder(tmp_path)
    for epoch in (10, 2):
        run.epoch_samples(epoch).mkdir(parents=True)
    (run.samples / "epoch_notes.txt").write_text("")
    run.sample_originals.mkdir()
    assert run.sampled_epochs() == [(2, run.epoch_samples(2)), (10, run.epoch_samples(10))]
    assert RunFolder(tmp_path / "none").sampled_epochs() == []


def test_what_a_run_writes_is_where_the_layout_says(tmp_path, data_dir):
    result = train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    run = RunFolder(tmp_path / "run")
    for path in (run.config, run.split, run.metrics, run.validation, run.loss_plot, run.best_record):
        assert path.is_file(), path
    for folder in (run.checkpoints, run.export, run.best_export, run.tensorboard, run.sample_originals):
        assert folder.is_dir() and any(folder.iterdir()), folder
    assert [epoch for epoch, _ in run.sampled_epochs()] == [1]
    assert result.samples_dir == run.samples and result.exports["best"] == run.best_export
    assert result.last_checkpoint.parent == run.checkpoints
    named = {p.name for p in (run.config, run.split, run.metrics, run.validation, run.samples)}
    assert {p.name for p in run.root.iterdir()} <= named | set(RUN_PRODUCTS) | {RUN_LOCK}
    assert len(run_products(run.root)) == len(RUN_PRODUCTS)
