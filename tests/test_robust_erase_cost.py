"""benchmarks/robust_erase_cost.py counts the robust erase's calls from its settings: with every call costing one
second, the estimate is the number of calls, written out here from the method's description."""
from benchmarks.robust_erase_cost import ERASED_PROMPTS, KEPT_PROMPTS, SAMPLING_STEPS, estimate
from cad_core.erase_settings import DEFAULT_ERASE
from cad_core.robust_erase import POOL_PER_PICTURE


def test_the_estimate_counts_the_calls_the_method_makes():
    s = DEFAULT_ERASE.replace(train_steps=10, batch=2, pictures=3)
    e = estimate({"no_grad_forward_s": 1.0, "forward_backward_s": 1.0}, s)
    prompts = ERASED_PROMPTS + KEPT_PROMPTS
    assert e["pictures_s"] == prompts * SAMPLING_STEPS * 2 * 3        # CFG: 2 forwards per picture and step
    assert e["pool_s"] == prompts * 3 * POOL_PER_PICTURE * 2         # 2 targets per point
    assert e["train_s"] == 10 * 4 * 2                                # adversary, forget x2, retain per step
    assert e["total_s"] == e["pictures_s"] + e["pool_s"] + e["train_s"]
    slower = estimate({"no_grad_forward_s": 1.0, "forward_backward_s": 3.0}, s)
    assert slower["train_s"] == 3 * e["train_s"] and slower["pictures_s"] == e["pictures_s"]
