"""Interop benchmark: a diffusers ``UNet2DModel``'s likelihood paths and sampler overhead vs diffusers.

On a tiny random-initialized ``UNet2DModel`` (3x32x32, batch 64; ``--quick``: 3x16x16, batch 8)
with a 1000-step DDPM schedule, on one CPU thread:

* **likelihood**: wall time and per-image standard deviation (bits/dim, over independent probe
  draws) of one Hutchinson probe on the ODE path and of the variance-reduced paths (the
  control variate; ``quadrature="steps"`` with fresh probes at every node), all on the log-SNR
  clock (:mod:`sdediff.likelihood.clock`, the default for a discrete schedule), and the gain at
  equal wall time,
  ``(std sqrt(time))_one probe / (std sqrt(time))_path``. The exact trace costs ``d = 3072``
  backward passes per evaluation here: it is timed for one evaluation and extrapolated.
* **samplers**: sdediff's ``ddim``, ``dpm_solver`` (``solver_type="midpoint"``) and ``unipc``
  against diffusers' DDIM, DPMSolverMultistep and UniPC schedulers on the same network at 10
  and 20 steps: wall time per step, the network's own time per call (alone, and summed inside
  the run), and the overhead per step beyond the network's time inside the run.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.image_likelihood import IMAGE_LEVELS

from .peer_samplers import require_diffusers
from .report import (Progress, add_output_args, announce, guard_quick, output_dir, pyplot, save_figure,
                     write_json, write_text)

__all__ = ["run", "main", "LIKELIHOOD_PATHS", "SAMPLER_PAIRS"]

#: name -> (log_likelihood keywords); all Gaussian probes unless named.
LIKELIHOOD_PATHS: dict[str, dict] = {
    "ode, 1 probe": dict(trace="gaussian", probes=1),
    "ode, 1 rademacher probe": dict(trace="rademacher", probes=1),
    "ode, 1 probe + control variate": dict(trace="gaussian", probes=1, control_variate=True),
    "ode, fresh probes + control variate": dict(trace="gaussian", probes=1, fresh_probes=True,
                                                control_variate=True),
    "48 log-SNR nodes, 4 probes/node + control variate": dict(trace="gaussian", probes=4, quadrature=48,
                                                              control_variate=True),
    "steps, 1 probe/node + control variate": dict(trace="gaussian", probes=1, quadrature="steps",
                                                  control_variate=True),
    "steps, 4 probes/node": dict(trace="gaussian", probes=4, quadrature="steps"),
    "steps, 4 probes/node + control variate": dict(trace="gaussian", probes=4, quadrature="steps",
                                                   control_variate=True),
}
#: sdediff sampler (and options) -> the diffusers scheduler it is compared with.
SAMPLER_PAIRS = (("ddim", {}, "DDIMScheduler", {}),
                 ("dpm_solver", {"solver_type": "midpoint"}, "DPMSolverMultistepScheduler",
                  {"solver_type": "midpoint"}),
                 ("unipc", {}, "UniPCMultistepScheduler", {}))
BASELINE = "ode, 1 probe"


class TimedNet(torch.nn.Module):
    """The network, with the wall time spent inside its calls summed in :attr:`seconds`."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seconds, self.calls = net, 0.0, 0

    def forward(self, x, timesteps, **kw):
        start = time.perf_counter()
        out = self.net(x, timesteps, **kw)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def reset(self):
        self.seconds, self.calls = 0.0, 0


def tiny_unet(size: int, seed: int = 0):
    """A random-initialized 3-channel ``UNet2DModel`` (float32, eval) and a 1000-step DDPM scheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       norm_num_groups=8, layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2)
    return unet.eval(), DDPMScheduler(num_train_timesteps=1000)


# ------------------------------------------------------------------------------ likelihood
def _exact_trace_seconds(model, x: torch.Tensor, cotangents: int = 8) -> float:
    """Seconds of one exact-trace evaluation of the batch: ``cotangents`` backward passes timed,
    scaled to all ``d`` of them (plus the forward pass)."""
    t = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
    xg = x.detach().requires_grad_(True)
    start = time.perf_counter()
    out = model(xg, t).reshape(x.shape[0], -1)
    forward = time.perf_counter() - start
    eye = torch.zeros_like(out)
    start = time.perf_counter()
    for i in range(cotangents):
        eye.zero_()
        eye[:, i] = 1
        torch.autograd.grad(out, xg, eye, retain_graph=True)
    per = (time.perf_counter() - start) / cotangents
    return forward + per * out.shape[1]


def likelihood_rows(model, x: torch.Tensor, repeats: int, rtol: float, log) -> tuple[list[dict], dict]:
    """One row per path of :data:`LIKELIHOOD_PATHS`, each solved ``repeats`` times (interleaved)
    with independent probes; and the exact trace's extrapolated cost."""
    d = x[0].numel()
    runs = {name: {"seconds": [], "bpd": [], "nfe": []} for name in LIKELIHOOD_PATHS}
    for r in range(repeats):
        for name, kw in LIKELIHOOD_PATHS.items():
            gen = torch.Generator().manual_seed(1000 * r + 17)
            start = time.perf_counter()
            res = sd.log_likelihood(model, model.sde, x, eps=1e-5, rtol=rtol, atol=rtol, generator=gen, **kw)
            runs[name]["seconds"].append(time.perf_counter() - start)
            runs[name]["bpd"].append(res.bpd(IMAGE_LEVELS))
            runs[name]["nfe"].append(res.nfe)
            log(f"  likelihood {name:40s} repeat {r + 1}/{repeats}: {runs[name]['seconds'][-1]:6.1f} s, "
                f"NFE {res.nfe}")
    rows = []
    for name, got in runs.items():
        bpd = torch.stack(got["bpd"])  # (repeats, B)
        std = float(bpd.var(0).mean().sqrt())  # per image, over probe draws (RMS over images)
        seconds = sum(got["seconds"]) / repeats
        rows.append(dict(path=name, seconds=seconds, nfe=sum(got["nfe"]) / repeats, per_image_std=std,
                         std_sqrt_time=std * math.sqrt(seconds), mean_bpd=float(bpd.mean())))
    base = next(r for r in rows if r["path"] == BASELINE)
    for row in rows:
        row["gain_at_equal_time"] = base["std_sqrt_time"] / row["std_sqrt_time"]
    one_eval = _exact_trace_seconds(model, x)
    exact = dict(run=False, d=d, seconds_per_evaluation=one_eval,
                 estimated_solve_seconds=one_eval * base["nfe"],
                 note=f"not run: one evaluation costs d = {d} backward passes ({one_eval:.1f} s for the batch), "
                      f"so a solve of the one-probe path's {base['nfe']:.0f} NFE would take about "
                      f"{one_eval * base['nfe'] / 3600:.1f} h")
    log(f"  exact trace: {exact['note']}")
    return rows, exact


# ------------------------------------------------------------------------------ samplers
def _diffusers_loop(net, scheduler, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for k in scheduler.timesteps:
        out = net(scheduler.scale_model_input(x, k), k).sample
        x = scheduler.step(out, k, x).prev_sample
    return x


def sampler_rows(unet, ddpm, shape: tuple[int, ...], steps_list, repeats: int, log) -> list[dict]:
    """Per-step wall time and overhead beyond the network, sdediff vs diffusers (min over interleaved repeats)."""
    import diffusers

    timed = TimedNet(unet)
    model = sd.from_diffusers(timed, ddpm)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    k = torch.full((shape[0],), 500.0)
    cases = []
    for steps in steps_list:
        for ours, options, theirs, their_options in SAMPLER_PAIRS:
            scheduler = getattr(diffusers, theirs).from_config(ddpm.config, **their_options)
            cases.append((steps, f"sdediff {ours}", lambda n=steps, s=ours, o=options: sd.sample(
                model, model.sde, shape, sampler=s, steps=n, x_T=x_T, denoise=False, check_finite=False, **o)))
            cases.append((steps, f"diffusers {theirs}", lambda n=steps, sch=scheduler: _diffusers_loop(
                timed, sch, x_T, n)))
    best = {(n, name): (math.inf, 0.0, 0) for n, name, _ in cases}
    alone = math.inf
    with torch.no_grad():
        unet(x_T, k)  # warm-up
        for r in range(repeats):
            start = time.perf_counter()
            unet(x_T, k)
            alone = min(alone, time.perf_counter() - start)
            for n, name, fn in cases:
                timed.reset()
                start = time.perf_counter()
                fn()
                total = time.perf_counter() - start
                if total < best[(n, name)][0]:
                    best[(n, name)] = (total, timed.seconds, timed.calls)
    rows = []
    for (n, name), (total, inside, calls) in best.items():
        rows.append(dict(steps=n, sampler=name, nfe=calls, ms_per_step=1e3 * total / n,
                         network_ms_per_call_in_run=1e3 * inside / max(calls, 1),
                         network_ms_per_call_alone=1e3 * alone,
                         overhead_ms_per_step=1e3 * (total - inside) / n,
                         overhead_vs_alone_ms_per_step=1e3 * (total - calls * alone) / n))
        log(f"  sampler {name:40s} {n:3d} steps: {rows[-1]['ms_per_step']:7.2f} ms/step, overhead "
            f"{rows[-1]['overhead_ms_per_step']:.3f} ms/step (NFE {calls})")
    return rows


# ------------------------------------------------------------------------------ run and report
def run(quick: bool = False, out_dir: str | Path = "bench-results", log=print) -> dict:
    """Run the benchmark and write ``interop.json``, ``interop.md`` and ``interop.png`` to ``out_dir``."""
    require_diffusers("the interop benchmark", "diffusers")
    torch.set_num_threads(1)
    size, batch = (16, 8) if quick else (32, 64)
    lik_batch, repeats, lik_repeats = (4, 2, 2) if quick else (64, 5, 3)
    rtol = 1e-3
    unet, ddpm = tiny_unet(size)
    config = dict(quick=quick, image=[3, size, size], batch=batch, likelihood_batch=lik_batch, rtol=rtol,
                  atol=rtol, likelihood_repeats=lik_repeats, sampler_repeats=repeats, threads=1,
                  torch=torch.__version__, schedule="DDPM linear, N = 1000", clock="log-SNR")
    log(f"interop: UNet2DModel 3x{size}x{size}, sampler batch {batch}, likelihood batch {lik_batch}")
    levels = torch.randint(0, 256, (lik_batch, 3, size, size), generator=torch.Generator().manual_seed(0))
    x = sd.dequantize(levels, IMAGE_LEVELS, generator=1, dtype=torch.float64)
    model = sd.from_diffusers(unet, ddpm)
    lik, exact = likelihood_rows(model, x, lik_repeats, rtol, log)
    samplers = sampler_rows(unet, ddpm, (batch, 3, size, size), (10, 20), repeats, log)
    result = dict(config=config, likelihood=lik, exact_trace=exact, samplers=samplers)
    out = Path(out_dir)
    write_json(out / "interop.json", result)
    write_text(out / "interop.md", _markdown(result))
    _plot(result, out / "interop.png")
    return result


def _markdown(result: dict) -> list[str]:
    c = result["config"]
    lines = ["# Interop benchmark: a diffusers UNet2DModel", "",
             f"Random-initialized `UNet2DModel` 3x{c['image'][1]}x{c['image'][2]}, DDPM schedule (N = 1000), "
             f"CPU, {c['threads']} thread, torch {c['torch']}{', quick run' if c['quick'] else ''}.", "",
             f"## Likelihood ({c['likelihood_batch']} images, log-SNR clock, rtol = atol = {c['rtol']:g}, "
             f"{c['likelihood_repeats']} independent probe draws)", "",
             "| path | s / solve | NFE | per-image std (bits/dim) | std x sqrt(s) | gain at equal time | mean bpd |",
             "|---|---|---|---|---|---|---|"]
    for r in result["likelihood"]:
        lines.append(f"| {r['path']} | {r['seconds']:.2f} | {r['nfe']:.0f} | {r['per_image_std']:.4f} | "
                     f"{r['std_sqrt_time']:.4f} | {r['gain_at_equal_time']:.2f}x | {r['mean_bpd']:.3f} |")
    lines += ["", f"Exact trace: {result['exact_trace']['note']}.", "",
              "The gain is `(std sqrt(time))` of one probe on the ODE path over the path's own: how much lower "
              "its per-image std is at equal wall time (target: >= 3x).", "",
              f"## Samplers (batch {c['batch']}; minimum over {c['sampler_repeats']} interleaved repeats)", "",
              "| steps | sampler | NFE | ms / step | network ms / call (in run) | network ms / call (alone) | "
              "overhead ms / step |", "|---|---|---|---|---|---|---|"]
    for r in sorted(result["samplers"], key=lambda r: (r["steps"], r["sampler"])):
        lines.append(f"| {r['steps']} | {r['sampler']} | {r['nfe']} | {r['ms_per_step']:.2f} | "
                     f"{r['network_ms_per_call_in_run']:.2f} | {r['network_ms_per_call_alone']:.2f} | "
                     f"{r['overhead_ms_per_step']:.3f} |")
    lines += ["", "Overhead per step: the run's wall time minus the time spent inside the network's calls "
              "during the run, per step (sdediff's includes its diffusers adapter: the timestep and "
              "`a(t)`, `s(t)` per call)."]
    return lines


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    lik = result["likelihood"]
    ax1.barh([r["path"] for r in lik], [r["gain_at_equal_time"] for r in lik], color="tab:blue")
    ax1.axvline(3.0, color="k", ls="--", lw=1, label="target: 3x")
    ax1.axvline(1.0, color="grey", lw=1)
    ax1.set(xlabel="per-image std gain at equal wall time\n(vs one probe on the ODE path)", title="likelihood paths")
    ax1.legend(loc="lower right")
    rows = sorted(result["samplers"], key=lambda r: (r["steps"], r["sampler"]))
    labels = [f"{r['sampler'].replace('Scheduler', '')} ({r['steps']})" for r in rows]
    colors = ["tab:orange" if r["sampler"].startswith("sdediff") else "tab:green" for r in rows]
    ax2.barh(labels, [r["overhead_ms_per_step"] for r in rows], color=colors)
    ax2.set(xlabel="overhead per step\nbeyond the network (ms)", title="sampler overhead (steps)")
    ax2.tick_params(axis="y", labelsize=7)
    save_figure(fig, path)


def main(argv=None, prog: str | None = None, results: str | Path | None = None) -> None:
    """The command line: ``sdediff bench interop``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_output_args(parser, "3x16x16 images, batch 8 (< 40 s)")
    args = parser.parse_args(argv)
    out = output_dir(args.out, args.quick, results)
    guard_quick(out, "interop", args.quick, args.force)
    log = Progress()
    log(f"interop benchmark{' (quick)' if args.quick else ''}; results will go to {out.resolve()}")
    run(quick=args.quick, out_dir=out, log=log)
    announce(out, ("interop.json", "interop.md", "interop.png"), log=log)
