"""The fit iteration's fast paths equal the plain ones: fused Adam against torch's single-tensor
Adam, and the in-place densification statistics against the allocating formula they replace."""
import types

import torch

from scene.gaussian_model import GaussianModel
from training.strategy import DensifyStrategy


def _model(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = GaussianModel(sh_degree=1)
    m.params = {"xyz": torch.randn(n, 3, generator=g), "f_dc": torch.randn(n, 1, 3, generator=g),
                "f_rest": torch.randn(n, 3, 3, generator=g), "opacity": torch.randn(n, 1, generator=g),
                "scaling": torch.randn(n, 3, generator=g) - 4, "rotation": torch.randn(n, 4, generator=g)}
    for p in m.params.values():
        p.requires_grad_(True)
    m.filter_3D = torch.zeros(n, 1)
    return m


def test_fused_adam_matches_single_tensor_adam():
    from argparse import ArgumentParser

    from arguments import OptimizationParams
    parser = ArgumentParser()
    opt = OptimizationParams(parser).extract(parser.parse_args([]))
    fast, plain = _model(), _model()
    fast.training_setup(opt)
    plain.training_setup(opt)
    assert fast.optimizer.defaults.get("fused") or fast.optimizer.defaults.get("foreach")
    groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in plain.optimizer.param_groups]
    plain.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15, foreach=False, fused=False)
    assert not plain.optimizer.param_groups[0]["fused"]
    g = torch.Generator().manual_seed(1)
    for it in range(30):
        for name in fast.params:
            grad = torch.randn(fast.params[name].shape, generator=g) * 10.0 ** (-(it % 7))
            fast.params[name].grad, plain.params[name].grad = grad.clone(), grad.clone()
        fast.optimizer.step()
        plain.optimizer.step()
    for name in fast.params:
        a, b = fast.params[name].detach(), plain.params[name].detach()
        assert (a - b).abs().max() <= 1e-6 * b.abs().max(), name


def test_inplace_statistics_equal_the_allocating_formula():
    n = 777
    st = DensifyStrategy()
    st.reset_state(n)
    ref = {k: v.clone() for k, v in st._state.items()}
    cam = types.SimpleNamespace(width=63, height=47)
    model = types.SimpleNamespace(num_points=n, get_xyz=torch.zeros(n, 3))
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        radii = torch.randint(0, 6, (n,), generator=g, dtype=torch.int32)
        vis = radii > 0
        vp = torch.zeros(n, 3, requires_grad=True)
        vp.grad = torch.randn(n, 3, generator=g) * 1e-3
        st.step_post_backward(1, model, {"visibility_filter": vis, "radii": radii, "viewspace_points": vp}, cam, 1.0)
        r = radii.to(ref["max_radii"].dtype)
        ref["max_radii"] = torch.where(vis, torch.maximum(ref["max_radii"], r), ref["max_radii"])
        ndc = vp.grad[:, :2] * vp.grad.new_tensor([cam.width * 0.5, cam.height * 0.5])
        ref["grad_accum"] += torch.where(vis, ndc.norm(dim=-1), torch.zeros_like(ref["grad_accum"]))
        ref["denom"] += vis.to(ref["denom"].dtype)
    for k in ref:
        assert torch.equal(ref[k], st._state[k]), k
    assert set(st.state_dict()["stats"]) == {"grad_accum", "denom", "max_radii"}  # scratch is not state
