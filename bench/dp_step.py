"""One DP-SGD step against one plain step on the small GPT-2 (notebook 08).

The model is the course's "small" GPT-2 (``make_model(ModelConfig.for_profile("small"), 257)``, about
0.48M parameters, float32), untrained; the batch ``--batch`` windows of ``--seq + 1`` random token ids
(default 32 x 128, the small profile's training batch). Three ways to take one AdamW step, timed
interleaved in the same process (median of ``--repeats`` rounds after one untimed round each):

* plain: ``window_loss`` (whole-batch position ids, no KV cache), backward, batch clipping to 1, step;
* DP-SGD, Opacus as shipped: HF's ``Conv1D`` has no Opacus grad sampler, so Opacus computes the
  per-sample gradients of GPT-2's attention and MLP projections with ``torch.func``;
* DP-SGD, the library's way: the same, with :func:`tutorial_lib.privacy.dp.conv1d_grad_sample` registered
  for ``Conv1D`` (one einsum per parameter), as :func:`tutorial_lib.privacy.dp.make_private` does.

Opacus looks the grad sampler up at every backward pass, so both DP models are wrapped the same way
(with ``torch.func`` prepared for ``Conv1D``) and the sampler is registered only around the library's
steps. Both clip per example to 1 and add noise with σ = 1 (the cost does not depend on σ); the batch
is Poisson-sampled by Opacus' loader, so its size varies around ``--batch``, and each DP time is
divided by the batch size it drew and multiplied by ``--batch``. Both DP variants give the same
per-sample gradients (``tests/test_dp.py`` checks the sampler against a loop).

    .venv/bin/python bench/dp_step.py                 # 32 x 128, 11 rounds, about 1 min on 2 cores
    .venv/bin/python bench/dp_step.py --quick         # 8 x 64, 3 rounds
    .venv/bin/python bench/dp_step.py --threads 1 --repeats 7

Results are written to ``bench/results/dp_step.json`` (``--out``; ``dp_step-quick.json`` with
``--quick``). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import time
import warnings

import torch
from _common import add_repeats, bench_parser, interleaved, set_threads, write_results

from tutorial_lib.privacy.dp import backward, conv1d_grad_sample, window_loss
from tutorial_lib.core.models import ModelConfig, count_parameters, make_model


def plain_stepper(model, data, batch):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = window_loss(model, data[:batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return batch

    return step


def dp_stepper(model, data, batch, conv1d_sampler: bool, seed: int):
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleModule
    from transformers.pytorch_utils import Conv1D

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=batch,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    GradSampleModule.GRAD_SAMPLERS.pop(Conv1D, None)  # wrap with torch.func prepared for Conv1D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, dp_optimizer, dp_loader = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0)
    batches = iter(())

    def step():
        nonlocal batches
        if conv1d_sampler:
            GradSampleModule.GRAD_SAMPLERS[Conv1D] = conv1d_grad_sample
        else:
            GradSampleModule.GRAD_SAMPLERS.pop(Conv1D, None)
        for _ in range(2):
            try:
                (windows,) = next(batches)
                break
            except StopIteration:
                batches = iter(dp_loader)
        loss = window_loss(private, windows)
        dp_optimizer.zero_grad(set_to_none=True)
        backward(loss)
        dp_optimizer.step()
        return len(windows)

    return step


FULL = dict(batch=32, seq=128, repeats=11)
QUICK = dict(batch=8, seq=64, repeats=3)


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick="batch 8 x 64, 3 rounds",
                          seed_help="seed for the models, the token ids and Poisson sampling (default: 0)")
    parser.add_argument("--batch", type=int, default=None, help="windows per batch (default: 32; 8 with --quick)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per window, plus one (default: 128; 64 with --quick)")
    add_repeats(parser, FULL["repeats"], QUICK["repeats"])
    args = parser.parse(argv, FULL, QUICK)
    if min(args.batch, args.seq, args.repeats) < 1:
        parser.error("--batch, --seq and --repeats must be at least 1")
    threads = set_threads(args.threads)
    wall_start = time.perf_counter()
    data = torch.randint(0, 256, (args.batch * 40, args.seq + 1), generator=torch.Generator().manual_seed(args.seed))
    cfg = ModelConfig.for_profile("small")
    ways = {
        "plain": plain_stepper(make_model(cfg, 257, seed=args.seed), data, args.batch),
        "DP-SGD, Opacus as shipped (torch.func for Conv1D)": dp_stepper(make_model(cfg, 257, seed=args.seed), data, args.batch, False, args.seed),
        "DP-SGD, library (Conv1D grad sampler)": dp_stepper(make_model(cfg, 257, seed=args.seed), data, args.batch, True, args.seed),
    }
    # one untimed round, then the rounds; each time scaled from the batch drawn to the nominal batch
    timings = interleaved(ways, args.repeats, warmup=1, scale=lambda name, drawn: args.batch / max(drawn, 1))
    median = {name: t.median_s for name, t in timings.items()}
    plain = median["plain"]
    print(f"small GPT-2 ({count_parameters(make_model(cfg, 257)):,} parameters), batch {args.batch} x {args.seq}, "
          f"{threads} threads, median of {args.repeats}")
    for name, t in median.items():
        print(f"  {name:50s} {t:.3f} s   {t / plain:.2f}x plain")
    wall_s = time.perf_counter() - wall_start
    print(f"total wall time: {wall_s:.1f} s")
    rows = [{"way": name, **t.to_dict(), "ratio_to_plain": t.median_s / plain} for name, t in timings.items()]
    write_results(args, rows, wall_s=wall_s, median_seconds=median,
                  ratio_to_plain={name: t / plain for name, t in median.items()})


if __name__ == "__main__":
    main()
