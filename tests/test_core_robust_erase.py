"""cad_core.robust_erase on a plain torch denoiser (no ComfyUI): only masked entries move, the parameters are
restored, the concept's prediction moves to the guided-away target while the kept prompts' hold and a fresh
conditioning attack gets less near, Cancel leaves nothing changed, bad input is refused."""
import pytest
import torch

from cad_pack.cad_core import CADError
from cad_pack.cad_core.erase_settings import DEFAULT_ERASE, EraseSettings
from cad_pack.cad_core.noise import VarianceExploding
from cad_pack.cad_core.robust_erase import RobustEraseInputs, RobustSchedule, train_robust_erase

WIDTH, CHANNELS = 3, 4


class TinyDenoiser(torch.nn.Module):
    """x0 prediction = the noisy input shrunk toward what the conditioning says, through a small MLP: enough for
    a concept to be 'drawn' by one conditioning and not another."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.text = torch.nn.Linear(WIDTH, 16)
        self.draw = torch.nn.Linear(16, CHANNELS)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x_t, sigma, context):
        s = sigma.view(-1, 1, 1, 1)
        drawn = self.draw(torch.tanh(self.text(context.mean(1)))).view(-1, CHANNELS, 1, 1)
        return x_t / (1 + s ** 2) + drawn * s ** 2 / (1 + s ** 2)


def world():
    """Concept pictures at +1, kept pictures at -1 (every channel); contexts are single rows. The denoiser is
    first trained to draw +1 for the concept's row, -1 for the kept one and 0 for the empty one."""
    model = TinyDenoiser()
    erase_ctx = torch.tensor([[[1.0, 0.0, 0.0]]])
    guide_ctx = torch.tensor([[[0.0, 0.0, 0.0]]])
    keep_ctx = torch.tensor([[[0.0, 1.0, 0.0]]])
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    contexts, drawn = torch.cat([erase_ctx, keep_ctx, guide_ctx]), torch.tensor([1.0, -1.0, 0.0])
    for _ in range(300):
        which = torch.randint(3, (24,), generator=g)
        x0 = drawn[which].view(-1, 1, 1, 1).expand(-1, CHANNELS, 1, 1)
        sigma = torch.rand(24, generator=g) * 5 + 0.1
        x_t = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
        loss = ((model(x_t, sigma, contexts[which]) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    inputs = RobustEraseInputs(
        erase_pictures=torch.ones(8, CHANNELS, 1, 1), erase_of_picture=torch.zeros(8, dtype=torch.long),
        keep_pictures=-torch.ones(8, CHANNELS, 1, 1), keep_of_picture=torch.zeros(8, dtype=torch.long),
        erase_context=erase_ctx, guide_context=guide_ctx, keep_context=keep_ctx,
        empty_context=torch.zeros(1, 1, WIDTH), sigmas=torch.linspace(0.5, 5.0, 20))
    return model, inputs


def schedule(**changes):
    base = dict(steps=150, lr=0.02, batch=8, overshoot=1.0, preserve=1.0, adversary_lr=0.05, adversaries=4, seed=0)
    return RobustSchedule(**{**base, **changes})


def train(model, inputs, masks=None, **changes):
    params = dict(model.named_parameters())
    masks = masks or {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    return train_robust_erase(model, VarianceExploding().add_noise, params, masks, inputs, schedule(**changes))


def apply(model, deltas):
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(deltas.get(n, torch.zeros_like(p)))
    return model


def concept_error(model, inputs, context):
    """How far the prediction for the concept's pictures (at a high noise level) is from the concept."""
    sigma = torch.full((8,), 4.0)
    with torch.no_grad():
        return float((model(inputs.erase_pictures * 0, sigma, context.expand(8, -1, -1)) - 1).abs().mean())


def test_only_masked_entries_move_and_the_parameters_are_put_back():
    model, inputs = world()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    masks["draw.weight"][:, :5] = True
    deltas = train(model, inputs, masks)
    assert set(deltas) == set(before)
    assert deltas["draw.weight"][:, :5].abs().max() > 0
    assert torch.equal(deltas["draw.weight"][:, 5:], torch.zeros_like(deltas["draw.weight"][:, 5:]))
    assert all(torch.equal(deltas[n], torch.zeros_like(deltas[n])) for n in before if n != "draw.weight")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())   # restored


def test_the_concept_goes_the_kept_prompt_stays_and_an_attacking_conditioning_finds_less():
    model, inputs = world()
    keep_before = _keep_prediction(model, inputs)
    plain = concept_error(model, inputs, inputs.erase_context)
    attacked_before = _attack(model, inputs)
    deltas = train(model, inputs, preserve=4.0)
    apply(model, deltas)
    assert plain < 0.1 and attacked_before < 0.1                                 # the concept is there to erase
    assert concept_error(model, inputs, inputs.erase_context) > plain + 1.0      # the prompt no longer draws it
    assert (_keep_prediction(model, inputs) - keep_before).abs().max() < 0.2     # the kept prompt still does
    assert _attack(model, inputs) > attacked_before + 0.4                         # a fresh attack gets less near


def test_cancel_stops_with_the_parameters_unchanged():
    model, inputs = world()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    asked = []
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    with pytest.raises(CADError, match="cancelled"):
        train_robust_erase(model, VarianceExploding().add_noise, params, masks, inputs, schedule(),
                           cancelled=lambda: asked.append(1) or len(asked) > 3)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bad_input_is_refused_with_the_reason():
    model, inputs = world()
    params = dict(model.named_parameters())
    none = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    with pytest.raises(CADError, match="selects no weights"):
        train_robust_erase(model, VarianceExploding().add_noise, params, none, inputs, schedule())
    with pytest.raises(CADError, match="no weights to train"):
        train_robust_erase(model, VarianceExploding().add_noise, {}, {}, inputs, schedule())
    bad = RobustEraseInputs(**{**inputs.__dict__, "erase_pictures": inputs.erase_pictures * float("nan")})
    with pytest.raises(CADError, match="erase pictures hold NaN"):
        train(model, bad)
    with pytest.raises(CADError, match="train_steps must be a whole number"):
        EraseSettings(train_steps=0)
    with pytest.raises(CADError, match="learning_rate must be a finite number"):
        EraseSettings(learning_rate=float("nan"))
    with pytest.raises(CADError, match="Unknown erase mode"):
        EraseSettings(mode="gentle")
    assert DEFAULT_ERASE.replace(mode="closed form").robust is False


def _keep_prediction(model, inputs):
    sigma = torch.full((8,), 4.0)
    with torch.no_grad():
        return model(inputs.keep_pictures * 0, sigma, inputs.keep_context.expand(8, -1, -1))


def _attack(model, inputs, steps=150):
    """The white-box attack on this world: the conditioning row that makes the model draw the concept best, from
    the concept's own; returns the concept error it is left with (higher = the erase holds better)."""
    context = inputs.erase_context.clone().requires_grad_(True)
    opt = torch.optim.Adam([context], lr=0.05)
    sigma = torch.full((8,), 4.0)
    for _ in range(steps):
        loss = ((model(torch.zeros(8, CHANNELS, 1, 1), sigma, context.expand(8, -1, -1)) - 1) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return concept_error(model, inputs, context.detach())
