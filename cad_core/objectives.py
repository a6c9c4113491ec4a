"""The two CAD objectives J, both oriented so that J grows with the concept (method.md §2).

alpha = w * dJ/dw then means the same thing for both: alpha > 0 carries the concept.
Both are means over elements (like the reference's MSE), summed over visited timesteps by the caller.
"""
import torch

OBJECTIVES = ("concept_gap", "concept_likelihood")


def concept_gap(parameterization, x_t, sigma, x0_concept, x0_base) -> torch.Tensor:
    """J_gap = || eps(x_t, c) - sg[eps(x_t, c_base)] ||^2: how far the concept moves the prediction."""
    eps_concept = parameterization.eps_from_x0(x_t, x0_concept.float(), sigma)
    eps_base = parameterization.eps_from_x0(x_t, x0_base.detach().float(), sigma)
    return (eps_concept - eps_base).pow(2).mean()


def concept_likelihood(parameterization, x_t, sigma, x0_pred, eps_true) -> torch.Tensor:
    """J_lik = -|| eps - eps_hat(x_t, c) ||^2: the negated denoising loss, a proxy for log p(x | c)."""
    eps_pred = parameterization.eps_from_x0(x_t, x0_pred.float(), sigma)
    return -(eps_true.float() - eps_pred).pow(2).mean()
