"""The two CAD objectives J, both oriented so that J grows with the concept (method.md §2).

alpha = w * dJ/dw then means the same thing for both: alpha > 0 carries the concept.
Both are means over elements (like the reference's MSE), summed over visited timesteps by the caller.
"""
import torch

OBJECTIVES = ("concept_gap", "concept_likelihood")


def concept_gap(parameterization, x_t, sigma, x0_concept, x0_base) -> torch.Tensor:
    """J_gap = || eps(x_t, c) - sg[eps(x_t, c_base)] ||^2: how far the concept moves the prediction."""
    eps_concept = parameterization.eps_from_x0(x_t, at_least_fp32(x0_concept), sigma)
    eps_base = parameterization.eps_from_x0(x_t, at_least_fp32(x0_base.detach()), sigma)
    return (eps_concept - eps_base).pow(2).mean()


def concept_likelihood(parameterization, x_t, sigma, x0_pred, eps_true) -> torch.Tensor:
    """J_lik = -|| eps - eps_hat(x_t, c) ||^2: the negated denoising loss, a proxy for log p(x | c)."""
    eps_pred = parameterization.eps_from_x0(x_t, at_least_fp32(x0_pred), sigma)
    return -(at_least_fp32(eps_true) - eps_pred).pow(2).mean()


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 predictions are lifted to fp32 for the loss; fp64 stays fp64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
