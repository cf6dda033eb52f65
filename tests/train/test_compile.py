"""`arvc train --compile` (TrainOptions.compile): the networks go through torch.compile and train the
same. Inductor's code generation takes minutes on the tiny config (8.4 min measured on 2 cores), longer
than the suite may take, so this test compiles with Dynamo's `aot_eager` backend: the whole front end
that `--compile` depends on — Dynamo tracing G and D with their graph breaks (the per-item seeded noise),
AOT autograd building the backward graphs — with eager kernels behind it, which is why the losses must be
*equal* to the eager run's, not close. Inductor's own numerics (float reassociation: 2e-7 relative on
tiny's first-step losses, 5e-6 on v2-40k's, benchmarks/results/compile-*.json) are not covered here."""

import logging

import pytest
import torch
from trainkit import options

from arvc.train.checkpoint import load_checkpoint
from arvc.train.loop import train


@pytest.mark.slow
def test_compiled_networks_train_exactly_as_eager_and_save_plain_weights(
    tmp_path, data_dir, monkeypatch, caplog
):
    with caplog.at_level(logging.WARNING):
        eager = train(options(tmp_path, data_dir, "eager", max_steps=2))
    assert "--compile" not in caplog.text
    caplog.clear()

    compiled_modules = []
    real_compile = torch.compile

    def aot_eager(model, **kwargs):
        compiled_modules.append(type(model).__name__)
        return real_compile(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", aot_eager)
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING):
        compiled = train(options(tmp_path, data_dir, "compiled", max_steps=2, compile=True))
    torch._dynamo.reset()
    # On a CPU the user is told what compiling measured here: slower than eager (benchmarks/compile_step.py).
    assert "--compile on a CPU: measured slower than eager" in caplog.text

    assert sorted(compiled_modules) == ["MultiPeriodDiscriminator", "Synthesizer"]
    assert compiled.steps_done == eager.steps_done == 2
    assert compiled.final_losses == eager.final_losses  # exact: the same aten kernels run
    saved, reference = (load_checkpoint(r.last_checkpoint)["generator"] for r in (compiled, eager))
    assert saved.keys() == reference.keys()  # no torch.compile wrapper prefix (_orig_mod.) in the weights
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    assert compiled.exports["safetensors"].is_file()
