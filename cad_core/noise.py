"""How a denoiser's inputs relate to clean images, for the two parameterizations ComfyUI uses.

Denoisers here return the clean-image (x0) prediction whatever their training target, as ComfyUI's
`apply_model` does; the objectives need the noise (eps), which these classes recover from x0.
"""
import torch


class VarianceExploding:
    """x_t = x0 + sigma * eps (k-diffusion form of eps- and v-prediction models: SD1.x, SD2.x, SDXL)."""

    name = "variance_exploding"

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0 + _bcast(sigma, x0) * eps

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x_t - x0) / _bcast(sigma, x_t)


class FlowMatching:
    """x_t = (1 - sigma) * x0 + sigma * eps (rectified flow: SD3, Flux)."""

    name = "flow_matching"

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _bcast(sigma, x0)
        return (1 - s) * x0 + s * eps

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _bcast(sigma, x_t)
        return (x_t - (1 - s) * x0) / s


def ddim_step(parameterization, x_t, x0, sigma, sigma_next):
    """Deterministic DDIM (= k-diffusion Euler) step: keep the implied noise, move to sigma_next."""
    eps = parameterization.eps_from_x0(x_t, x0, sigma)
    return parameterization.add_noise(x0, eps, sigma_next)


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim))
