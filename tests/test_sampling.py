"""Flow samplers: parity with diffusers' schedulers, exactness, convergence order, NFE, errors."""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

import stretto
from stretto.pipelines.image import GenerationStats, guided_denoiser
from stretto.sampling import (
    SAMPLERS,
    TimeShiftedDenoiser,
    flow_sigmas,
    get_sampler,
    nfe_per_sampler,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_unipc,
    shift_sigmas,
)

torch.set_num_threads(1)


def smooth_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A deterministic velocity field, nonlinear in x and in sigma."""
    return torch.tanh(x) * (1 + sigma) - 0.3 * x * sigma**2 + 0.2 * torch.sin(3 * x + sigma)


@pytest.fixture(scope="module")
def flux_denoiser():
    """The shipped model with classifier-free guidance, as `stretto generate` runs it."""
    model = stretto.load("shapes-flux")
    with torch.no_grad():
        denoiser = guided_denoiser(model, ["a red circle left of a blue square"], 3.0, GenerationStats())
    return torch.no_grad()(denoiser)


def noise(shape=(1, 3, 32, 32), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def run_scheduler(scheduler, denoiser, x: torch.Tensor) -> torch.Tensor:
    """The usual diffusers loop: the model sees the scheduler's own sigma for each timestep."""
    for i, t in enumerate(scheduler.timesteps):
        v = denoiser(x, scheduler.sigmas[i])
        x = scheduler.step(v, t, x).prev_sample
    return x


def euler_scheduler(steps: int, shift: float, flux_style: bool):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    if flux_style:  # how the Flux pipeline calls it
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    else:
        scheduler.set_timesteps(num_inference_steps=steps)
    return scheduler


def dpm_scheduler(steps: int, shift: float, flux_style: bool):
    scheduler = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    scheduler.set_timesteps(num_inference_steps=steps)  # takes no custom sigmas
    return scheduler


def unipc_scheduler(steps: int, shift: float, flux_style: bool):
    scheduler = UniPCMultistepScheduler(
        solver_order=2,
        solver_type="bh2",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    if flux_style:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    else:
        scheduler.set_timesteps(num_inference_steps=steps)
    return scheduler


PARITY = [
    (sample_euler, euler_scheduler),
    (sample_dpmpp_2m, dpm_scheduler),
    (sample_unipc, unipc_scheduler),
]


@pytest.mark.parametrize("sampler,make_scheduler", PARITY, ids=["euler", "dpm++2m", "unipc"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("flux_style", [False, True], ids=["default-sigmas", "flux-sigmas"])
def test_matches_diffusers_on_a_smooth_field(sampler, make_scheduler, steps, shift, flux_style):
    x = noise((2, 3, 8, 8))
    scheduler = make_scheduler(steps, shift, flux_style)
    ours = sampler(smooth_denoiser, x, scheduler.sigmas.clone())
    theirs = run_scheduler(scheduler, smooth_denoiser, x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler,make_scheduler", PARITY, ids=["euler", "dpm++2m", "unipc"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_matches_diffusers_on_the_flux_network(flux_denoiser, sampler, make_scheduler, shift):
    x = noise()
    scheduler = make_scheduler(8, shift, True)
    ours = sampler(flux_denoiser, x, scheduler.sigmas.clone())
    theirs = run_scheduler(scheduler, flux_denoiser, x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 4, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0, math.exp(1.15)])
def test_flow_sigmas_equal_flux_pipeline_sigmas(steps, shift):
    sigmas = flow_sigmas(steps, shift)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0] == 1 and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    torch.testing.assert_close(sigmas, euler_scheduler(steps, shift, flux_style=True).sigmas, atol=2e-7, rtol=0)


def test_unipc_on_flow_sigmas_matches_diffusers_flux_style():
    # diffusers nudges the first sigma to 1 - 1e-6; ours starts at exactly 1, the rest is the same.
    x = noise((2, 3, 8, 8))
    for steps in (2, 3, 8):
        theirs = run_scheduler(unipc_scheduler(steps, 3.0, True), smooth_denoiser, x)
        torch.testing.assert_close(sample_unipc(smooth_denoiser, x, flow_sigmas(steps, 3.0)), theirs, atol=2e-5, rtol=0)


def test_shift_sigmas():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(s, 1.0), s)
    torch.testing.assert_close(shift_sigmas(shift_sigmas(s, 2.0), 1.5), shift_sigmas(s, 3.0))
    assert shift_sigmas(s, 3.0)[5] == 0.75  # k s / (1 + (k - 1) s) at s = 0.5
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(s, 0.0)
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0)


class CountingDenoiser:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.inner(x, sigma)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_matches_the_count(name, steps):
    denoiser = CountingDenoiser(smooth_denoiser)
    get_sampler(name)(denoiser, noise((1, 3, 4, 4)), flow_sigmas(steps, 3.0))
    assert denoiser.calls == nfe_per_sampler(name, steps)


def test_heun_nfe():
    assert nfe_per_sampler("heun", 10) == 19
    denoiser = CountingDenoiser(smooth_denoiser)
    sample_heun(denoiser, noise((1, 3, 4, 4)), torch.tensor([1.0, 0.5, 0.2]))  # not ending at 0: 2 NFE each
    assert denoiser.calls == 4


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_point_data_is_reached_exactly(name, shift):
    # Data that is one point c: v = (x - c) / s, and every ODE path is a straight line onto c.
    c = torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    x = noise((1, 3, 4, 4)).double()
    out = get_sampler(name)(lambda x, s: (x - c) / s, x, flow_sigmas(5, shift).double())
    torch.testing.assert_close(out, c, atol=1e-12, rtol=0)


MU, TAU = 0.3, 0.5  # Gaussian data N(MU, TAU^2): a velocity linear in x with a closed-form flow


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.double()
    x0 = MU + (1 - s) * TAU**2 / ((1 - s) ** 2 * TAU**2 + s**2) * (x - (1 - s) * MU)
    return (x - x0) / s


def gaussian_flow(z: torch.Tensor, s: float) -> torch.Tensor:
    """The exact ODE solution at s starting from standard noise z at s = 1."""
    return (1 - s) * MU + math.sqrt((1 - s) ** 2 * TAU**2 + s**2) * z


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpm++2m", 2), ("unipc", 2)])
def test_error_shrinks_with_the_order(name, order):
    z = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    start, end = 0.95, 0.05
    errors = []
    for steps in (64, 256):
        sigmas = torch.linspace(start, end, steps + 1, dtype=torch.float64)
        out = get_sampler(name)(gaussian_velocity, gaussian_flow(z, start), sigmas)
        errors.append(float((out - gaussian_flow(z, end)).abs().max()))
    ratio = errors[0] / errors[1]  # 4x the steps: ~4 for order 1, ~16 for order 2
    if order == 1:
        assert 3.5 < ratio < 4.5, errors
    else:
        assert ratio > 10, errors


@pytest.mark.parametrize("name,bad_step", [("euler", 2), ("heun", 1), ("dpm++2m", 2), ("unipc", 2)])
def test_non_finite_raises_with_the_step(name, bad_step):
    sigmas = flow_sigmas(4)  # 1, .75, .5, .25, 0

    def denoiser(x, sigma):
        v = smooth_denoiser(x, sigma)
        return v * float("nan") if float(sigma) == 0.5 else v

    with pytest.raises(FloatingPointError, match=rf"step {bad_step} \(sigma"):
        get_sampler(name)(denoiser, noise((1, 3, 4, 4)), sigmas)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_step(name):
    seen = []
    sigmas = flow_sigmas(5, 3.0)
    out = get_sampler(name)(
        smooth_denoiser, noise((1, 3, 4, 4)), sigmas, callback=lambda i, s, x: seen.append((i, float(s), x))
    )
    assert [i for i, _, _ in seen] == list(range(5))
    assert [s for _, s, _ in seen] == sigmas[1:].tolist()
    assert seen[-1][2] is out


def test_unknown_sampler_lists_the_names():
    with pytest.raises(ValueError, match="euler, heun, dpm\\+\\+2m, unipc"):
        get_sampler("ddim")
    with pytest.raises(ValueError, match="known samplers"):
        nfe_per_sampler("ddim", 4)
    with pytest.raises(ValueError, match="steps"):
        nfe_per_sampler("euler", 0)


class RecordingDenoiser:
    def __init__(self):
        self.sigmas = []

    def __call__(self, x, sigma):
        self.sigmas.append(sigma)
        return torch.zeros_like(x)


def noisy_data(s: float, data_var: float, scale: float = 1.0) -> torch.Tensor:
    """x_s for data with per-image variance data_var, its spread scaled by `scale` (exposure bias)."""
    x0 = noise((2, 3, 32, 32), seed=1) * math.sqrt(data_var)
    return scale * ((1 - s) * x0 + s * noise((2, 3, 32, 32), seed=2))


def test_time_shift_keeps_sigma_when_x_matches_it():
    shifted = TimeShiftedDenoiser(RecordingDenoiser(), data_var=0.3)
    for s in (0.9, 0.6, 0.4):
        assert abs(shifted.matched_sigma(noisy_data(s, 0.3), s) - s) < 0.01


def test_time_shift_follows_the_variance_within_the_window():
    inner = RecordingDenoiser()
    shifted = TimeShiftedDenoiser(inner, data_var=0.3, window=0.04, cutoff=0.3)
    sigma = torch.tensor(0.6)
    shifted(noisy_data(0.6, 0.3, scale=1.5), sigma)  # too much variance: looks noisier
    shifted(noisy_data(0.6, 0.3, scale=0.7), sigma)  # too little: looks cleaner
    shifted(noisy_data(0.6, 0.3, scale=1.02), sigma)  # a little more: a small shift, inside the window
    up, down, small = (float(s) for s in inner.sigmas)
    assert up == pytest.approx(0.64) and down == pytest.approx(0.56)
    assert 0.6 < small < 0.64
    assert all(s.shape == () and s.dtype == sigma.dtype for s in inner.sigmas)


def test_time_shift_leaves_low_noise_and_pure_noise_alone():
    inner = RecordingDenoiser()
    shifted = TimeShiftedDenoiser(inner, data_var=0.3, cutoff=0.3)
    for s in (1.0, 0.29, 0.1):
        sigma = torch.tensor(s)
        shifted(noisy_data(s, 0.3, scale=1.5), sigma)
        assert inner.sigmas[-1] is sigma
    with pytest.raises(ValueError, match="data_var"):
        TimeShiftedDenoiser(inner, data_var=0.0)


def test_time_shift_runs_inside_a_sampler(flux_denoiser):
    calls = RecordingDenoiser()

    def recording_flux(x, s):
        calls(x, s)
        return flux_denoiser(x, s)

    out = sample_euler(TimeShiftedDenoiser(recording_flux), noise(), flow_sigmas(6, 3.0))
    assert torch.isfinite(out).all() and len(calls.sigmas) == 6
